"""The package layout's promises: the core `dlm_triage` is Prefect-free (orchestration lives in `tasks/`,
`flows/` and `cli/`), checked by importing every core module in a fresh interpreter."""

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


def test_a_sweep_validates_each_run_config_once_between_the_command_line_and_its_configs(monkeypatch):
    """`SweepParams` validates the grid (every RunConfig) once; `to_spec().expand()`, which the CLI and the sweep's
    plan call, hands on those frozen configs instead of validating them again."""
    from dlm_triage import config
    from dlm_triage.params import SweepParams

    calls = []
    real = config._validate_run
    monkeypatch.setattr(config, "_validate_run", lambda c: calls.append(c.run_id) or real(c))
    sweep = SweepParams(ranks=[4, 8], mask_ratios=[0.5], learning_rates=[1e-3], seeds=[1, 2], steps=2)
    configs = sweep.to_spec().expand()
    assert sweep.to_spec().expand() == configs
    assert len(configs) == 4 and sorted(calls) == sorted(c.run_id for c in configs)  # once each (was 1 + 2 per call)
    pinned = sweep.model_copy(update={"steps": 3})  # an unvalidated copy gets its own spec, not the kept one
    assert {c.steps for c in pinned.to_spec().expand()} == {3}
    sweep.steps = 5  # validate_assignment validates the grid again
    assert {c.steps for c in sweep.to_spec().expand()} == {5}
