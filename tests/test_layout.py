"""The package layout's promises: the core `dlm_triage` is Prefect-free (orchestration lives in `tasks/`,
`flows/` and `cli/`), checked by importing every core module in a fresh interpreter."""

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import dlm_triage

REPO = Path(__file__).resolve().parents[1]


def _core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(dlm_triage.__path__, prefix="dlm_triage."))


def test_core_imports_neither_prefect_nor_flows():
    modules = _core_modules()
    # A module added to the package is checked without editing this test; the floor guards against an empty walk.
    assert len(modules) > 30 and "dlm_triage.store" in modules and "dlm_triage.train" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows', 'tasks', 'cli'))\n"
        "print(repr(bad))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "[]", f"the core imported orchestration modules: {p.stdout}"


def test_core_source_names_no_orchestration_import():
    """Also the imports a function makes when called (the sys.modules check sees only module-level ones). The one
    exception: early_warning emits a Prefect event when Prefect is importable and a run context exists."""
    import ast

    found = []
    for path in sorted(Path(dlm_triage.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in ("flows", "tasks", "cli") or (top == "prefect" and path.name != "early_warning.py"):
                    found.append(f"{path.name}:{node.lineno} imports {name}")
    assert not found, found
