"""Provenance of a run or a calibration: code version, package versions, host, python (ARCHITECTURE.md).

`collect()` never fails on a missing package or a missing git: the value is then None (or the package
version stands in for the git description).
"""

from __future__ import annotations

import functools
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
