"""Per-configuration tables as the paper and other people publish them: json-rows, columns mapped or derived at
import, tables without final loss, reference-jsonl mask ratio, family spelling, and what `collapsed` means."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from runfactory import db_rows as rows

from dlm_triage import importers, report, store
from dlm_triage.calibrate import calibrate, run_calibration

KEYS = ("family", "model_name", "rank", "rho", "seed", "lr", "top1_fired", "top1_fire_step", "collapsed",
        "max_grad_norm", "final_loss")


def _records(n: int = 30, **over) -> list[dict]:
    out = []
    for i in range(n):
        unstable = i % 10 == 0
        rec = {"family": "LLaDA", "model_name": "inclusionAI/LLaDA2.0-mini", "rank": (4, 16, 64)[i % 3],
               "rho": 0.4, "seed": i, "lr": 1e-4, "top1_fired": True, "top1_fire_step": 11, "collapsed": False,
               "max_grad_norm": 50.0 + i if unstable else 5.0 + i / 10, "final_loss": 2.0 + i / 100 if unstable
               else 1.0 + i / 100}
        rec.update(over)
        out.append(rec)
    return out


def test_json_rows_array_or_object_holding_one(tmp_path):
    db = tmp_path / "t.duckdb"
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_records(3)))
    b.write_text(json.dumps({"meta": {"paper": "x"}, "configurations": _records(3, model_name="other")}))
    r = importers.import_logs(db, "json-rows", [a, b])
    assert (r.added, r.quarantined) == (6, ())
    got = rows(db, "SELECT family, model_id, rank, mask_ratio, source FROM runs ORDER BY model_id, rank")
    assert {g[0] for g in got} == {"llada"}  # one canonical spelling for 'LLaDA'
    assert {g[1] for g in got} == {"inclusionAI/LLaDA2.0-mini", "other"} and {g[4] for g in got} == {"import:json-rows"}
    # two lists: say which, and how to name one
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"x": _records(1), "y": _records(1)}))
    reason = importers.import_logs(db, "json-rows", [c]).quarantined[0][1]
    assert "holds 2 lists" in reason and "rows_key=" in reason
    assert importers.import_logs(db, "json-rows", [c], rows_key="y").added == 0  # already present: same content
    # a bad record is named by its number
    d = tmp_path / "d.json"
    bad = _records(3)
    del bad[1]["rank"]
    bad[2]["rho"] = 1.5
    d.write_text(json.dumps(bad))
    reason = importers.import_logs(db, "json-rows", [d]).quarantined[0][1]
    assert "record 2: missing key(s) ['rank']" in reason and "record 3: rho=1.5 is out of range" in reason


def test_the_same_configuration_from_csv_and_json_is_one_run(tmp_path):
    db = tmp_path / "t.duckdb"
    recs = _records(4)
    csv = tmp_path / "t.csv"
    csv.write_text(",".join(KEYS) + "\n" + "\n".join(",".join(str(r[k]) for k in KEYS) for r in recs) + "\n")
    js = tmp_path / "t.json"
    js.write_text(json.dumps(recs))
    assert importers.import_logs(db, "cells", [csv]).added == 4
    assert importers.import_logs(db, "json-rows", [js]).added == 0


def test_rank_and_cohort_derived_from_a_run_path(tmp_path):
    db = tmp_path / "t.duckdb"
    recs = _records(6, rank=None)
    for i, r in enumerate(recs):
        r["run_path"] = f"runs/{('crit12', 'full')[i % 2]}/llada2-mini_r{(4, 64)[i % 2]}_m0.4_s{i}"
        r["loss_at_200"] = r.pop("final_loss")
    f = tmp_path / "paper.json"
    f.write_text(json.dumps(recs))
    r = importers.import_logs(db, "json-rows", [f], map="final_loss=loss_at_200",
                              derive=r"rank=run_path:_r(\d+)_;cohort=run_path:^runs/([^/]+)/")
    assert (r.added, r.quarantined) == (6, ())
    got = rows(db, "SELECT cohort, rank, final_loss, manifest_json FROM runs ORDER BY seed")
    assert [(g[0], g[1]) for g in got] == [("crit12", 4), ("full", 64)] * 3
    assert [g[2] for g in got] == [rec["loss_at_200"] for rec in recs]
    assert json.loads(got[0][3])["column_rules"]["derive"].startswith("rank=run_path")  # the mapping is kept
    # the same rules on a CSV
    csv = tmp_path / "p.csv"
    cols = [k for k in KEYS if k not in ("rank", "final_loss")] + ["run_path", "loss_at_200"]
    csv.write_text(",".join(cols) + "\n" + "\n".join(",".join(str(rec[k]) for k in cols) for rec in recs) + "\n")
    assert importers.import_logs(tmp_path / "u.duckdb", "cells", [csv], map="final_loss=loss_at_200",
                                 derive=r"rank=run_path:_r(\d+)_").added == 6
    # a pattern that does not match, an unknown target or source: clear errors naming them
    reason = importers.import_logs(db, "json-rows", [f], map="final_loss=loss_at_200",
                                   derive=r"rank=run_path:_rank(\d+)").quarantined[0][1]
    assert "does not match" in reason and "_rank" in reason
    with pytest.raises(importers.LogFormatError, match="not columns this format reads"):
        importers.parse_json_rows(f, derive="lora_rank=run_path:(\\d+)")
    reason = importers.import_logs(db, "json-rows", [f], map="final_loss=nope").quarantined[0][1]
    assert "no column 'nope'" in reason


def test_a_table_without_final_loss_imports_and_calibration_says_what_it_skipped(tmp_path):
    db = tmp_path / "t.duckdb"
    recs = _records(30)
    for r in recs[:8]:
        del r["final_loss"]  # part of the table lacks it
    f = tmp_path / "t.json"
    f.write_text(json.dumps(recs))
    assert importers.import_logs(db, "json-rows", [f]).added == 30
    assert rows(db, "SELECT count(*) FROM runs WHERE final_loss IS NULL")[0][0] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_calibration(db, tmp_path / "cal", n_resamples=30, stepk_resamples=10).result.to_json()
    g = res["groups"]["llada"]
    assert g["n"] == 22 and g["n_excluded"] == 8
    assert g["top1_all_runs"]["n"] == 30 and g["top1_all_runs"]["fire_rate"] == 1.0  # no label needed
    (sk,) = [s for s in res["skipped"] if s["group"] == "llada"]
    assert sk["runs"] == 8 and "final loss" in sk["why"] and "held-out threshold" in sk["analysis"]
    assert any(s["why"] == "no step logs" for s in res["skipped"])
    # a table with no final loss at all: imported, the top-1 audit runs, everything label-based is skipped
    db2 = tmp_path / "none.duckdb"
    g2 = tmp_path / "none.json"
    g2.write_text(json.dumps([{k: v for k, v in r.items() if k != "final_loss"} for r in _records(12)]))
    assert importers.import_logs(db2, "json-rows", [g2]).added == 12
    con = store.connect(db2, read_only=True)
    try:
        inputs = store.load_calibration_inputs(con)
    finally:
        con.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res2 = calibrate(inputs, n_resamples=20, stepk_resamples=10)
    grp = res2["groups"]["llada"]
    assert grp["n"] == 0 and grp["top1_all_runs"]["n_fired"] == 12 and grp["degenerate"]
    assert grp["skipped"][0]["runs"] == 12
    path = report.write_report(db, tmp_path / "rep").markdown
    assert "analyses skipped" in path.read_text() and "no final loss" in path.read_text()


def test_reference_jsonl_mask_ratio_reaches_the_runs_table(tmp_path):
    db = tmp_path / "t.duckdb"
    lines = [json.dumps({"step": i, "loss": 3 - 0.1 * i, "max_grad_norm": 1.0, "top1_token_freq": 0.9,
                         "mask_ratio": 0.95, "model_family": "LLaDA"}) for i in range(15)]
    f = tmp_path / "run.jsonl"
    f.write_text("\n".join(lines) + "\n")
    assert importers.import_logs(db, "reference-jsonl", [f]).added == 1
    assert rows(db, "SELECT family, mask_ratio, top1_fire_step FROM runs") == [("llada", 0.95, 11)]
    # varying realised ratios: their mean
    g = tmp_path / "vary.jsonl"
    g.write_text("\n".join(json.dumps({"step": i, "loss": 1.0, "max_grad_norm": 1.0, "top1_token_freq": None,
                                       "mask_ratio": (0.4, 0.6)[i % 2]}) for i in range(4)) + "\n")
    assert importers.import_logs(db, "reference-jsonl", [g], family="mdlm").added == 1
    assert rows(db, "SELECT mask_ratio FROM runs WHERE family = 'mdlm'") == [(pytest.approx(0.5),)]


def test_collapsed_column_read_as_detector_stops(tmp_path):
    db = tmp_path / "t.duckdb"
    recs = _records(20)
    for r in recs[:5]:
        r["collapsed"] = True  # this table's `collapsed` marks the legacy detector's early stops
    f = tmp_path / "t.json"
    f.write_text(json.dumps(recs))
    assert importers.import_logs(db, "json-rows", [f], collapsed_means="detector_stop").added == 20
    got = rows(db, "SELECT status, collapsed, top1_warning_detected FROM runs ORDER BY seed")
    assert got[:5] == [("stopped_by_legacy_detector", None, True)] * 5
    assert {g[0] for g in got[5:]} == {"completed"} and {g[1] for g in got} == {None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_calibration(db, tmp_path / "cal", n_resamples=30, stepk_resamples=10).result.to_json()
    assert res["groups"]["llada"]["top1"]["collapse_rate"] == 0.0  # a detector stop is never a collapse
    (definition,) = res["collapse_definitions"]
    assert "detector early stop" in definition and res["collapse_definitions"][definition] == 20
    md = report.write_report(db, tmp_path / "rep").markdown.read_text()
    assert "collapsed_means=detector_stop" in md
    # the default reads the column as the source's actual-collapse flag; an unknown meaning is refused
    db2 = tmp_path / "u.duckdb"
    assert importers.import_logs(db2, "json-rows", [f]).added == 20
    assert rows(db2, "SELECT count(*) FROM runs WHERE collapsed")[0][0] == 5
    reason = importers.import_logs(db2, "json-rows", [f], collapsed_means="maybe").quarantined[0][1]
    assert "collapsed_means='maybe' is not known" in reason
