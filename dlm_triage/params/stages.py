"""The parameters of the stages after the sweep: ingest, calibrate, report, the whole pipeline (one set of
paths handed to every stage), recalibration and LoRA-Curve connectivity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from dlm_triage import paths
from dlm_triage.params.fields import (_DEFAULT_KS, Family, GroupBy, ImportFormat, StepK, _check_items, _DbPath,
                                      _nonempty_unique, _OutPath, _Params, _RunsDirPath)
from dlm_triage.params.sweep import SweepGrid, SweepParams


class IngestOptions(_Params):
    """Loading runs into DuckDB, without its paths (`IngestParams` adds them; the pipeline has one set)."""

    quarantine_dir: Path | None = Field(
        None, description="Where unreadable/inconsistent runs are moved; empty: recorded only, not moved."
    )
    import_format: ImportFormat | None = Field(
        None, description="Also import foreign logs in this format (reference-jsonl, cells, hf-trainer, wandb-csv)."
    )
    import_paths: list[Path] = Field(default_factory=list, description="Files or folders for import_format.")
    import_family: Family | None = Field(None, description="Family to record for imported logs that lack one.")

    @model_validator(mode="after")
    def _import_pair(self) -> "IngestParams":
        if self.import_format is None and self.import_paths:
            raise ValueError(f"import_paths={[str(p) for p in self.import_paths]} given without import_format: "
                             "set import_format")
        if self.import_format is not None and not self.import_paths:
            raise ValueError(f"import_format={self.import_format!r} given without import_paths: list the files")
        return self



class IngestParams(IngestOptions, _DbPath, _RunsDirPath):
    """Load run directories (and optionally foreign logs) into the DuckDB store. Idempotent."""

    db: Path | None = Field(None, description="DuckDB file; empty: $DLM_TRIAGE_OUT/triage.duckdb.")
    runs_dir: Path | None = Field(
        None, description="Root of run directories to ingest; empty: $DLM_TRIAGE_OUT/runs."
    )


class CalibrateOptions(_Params):
    """The paper's calibration protocol per group, without its paths (`CalibrateParams` adds them)."""

    group_by: GroupBy = Field("family", description="Calibrate one threshold per family, model, cohort or PEFT method.")
    n_resamples: int = Field(1000, ge=10, le=1_000_000, description="Split-bootstrap replicates B.")
    stepk_resamples: int = Field(200, ge=10, le=1_000_000, description="Bootstrap replicates per step k.")
    ks: list[StepK] = Field(list(_DEFAULT_KS), description="Steps k of the max-grad-up-to-k sweep (each >= 0).")
    confidence_level: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of every CI.")
    test_size: float = Field(0.2, gt=0.0, lt=1.0, description="Held-out share of runs for threshold evaluation.")
    seed: int = Field(0, ge=0, description="Seed of every resampling (results are reproducible).")
    bonferroni_m: int | None = Field(
        None, ge=1, description="Bonferroni m: the number of max-grad contrasts corrected for (the paper: 6); "
                                "empty: the groups tested in this calibration.")

    @field_validator("ks", mode="before")
    @classmethod
    def _ks_range(cls, v: Any) -> Any:
        return _check_items("ks", v, lambda k: k >= 0, "are negative: use steps >= 0")

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        _nonempty_unique("ks", v)
        return sorted(v)

    def calibrate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `calibrate.run_calibration` besides db and out."""
        return {
            "group_by": self.group_by,
            "n_resamples": self.n_resamples,
            "stepk_resamples": self.stepk_resamples,
            "ks": tuple(self.ks),
            "confidence_level": self.confidence_level,
            "test_size": self.test_size,
            "seed": self.seed,
            "bonferroni_m": self.bonferroni_m,
        }


class CalibrateParams(CalibrateOptions, _DbPath, _OutPath):
    """The paper's calibration protocol per group: max-grad thresholds with bootstrap CIs, step-k sweep."""

    db: Path | None = Field(None, description="DuckDB file; empty: $DLM_TRIAGE_OUT/triage.duckdb.")
    out: Path | None = Field(None, description="Output folder for calibration.json; empty: $DLM_TRIAGE_OUT/reports.")


class ReportParams(_Params, _DbPath, _OutPath):
    """Figures plus an HTML/Markdown triage report of one calibration."""

    db: Path | None = Field(None, description="DuckDB file; empty: $DLM_TRIAGE_OUT/triage.duckdb.")
    out: Path | None = Field(None, description="Report folder; empty: $DLM_TRIAGE_OUT/reports.")
    calibration_id: str | None = Field(None, description="Calibration to report; empty: the latest.")


_STAGE_PATHS = {"sweep": ("runs_dir", "db"), "ingest": ("db", "runs_dir"), "calibrate": ("db", "out"),
                "report": ("db", "out")}
"""The path fields each stage model has and the pipeline holds once (same name, same meaning)."""


