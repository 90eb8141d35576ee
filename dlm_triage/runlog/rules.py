"""What a valid run directory is: `RunLogError` (path, reason, fix), the step log's polars schema, and the
step-log rules, defined once for one file (`read.read_run`) and for many in one vectorised pass
(`batch.read_runs_batch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from dlm_triage.schema import STEP_COLUMNS

# Columns that may hold NaN/Inf on the LAST row of a diverged run (the bad step is kept).
DIVERGENCE_COLUMNS = ("loss", "grad_norm", "max_grad_norm", "matrix_grad_norms", "top1_freq")
# Columns that may hold NaN on any row (not evaluated at that step, see schema.STEP_COLUMNS).
NAN_ALLOWED_COLUMNS = ("top1_freq",)

_DEFAULT_FIX = "delete the run directory and run it again (a sweep re-runs every run without a valid manifest)"


class RunLogError(Exception):
    """A run directory that is not a valid, complete run. `path`, `reason` and `fix` are attributes."""

    def __init__(self, path: Path | str, reason: str, fix: str = _DEFAULT_FIX, *, unreadable: bool = False):
        self.path = Path(path)
        self.reason = reason
        self.fix = fix
        self.unreadable = unreadable
        """True: the files could not be read (permissions, I/O error), not found to be invalid."""
        super().__init__(f"{self.path}: {reason}; fix: {fix}")


_PERMISSION_FIX = "make the run directory and its files readable by this user, then ingest again"


def _unreadable(path: Path, e: OSError) -> RunLogError:
    return RunLogError(path, f"cannot be read ({e.strerror or e})", fix=_PERMISSION_FIX, unreadable=True)


def steps_schema() -> dict[str, pl.DataType]:
    """The polars schema of the step log, from schema.STEP_COLUMNS."""
    names = {"Int32": pl.Int32, "Int64": pl.Int64, "Float64": pl.Float64, "Boolean": pl.Boolean,
             "List(Float64)": pl.List(pl.Float64)}
    return {col: names[dtype] for col, (dtype, _) in STEP_COLUMNS.items()}


# -- the step-log rules ---------------------------------------------------------------------------------
# Defined once, used by read_run (one file) and read_runs (many files in one vectorised pass):
#   1. `_check_shape`: row count against the manifest, non-empty, columns present with the schema's dtypes;
#   2. `_ROW_RULES`: per-row violation counts (polars expressions over the step columns plus the per-row
#      context columns of `_context`), summed per file;
#   3. `_first_violation`: turns one file's summed counts into read_run's error (the first failing rule, in
#      the order below), or None.

_FLOAT_KINDS = ("Float64", "List(Float64)")
_CTX_POS, _CTX_LAST, _CTX_DIV, _CTX_NMAT = "_rl_pos", "_rl_last", "_rl_div", "_rl_nmat"


def _check_shape(path: Path, n: int, schema: dict[str, pl.DataType] | None, manifest: dict[str, Any]) -> None:
    """Row count and columns. `schema` None: already known to be exactly steps_schema() (batched path)."""
    if n != manifest["n_steps_logged"]:
        raise RunLogError(path, f"{n} rows but the manifest records n_steps_logged={manifest['n_steps_logged']}")
    if n == 0:
        raise RunLogError(path, "the step log is empty (step 0 is always logged)")
    if schema is None:
        return
    expected = steps_schema()
    missing = [c for c in expected if c not in schema]
    if missing:
        raise RunLogError(path, f"missing columns {missing}")
    wrong = [f"{c}: {schema[c]} (expected {t})" for c, t in expected.items() if schema[c] != t]
    if wrong:
        raise RunLogError(path, f"wrong column dtypes: {wrong}")


def _nonfinite(col: str, dtype: str) -> pl.Expr:
    """Per row: how many non-null values of `col` are NaN/Inf (list columns: elements; nulls count 0)."""
    if dtype.startswith("List"):
        return pl.col(col).list.eval(pl.element().is_finite().not_()).list.sum().fill_null(0)
    return pl.col(col).is_finite().not_().fill_null(False).cast(pl.UInt32)


def _row_rules() -> list[tuple[str, pl.Expr]]:
    """(name, per-row count expression), in the order read_run reports them."""
    rules: list[tuple[str, pl.Expr]] = []
    for col in STEP_COLUMNS:
        rules.append((f"null:{col}", pl.col(col).is_null().cast(pl.UInt32)))
    rules.append(("order", (pl.col("step").cast(pl.Int64) != pl.col(_CTX_POS)).fill_null(True).cast(pl.UInt32)))
    rules.append(("matrix_len", (pl.col("matrix_grad_norms").list.len() != pl.col(_CTX_NMAT))
                  .fill_null(False).cast(pl.UInt32)))
    body = ~(pl.col(_CTX_LAST) & pl.col(_CTX_DIV))  # the last row of a diverged run is checked separately
    for col, (dtype, _) in STEP_COLUMNS.items():
        if col in NAN_ALLOWED_COLUMNS or dtype not in _FLOAT_KINDS:
            continue
        rules.append((f"finite:{col}", pl.when(body).then(_nonfinite(col, dtype)).otherwise(0).cast(pl.UInt32)))
    last = pl.col(_CTX_LAST) & pl.col(_CTX_DIV)
    for col, (dtype, _) in STEP_COLUMNS.items():
        if col in DIVERGENCE_COLUMNS or dtype not in _FLOAT_KINDS:
            continue
        rules.append((f"last_finite:{col}", pl.when(last).then(_nonfinite(col, dtype)).otherwise(0)
                      .cast(pl.UInt32)))
    return rules


_ROW_RULES = _row_rules()


def _context(n_rows: Sequence[int] | np.ndarray, manifests: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-row context of files laid end to end: position in its file, last row?, diverged run?, matrix count."""
    lens = np.asarray(n_rows, dtype=np.int64)
    starts = np.cumsum(lens) - lens
    pos = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
    div = np.array([m["status"] == "diverged" for m in manifests], dtype=bool)
    nmat = np.array([len(m["matrix_names"] or []) for m in manifests], dtype=np.int64)
    return {_CTX_POS: pos, _CTX_LAST: pos == np.repeat(lens - 1, lens), _CTX_DIV: np.repeat(div, lens),
            _CTX_NMAT: np.repeat(nmat, lens)}


