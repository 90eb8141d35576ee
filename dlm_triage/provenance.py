"""Provenance of a run or a calibration: code version, package versions, host, python (ARCHITECTURE.md).

`collect()` never fails on a missing package or a missing git: the value is then None (or the package
version stands in for the git description).
"""

from __future__ import annotations

import ast
import functools
import hashlib
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


# Modules whose source decides what a run computes: the trainer and every dlm_triage module it imports,
# directly or through another, at module level or inside a function (`training_modules`, from the source, so a
# module that training starts to use is hashed without anyone listing it). Their bytes (plus the numeric
# packages' versions) are the cache's code version: editing the trainer or an adapter invalidates cached
# records, editing a flow, a test or the README does not. (`git describe --dirty` would do both wrong: it
# changes with every unrelated commit and stays the same across uncommitted edits of train.py.)
TRAINING_ROOTS = ("dlm_triage.train",)
TRAINING_PACKAGES = ("torch", "transformers", "peft", "numpy")


def _module_file(name: str) -> Path | None:
    """The source file of dlm_triage module `name` (a package: its __init__.py), found without importing it;
    None when it is not one (a class or function imported by name)."""
    root = Path(dlm_triage.__file__).resolve().parent
    rel = root.joinpath(*name.split(".")[1:])
    for path in (rel.with_suffix(".py"), rel / "__init__.py"):
        if name.split(".")[0] == "dlm_triage" and path.is_file():
            return path
    return None


def _imported_package_modules(name: str, source: bytes) -> set[str]:
    """The dlm_triage modules `source` (module `name`) imports anywhere in it: `import dlm_triage.x`,
    `from dlm_triage.x import y`, `from dlm_triage import x` (x a module), relative imports resolved."""
    path = _module_file(name)
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dlm_triage")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "dlm_triage":
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}"))
    # a submodule import runs its packages' __init__ too
    return found | {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}


@functools.lru_cache(maxsize=1)
def training_modules() -> tuple[str, ...]:
    """TRAINING_ROOTS and every dlm_triage module they import, transitively, sorted (parsed once per process;
    about 40 files, a few ms)."""
    seen: set[str] = set()
    todo = list(TRAINING_ROOTS)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is not None:
            todo.extend(_imported_package_modules(name, path.read_bytes()) - seen)
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=1)
def training_code_version() -> str:
    """The training cache's code version (part of tasks/train.py's cache key): sha256 over the source of
    `training_modules()` and the versions of TRAINING_PACKAGES (once per process)."""
    h = hashlib.sha256()
    for name in training_modules():
        path = _module_file(name)
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes() if path is not None else b"<missing>")
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