class PipelineParams(_Params):
    """Sweep -> ingest -> calibrate -> report, with one runs folder, one database and one output folder."""

    db: Path | None = Field(None, description="The pipeline's DuckDB file (thresholds, runs, calibrations); "
                            "empty: $DLM_TRIAGE_OUT/triage.duckdb.")
    out: Path | None = Field(None, description="Folder of calibration.json and the report "
                             "(<out>/<calibration_id>/, <out>/latest); empty: $DLM_TRIAGE_OUT/reports.")
    runs_dir: Path | None = Field(None, description="Where run directories go and are ingested from; empty: "
                                  "$DLM_TRIAGE_OUT/runs.")
    sweep: SweepGrid = Field(default_factory=SweepGrid, description="The grid of runs to train.")
    ingest: IngestOptions = Field(default_factory=IngestOptions, description="Loading runs into DuckDB.")
    calibrate: CalibrateOptions = Field(default_factory=CalibrateOptions, description="Threshold calibration.")

    @model_validator(mode="before")
    @classmethod
    def _one_set_of_paths(cls, data: Any) -> Any:
        """Stage parameters given whole (SweepParams, {'ingest': {'db': ...}}, a 'report' section) hand their
        paths to the pipeline's one db/out/runs_dir; two different values for one path are refused."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        found: dict[str, list[tuple[str, Any]]] = {}
        for key in ("db", "out", "runs_dir"):
            if data.get(key) is not None:
                found.setdefault(key, []).append((key, data[key]))
        for stage, names in _STAGE_PATHS.items():
            v = data.get(stage)
            if isinstance(v, BaseModel):
                v = v.model_dump(exclude_unset=True)
            if not isinstance(v, dict):
                continue
            v = dict(v)
            for name in names:
                if v.get(name) is not None:
                    found.setdefault(name, []).append((f"{stage}.{name}", v[name]))
                v.pop(name, None)
            if stage == "report":
                if v.get("calibration_id") is not None:
                    raise ValueError("report.calibration_id: the pipeline reports the calibration it makes; "
                                     "drop it (dlm-triage report --calibration reports another one)")
                data.pop("report")
            else:
                data[stage] = v
        for name, given in found.items():
            values = {str(Path(x)) for _w, x in given}
            if len(values) > 1:
                raise ValueError(f"{' and '.join(f'{w}={str(x)!r}' for w, x in given)} differ: the pipeline uses "
                                 f"one {name}; set {name} once")
            data[name] = given[0][1]
        return data

    # -- the stages' parameters, built from the one set of paths --------------------------------------------
    def sweep_params(self) -> SweepParams:
        return SweepParams(**self.sweep.model_dump(exclude_unset=True), runs_dir=self.runs_dir, db=self.db)

    def ingest_params(self) -> IngestParams:
        return IngestParams(**self.ingest.model_dump(exclude_unset=True), db=self.db, runs_dir=self.runs_dir)

    def calibrate_params(self) -> CalibrateParams:
        return CalibrateParams(**self.calibrate.model_dump(exclude_unset=True), db=self.db, out=self.out)

    def report_params(self, calibration_id: str | None = None) -> ReportParams:
        return ReportParams(db=self.db, out=self.out, calibration_id=calibration_id)


class RecalibrateParams(_Params, _RunsDirPath):
    """Ingest new runs; recalibrate each group with enough new runs; record and compare the new thresholds."""

    runs_dir: Path | None = Field(None, description="Root of run directories; empty: $DLM_TRIAGE_OUT/runs.")
    min_new_runs: int = Field(
        20, ge=1, le=10_000_000,
        description="Recalibrate a group only when it has at least this many runs ingested since its last "
        "calibration (a group never calibrated counts all its runs).",
    )
    calibrate: CalibrateParams = Field(default_factory=CalibrateParams, description="Calibration settings.")
    write_report: bool = Field(True, description="Write a triage report when anything was recalibrated.")


class ConnectParams(_Params, _RunsDirPath, _DbPath):
    """LoRA-Curve connectivity between two completed runs (same base model, family, method and rank)."""

    run_a: str = Field(..., description="Run id (under runs_dir) or run directory of the path's start (t=0).")
    run_b: str = Field(..., description="Run id or run directory of the path's end (t=1).")
    runs_dir: Path | None = Field(None, description="Where run ids are looked up; empty: $DLM_TRIAGE_OUT/runs.")
    db: Path | None = Field(None, description="DuckDB file the profiles go to; empty: $DLM_TRIAGE_OUT/triage.duckdb.")
    out: Path | None = Field(None, description="Folder for the figure; empty: $DLM_TRIAGE_OUT/reports/connect.")
    segments: int = Field(2, ge=1, le=64, description="Bezier segments N (N-1 free junctions + N controls).")
    steps: int = Field(50, ge=0, le=1_000_000, description="Curve training updates (0: the curve stays linear).")
    n_points: int = Field(11, ge=2, le=1001, description="Evaluation points t along each path (0 and 1 included).")
    eval_batches: int = Field(4, ge=1, le=10_000, description="Held-out batches (windows neither run trained on).")
    mask_ratio: float | None = Field(None, gt=0, lt=1, description="Evaluation mask ratio; empty: the runs' own.")
    lr: float | None = Field(None, gt=0, le=10, description="Adam rate of the curve's free points; empty: run A's.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")

    def resolved_out(self) -> Path:
        return Path(self.out) if self.out is not None else paths.default_report_dir() / "connect"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `connect.connect_runs` besides the two runs."""
        return {"runs_dir": self.resolved_runs_dir(), "segments": self.segments, "steps": self.steps,
                "n_points": self.n_points, "eval_batches": self.eval_batches, "mask_ratio": self.mask_ratio,
                "lr": self.lr, "device": self.device, "out_dir": self.resolved_out()}