def _rule_counts(frame: pl.DataFrame, n_rows: Sequence[int] | np.ndarray,
                 manifests: Sequence[dict[str, Any]]) -> np.ndarray:
    """[n_files, n_rules] violation counts of files whose rows lie end to end in `frame` (same column order
    as _ROW_RULES)."""
    ctx = _context(n_rows, manifests)
    rows = frame.select(list(STEP_COLUMNS)).with_columns([pl.Series(k, v) for k, v in ctx.items()])
    if len(n_rows) == 1:  # read_run: plain sums (the running-sum form below has a fixed cost of ~15 ms a call)
        return rows.select([e.cast(pl.Int64).sum().alias(name) for name, e in _ROW_RULES]).to_numpy()
    ends = pl.Series(np.cumsum(np.asarray(n_rows, dtype=np.int64)) - 1)  # every file has >= 1 row (_check_shape)
    # per-file sums = differences of the running sums at each file's last row (no group-by, no [rows, rules]
    # matrix leaves polars)
    at_ends = rows.select([e.cast(pl.Int64).cum_sum().gather(ends).alias(name) for name, e in _ROW_RULES])
    return np.diff(at_ends.to_numpy(), axis=0, prepend=0)


def _first_violation(path: Path, n: int, manifest: dict[str, Any], counts: Sequence[int]) -> RunLogError | None:
    """read_run's error for one file from its summed rule counts (order = read_run's order), or None."""
    c = dict(zip((name for name, _ in _ROW_RULES), (int(x) for x in counts)))
    nulls = [col for col in STEP_COLUMNS if c[f"null:{col}"] > 0]
    if nulls:
        return RunLogError(path, f"null values in columns {nulls}")
    if c["order"]:
        return RunLogError(path, "steps are not 0..n-1 contiguous and ordered")
    status = manifest["status"]
    config = manifest.get("config") or {}
    if status == "completed" and isinstance(config.get("steps"), int) and n != config["steps"] + 1:
        return RunLogError(path, f"status 'completed' but {n} rows logged for config.steps={config['steps']} "
                                 f"(expected {config['steps'] + 1})")
    if c["matrix_len"]:
        n_matrices = len(manifest["matrix_names"] or [])
        return RunLogError(path, f"matrix_grad_norms rows do not all hold {n_matrices} values (manifest.matrix_names)")
    for col in STEP_COLUMNS:
        bad = c.get(f"finite:{col}", 0)
        if bad:
            return RunLogError(path, f"column {col!r} holds {bad} NaN/Inf value(s) (only the last step of a "
                                     "diverged run may)")
    for col in STEP_COLUMNS:
        if c.get(f"last_finite:{col}", 0):
            return RunLogError(path, f"column {col!r} holds NaN/Inf on the last step (only "
                                     f"{list(DIVERGENCE_COLUMNS)} may, on a diverged run)")
    return None


def _validate_steps(path: Path, steps: pl.DataFrame, manifest: dict[str, Any]) -> None:
    """All step-log rules on one file (read_run)."""
    _check_shape(path, steps.height, dict(steps.schema), manifest)
    err = _first_violation(path, steps.height, manifest, _rule_counts(steps, [steps.height], [manifest])[0])
    if err is not None:
        raise err
