"""parquet_footer.py: the step log's row count from its footer bytes, checked against pyarrow's own reading of
the footer; any file not in exactly the writer's layout gives None (read on its own), never a wrong count."""

from __future__ import annotations

import io

import polars as pl
import pyarrow.parquet as pq
import pytest

from dlm_triage.config import RunConfig
from dlm_triage.parquet_footer import footer_rows, reference_footer
from dlm_triage.runlog import steps_schema
from dlm_triage.schema import STEPLOG_FILENAME
from runfactory import make_run


@pytest.fixture(scope="module")
def ref():
    return reference_footer(steps_schema())


def _parquet(df: pl.DataFrame, **kw) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("steps", [0, 20, 300])
def test_a_written_step_log_gives_the_row_count_pyarrow_reads(tmp_path, ref, steps):
    run_dir = make_run(tmp_path, RunConfig(steps=max(steps, 1)), n_rows=steps + 1 if steps else 0)
    data = (run_dir / STEPLOG_FILENAME).read_bytes()
    assert ref is not None
    assert footer_rows(data, ref) == pq.read_metadata(io.BytesIO(data)).num_rows == (steps + 1 if steps else 0)


def test_any_other_layout_is_not_counted(tmp_path, ref):
    schema = steps_schema()
    data = (make_run(tmp_path, RunConfig(steps=20)) / STEPLOG_FILENAME).read_bytes()
    assert footer_rows(data, None) is None  # no reference: no bulk path
    assert footer_rows(b"not parquet at all", ref) is None
    assert footer_rows(data[:-1], ref) is None and footer_rows(data[:8] + data[-8:], ref) is None  # truncated
    other = dict(schema)
    other.pop(next(iter(other)))  # a column fewer
    assert footer_rows(_parquet(pl.DataFrame(schema=other)), ref) is None
    renamed = {("x" + k if i == 0 else k): v for i, (k, v) in enumerate(schema.items())}
    assert footer_rows(_parquet(pl.DataFrame(schema=renamed)), ref) is None
    # the same rows written by another tool: its footer is not the writer's, so not counted (or counted right)
    table = pl.read_parquet(io.BytesIO(data)).to_arrow()
    buf = io.BytesIO()
    pq.write_table(table, buf)
    assert footer_rows(buf.getvalue(), ref) in (None, table.num_rows)
    assert footer_rows(_parquet(pl.read_parquet(io.BytesIO(data)), compression="uncompressed"), ref) in (None, 21)


def test_a_schema_polars_cannot_write_has_no_reference():
    assert reference_footer({"x": object}) is None
