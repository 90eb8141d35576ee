"""The `dlm-triage` verbs that call the core directly: ingest -> calibrate -> report -> queue -> thresholds ->
import, on real run directories and a real DuckDB file, through `dlm_triage.cli.main` (the console script's
entry point). The Prefect verbs (run, sweep) are covered by tests/test_flows.py and tests/test_reliability.py."""

from __future__ import annotations

import json

import duckdb
import pytest

from dlm_triage.cli import EMBEDDED_DEFAULT_SWEEP, build_parser, main
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
    assert result["params"]["n_resamples"] == 50

    assert main(["--out", str(out), "report", "--out", str(out / "rep")]) == 0
    html = (out / "rep" / "latest" / "report.html").read_text()
    assert result["calibration_id"] in html
    assert str(out / "rep" / result["calibration_id"] / "report.html") in capsys.readouterr().out

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
    assert {c.family for c in configs} == {"tiny"}


def test_run_help_names_the_default_size(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    n = len(SweepParams(**EMBEDDED_DEFAULT_SWEEP).to_spec().expand())
    assert f"{n} runs" in " ".join(capsys.readouterr().out.split())
