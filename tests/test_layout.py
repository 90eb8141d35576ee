"""The package layout's promises: the core `dlm_triage` is Prefect-free (orchestration lives in `tasks/`,
`flows/` and `cli/`), checked by importing every core module in a fresh interpreter; its modules import no cycle;
and the tests mirror it (a tests/test_<name>.py per core module)."""

import os
import subprocess
import sys
from pathlib import Path

import dlm_triage

REPO = Path(__file__).resolve().parents[1]


def _core_modules() -> list[str]:
    """Every module of the package, from its files (pkgutil.walk_packages imports as it walks and drops a package
    that fails to import, which would hide the very cycle a test looks for)."""
    root = Path(dlm_triage.__file__).parent
    names = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] != "__init__" or len(parts) > 2:
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


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


def test_no_import_cycles_among_core_modules():
    """Module-level imports between core modules form no cycle (a function-level import, made when called, is
    how a module reaches one that would close a cycle). A package's `__init__` re-exports count as edges."""
    import ast

    root = Path(dlm_triage.__file__).parent
    modules = set(_core_modules()) | {"dlm_triage"}
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else name.rpartition(".")[0]
        edges = set()
        for node in ast.parse(path.read_text(), str(path)).body:  # top level only
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name and t != "dlm_triage"}
        graph[name] = edges
    cycles, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m] if m in stack else [n, m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


# Core modules whose tests live in another file by design, each with where they are. Keep it short: a module
# gets its own tests/test_<name>.py unless one of these reasons holds.
TESTED_ELSEWHERE = {
    "schema": "constants only (file names, step-log columns); every runlog/store test reads them",
    # one family in three modules (the model, its adapter, the tiny checkpoint), tested together on one checkpoint
    "families_diffusion_gemma": "test_diffusion_gemma.py",
    "tiny_diffusion_gemma": "test_diffusion_gemma.py",
    # files another change is editing at the same time; the tests stay where they are until it lands
    "tables": "test_tables_and_results.py",
    "calresult": "test_tables_and_results.py",
    "console": "test_cli.py (the terminal of `dlm-triage run`, driven through the CLI)",
    "hub": "test_cli.py (the offline hub check, driven through the CLI)",
    "drift": "test_flows.py (the threshold drift rules, beside the recalibrate flow)",
}


def test_every_core_module_has_a_test_file_of_its_name():
    """Tests mirror the package: dlm_triage/<name>.py and each subpackage dlm_triage/<name>/ have
    tests/test_<name>.py, or an entry above saying where their tests are."""
    root = Path(dlm_triage.__file__).parent
    names = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in root.glob("*/__init__.py")}
    assert len(names) > 30 and {"store", "train", "calibrate"} <= names  # the walk found the package
    tests = {p.stem.removeprefix("test_") for p in (REPO / "tests").glob("test_*.py")}
    missing = sorted(names - tests - set(TESTED_ELSEWHERE))
    assert not missing, f"core modules without tests/test_<name>.py: {missing} (move their tests there)"
    stale = sorted(n for n in TESTED_ELSEWHERE if n not in names or n in tests)
    assert not stale, f"TESTED_ELSEWHERE entries that are gone or now have their own file: {stale} (remove them)"
