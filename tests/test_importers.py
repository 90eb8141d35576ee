"""importers: the four bring-your-own-logs formats into real DuckDB files; errors name file and line;
a bad file never half-loads; re-import adds nothing. Property tests of the cells/jsonl parsers."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm_triage import importers
from dlm_triage.importers import CELLS_COLUMNS, LogFormatError
from runfactory import db_rows as rows

HEADER = ",".join(CELLS_COLUMNS)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "triage.duckdb"


def jsonl_lines(n: int = 15, **extra) -> list[str]:
    return [json.dumps({"step": i, "loss": 3.0 - 0.1 * i, "max_grad_norm": 1.0 + (i % 4) * 0.5,
                        "top1_token_freq": 0.3 + 0.03 * i, "mask_ratio": 0.5, **extra}) for i in range(n)]


# -- reference-jsonl ------------------------------------------------------------------------------------------

def test_reference_jsonl_imports_steps_and_summary(db: Path, tmp_path: Path) -> None:
    f = tmp_path / "run.jsonl"
    f.write_text("\n".join(jsonl_lines(15, rank=8, model_family="llada")) + "\n")
    r = importers.import_logs(db, "reference-jsonl", [f])
    assert (r.added, r.quarantined) == (1, ())
    run = rows(db, "SELECT run_id, source, source_path, family, rank, final_loss, max_grad_norm, top1_step0, "
                   "top1_warning_detected, top1_fire_step, top1_cross_050, top1_cross_080, n_steps, collapsed "
                   "FROM runs")[0]
    assert run[0].startswith("import-jsonl-") and run[1] == "import:reference-jsonl" and run[2] == str(f.resolve())
    assert run[3:5] == ("llada", 8)
    assert run[5] == pytest.approx(3.0 - 0.1 * 14) and run[6] == 2.5 and run[7] == pytest.approx(0.3)
    # top-1 = 0.3 + 0.03 t crosses 0.5 at step 7 (0.51), but the legacy detector first samples at step 11:
    # it fires there; 0.8 is never reached in 15 steps
    assert run[8:12] == (True, 11, 7, None)
    assert run[12] == 15 and run[13] is False
    steps = rows(db, "SELECT step, grad_norm, max_grad_norm, top1_freq, mask_ratio FROM steps ORDER BY step")
    grad = [1.0 + (i % 4) * 0.5 for i in range(15)]
    assert [s[1] for s in steps] == grad  # the logged value is the step norm
    assert [s[2] for s in steps] == list(np.maximum.accumulate(grad))  # running max recomputed
    assert importers.import_logs(db, "reference-jsonl", [f]).already_present == 1
    assert rows(db, "SELECT count(*) FROM runs") == [(1,)]


def test_reference_jsonl_bad_lines_name_file_and_line_and_never_half_load(db: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(jsonl_lines(5, model_family="tiny")))
    lines = jsonl_lines(8, model_family="tiny")
    lines[2] = '{"step": 2, "loss": '                                           # line 3: truncated JSON
    lines[4] = lines[4].replace('"loss": 2.6', '"loss": NaN')                   # line 5: NaN
    lines[5] = lines[5].replace('"max_grad_norm": 1.5', '"max_grad_norm": "big"')  # line 6: text
    lines[6] = json.dumps({"step": 6, "loss": 1.0})                              # line 7: missing keys
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines))
    r = importers.import_logs(db, "reference-jsonl", [bad, good])
    assert r.added == 1 and len(r.quarantined) == 1
    path, reason = r.quarantined[0]
    assert path == str(bad)
    assert f"{bad}:3: not valid JSON" in reason
    assert f"{bad}:5: loss=nan is NaN/Inf" in reason
    assert f"{bad}:6: max_grad_norm='big' is not numeric" in reason
    assert f"{bad}:7: missing key(s) ['max_grad_norm', 'top1_token_freq', 'mask_ratio']" in reason
    assert rows(db, "SELECT count(*) FROM steps") == [(5,)]  # only the good file's steps
    assert rows(db, "SELECT path FROM quarantine") == [(str(bad),)]
    with pytest.raises(LogFormatError) as ei:
        importers.import_logs(db, "reference-jsonl", [bad], strict=True)
    assert [p[0] for p in ei.value.problems] == [3, 5, 6, 7]


def test_reference_jsonl_needs_a_family_and_consistent_constants(db: Path, tmp_path: Path) -> None:
    f = tmp_path / "nofam.jsonl"
    f.write_text("\n".join(jsonl_lines(3)))
    r = importers.import_logs(db, "reference-jsonl", [f])
    assert r.added == 0 and "no model family: pass family=" in r.quarantined[0][1]
    assert importers.import_logs(db, "reference-jsonl", [f], family="dream").added == 1
    g = tmp_path / "mixed.jsonl"
    g.write_text("\n".join(jsonl_lines(2, model_family="a") + jsonl_lines(3, model_family="b")[2:]))
    r = importers.import_logs(db, "reference-jsonl", [g])
    assert ":3: model_family='b' differs from 'a' on line 1" in r.quarantined[0][1]


def test_reference_jsonl_decreasing_steps_rejected(tmp_path: Path) -> None:
    f = tmp_path / "dup.jsonl"
    lines = jsonl_lines(3, model_family="x")
    f.write_text("\n".join(lines + [lines[1]]))
    with pytest.raises(LogFormatError, match=r":4: step 1 goes back from step 2 \(line 3\)"):
        importers.parse_reference_jsonl(f)


# -- cells --------------------------------------------------------------------------------------------------

CELLS = HEADER + """
llada,GSAI-ML/LLaDA-8B-Base,None,0.15,1,1e-4,True,3,False,2.5,1.25
llada,GSAI-ML/LLaDA-8B-Base,16,0.5,2,1e-4,False,None,None,0.7,0.9
dream,Dream-org/Dream-v0-Base-7B,8,0.85,1,2e-6,True,11,True,4.0,3.5
"""


def test_cells_import_with_none_ranks_and_text_booleans(db: Path, tmp_path: Path) -> None:
    f = tmp_path / "cells.csv"
    f.write_text(CELLS)
    r = importers.import_logs(db, "cells", [f], method="lora")
    assert (r.added, r.quarantined) == (3, ())
    got = rows(db, "SELECT run_id, family, model_id, rank, mask_ratio, seed, learning_rate, top1_warning_detected, "
                   "top1_fire_step, collapsed, max_grad_norm, final_loss, method, source, n_steps FROM runs "
                   "ORDER BY run_id")
    got.sort(key=lambda g: (g[1] != "llada", g[5]))  # llada seed 1, llada seed 2, dream
    assert all(g[0].startswith("import-cells-") for g in got)
    assert got[0][1:12] == ("llada", "GSAI-ML/LLaDA-8B-Base", None, 0.15, 1, 1e-4, True, 3, False, 2.5, 1.25)
    assert got[1][3] == 16 and got[1][8] is None and got[1][9] is None
    assert got[2][7:10] == (True, 11, True)
    assert all(g[12] == "lora" and g[13] == "import:cells" and g[14] is None for g in got)
    assert rows(db, "SELECT count(*) FROM steps") == [(0,)]  # cells carry no trajectories
    again = importers.import_logs(db, "cells", [f], method="lora")
    assert (again.added, again.already_present) == (0, 3)
    # the method is part of each row's configuration: the same rows under another method are other runs
    other = importers.import_logs(db, "cells", [f], method="dora")
    assert other.added == 3 and not other.conflicts


def test_cells_missing_columns_are_named_with_the_fix(db: Path, tmp_path: Path) -> None:
    f = tmp_path / "cells.csv"
    f.write_text("family,model_name,rho,seed,lr,top1_fired,max_grad_norm\nllada,m,0.5,1,1e-4,True,2.0\n")
    r = importers.import_logs(db, "cells", [f])
    assert r.added == 0
    reason = r.quarantined[0][1]
    # final_loss may be absent (CELLS_OPTIONAL): the rest is named, with the fix
    assert f"{f}:1: missing column(s) ['rank', 'top1_fire_step', 'collapsed']" in reason
    assert "write None where unknown" in reason
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]


def test_cells_bad_rows_reject_the_whole_file(db: Path, tmp_path: Path) -> None:
    f = tmp_path / "cells.csv"
    f.write_text(CELLS + "llada,m,4,0.5,1,1e-4,maybe,None,False,1.0,1.0\n"
                         "llada,m,4,0.5,1,1e-4,True,None,False,inf,1.0\n"
                         "llada,m,four,0.5,1,1e-4,True,None,False,1.0,1.0\n"
                         "llada,m,4,0.5,1\n")
    r = importers.import_logs(db, "cells", [f])
    assert r.added == 0
    reason = r.quarantined[0][1]
    for line, text in ((5, "top1_fired='maybe' is not a boolean"), (6, "max_grad_norm='inf' is NaN/Inf"),
                       (7, "rank='four' is not numeric"), (8, "5 fields but the header has 11")):
        assert f"{f}:{line}: {text}" in reason
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]


def test_empty_and_missing_files(db: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    only_header = tmp_path / "header.csv"
    only_header.write_text(HEADER + "\n")
    r = importers.import_logs(db, "cells", [empty, only_header, tmp_path / "nope.csv"])
    reasons = dict(r.quarantined)
    assert "empty file" in reasons[str(empty)]
    assert "header but no rows" in reasons[str(only_header)]
    assert "not a file" in reasons[str(tmp_path / "nope.csv")]


def test_unknown_format_and_options(db: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown import format 'csv'"):
        importers.import_logs(db, "csv", [tmp_path])
    with pytest.raises(ValueError, match=r"option\(s\) \['loss_col'\] do not apply to 'cells'"):
        importers.import_logs(db, "cells", [tmp_path], loss_col="x")


# -- hf-trainer ---------------------------------------------------------------------------------------------

def trainer_state(n_logs: int = 5, every: int = 10) -> dict:
    """A realistic transformers trainer_state.json (train logs, eval logs, the final summary entry)."""
    history = []
    for i in range(1, n_logs + 1):
        step = i * every
        history.append({"epoch": round(step / 50, 4), "grad_norm": 0.5 + 0.25 * (i % 3),
                        "learning_rate": 1e-4 * (1 - step / (n_logs * every)), "loss": round(3.0 / i, 4),
                        "step": step})
        if i % 2 == 0:
            history.append({"epoch": round(step / 50, 4), "eval_loss": 2.5 / i, "eval_runtime": 1.2,
                            "eval_samples_per_second": 80.0, "eval_steps_per_second": 10.0, "step": step})
    history.append({"epoch": 1.0, "step": n_logs * every, "total_flos": 1.2e15, "train_loss": 1.5,
                    "train_runtime": 120.5, "train_samples_per_second": 8.3, "train_steps_per_second": 0.4})
    return {"best_metric": None, "best_model_checkpoint": None, "epoch": 1.0, "eval_steps": 20,
            "global_step": n_logs * every, "is_hyper_param_search": False, "is_local_process_zero": True,
            "is_world_process_zero": True, "log_history": history, "logging_steps": every,
            "max_steps": n_logs * every, "num_input_tokens_seen": 0, "num_train_epochs": 1, "save_steps": 500,
            "stateful_callbacks": {"TrainerControl": {"args": {"should_save": True, "should_training_stop": True},
                                                      "attributes": {}}},
            "total_flos": 1.2e15, "train_batch_size": 8, "trial_name": None, "trial_params": None}


def test_hf_trainer_with_side_config_and_flags(db: Path, tmp_path: Path) -> None:
    ck = tmp_path / "checkpoint-50"
    ck.mkdir()
    f = ck / "trainer_state.json"
    f.write_text(json.dumps(trainer_state(), indent=2))
    (ck / "trainer_state.config.json").write_text(json.dumps({"family": "llada", "rank": 8, "mask_ratio": 0.5,
                                                              "lr": 1e-4, "seed": 7, "note": "kept"}))
    r = importers.import_logs(db, "hf-trainer", [f], seed=8)  # a flag wins over the side file
    assert (r.added, r.quarantined) == (1, ())
    run = rows(db, "SELECT family, rank, mask_ratio, learning_rate, seed, steps, batch_size, final_loss, "
                   "max_grad_norm, n_steps, top1_warning_detected, config_json FROM runs")[0]
    assert run[:10] == ("llada", 8, 0.5, 1e-4, 8, 50, 8, 0.6, 1.0, 5)
    assert run[10] is None and json.loads(run[11])["note"] == "kept"  # no top-1 logged: unknown, not False
    steps = rows(db, "SELECT step, loss, grad_norm, max_grad_norm, lr FROM steps ORDER BY step")
    assert [s[0] for s in steps] == [10, 20, 30, 40, 50]  # eval and summary entries are not steps
    assert [s[2] for s in steps] == [0.75, 1.0, 0.5, 0.75, 1.0]
    assert [s[3] for s in steps] == [0.75, 1.0, 1.0, 1.0, 1.0]
    assert importers.import_logs(db, "hf-trainer", [f], seed=8).already_present == 1


def test_hf_trainer_bad_entries_report_lines(db: Path, tmp_path: Path) -> None:
    state = trainer_state()
    del state["log_history"][0]["grad_norm"]
    state["log_history"][1]["loss"] = float("nan")
    f = tmp_path / "trainer_state.json"
    f.write_text(json.dumps(state, indent=2))
    with pytest.raises(LogFormatError) as ei:
        importers.import_logs(db, "hf-trainer", [f], family="llada", strict=True)
    (l0, why0), (l1, why1) = ei.value.problems
    text = f.read_text().split("\n")
    assert text[l0 - 1].strip() == "{" and "grad_norm" in why0 and "log_history[0]" in why0
    assert l1 > l0 and "NaN/Inf" in why1
    g = tmp_path / "not_state.json"
    g.write_text(json.dumps({"hello": 1}))
    with pytest.raises(LogFormatError, match="no 'log_history' list"):
        importers.parse_hf_trainer(g, family="x")


# -- wandb-csv ----------------------------------------------------------------------------------------------

WANDB = """_step,_runtime,train/loss,train/grad_norm,train/learning_rate,eval/loss
0,1.0,3.0,1.2,1e-4,
1,2.0,2.8,1.5,1e-4,
2,3.0,,,,2.7
3,4.0,2.5,0.9,1e-4,
"""


def test_wandb_csv_with_column_mapping(db: Path, tmp_path: Path) -> None:
    f = tmp_path / "history.csv"
    f.write_text(WANDB)
    opts = dict(loss_col="train/loss", grad_col="train/grad_norm", lr_col="train/learning_rate")
    r = importers.import_logs(db, "wandb-csv", [f], family="dream", rank=4, **opts)
    assert (r.added, r.quarantined) == (1, ())
    assert rows(db, "SELECT family, rank, final_loss, max_grad_norm, n_steps, source FROM runs") == [
        ("dream", 4, 2.5, 1.5, 3, "import:wandb-csv")]
    assert rows(db, "SELECT step, max_grad_norm FROM steps ORDER BY step") == [(0, 1.2), (1, 1.5), (3, 1.5)]
    missing = importers.import_logs(db, "wandb-csv", [f], family="dream")  # default names: loss, grad_norm
    reason = missing.quarantined[0][1]
    assert f"{f}:1: missing column(s) ['loss', 'grad_norm']" in reason and "loss_col=" in reason


# -- property tests: never crash with anything but LogFormatError, never half-load ---------------------------

CELL_VALUES = st.one_of(
    st.sampled_from(["None", "", "True", "False", "nan", "inf", "-1", "0", "0.5", "1e-4", "16", "abc", "1.5",
                     "llada", '"q,uoted"', "1e400", " 3 ", "9" * 400, "\x00"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
)


@st.composite
def cells_files(draw) -> str:
    cols = list(CELLS_COLUMNS)
    if draw(st.booleans()):
        cols = draw(st.permutations(cols))
    if draw(st.integers(0, 5)) == 0:
        cols = cols[: draw(st.integers(0, len(cols)))]
    n = draw(st.integers(0, 5))
    lines = [",".join(cols)]
    for _ in range(n):
        k = len(cols) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        lines.append(",".join(draw(CELL_VALUES).replace("\n", " ") for _ in range(max(k, 0))))
    text = "\n".join(lines)
    if draw(st.integers(0, 6)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.integers(10**300, 10**320),
                        st.floats(allow_nan=True),
                        st.text(max_size=4), st.lists(st.integers(), max_size=2))


@st.composite
def jsonl_files(draw) -> str:
    lines = []
    for i in range(draw(st.integers(0, 6))):
        obj = {"step": i, "loss": 1.0, "max_grad_norm": 1.0, "top1_token_freq": 0.2, "mask_ratio": 0.5,
               "model_family": "tiny"}
        for key in draw(st.lists(st.sampled_from(sorted(obj) + ["rank", "collapsed"]), max_size=3)):
            if draw(st.booleans()):
                obj.pop(key, None)
            else:
                obj[key] = draw(JSON_VALUES)
        line = json.dumps(obj)
        if draw(st.integers(0, 8)) == 0:
            line = line[: draw(st.integers(0, len(line)))]
        lines.append(line)
    if draw(st.integers(0, 8)) == 0:
        lines.append(draw(st.text(max_size=10)))
    return "\n".join(lines)


def _check_parse(parse, text: str, suffix: str) -> list:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"log{suffix}"
        f.write_text(text, encoding="utf-8")
        try:
            out = parse(f)
        except LogFormatError as e:
            assert e.problems and str(f) in str(e)
            return []
    for run in out:
        row = run.row
        for key in ("final_loss", "max_grad_norm"):
            assert row[key] is None or math.isfinite(row[key])
        assert row["family"]
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells_files())
def test_cells_parser_property(text: str) -> None:
    _check_parse(importers.parse_cells, text, ".csv")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jsonl_files())
def test_jsonl_parser_property(text: str) -> None:
    out = _check_parse(importers.parse_reference_jsonl, text, ".jsonl")
    for run in out:
        steps = run.steps
        assert steps.height == run.row["n_steps"]
        assert steps["step"].is_sorted() and steps["step"].n_unique() == steps.height


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells_files(), jsonl_files())
def test_import_is_all_or_nothing_per_file(cells_text: str, jsonl_text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "t.duckdb"
        for fmt, text, name, parse in (("cells", cells_text, "c.csv", importers.parse_cells),
                                       ("reference-jsonl", jsonl_text, "r.jsonl", importers.parse_reference_jsonl)):
            f = Path(d) / name
            f.write_text(text, encoding="utf-8")
            try:
                expected = parse(f)
            except LogFormatError:
                expected = []
            r = importers.import_logs(db, fmt, [f])
            assert r.added == len(expected) and (len(r.quarantined) == 1) == (not expected)
            n_steps = sum(p.steps.height for p in expected if p.steps is not None)
            src = f"import:{fmt}"
            assert rows(db, f"SELECT count(*) FROM runs WHERE source = '{src}'") == [(len(expected),)]
            assert rows(db, f"SELECT count(*) FROM steps s JOIN runs r USING (run_id) WHERE r.source = '{src}'") \
                == [(n_steps,)]
