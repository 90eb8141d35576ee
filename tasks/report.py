"""Report task: figures + HTML/Markdown triage report of one calibration, published as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.states import Completed, State


@task(name="write-report")
def write_report(db: Path, out: Path, calibration_id: str | None = None) -> dict[str, Any]:
    """Write report.html, report.md and figures/ into `out`; artifacts: the whole report inline, figures
    included (readable in the UI wherever the files are), a link to the HTML, a figure list. Returns the paths, the answer lines, the
    routed runs and the summary Markdown (the pipeline's summary artifact)."""
    from dlm_triage import report

    logger = get_run_logger()
    logger.info("writing the triage report of %s into %s", calibration_id or "the latest calibration", out)
    paths = report.write_report(Path(db), Path(out), calibration_id=calibration_id)
    html = Path(paths.html).resolve()
    create_markdown_artifact(key="triage-report-text", markdown=report.inline_markdown(
        Path(paths.markdown).read_text(encoding="utf-8"), paths.figures),
        description=f"the triage report, figures included ({html})")
    # A file:// link opens from the UI when the UI runs where the report is (or on a shared file system);
    # with object storage, point this at the bucket's URL instead (deployments/README.md).
    create_link_artifact(key="triage-report", link=html.as_uri(), link_text=f"triage report ({html.name})",
                         description=f"HTML report of calibration {calibration_id or '(latest)'}")
    lines = ["# Triage report", "", f"- HTML: `{html}`", f"- Markdown: `{Path(paths.markdown).resolve()}`", ""]
    lines += [f"- figure `{name}`: `{p}`" for name, p in sorted(paths.figures.items())]
    lines += [f"- figure `{name}` not drawn: {why}" for name, why in sorted(paths.missing.items())]
    create_markdown_artifact(key="triage-report-files", markdown="\n".join(lines) + "\n",
                             description="files of the triage report")
    for name, why in sorted(paths.missing.items()):
        logger.warning("figure %s not drawn: %s", name, why)
    logger.info("report written: %s (%d figure(s))", html, len(paths.figures))
    return {"html": str(html), "markdown": str(paths.markdown),
            "figures": {k: str(v) for k, v in paths.figures.items()}, "missing": dict(paths.missing),
            "answers": [a.line for a in paths.answers], "routed": [dict(r) for r in paths.routed],
            "summary": paths.summary}


@task(name="routed", task_run_name="routed-{run_id}")
def mark_routed(run_id: str, why: str) -> State:
    """One task run per run routed to inspection, in state 'Routed' with the reason as its message: the
    pipeline run's task list shows which runs to look at, next to their training."""
    return Completed(name="Routed", message=why[:500], data=run_id)
