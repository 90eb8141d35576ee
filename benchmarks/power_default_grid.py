"""Power of the split-bootstrap decision: how many runs a group needs before a live threshold CAN be registered.

The registry's evidence rule (`calibrate.registry_evidence`, paper 4.1) registers a group's max-grad threshold
only when the lower split-bootstrap CI bound of held-out precision exceeds the always-positive baseline's
ceiling (the upper CI bound of the test-split unstable share), the fixed-split precision is not 0 and the CI is
not [0, 1]. With the top-decile label a group of n runs has ~0.1 n unstable runs, and a test split (20 %) of
ceil(0.2 n): small groups leave many replicates with no unstable run in test, whose precision is 0, so the
lower bound sits at 0 whatever the monitor does.

Model (stated, not fitted to the paper): log max-grad-up-to-k is N(0, 1) for the 90 % of runs below the top
decile and N(d, 1) for the unstable decile; d is the separation in within-group sd units. For each n and d,
`--reps` simulated groups go through the repository's own `stats.split_bootstrap` (B = `--resamples`, the
calibration default 1000) and `calibrate.registry_evidence`; the table gives the share whose rule is accepted.
`--db` also measures d on the runs of a real calibration database (per group, log max-grad up to k=25 of the
top decile vs the rest, pooled sd) and the decision that database's latest calibration reached.

    python benchmarks/power_default_grid.py                       # the table (about a minute)
    python benchmarks/power_default_grid.py --db OUT/triage.duckdb # plus d measured on a sweep
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import warnings

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dlm_triage import stats  # noqa: E402
from dlm_triage.calibrate import registry_evidence  # noqa: E402


def decision_rate(n: int, d: float, *, reps: int, resamples: int, seed: int = 0, unstable_share: float = 0.1,
                  test_size: float = 0.2, confidence_level: float = 0.95) -> float:
    """Share of `reps` simulated groups of `n` runs whose split-bootstrap evidence registers a live threshold."""
    rng = np.random.default_rng([seed, n, int(1000 * d)])
    n_unstable = max(1, round(unstable_share * n))
    y = np.zeros(n, bool)
    y[:n_unstable] = True
    accepted = 0
    for _ in range(reps):
        x = rng.standard_normal(n) + d * y
        boot = stats.split_bootstrap(x, y, n_resamples=resamples, test_size=test_size,
                                     confidence_level=confidence_level, rng=rng)
        fixed = stats.split_bootstrap(x, y, n_resamples=1, test_size=test_size, rng=rng, resample=False)
        _, lo, hi, _ = boot.ci["precision"]
        _, _, ceiling, _ = boot.ci["baseline_precision"]
        reg = {"k": 25, "precision_ci_low": lo, "precision_ci_high": hi, "baseline_ceiling": ceiling,
               "precision": float(fixed.evaluation.test.precision[0])}
        accepted += not registry_evidence(reg)
    return accepted / reps


def zero_positive_share(n: int, unstable_share: float = 0.1, test_size: float = 0.2) -> float:
    """P(no unstable run in a test split of ceil(test_size n)): (1 - share)^n_test (resampling with replacement)."""
    return (1.0 - unstable_share) ** stats.n_test_of(n, test_size)


def measured_separation(db: Path, k: int = 25) -> dict[str, dict]:
    """Per group (family) of `db`: n, unstable runs, d of log max-grad-up-to-k, and the latest registry verdict."""
    from dlm_triage import store

    con = store.connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT r.family, r.run_id, r.final_loss, r.status, max(s.grad_norm) AS g "
            "FROM runs r JOIN steps s USING (run_id) WHERE s.step <= ? GROUP BY ALL", [k]).fetchall()
        reg = con.execute("SELECT group_name, accepted, precision, ci_low, ci_high FROM thresholds "
                          "WHERE calibration_id = (SELECT calibration_id FROM thresholds ORDER BY seq DESC "
                          "LIMIT 1)").fetchall()
    finally:
        con.close()
    out: dict[str, dict] = {}
    for fam in sorted({r[0] for r in rows}):
        sel = [r for r in rows if r[0] == fam]
        loss = np.array([np.nan if r[2] is None else r[2] for r in sel], float)
        lab = stats.stability_labels(loss, np.array([r[3] == "diverged" for r in sel]))
        g = np.log(np.array([r[4] for r in sel], float))
        u, rest = g[lab.unstable], g[~lab.unstable & ~lab.excluded]
        sd = math.sqrt(((u.size - 1) * u.var(ddof=1) + (rest.size - 1) * rest.var(ddof=1)) / (u.size + rest.size - 2)) \
            if u.size > 1 and rest.size > 1 else math.nan
        out[fam] = {"n": len(sel), "n_unstable": int(lab.unstable.sum()),
                    "d": (u.mean() - rest.mean()) / sd if sd and math.isfinite(sd) else None}
    for name, accepted, precision, lo, hi in reg:
        if name in out:
            out[name]["registry"] = "accepted" if accepted else "rejected"
            out[name]["precision"] = precision
            out[name]["threshold_ci"] = [lo, hi]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="72,108,144,216,288", help="group sizes (runs per group)")
    ap.add_argument("--d", default="1,2,3", help="separations d (sd units of log max-grad)")
    ap.add_argument("--reps", type=int, default=100, help="simulated groups per cell")
    ap.add_argument("--resamples", type=int, default=1000, help="split-bootstrap replicates B")
    ap.add_argument("--db", type=Path, default=None, help="also measure d on this calibration database")
    ap.add_argument("--json", type=Path, default=None, help="write the table here")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # thousands of expected small-split notes
    ns = [int(x) for x in a.n.split(",")]
    ds = [float(x) for x in a.d.split(",")]
    table = {"reps": a.reps, "resamples": a.resamples, "rows": []}
    print(f"P(live threshold registered) over {a.reps} simulated groups, B={a.resamples}; "
          "P0 = share of test splits without an unstable run")
    print("n     n_test  P0     " + "  ".join(f"d={d:g}" for d in ds))
    for n in ns:
        rates = [decision_rate(n, d, reps=a.reps, resamples=a.resamples) for d in ds]
        p0 = zero_positive_share(n)
        table["rows"].append({"n": n, "n_test": stats.n_test_of(n, 0.2), "p0": p0,
                              "rates": dict(zip(map(str, ds), rates))})
        print(f"{n:<5} {stats.n_test_of(n, 0.2):<7} {p0:<6.3f} " + "  ".join(f"{r:5.2f}" for r in rates))
    if a.db is not None:
        table["measured"] = measured_separation(a.db)
        print(json.dumps(table["measured"], indent=1, default=str))
    if a.json is not None:
        a.json.write_text(json.dumps(table, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
