"""One group key (dlm_triage/groups.py) through calibrate, the registry, the inspection queue, the report and
scheduled recalibration, for every --group-by."""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl
import pytest
from runfactory import db_rows, make_sweep

from dlm_triage import groups, importers, report, store
from dlm_triage.calibrate import run_calibration
from dlm_triage.params import CalibrateParams, GroupBy

CAL = dict(n_resamples=30, stepk_resamples=10, ks=(5, 25))

# Two configurations per grouping: the first family value is spelled two ways (trainer 'llada', an import
# 'LLaDA'), the first cohort is empty ('' from the trainer, NULL-ish from a CSV), so every edge of the key shows.
SWEEPS = (
    dict(family="llada", model_id="org/model-a", cohort="", method="lora"),
    dict(family="tiny", model_id="org/model-b", cohort="c1", method="dora"),
)
EXPECTED = {"family": {"llada", "tiny"}, "model": {"org/model-a", "org/model-b"},
            "cohort": {groups.NULL_GROUP, "c1"}, "method": {"lora", "dora"}}


def test_group_key_rules():
    assert groups.group_key("family", "LLaDA") == groups.group_key("family", "llada") == "llada"
    assert groups.group_key("cohort", "") == groups.group_key("cohort", None) == groups.NULL_GROUP
    assert groups.group_key("model", "GSAI-ML/LLaDA-8B") == "GSAI-ML/LLaDA-8B"  # only families fold case
    df = pl.DataFrame({"cohort": ["", None, "x"]}, schema={"cohort": pl.String})
    assert groups.group_keys(df, "cohort").to_list() == [groups.NULL_GROUP, groups.NULL_GROUP, "x"]
    with pytest.raises(ValueError, match="group_by='median' is not known"):
        groups.group_key("median", "x")
    # the flow/UI form and the CLI offer exactly the groupings the key knows
    assert set(GroupBy.__args__) == set(groups.GROUP_BY_COLUMNS)


def _max_grad_up_to(db: Path, k: int | None) -> dict[str, float]:
    if k is None:
        return dict(db_rows(db, "SELECT run_id, max_grad_norm FROM runs"))
    return dict(db_rows(db, f"SELECT run_id, max(grad_norm) FROM steps WHERE step <= {int(k)} GROUP BY run_id"))


