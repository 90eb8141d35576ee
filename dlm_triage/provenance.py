"""Provenance of a run or a calibration: code version, package versions, host, python (ARCHITECTURE.md).

`collect()` never fails on a missing package or a missing git: the value is then None (or the package
version stands in for the git description).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import dlm_triage

PACKAGES = ("torch", "transformers", "peft", "prefect", "polars", "duckdb", "numpy", "scipy")


@functools.lru_cache(maxsize=1)
def _git_describe() -> str | None:
    # `git describe` of the repository holding this package (an editable install); a wheel install has none.
    # Cached per process: ~20 ms per call, and the working tree does not change meaning within a sweep.
    pkg_dir = Path(dlm_triage.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(pkg_dir), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def code_version() -> str:
    """`git describe --always --dirty` of the package's repository when available, else the package version."""
    described = _git_describe()
    return f"git:{described}" if described else f"dlm-triage=={dlm_triage.__version__}"


# Modules whose source decides what a run computes. Their bytes (plus the numeric packages' versions) are the
# cache's code version: editing the trainer invalidates cached records, editing a flow, a test or the README
# does not. (`git describe --dirty` would do both wrong: it changes with every unrelated commit and stays the
# same across uncommitted edits of train.py.)
TRAINING_MODULES = (
    "dlm_triage.config", "dlm_triage.schema", "dlm_triage.train", "dlm_triage.families", "dlm_triage.tiny",
    "dlm_triage.data", "dlm_triage.objective", "dlm_triage.monitors", "dlm_triage.peft_methods",
    "dlm_triage.nara", "dlm_triage.adapter_parts", "dlm_triage.runlog", "dlm_triage.runlog.rules",
    "dlm_triage.runlog.write", "dlm_triage.runlog.read", "dlm_triage.runlog.batch", "dlm_triage.early_warning",
)
TRAINING_PACKAGES = ("torch", "transformers", "peft", "numpy")


@functools.lru_cache(maxsize=1)
def training_code_version() -> str:
    """The training cache's code version (part of tasks/train.py's cache key): sha256 over the source of
    TRAINING_MODULES and the versions of TRAINING_PACKAGES (once per process)."""
    h = hashlib.sha256()
    for name in TRAINING_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        h.update(name.encode() + b"\0")
        h.update(Path(origin).read_bytes() if origin and Path(origin).is_file() else b"<missing>")
    for pkg in TRAINING_PACKAGES:
        try:
            version = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            version = "<none>"
        h.update(f"{pkg}=={version}\0".encode())
    return h.hexdigest()[:16]


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of `names` (default: the packages that change what a run computes); None when absent."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect(device: str | None = None) -> dict:
    """code_version, packages, hostname, python, platform, device (and the GPU name on CUDA)."""
    info = {
        "code_version": code_version(),
        "packages": package_versions(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device is not None and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine() -> dict:
    """CPU model, cores usable by this process, RAM, platform, load average: the machine line of a benchmark."""
    import os

    cpu_model, ram_gib = platform.processor() or platform.machine(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(), "ram_gib": ram_gib, "platform": platform.platform(),
        "python": platform.python_version(), "hostname": platform.node(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
