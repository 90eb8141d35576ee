"""Where things live. One place, overridable by environment variables (documented in README).

- DLM_TRIAGE_CACHE: the locally pretrained tiny family and other reusable artefacts
  (default: ~/.cache/dlm-triage).
- DLM_TRIAGE_OUT: the default output root of the CLI (default: ./dlm-triage-out): runs/, triage.duckdb, reports/.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("DLM_TRIAGE_CACHE", Path.home() / ".cache" / "dlm-triage")).expanduser()


def out_root() -> Path:
    return Path(os.environ.get("DLM_TRIAGE_OUT", "dlm-triage-out")).expanduser()


def default_runs_dir() -> Path:
    return out_root() / "runs"


def default_db_path() -> Path:
    return out_root() / "triage.duckdb"


def default_report_dir() -> Path:
    return out_root() / "reports"