@pytest.mark.parametrize("group_by", ["family", "model", "cohort", "method"])
def test_every_grouping_end_to_end(tmp_path, group_by):
    runs = tmp_path / "runs"
    # 36 + 4 imported runs in the first configuration, 40 in the second: 4 top-decile runs in each group
    for i, sw in enumerate(SWEEPS):
        make_sweep(runs, (36, 40)[i], steps=30, unstable_every=10, seed_offset=100 * i, **sw)
    db = tmp_path / "t.duckdb"
    assert store.ingest_runs(db, runs).added == 76
    # an import of the first configuration's family spelled 'LLaDA' and without a cohort
    csv = tmp_path / "cells.csv"
    rows = ["family,model_name,rank,rho,seed,lr,top1_fired,top1_fire_step,collapsed,max_grad_norm,final_loss"]
    rows += [f"LLaDA,org/model-a,4,0.5,{i},0.0001,True,11,False,{0.5 + i / 100},{1.0 + i / 10}" for i in range(4)]
    csv.write_text("\n".join(rows) + "\n")
    assert importers.import_logs(db, "cells", [csv], method="lora").added == 4
    n_total = 80

    # 1. calibrate: the group names are the keys, every run in exactly one group
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run_calibration(db, tmp_path / "cal", group_by=group_by, **CAL)
    res = out.result.to_json()
    assert set(res["groups"]) == EXPECTED[group_by]
    assert sum(g["n"] + g["n_excluded"] for g in res["groups"].values()) == n_total

    # 2. the registry: a threshold per group, live on its own evidence (4 top-decile runs of 40 separate
    # cleanly), found by key or by the raw value a run carries
    assert all(g["registry"].get("accepted", True) and not g["degenerate"] for g in res["groups"].values())
    con = store.connect(db, read_only=True)
    try:
        raw = {"family": "LLaDA", "model": "org/model-a", "cohort": "", "method": "lora"}[group_by]
        first_key = groups.group_key(group_by, raw)
        rec = store.latest_threshold(con, raw, group_by=group_by)
        assert rec is not None and rec.group == first_key and rec.group_by == group_by
        thresholds = {g: store.latest_threshold(con, g, group_by=group_by) for g in EXPECTED[group_by]}
        assert all(t is not None for t in thresholds.values())

        # 3. the queue: exactly the runs at/above their own group's threshold (by hand from the step logs)
        queue = store.inspection_queue(con)
        keyed = groups.runs_with_groups(con, group_by)
    finally:
        con.close()
    expected_ids = set()
    for g, t in thresholds.items():
        upto = _max_grad_up_to(db, t.k)
        whole = _max_grad_up_to(db, None)
        for rid in keyed.filter(pl.col("group") == g)["run_id"].to_list():
            v = upto.get(rid, whole[rid])  # imported cells have no step log: the whole-run max
            if v >= t.threshold:
                expected_ids.add(rid)
    assert expected_ids and set(queue["run_id"].to_list()) == expected_ids
    assert all(f"({group_by}=" in r for r in queue["reason"].to_list())

    # 4. the report: builds, keeps every run of every group, queues the same runs
    paths = report.write_report(db, tmp_path / "report")
    text = paths.markdown.read_text()
    assert f"{n_total} runs, {len(EXPECTED[group_by])} group(s)" in text
    assert f"## Runs routed to inspection ({len(expected_ids)})" in text

    # 5. recalibration: every group is known as calibrated (none 'never calibrated'), new runs count for theirs
    con = store.connect(db, read_only=True)
    try:
        counts = groups.runs_since_calibration(con, group_by)
    finally:
        con.close()
    assert set(counts) == EXPECTED[group_by]
    assert all(c["new"] == 0 and c["last_calibrated_at"] for c in counts.values())
    make_sweep(runs, 6, steps=30, seed_offset=500, **SWEEPS[0])  # six new runs of the first configuration
    store.ingest_runs(db, runs)
    con = store.connect(db, read_only=True)
    try:
        counts = groups.runs_since_calibration(con, group_by)
        assert groups.due_groups(counts, 6) == [first_key]
        ids = groups.group_run_ids(con, group_by, [first_key])
    finally:
        con.close()
    new_ids = {p.name for p in runs.iterdir()} - set(keyed["run_id"].to_list())
    assert len(new_ids) == 6 and set(ids) == set(keyed.filter(pl.col("group") == first_key)["run_id"]) | new_ids
    assert len(ids) == 36 + 4 + 6  # the first sweep, the imports (same family/model/cohort/method) and the new


def test_recalibrate_flow_finds_the_empty_cohort_calibrated(prefect_harness, tmp_path):
    """The scheduled flow over the Prefect API: cohort '' is calibrated once, then not due again."""
    from dlm_triage.params import RecalibrateParams
    from flows.recalibrate import recalibrate_flow

    runs = tmp_path / "runs"
    for i, sw in enumerate(SWEEPS):
        make_sweep(runs, 40, steps=30, unstable_every=10, seed_offset=100 * i, **sw)
    params = RecalibrateParams(runs_dir=runs, min_new_runs=10, write_report=True, calibrate=CalibrateParams(
        db=tmp_path / "t.duckdb", out=tmp_path / "cal", group_by="cohort", n_resamples=20, stepk_resamples=10,
        ks=[5, 10]))
    first = recalibrate_flow(params)
    assert sorted(first["due"]["due"]) == sorted(EXPECTED["cohort"])
    assert Path(first["report"]["html"]).is_file()
    again = recalibrate_flow(params)
    assert again["due"]["due"] == [] and again["calibration"] is None
    assert again["due"]["groups"][groups.NULL_GROUP]["new"] == 0
