"""Flow parameters as pydantic v2 models: one definition for the Prefect UI forms, the CLI and the tests.

Prefect renders a flow parameter annotated with one of these models as a form: the field descriptions become
the help text, `Literal` fields become drop-downs, ranges are checked before the flow starts. The CLI builds the
same objects, so a value that the UI refuses is refused at the command line with the same message.

No Prefect import here: this module is shared with code that must not pay Prefect's import cost.

Path fields default to None, meaning "the default location" (`dlm_triage.paths`, overridable with
DLM_TRIAGE_OUT): a deployment then resolves them on the machine that runs the flow, not where it was deployed.

The models live per stage: `fields` (the shared types and base model), `sweep` (`SweepGrid`, `SweepParams`),
`stages` (ingest, calibrate, report, pipeline, recalibrate, connect). Every name is imported here:
`from dlm_triage.params import SweepParams`.
"""

from __future__ import annotations

from dlm_triage.params.fields import (  # noqa: F401 - the package's names
    AlphaConvention, EarlyWarningAction, Family, GroupBy, ImportFormat, LearningRate, MaskRatio, Method,
    Normalisation, ObjectiveName, Rank, Seed, StepK, torch_threads_per_process,
)
from dlm_triage.params.sweep import SweepGrid, SweepParams
from dlm_triage.params.stages import (CalibrateOptions, CalibrateParams, ConnectParams, IngestOptions,
                                      IngestParams, PipelineParams, RecalibrateParams, ReportParams)

__all__ = [
    "SweepGrid",
    "SweepParams",
    "IngestOptions",
    "CalibrateOptions",
    "ConnectParams",
    "IngestParams",
    "CalibrateParams",
    "ReportParams",
    "PipelineParams",
    "RecalibrateParams",
]
