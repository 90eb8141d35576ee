"""Connectivity task: the LoRA-Curve probe between two completed runs, into DuckDB, with a Prefect artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact


@task(name="connect-runs")
def connect_runs(run_a: str, run_b: str, db: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Linear and Bezier loss profiles between the two runs' adapters, stored in `db`; artifact: the barriers."""
    from dlm_triage import connect

    logger = get_run_logger()
    logger.info("connecting %s and %s (segments=%s, steps=%s)", run_a, run_b, options.get("segments"),
                options.get("steps"))
    result = connect.connect_and_store(run_a, run_b, Path(db), **options)
    lines = [f"# Connectivity {result.connect_id}", "", f"`{result.run_a}` (t=0) to `{result.run_b}` (t=1), "
             f"{result.family} {result.method} r={result.rank}, held-out loss at rho={result.mask_ratio:g}", "",
             "| path | loss t=0 | max loss | barrier |", "|---|---|---|---|"]
    lines += [f"| {p} | {a:.4g} | {m:.4g} | {b:.4g} |" for p, a, m, b in connect.summary_rows(result)]
    lines += [""] + [f"- {n}" for n in result.notes] + ([f"- figure: `{result.figure}`"] if result.figure else [])
    create_markdown_artifact(key="connectivity", markdown="\n".join(lines) + "\n",
                             description=f"LoRA-Curve barriers between {result.run_a} and {result.run_b}")
    for p, _, _, b in connect.summary_rows(result):
        logger.info("%s: barrier %.4g", p, b)
    return {"connect_id": result.connect_id, "barriers": dict(result.barriers), "figure": result.figure}
