"""The `dlm-triage` verbs that call the core directly: ingest -> calibrate -> report -> queue -> thresholds ->
import, on real run directories and a real DuckDB file, through `cli.main.main` (the console script's
entry point). The Prefect verbs (run, sweep) are covered by tests/test_flows.py and tests/test_reliability.py."""

from __future__ import annotations

import json

import duckdb
import pytest

from cli.main import EMBEDDED_DEFAULT_SWEEP, build_parser, main
from dlm_triage.params import SweepParams
from tests.runfactory import make_sweep


@pytest.fixture()
def out(tmp_path):
    make_sweep(tmp_path / "runs", 40, steps=30, unstable_every=5)
    return tmp_path


def test_ingest_calibrate_report_queue_thresholds(out, capsys):
    db = out / "triage.duckdb"
    assert main(["--out", str(out), "ingest"]) == 0
    assert "40 added" in capsys.readouterr().out
    assert main(["--out", str(out), "ingest"]) == 0  # idempotent
    assert "0 added, 40 already present" in capsys.readouterr().out

    assert main(["--out", str(out), "calibrate", "--out", str(out / "cal"), "--resamples", "50",
                 "--stepk-resamples", "20"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "cal" / "latest" / "calibration.json").read_text())
    assert result["calibration_id"] in printed
    assert result["groups"]["tiny"]["n"] == 40
    # the answer, as the report leads with it; the warnings counted, not printed one by one
    n_warn = len(result["warnings"]) + len(result["groups"]["tiny"]["warnings"])
    assert "  tiny (n=40, " in printed and "no live threshold: " in printed and "baseline ceiling" in printed
    assert f"{n_warn} calibration warning(s) (" in printed and len(printed.splitlines()) == 3
    assert result["params"]["n_resamples"] == 50

    assert main(["--out", str(out), "report", "--out", str(out / "rep")]) == 0
    html = (out / "rep" / "latest" / "report.html").read_text()
    assert result["calibration_id"] in html
    printed = capsys.readouterr().out
    assert str(out / "rep" / result["calibration_id"] / "report.html") in printed
    assert printed.startswith("tiny (n=40, ") and "no live threshold: " in printed.splitlines()[0]

    # 4 unstable runs among 40: the split-bootstrap precision CI cannot clear the baseline ceiling, so the
    # calibration registers no live threshold and says why (registry, CLI)
    reg = result["groups"]["tiny"]["registry"]
    assert reg["status"] == "rejected" and reg["rejection_reasons"]
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("select count(*) from thresholds where accepted").fetchall() == [(0,)]
    finally:
        con.close()
    assert main(["--out", str(out), "queue", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # no threshold live, no run routed live

    assert main(["--out", str(out), "thresholds"]) == 0
    printed = capsys.readouterr().out
    assert "tiny" in printed and "rejected" in printed and "baseline ceiling" in printed


def test_import_cells_then_calibrate(tmp_path, capsys):
    rows = ["family,model_name,rank,rho,seed,lr,top1_fired,top1_fire_step,collapsed,max_grad_norm,final_loss"]
    for i in range(30):
        unstable = i % 6 == 0
        rows.append(f"llada,m,{'None' if i % 7 == 0 else 4 + i % 3},0.{3 + i % 6},{i},0.0001,True,{i % 11},False,"
                    f"{50.0 + i if unstable else 5.0 + i / 10},{3.0 + i / 100 if unstable else 1.0 + i / 100}")
    csv = tmp_path / "cells.csv"
    csv.write_text("\n".join(rows) + "\n")
    db = tmp_path / "x.duckdb"
    assert main(["import", "--format", "cells", str(csv), "--db", str(db)]) == 0
    assert "30 added" in capsys.readouterr().out
    assert main(["calibrate", "--db", str(db), "--out", str(tmp_path / "cal"), "--resamples", "50",
                 "--bonferroni-m", "6"]) == 0
    result = json.loads((tmp_path / "cal" / "latest" / "calibration.json").read_text())
    assert result["groups"]["llada"]["n"] == 30
    assert result["params"]["bonferroni_m"] == 6 and result["groups"]["llada"]["maxgrad"]["bonferroni_m"] == 6
    assert any("step-k" in w or "stepk" in w for w in result["warnings"] + result["groups"]["llada"]["warnings"])


def test_import_with_missing_columns_is_one_clear_error(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("family,rank\nllada,4\n")
    code = main(["import", "--format", "cells", str(csv), "--db", str(tmp_path / "x.duckdb")])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.csv" in captured.out and "missing" in captured.out


def test_embedded_default_is_big_enough_to_calibrate_and_has_an_lr_axis():
    params = SweepParams(**EMBEDDED_DEFAULT_SWEEP)
    configs = params.to_spec().expand()
    assert len(configs) >= 60
    assert len({c.learning_rate for c in configs}) >= 3
    assert {c.family for c in configs} == {"tiny", "tiny_gemma", "tiny_ar"}  # the miniature (test_miniature.py)


def test_run_help_names_the_default_size(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    n = len(SweepParams(**EMBEDDED_DEFAULT_SWEEP).to_spec().expand())
    assert f"{n} runs" in " ".join(capsys.readouterr().out.split())


# -- the parser: help, defaults, no abbreviations, 'did you mean' -----------------------------------------------

def _subparsers(parser):
    import argparse

    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_flag_has_help_and_says_its_default(capsys):
    parser = build_parser()
    for name, sp in {"dlm-triage": parser, **_subparsers(parser)}.items():
        for a in sp._actions:
            if not a.option_strings or a.dest == "help":
                continue
            assert a.help, f"{name} {a.option_strings[0]} has no help"
            shown = sp._get_formatter()._get_help_string(a)
            # a default is shown, or the help says what the absence means
            assert "default" in shown or a.required or a.default is False or a.dest == "version", \
                f"{name} {a.option_strings[0]}: no default in {shown!r}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "config keys" in text and "mask_ratio = 0.5" in text and "early_warning_step = 25" in text
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("dlm-triage ")


@pytest.mark.parametrize("argv, hint", [
    (["sweep", "--rank", "4"], "did you mean '--ranks'?"),  # no silent abbreviation of --ranks
    (["rn"], "did you mean 'run'?"),
    (["calibrate", "--group-by", "familly"], "did you mean 'family'?"),
])
def test_mistyped_flags_and_commands_are_errors_with_a_suggestion(argv, hint, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and hint in capsys.readouterr().err


def test_unknown_config_key_suggests_the_right_one(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "train", "--set", "rnak=4"]) == 2
    err = capsys.readouterr().err
    assert "'rnak' -> did you mean 'rank'?" in err and "Traceback" not in err
    (tmp_path / "spec.json").write_text('{"mask_ratioss": [0.3]}')
    assert main(["sweep", "--out", str(tmp_path), "--spec", str(tmp_path / "spec.json")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'mask_ratioss'; did you mean 'mask_ratios'?" in err and "SweepParams" not in err
    assert main(["sweep", "--out", str(tmp_path), "--mask-ratios", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "  - --mask-ratios: " in err and "1.5" in err  # the flag the user typed, not a model field path


def test_offline_hub_id_fails_fast_with_the_fix(tmp_path, monkeypatch, capsys):
    import time

    from dlm_triage.hub import ModelUnavailableError, check_model_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    assert main(["--out", str(tmp_path), "train", "--set", "family=llada",
                 "--set", "model_id=no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 10  # transformers' own retries take ~50 s
    assert "HF_HUB_OFFLINE=1" in err and "--model-id" in err and "no-such-org/no-such-model" in err
    check_model_available(str(tmp_path))  # a local directory is never looked up
    with pytest.raises(ModelUnavailableError):
        check_model_available("no-such-org/no-such-model")


# -- the queue on the terminal ----------------------------------------------------------------------------------

@pytest.fixture()
def queued(tmp_path):
    import polars as pl

    from dlm_triage import store
    from dlm_triage.config import RunConfig
    from dlm_triage.schema import STEPLOG_FILENAME
    from tests.runfactory import make_run

    root = tmp_path / "runs"
    wild = make_run(root, RunConfig(steps=30, seed=2), unstable=True)
    calm = make_run(root, RunConfig(steps=30, seed=1))
    short = make_run(root, RunConfig(steps=10, seed=6))
    store.ingest_runs(tmp_path / "triage.duckdb", root)
    g = {d.name: pl.read_parquet(d / STEPLOG_FILENAME)["grad_norm"].max() for d in (wild, calm, short)}
    thr = 0.5 * (g[wild.name] + max(g[calm.name], g[short.name]))
    reg = {"monitor": "max_grad_norm", "k": 25, "threshold": thr, "n": 3, "n_unstable": 1, "accepted": True}
    con = store.connect(tmp_path / "triage.duckdb")
    store.save_calibration(con, {"group_by": "family", "groups": {"tiny": {"n": 3, "registry": reg}}})
    con.close()
    return tmp_path, wild.name, short.name


def test_queue_is_sorted_by_severity_fitted_to_the_terminal_with_outcome(queued, monkeypatch, capsys):
    out, wild, short = queued
    monkeypatch.setenv("COLUMNS", "70")
    assert main(["--out", str(out), "queue"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["outcome", "run_id"]
    table = lines[1:3]
    assert table[0].startswith("above threshold") and wild[:20] in table[0]
    assert table[1].startswith("ended before k") and short[:20] in table[1]
    assert all(len(x) <= 70 for x in lines[:3])
    assert any("not shown at this width" in x for x in lines)
    assert "ended at step 10 before k=25" in " ".join(" ".join(lines).split())  # the reasons, wrapped to fit


def test_queue_into_a_closed_pipe_has_no_traceback(queued):
    import os
    import subprocess
    import sys

    out, _, _ = queued
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(f"'{sys.executable}' -m cli --out '{out}' queue | head -1", shell=True,
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.stdout.startswith("outcome") and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


# -- the end of `dlm-triage run` --------------------------------------------------------------------------------

def test_end_of_run_summary_gives_the_per_group_answer_and_the_next_commands(tmp_path):
    from datetime import datetime

    from dlm_triage import store
    from dlm_triage.calibrate import calibrate
    from cli.main import run_summary
    from dlm_triage.synthetic import paper_corpus, synthetic_inputs

    accepted = calibrate(paper_corpus(n_steps=30), ks=(25,), n_resamples=200, stepk_resamples=20)
    reg = accepted["groups"]["llada"]["registry"]
    rec = store.ThresholdRecord("llada", "family", "max_grad_norm", 25, reg["threshold"], None, None, 671,
                                accepted["calibration_id"], datetime.now())
    runs = [{"status": "completed"}] * 3 + [{"status": "diverged"}, {"status": "failed"}]
    text = "\n".join(run_summary(accepted, live={"llada": (rec, "")}, routed={"llada": 7}, runs=runs,
                                 report_html="/r/report.html", out_flag=" --out /tmp/x"))
    assert text.startswith("5 runs: 3 completed, 1 diverged, 0 stopped early, 1 failed")
    line = next(x for x in text.splitlines() if x.startswith("  llada"))
    assert f"live threshold max-grad-up-to-25 >= {reg['threshold']:.4g}" in line and "7 run(s) routed" in line
    assert (f"precision {reg['precision']:.3g} [{reg['precision_ci_low']:.3g}, {reg['precision_ci_high']:.3g}] "
            f"vs baseline ceiling {reg['baseline_ceiling']:.3g}") in line
    assert "dlm-triage --out /tmp/x queue" in text and "dlm-triage --out /tmp/x thresholds" in text
    assert "{" not in text  # numbers rounded, no dict or record repr
    # a rejected group says why, and that the earlier live threshold stays in force
    rejected = calibrate(synthetic_inputs({"llada": 40}, n_steps=30, seed=1), ks=(25,), n_resamples=50,
                         stepk_resamples=10)
    assert rejected["groups"]["llada"]["registry"]["status"] == "rejected"
    line = next(x for x in run_summary(rejected, live={"llada": (rec, "")}, routed={}, runs=runs,
                                       report_html="r.html") if x.startswith("  llada"))
    assert "this calibration registered none (" in line and f"of {rec.calibration_id} stays live" in line
    line = next(x for x in run_summary(rejected, live={"llada": (None, "")}, routed={}, runs=runs,
                                       report_html="r.html") if x.startswith("  llada"))
    assert "no live threshold: " in line and "baseline ceiling" in line and "0 run(s) routed" in line


def test_console_routes_logs_above_the_bar_quiets_state_lines_and_repeats(capsys):
    import logging
    import sys

    from tqdm import tqdm

    from dlm_triage.console import route_console_logging

    root = logging.getLogger()
    h = logging.StreamHandler(sys.stderr)
    # only this handler on the root: a console handler Prefect configured during an earlier test holds that
    # test's (closed) capture stream, and logging would print its write errors into this one
    saved, root.handlers = root.handlers[:], [h]
    try:
        assert h in route_console_logging() and h in route_console_logging()  # idempotent
        with tqdm(total=3, desc="training", file=sys.stderr) as bar:
            bar.update(1)
            task = logging.getLogger("prefect.task_runs")
            for _ in range(3):
                task.warning("no threshold registered for family tiny; early warning off")
            task.info("Finished in state Completed()")  # a state line: the UI keeps it, the console does not
            task.info("tiny-lora-r4-m0.3-lr0.01-s1-abc: step 7/30")  # the bar shows progress
            task.error("Finished in state Failed('boom')")
            task.error("Finished in state Failed('boom')")  # errors are never folded
    finally:
        root.handlers = saved
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and not x.startswith("training")]
    assert lines == ["no threshold registered for family tiny; early warning off",
                     "Finished in state Failed('boom')", "Finished in state Failed('boom')"]
    # each log line stands on its own line, never glued to the bar's
    assert all("training" not in x for x in lines)


def test_progress_without_a_terminal_is_plain_lines_that_logs_never_share(tmp_path, capsys, monkeypatch):
    """Output to a file (capsys: not a tty): no bar redraws, one 'training: i/n runs' line per change shown,
    a log line between them stands alone, and the last count is printed when the watcher stops."""
    import logging
    import sys
    import time

    from cli import training
    from dlm_triage.console import route_console_logging

    monkeypatch.setattr(training, "PLAIN_PROGRESS_EVERY_S", 0.0)
    ids = ["r1", "r2", "r3"]
    root = logging.getLogger()
    h = logging.StreamHandler(sys.stderr)
    saved, root.handlers = root.handlers[:], [h]
    try:
        route_console_logging()
        stop, t = training._progress_watcher(tmp_path, ids, "training")
        for rid in ids[:2]:
            (tmp_path / rid).mkdir()
            (tmp_path / rid / "manifest.json").write_text("{}")
            time.sleep(1.3)  # the watcher polls every second
        logging.getLogger("prefect.task_runs").warning("a log line")
        (tmp_path / ids[2]).mkdir()
        (tmp_path / ids[2] / "manifest.json").write_text("{}")
        stop.set()
        t.join(timeout=10)
    finally:
        root.handlers = saved
    err = capsys.readouterr().err
    assert "\r" not in err
    counts = [x for x in err.splitlines() if x.startswith("training: ")]
    assert counts[0] == "training: 1/3 runs" and counts[-1] == "training: 3/3 runs"
    assert counts == sorted(set(counts)), counts  # each count once, in order
    assert "a log line" in err.splitlines()
