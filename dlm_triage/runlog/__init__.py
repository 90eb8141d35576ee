"""Atomic writing and validated reading of a run's step log (Parquet) and manifest (JSON).

Write order (schema.py): steps.parquet through a tmp file + fsync + rename, then manifest.json the same way,
LAST. A crash or SIGKILL at any point leaves either no manifest (an incomplete run the sweep re-runs) or a
manifest whose recorded sha256/row count match the Parquet file beside it. A re-run first removes an old
manifest, so a half-rewritten directory never looks complete.

`read_run` trusts nothing: every failure is a `RunLogError` naming the path, the reason and the fix.
`read_runs` / `read_runs_batch` apply the same rules (one definition, `rules`) to many run directories at once and
give the same errors; ingestion uses them.

The modules: `rules` (`RunLogError`, the step-log schema and rules), `write` (`write_run_atomic`), `read`
(`read_manifest`, `read_run`), `batch` (`read_runs`, `read_runs_batch`). Every name callers use is imported here.
"""

from __future__ import annotations

from dlm_triage.runlog.batch import (
    BULK_CHUNK_FILES, BULK_THREADS, RunBatch, _reference_footer, read_runs, read_runs_batch
)
from dlm_triage.runlog.read import RunRecord, read_manifest, read_run
from dlm_triage.runlog.rules import DIVERGENCE_COLUMNS, NAN_ALLOWED_COLUMNS, RunLogError, steps_schema
from dlm_triage.runlog.write import sha256_file, write_error, write_run_atomic
