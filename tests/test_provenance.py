"""provenance.py: the training cache's code version hashes every module training runs, found from the source."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dlm_triage import provenance

ROOT = Path(__file__).resolve().parents[1]


def test_training_modules_cover_what_importing_the_trainer_loads():
    code = ("import sys, dlm_triage.train; "
            "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] == 'dlm_triage')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split())
    hashed = set(provenance.training_modules())
    assert "dlm_triage.train" in loaded and loaded <= hashed, sorted(loaded - hashed)
    # imported inside functions only (adapters chosen per run), hashed all the same
    assert {"dlm_triage.lora_diffusion", "dlm_triage.targets", "dlm_triage.nara"} <= hashed
    assert not {m for m in hashed if m.startswith(("dlm_triage.report", "dlm_triage.calibrate", "dlm_triage.store"))}


def _version_of(package_parent: Path) -> str:
    code = "from dlm_triage import provenance; print(provenance.training_code_version())"
    return subprocess.run([sys.executable, "-c", code], cwd=package_parent, capture_output=True, text=True,
                          check=True, env={"PYTHONPATH": str(package_parent), "PATH": ""}).stdout.strip()


def test_editing_an_adapter_changes_the_code_version_and_editing_the_report_does_not(tmp_path: Path):
    shutil.copytree(ROOT / "dlm_triage", tmp_path / "dlm_triage", ignore=shutil.ignore_patterns("__pycache__"))
    before = _version_of(tmp_path)
    report = tmp_path / "dlm_triage" / "report" / "verdicts.py"
    report.write_text(report.read_text() + "\n# a report edit\n")
    assert _version_of(tmp_path) == before
    adapter = tmp_path / "dlm_triage" / "lora_diffusion.py"
    adapter.write_text(adapter.read_text() + "\n# an adapter edit\n")
    assert _version_of(tmp_path) != before
