"""The calibration report: files, sections, five embedded PNGs, no external resources, verdicts that follow
the data, and degenerate inputs (one group, no unstable runs, no step logs) that still render."""

from __future__ import annotations

import base64
import dataclasses
import html
import html.parser
import json
import re
import struct
import warnings
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from dlm_triage import calibrate, report, store, synthetic
from dlm_triage.report import ReportError, summary_markdown, threshold_table, verdicts, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("id='answer'", "id='warnings'", "id='verdicts'", "id='definitions'", "id='thresholds'", "id='inspection'", "id='figures'",
            "id='provenance'")


# ------------------------------------------------------------------------------------------------------------
# the real thing: a synthetic corpus, calibrated, stored in a dlm-triage database
CAL_PARAMS = dict(n_resamples=300, stepk_resamples=100, ks=(5, 10, 11, 25, 50, 100))


def _store_inputs(con, inputs) -> None:
    """Runs and step logs of a synthetic corpus into `runs`/`steps` (as ingestion would leave them)."""
    table_cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                            "WHERE table_name = 'runs' ORDER BY ordinal_position").fetchall()]
    runs = inputs.runs.with_columns(
        pl.lit("synthetic").alias("source"), pl.col("run_id").alias("content_sha256"),
        pl.lit(datetime(2026, 1, 1)).alias("ingested_at"), pl.lit("ingest-test").alias("ingest_id"),
        (pl.col("run_id").str.ends_with("0")).alias("routed_for_inspection"))  # a few flagged live
    runs_df = runs.select([c for c in table_cols if c in runs.columns])  # noqa: F841 (read by DuckDB)
    con.execute("INSERT INTO runs BY NAME SELECT * FROM runs_df")
    tr = inputs.traj
    if tr is None:
        return
    loss, grad, top1 = tr.dense()
    n, t = grad.shape
    steps_df = pl.DataFrame({  # noqa: F841
        "run_id": np.repeat(np.asarray(tr.run_ids), t), "step": np.tile(np.arange(t, dtype=np.int32), n),
        "loss": loss.ravel(), "grad_norm": grad.ravel(),
        "max_grad_norm": np.fmax.accumulate(grad, axis=1).ravel(), "top1_freq": top1.ravel(),
    }, nan_to_null=True).filter(pl.col("loss").is_not_null() | pl.col("grad_norm").is_not_null())
    con.execute("INSERT INTO steps BY NAME SELECT * FROM steps_df")


