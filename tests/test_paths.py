"""paths.py: where the cache and the outputs live, and the environment variables that move them."""

from __future__ import annotations

from pathlib import Path

from dlm_triage import paths


def test_defaults_without_the_environment(monkeypatch):
    monkeypatch.delenv("DLM_TRIAGE_CACHE", raising=False)
    monkeypatch.delenv("DLM_TRIAGE_OUT", raising=False)
    assert paths.cache_root() == Path.home() / ".cache" / "dlm-triage"
    assert paths.out_root() == Path("dlm-triage-out")
    assert paths.default_runs_dir() == Path("dlm-triage-out") / "runs"
    assert paths.default_db_path() == Path("dlm-triage-out") / "triage.duckdb"
    assert paths.default_report_dir() == Path("dlm-triage-out") / "reports"


def test_environment_overrides_are_read_at_each_call(monkeypatch, tmp_path):
    monkeypatch.setenv("DLM_TRIAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DLM_TRIAGE_OUT", str(tmp_path / "out"))
    assert paths.cache_root() == tmp_path / "cache"
    assert paths.default_runs_dir() == tmp_path / "out" / "runs"
    assert paths.default_db_path() == tmp_path / "out" / "triage.duckdb"
    assert paths.default_report_dir() == tmp_path / "out" / "reports"
    monkeypatch.setenv("DLM_TRIAGE_OUT", str(tmp_path / "elsewhere"))  # not cached at import
    assert paths.default_db_path() == tmp_path / "elsewhere" / "triage.duckdb"


def test_a_home_relative_override_is_expanded(monkeypatch):
    monkeypatch.setenv("DLM_TRIAGE_CACHE", "~/dlmt-cache")
    monkeypatch.setenv("DLM_TRIAGE_OUT", "~/dlmt-out")
    assert paths.cache_root() == Path.home() / "dlmt-cache"
    assert paths.out_root() == Path.home() / "dlmt-out"
