"""DuckDB storage: schema, idempotent transactional ingestion with quarantine, queries, threshold registry.

One DuckDB file holds every run (``runs``), every logged step (``steps``), every ingestion (``ingests``,
``quarantine``) and every calibration with its per-group thresholds (``calibrations``, ``thresholds``);
the tables and their columns are listed in docs/ARCHITECTURE.md.

Concurrency: DuckDB lets one *process* open a file for writing. `connect` retries with backoff while another
process holds the lock, and `ingest_runs` validates every run directory before it opens the database, so the
lock is held only for the inserts (one transaction per ingestion).

The modules follow a run's way in and out: `records` (errors, typed records), `connection` (DDL, migrations,
opening a file), `prepare` (run directory -> validated row), `ingest` (the transaction; `_write_batch`, shared with
the importers), `dedupe` (new / grown / duplicate rows, quarantine moves), `registry` (calibration inputs, the
threshold registry), `queue` (the inspection queue, CLI listings), `curves` (LoRA-Curve results). Every name
callers use is imported here: `from dlm_triage import store; store.connect(...)`.
"""

from __future__ import annotations

from dlm_triage.store.records import (
    StoreError, StoreLockedError, IngestReport, ThresholdRecord, PreparedRun, MemoryLimitHit, StagedRows
)
from dlm_triage.store.connection import (
    DB_SCHEMA_VERSION, RUNS_SCHEMA, STEPS_SCHEMA, STEPS_COLUMNS, connect, check_database_file, _check_attached_file,
    _pl, _now
)
from dlm_triage.store.prepare import _Invalid, prepare_run_dir, _manifest_row
from dlm_triage.store.ingest import ingest_runs, _new_ingest_id, _insert_steps, _write_batch
from dlm_triage.store.registry import (
    load_calibration_inputs, save_calibration, latest_threshold, live_threshold, REGISTRY_EVIDENCE_COLUMNS,
    threshold_history
)
from dlm_triage.store.queue import inspection_queue, list_runs, summary
from dlm_triage.store.curves import CONNECT_DDL, has_connections, save_connection, connections, connect_profiles