def _make_db(path: Path, families: dict[str, int], *, with_traj: bool = True, n_steps: int = 101,
             constant_loss: bool = False) -> Path:
    inputs = synthetic.synthetic_inputs(families, n_steps=n_steps, seed=0, with_traj=with_traj)
    if constant_loss:  # every run ties: no run is below the median, so there is nothing stable to contrast
        inputs = dataclasses.replace(inputs, runs=inputs.runs.with_columns(pl.lit(1.5).alias("final_loss"),
                                                                           pl.lit(False).alias("diverged"),
                                                                           pl.lit("completed").alias("status")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate corpora warn by design; the report shows the warnings
        result = calibrate.calibrate(inputs, **CAL_PARAMS)
    con = store.connect(path)
    try:
        _store_inputs(con, inputs)
        store.save_calibration(con, result)
    finally:
        con.close()
    return path


# ------------------------------------------------------------------------------------------------------------
def _png_size(blob: bytes) -> tuple[int, int]:
    assert blob[:8] == PNG_MAGIC
    return struct.unpack(">II", blob[16:24])


def _embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    db = _make_db(tmp / "t.duckdb", {"llada": 300, "dream": 60, "mdlm": 60})
    return db, write_report(db, tmp / "out")


def test_files_sections_and_figures(full_report):
    _db, paths = full_report
    assert paths.html.is_file() and paths.markdown.is_file()
    assert set(paths.figures) == {name for name, _ in report.FIGURES} and not paths.missing
    text = paths.html.read_text()
    for sec in SECTIONS:
        assert sec in text, sec
    for rec in ("Drop top-1 warning", "Use max-grad triage", "Keep loss baseline", "No global cutoff"):
        assert rec in text
    pngs = _embedded_pngs(text)
    assert len(pngs) == 5
    for blob, path in zip(pngs, paths.figures.values()):
        w, h = _png_size(blob)
        assert 300 <= w <= 3000 and 200 <= h <= 3000, (path, w, h)
        assert len(blob) > 5_000
        assert path.read_bytes() == blob  # the same figure on disk and embedded
    md = paths.markdown.read_text()
    for name in paths.figures:
        assert f"](figures/{name}.png)" in md
    assert "## Verdicts" in md and "## Runs routed to inspection" in md
    # the definitions the numbers rest on are stated: label rule, its percentile interpolation, Bonferroni m
    assert "## Definitions used" in md and "Hyndman-Fan type 7" in text and "final_loss &lt;= P50" in text
    assert "Bonferroni m" in md and "groups tested" in md and "step &gt;= 11" in text
    assert "### Gradient concentration" in md and "| llada | matrix |" in md and "last 10 steps" in md


def test_self_contained_no_external_urls(full_report):
    text = full_report[1].html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert "<link" not in text and "<script" not in text
    assert "url(" not in text  # no CSS-loaded resources


def test_inspection_queue_lists_routed_runs_with_reasons(full_report):
    db, paths = full_report
    text = paths.html.read_text()
    con = store.connect(db, read_only=True)
    try:
        cal_id = con.execute("SELECT calibration_id FROM calibrations").fetchall()[0][0]
        queue = store.inspection_queue(con, calibration_id=cal_id)
    finally:
        con.close()
    assert queue.height > 0
    assert f"Runs routed to inspection ({queue.height})" in text
    for run_id in queue["run_id"].to_list():
        assert f"<td>{run_id}</td>" in text
    assert "routed live during training" in text  # routed_for_inspection set by the live early warning
    assert "max-grad-up-to-25" in text and "outcome:" in text


class _Outline(html.parser.HTMLParser):
    """The report's elements in document order: (tag, attrs, text) of each answer line, warning box and
    verdict table, enough to check what a reader sees first."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[tuple[str, dict, str]] = []
        self._li: dict | None = None
        self._text: list[str] = []
        self._in_answers = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "ul" and a.get("class") == "answers":
            self._in_answers = True
        elif tag == "li" and self._in_answers:
            self._li, self._text = a, []
        elif a.get("id") == "warnings" or (tag == "table" and a.get("class") == "verdicts") or tag == "h2":
            self.order.append((tag, a, ""))

    def handle_endtag(self, tag):
        if tag == "li" and self._li is not None:
            self.order.append(("answer", self._li, "".join(self._text)))
            self._li = None
        elif tag == "ul":
            self._in_answers = False

    def handle_data(self, data):
        if self._li is not None:
            self._text.append(data)


def test_first_section_is_one_verdict_line_per_group_before_any_warning(full_report):
    db, paths = full_report
    outline = _Outline()
    outline.feed(paths.html.read_text())
    con = store.connect(db, read_only=True)
    try:
        res = json.loads(con.execute("SELECT result_json FROM calibrations").fetchall()[0][0])
        queue = store.inspection_queue(con, calibration_id=res["calibration_id"])
    finally:
        con.close()
    kinds = [k for k, _a, _t in outline.order]
    first_warning = next(i for i, (k, a, _t) in enumerate(outline.order) if a.get("id") == "warnings")
    answers = [(i, t) for i, (k, _a, t) in enumerate(outline.order) if k == "answer"]
    assert kinds[0] == "h2" and [t for _i, t in answers] and kinds.index("answer") == 1  # the first section
    assert len(answers) == len(res["groups"]) and all(i < first_warning for i, _t in answers)
    assert first_warning < kinds.index("table")  # the verdict table comes after the collapsed warnings
    # the warnings are there but folded (a <details> that is not open), every one of them counted
    tag, attrs, _ = outline.order[first_warning]
    assert tag == "details" and "open" not in attrs
    n_warn = len(res.get("warnings") or []) + sum(len(g.get("warnings") or []) for g in res["groups"].values())
    assert f"{n_warn} calibration warning(s)" in paths.html.read_text()
    routed = dict(queue.group_by("family").len().iter_rows())
    for (_i, line), (name, g) in zip(answers, res["groups"].items()):
        reg = g["registry"]
        assert line.startswith(f"{name} (n={g['n']}, {g['n_unstable']} unstable): ")
        assert f"{routed.get(name, 0)} run(s) routed to inspection" in line
        assert (f"precision {reg['precision']:.3g} [{reg['precision_ci_low']:.3g}, {reg['precision_ci_high']:.3g}]"
                f" vs baseline ceiling {reg['baseline_ceiling']:.3g}") in line
        if reg["status"] == "accepted":  # the latest calibration: its accepted thresholds are the live ones
            assert f"live threshold max-grad-up-to-{reg['k']} >= {reg['threshold']:.4g}" in line
        else:
            # the first reason in full (the rule named once), the others counted
            assert f"no live threshold: {reg['rejection_reasons'][0]}" in line
            n_more = len(reg["rejection_reasons"]) - 1
            assert (f"(+{n_more} more reason(s))" in line) == (n_more > 0)
    statuses = {g["registry"]["status"] for g in res["groups"].values()}
    assert statuses == {"accepted", "rejected"}, statuses  # the corpus exercises both kinds of line
    md = paths.markdown.read_text()
    assert md.index("## Answer, per group") < md.index("calibration warning(s)") < md.index("## Verdicts")


def test_verdicts_follow_the_data(tmp_path):
    # llada separates (paper 4.2); mdlm's max-grad is sign-flipped in the synthetic corpus: it does not
    sep = write_report(_make_db(tmp_path / "a.duckdb", {"llada": 300}), tmp_path / "a")
    non = write_report(_make_db(tmp_path / "b.duckdb", {"mdlm": 200}), tmp_path / "b")
    sep_row = _verdict_row(sep.html.read_text(), "Use max-grad triage")
    non_row = _verdict_row(non.html.read_text(), "Use max-grad triage")
    assert "<td>supported</td>" in sep_row
    assert "<td>not supported on this data</td>" in non_row
    assert "The lower CI bound does not exceed the baseline ceiling in mdlm" in non_row


def _maxgrad_result(lo: float, base_median: float, base_ceiling: float) -> dict:
    sb = {"precision_ci_low": lo, "precision_ci_high": 0.947, "precision_median": 0.68,
          "baseline_precision_median": base_median, "baseline_precision_ci_high": base_ceiling}
    return {"groups": {"llada": {"n": 671, "n_unstable": 68, "split_bootstrap": sb,
                                 "heldout": {"precision": 0.68, "recall": 0.94, "f1": 0.79},
                                 "maxgrad": {"median_ratio": 3.2, "mw_p_bonferroni": 1e-6, "bonferroni_m": 6}}}}


def test_maxgrad_verdict_needs_the_lower_bound_above_the_baseline_ceiling():
    # paper 4.1: CI [0.500, 0.947] "disjoint from the always-positive baseline ceiling 0.148" -> supported
    v = verdicts(_maxgrad_result(0.500, 0.10, 0.148))[1]
    assert v.recommendation == "Use max-grad triage" and v.verdict == "supported"
    assert "baseline ceiling 0.148" in v.evidence[0] and "m=6" in v.evidence[0]
    # above the baseline's median but not its ceiling: not supported (a median rule would have said supported)
    v = verdicts(_maxgrad_result(0.14, 0.10, 0.148))[1]
    assert v.verdict == "not supported on this data"
    # exactly at the ceiling: "exceed" is strict
    assert verdicts(_maxgrad_result(0.148, 0.10, 0.148))[1].verdict == "not supported on this data"
    # no ceiling recorded: not evaluable, never a fallback to the median
    res = _maxgrad_result(0.5, 0.10, 0.148)
    del res["groups"]["llada"]["split_bootstrap"]["baseline_precision_ci_high"]
    assert verdicts(res)[1].verdict == "not evaluable"
    row = threshold_table(_maxgrad_result(0.14, 0.10, 0.148))[0]
    assert row["baseline_ceiling"] == 0.148 and row["triage"] == "not supported on this data"
    assert row["bonferroni_m"] == 6


def _verdict_row(text: str, recommendation: str) -> str:
    m = re.search(rf"<tr[^>]*><td>{re.escape(recommendation)}</td>.*?</tr>", text, re.S)
    assert m, recommendation
    return m.group(0)


DEGENERATE = {
    "one_group": ({"llada": 60}, {}),
    "no_stable_runs": ({"llada": 60, "dream": 40}, {"constant_loss": True}),
    "no_step_logs": ({"llada": 60, "dream": 40}, {"with_traj": False}),  # like an imported 'cells' CSV
    "tiny_group": ({"llada": 60, "dream": 4}, {}),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_inputs_render(tmp_path, case):
    families, kw = DEGENERATE[case]
    paths = write_report(_make_db(tmp_path / "d.duckdb", families, **kw), tmp_path / "out")
    text = paths.html.read_text()
    for sec in SECTIONS:
        assert sec in text
    assert len(_embedded_pngs(text)) == len(paths.figures)
    for name, why in paths.missing.items():
        assert "Figure missing" in text and html.escape(why) in text, name
    if case == "no_step_logs":
        assert {"stepk_precision", "top1_trajectories"} <= set(paths.missing)
        assert "step logs" in paths.missing["top1_trajectories"]
    if case == "one_group":
        assert "not evaluable" in _verdict_row(text, "No global cutoff")
    if case == "no_stable_runs":
        assert "no stable runs" in text.lower()


def test_summary_markdown_and_threshold_table(full_report):
    db, _ = full_report
    con = duckdb.connect(str(db), read_only=True)
    res = json.loads(con.execute("SELECT result_json FROM calibrations").fetchall()[0][0])
    con.close()
    md = summary_markdown(res)
    assert "| Recommendation |" in md and "Use max-grad triage" in md
    rows = threshold_table(res)
    assert {r["group"] for r in rows} == set(res["groups"])
    json.dumps(rows)  # plain JSON types for a Prefect table artifact
    assert [v.recommendation for v in verdicts(res)] == ["Drop top-1 warning", "Use max-grad triage",
                                                          "Keep loss baseline", "No global cutoff"]


def test_unknown_calibration_id_names_the_fix(full_report, tmp_path):
    db, _ = full_report
    with pytest.raises(ReportError, match="not found"):
        write_report(db, tmp_path / "x", calibration_id="nope")


def test_latest_calibration_by_default_and_snapshot_drift_noted(tmp_path):
    db = _make_db(tmp_path / "t.duckdb", {"llada": 120, "dream": 40})
    con = store.connect(db)
    try:
        first = con.execute("SELECT calibration_id FROM calibrations").fetchall()[0][0]
        inputs = store.load_calibration_inputs(con, where="family = 'llada'")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            second = store.save_calibration(con, calibrate.calibrate(inputs, **CAL_PARAMS))
        # a run ingested after both calibrations
        con.execute("INSERT INTO runs SELECT * REPLACE (run_id || '-late' AS run_id, "
                    "content_sha256 || '-late' AS content_sha256) FROM runs WHERE family = 'llada' LIMIT 1")
    finally:
        con.close()
    latest = write_report(db, tmp_path / "latest").html.read_text()
    assert second in latest and first not in latest
    older = write_report(db, tmp_path / "older", calibration_id=first).html.read_text()
    assert first in older
    assert "runs were added or removed since" in older


def test_calibration_without_groups_renders_every_figure_missing(tmp_path):
    db = _make_db(tmp_path / "t.duckdb", {"llada": 40})
    con = store.connect(db)
    try:
        store.save_calibration(con, {"calibration_id": "cal-empty", "groups": {}, "group_by": "family",
                                     "transfer": {}, "warnings": ["no run had a finite final loss"]})
    finally:
        con.close()
    paths = write_report(db, tmp_path / "out", calibration_id="cal-empty")
    text = paths.html.read_text()
    assert not paths.figures and set(paths.missing) == {name for name, _ in report.FIGURES}
    assert text.count("Figure missing") == 5 and "no run had a finite final loss" in text
    assert "Runs routed to inspection (0)" in text
    assert all(v.verdict == "not evaluable" for v in verdicts({"groups": {}}))


def test_verdict_table_and_registry_judge_one_rule():
    """The per-group row and the max-grad verdict read the registered rule (threshold at k=25, its own held-out
    metrics and split-bootstrap CI), the very numbers the registry accepted or rejected."""
    from dlm_triage.calibrate import calibrate
    from dlm_triage.synthetic import paper_corpus, synthetic_inputs

    for inp, status in ((paper_corpus(n_steps=30), "accepted"), (synthetic_inputs({"llada": 40}, n_steps=30, seed=1),
                                                                  "rejected")):
        res = calibrate(inp, ks=(25,), n_resamples=200, stepk_resamples=20)
        reg = res["groups"]["llada"]["registry"]
        assert reg["status"] == status
        row = threshold_table(res)[0]
        assert (row["threshold"], row["k"], row["precision"], row["recall"], row["f1"]) == (
            reg["threshold"], 25, reg["precision"], reg["recall"], reg["f1"])
        assert (row["precision_ci_low"], row["baseline_ceiling"], row["live"]) == (
            reg["precision_ci_low"], reg["baseline_ceiling"], status)
        v = next(v for v in verdicts(res) if v.recommendation == "Use max-grad triage")
        assert "max-grad-up-to-25" in v.evidence[0]
        assert (v.verdict == "supported") == (status == "accepted") == (row["triage"] == "supported")


def test_max_grad_figure_has_a_column_per_group_and_learning_rate():
    runs = pl.DataFrame({"group": ["a"] * 4 + ["b"] * 8,
                         "learning_rate": [1e-3, 1e-3, 1e-2, 1e-2] + [10.0 ** -i for i in range(1, 9)]})
    notes: list[str] = []
    cols = report._maxgrad_columns(runs, ["a", "b"], notes)
    assert cols == [("a", 1e-3), ("a", 1e-2), ("b", "all")]  # b has more rates than MAX_LR_FACETS: pooled
    assert notes == ["Max-grad figure: b has 8 learning rates; drawn pooled."]
    assert report.MAX_LR_FACETS < 8


def test_a_diverged_runs_infinite_monitor_leaves_the_figures_with_a_note():
    from dlm_triage.report.figkit import _drop_infinite_monitor

    runs = pl.DataFrame({"run_id": ["a", "b", "c"], "monitor": [1.5, float("inf"), 0.7]})
    notes: list[str] = []
    kept = _drop_infinite_monitor(runs, notes, "Max-grad figure")
    assert kept["run_id"].to_list() == ["a", "c"]
    assert len(notes) == 1 and notes[0].startswith("Max-grad figure: 1 diverged run(s)")
    assert _drop_infinite_monitor(kept, notes, "Heatmap").height == 2 and len(notes) == 1  # nothing to say


def test_templates_ship_as_package_data():
    """A non-editable install carries the report's templates: every file in dlm_triage/report/templates matches
    pyproject's package-data for dlm_triage.report, and the three the renderer loads are there."""
    import fnmatch
    import tomllib

    cfg = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["dlm_triage.report"]
    files = sorted(p.name for p in (Path(report.__file__).parent / "templates").iterdir())
    assert {"report.html", "report.md", "report.css"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatch(f"templates/{f}", p) for p in patterns)] == []
