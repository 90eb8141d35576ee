"""LoRA-Curve connectivity on the tiny family: real runs, real adapters, real held-out losses."""

from __future__ import annotations

import math

import pytest
import torch

from dlm_triage import connect
from dlm_triage.config import RunConfig
from dlm_triage.train import train_run


def _cfg(tiny_model_dir, **kw):
    base = dict(model_id=str(tiny_model_dir), steps=15, batch_size=2, seq_len=16, device="cpu", rank=4,
                learning_rate=2e-2, mask_ratio=0.5)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("connect-runs")
    out = {}
    for key, kw in {"a": dict(seed=1), "b": dict(seed=2), "r8": dict(seed=3, rank=8),
                    "ld_a": dict(seed=1, method="lora_diffusion"), "ld_b": dict(seed=2, method="lora_diffusion"),
                    "dora_a": dict(seed=1, method="dora"), "dora_b": dict(seed=2, method="dora"),
                    "pissa_a": dict(seed=1, method="pissa"), "pissa_b": dict(seed=2, method="pissa"),
                    "nara_a": dict(seed=1, method="nara"), "nara_b": dict(seed=1, method="nara", learning_rate=5e-2),
                    "nara_c": dict(seed=2, method="nara")}.items():
        res = train_run(_cfg(tiny_model_dir, **kw), root)
        assert res.status == "completed"
        out[key] = res.run_dir
    return out


def _held(a, b):
    """The held-out set connect_runs builds, rebuilt here for the runs' own evaluations."""
    from dlm_triage.families import get_family

    ra, rb = connect.resolve_run(a), connect.resolve_run(b)
    fam = get_family(ra.cfg.family)
    loaded = fam.load(ra.cfg, torch.device("cpu"), torch.float32)
    return ra, rb, loaded.tokenizer, connect.heldout_batches(ra, rb, loaded.tokenizer, fam, loaded.mask_token_id,
                                                             n_batches=3, mask_ratio=0.5, device=torch.device("cpu"))


def test_two_seeds_give_a_finite_profile_whose_endpoints_are_the_runs_own_losses(runs, tmp_path):
    res = connect.connect_runs(runs["a"], runs["b"], segments=2, steps=6, n_points=5, eval_batches=3,
                               device="cpu", out_dir=tmp_path)
    assert set(res.profiles) == set(connect.PATHS)
    for path, losses in res.profiles.items():
        assert len(losses) == 5 and all(math.isfinite(x) for x in losses), path
        assert res.barriers[path] == pytest.approx(max(losses) - (losses[0] + losses[-1]) / 2)
        assert res.barriers[path] >= 0
    ra, rb, tok, held = _held(runs["a"], runs["b"])
    own_a, own_b = connect.evaluate_run(ra, held, device="cpu"), connect.evaluate_run(rb, held, device="cpu")
    assert own_a != pytest.approx(own_b, rel=1e-4)  # two different adapters: the test can tell them apart
    for path, losses in res.profiles.items():  # every path starts at A and ends at B, the curve anchored
        assert losses[0] == pytest.approx(own_a, rel=1e-5), path
        assert losses[-1] == pytest.approx(own_b, rel=1e-5), path
    assert (res.loss_a, res.loss_b) == (res.profiles["linear_factors"][0], res.profiles["linear_factors"][-1])
    # the held-out windows are none of those either run trained on
    from dlm_triage.data import make_batches

    used = set()
    for r in (ra, rb):
        b = make_batches(r.cfg, tok)
        for s in range(r.cfg.steps + 1):
            used.update(b.window_ids(s))
    assert held.window_ids and not used & set(held.window_ids)
    assert res.figure and (tmp_path / f"{res.connect_id}.png").stat().st_size > 1000


def test_product_and_factor_paths_differ_between_the_endpoints(runs):
    res = connect.connect_runs(runs["a"], runs["b"], steps=0, n_points=3, eval_batches=2, device="cpu")
    prod, fac = res.profiles["linear_product"], res.profiles["linear_factors"]
    assert prod[0] == pytest.approx(fac[0], rel=1e-6) and prod[-1] == pytest.approx(fac[-1], rel=1e-6)
    assert prod[1] != pytest.approx(fac[1], rel=1e-6)  # (B_a+B_b)(A_a+A_b)/4 is not (B_a A_a + B_b A_b)/2


def test_product_point_is_the_interpolated_update():
    g = torch.Generator().manual_seed(0)
    a = {"x.lora_A.default.weight": torch.randn(3, 7, generator=g), "x.lora_B.default.weight": torch.randn(5, 3, generator=g)}
    b = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    p = connect.product_point(a, b, 0.3)
    A, B = p["x.lora_A.default.weight"], p["x.lora_B.default.weight"]
    want = 0.7 * a["x.lora_B.default.weight"] @ a["x.lora_A.default.weight"] + 0.3 * b["x.lora_B.default.weight"] @ b["x.lora_A.default.weight"]
    torch.testing.assert_close(B @ A, want)


@pytest.mark.parametrize("segments", [1, 3])
def test_a_curve_on_the_linear_midpoints_reproduces_the_linear_profile(runs, segments):
    res = connect.connect_runs(runs["a"], runs["b"], segments=segments, steps=0, n_points=7, eval_batches=2,
                               device="cpu")
    assert res.profiles["bezier"] == pytest.approx(res.profiles["linear_factors"], rel=1e-5)


def test_bezier_with_its_control_at_the_midpoint_is_the_line():
    g = torch.Generator().manual_seed(0)
    a, b = {"w": torch.randn(4, generator=g)}, {"w": torch.randn(4, generator=g)}
    curve = connect.BezierCurve(a, b, 1)
    torch.testing.assert_close(curve.controls[0]["p0"].detach(), (a["w"] + b["w"]) / 2)
    for t in (0.0, 0.25, 0.6, 1.0):
        torch.testing.assert_close(curve.point(t)["w"], torch.lerp(a["w"], b["w"], t))
    with torch.no_grad():
        curve.controls[0]["p0"].add_(1.0)  # off the line: the midpoint moves, the anchors do not
    torch.testing.assert_close(curve.point(0.0)["w"], a["w"])
    torch.testing.assert_close(curve.point(1.0)["w"], b["w"])
    torch.testing.assert_close(curve.point(0.5)["w"], (a["w"] + b["w"]) / 2 + 0.5)


def test_training_moves_the_free_points_only(runs):
    res = connect.connect_runs(runs["a"], runs["b"], segments=2, steps=8, n_points=3, eval_batches=2, device="cpu",
                               lr=5e-2)
    bez, lin = res.profiles["bezier"], res.profiles["linear_factors"]
    assert bez[0] == pytest.approx(lin[0], rel=1e-6) and bez[-1] == pytest.approx(lin[-1], rel=1e-6)
    assert bez[1] != pytest.approx(lin[1], rel=1e-6)


def test_lora_diffusion_and_dora_connect(runs):
    ld = connect.connect_runs(runs["ld_a"], runs["ld_b"], steps=2, n_points=3, eval_batches=1, device="cpu")
    assert "linear_product" not in ld.profiles and any("linear_product" in n for n in ld.notes)
    assert all(math.isfinite(x) for v in ld.profiles.values() for x in v)
    dora = connect.connect_runs(runs["dora_a"], runs["dora_b"], steps=0, n_points=3, eval_batches=1, device="cpu")
    assert set(dora.profiles) == set(connect.PATHS)
    assert dora.profiles["linear_product"][0] == pytest.approx(dora.profiles["linear_factors"][0], rel=1e-5)


def test_mismatched_runs_get_a_clear_error(runs, tiny_model_dir, tmp_path):
    with pytest.raises(connect.ConnectError, match=r"rank: 4 vs 8.*same base model, family, method and rank"):
        connect.connect_runs(runs["a"], runs["r8"], device="cpu")
    with pytest.raises(connect.ConnectError, match=r"method: 'lora' vs 'lora_diffusion'"):
        connect.connect_runs(runs["a"], runs["ld_b"], device="cpu")
    # another base model: the same config pointed at another checkpoint directory
    import json
    import shutil

    moved = tmp_path / "b-other-base"
    shutil.copytree(runs["b"], moved)
    man = json.loads((moved / "manifest.json").read_text())
    man["config"]["model_id"] = "/models/another-checkpoint"
    man["adapter_path"] = str(moved / "adapter")
    (moved / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(connect.ConnectError, match=r"base model: .* vs '/models/another-checkpoint'"):
        connect.connect_runs(runs["a"], moved, device="cpu")
    with pytest.raises(connect.ConnectError, match="same run"):
        connect.connect_runs(runs["a"], runs["a"], device="cpu")
    with pytest.raises(connect.ConnectError, match="no manifest.json"):
        connect.connect_runs(runs["a"], tmp_path / "nothing", device="cpu")


def test_a_family_with_its_own_objective_connects(tmp_path):
    """diffusion_gemma (uniform corruption, no mask token): the profile uses its own seeded objective."""
    from dlm_triage.tiny_diffusion_gemma import save_tiny_diffusion_gemma

    dg = save_tiny_diffusion_gemma(tmp_path / "dg", seed=3)
    dirs = []
    for seed in (1, 2):
        cfg = RunConfig(family="diffusion_gemma", model_id=str(dg), steps=3, batch_size=2, seq_len=32, device="cpu",
                        learning_rate=1e-2, seed=seed)
        dirs.append(train_run(cfg, tmp_path / "runs").run_dir)
    res = connect.connect_runs(*dirs, steps=1, n_points=3, eval_batches=1, device="cpu")
    assert all(math.isfinite(x) for v in res.profiles.values() for x in v)
    from dlm_triage.families import get_family

    ra, rb = connect.resolve_run(dirs[0]), connect.resolve_run(dirs[1])
    fam = get_family("diffusion_gemma")
    lm = fam.load(ra.cfg, torch.device("cpu"), torch.float32)
    held = connect.heldout_batches(ra, rb, lm.tokenizer, fam, lm.mask_token_id, n_batches=1, mask_ratio=0.5,
                                   device=torch.device("cpu"))
    assert res.profiles["linear_product"][0] == pytest.approx(connect.evaluate_run(ra, held, device="cpu"), rel=1e-5)
    assert res.profiles["bezier"][-1] == pytest.approx(connect.evaluate_run(rb, held, device="cpu"), rel=1e-5)


def test_cli_connect_stores_profiles_and_the_report_shows_them_per_group(runs, tmp_path, capsys):
    """`dlm-triage connect` -> real DuckDB tables (queried in SQL) -> ingest + calibrate -> the report's section."""
    import shutil

    from dlm_triage import store
    from dlm_triage.calibrate import run_calibration
    from cli.main import main
    from dlm_triage.report import write_report

    out = tmp_path / "out"
    for key in ("a", "b"):  # a runs dir holding the two runs: connect them by run id
        shutil.copytree(runs[key], out / "runs" / runs[key].name)
    rc = main(["--out", str(out), "connect", runs["a"].name, runs["b"].name, "--segments", "2", "--steps", "2",
               "--points", "3", "--eval-batches", "1"])
    printed = capsys.readouterr().out
    assert rc == 0 and "linear_product" in printed and "barrier" in printed
    db = out / "triage.duckdb"
    con = store.connect(db, read_only=True)
    try:
        prof = con.execute("SELECT path, t, loss FROM connect_profiles ORDER BY path, t").fetchall()
        paths = con.execute("SELECT path, barrier, loss_a, max_loss, run_a, run_b FROM connect_paths ORDER BY path").fetchall()
    finally:
        con.close()
    assert [p for p, _, _ in prof] == ["bezier"] * 3 + ["linear_factors"] * 3 + ["linear_product"] * 3
    assert [t for _, t, _ in prof[:3]] == [0.0, 0.5, 1.0] and all(math.isfinite(x) for _, _, x in prof)
    for path, barrier, loss_a, max_loss, ra, rb in paths:
        losses = [x for p, _, x in prof if p == path]
        assert barrier == pytest.approx(max(losses) - (losses[0] + losses[-1]) / 2) and max_loss == max(losses)
        assert loss_a == losses[0] and (ra, rb) == (runs["a"].name, runs["b"].name)
    # a second connection adds rows, it does not replace the first
    assert main(["--out", str(out), "connect", runs["a"].name, runs["b"].name, "--steps", "0", "--points", "2",
                 "--eval-batches", "1"]) == 0
    con = store.connect(db, read_only=True)
    try:
        assert con.execute("SELECT count(DISTINCT connect_id) FROM connect_paths").fetchall()[0][0] == 2
    finally:
        con.close()

    store.ingest_runs(db, out / "runs")
    run_calibration(db, out / "cal", n_resamples=10, stepk_resamples=10, ks=(5,))
    paths_ = write_report(db, out / "report")
    md = paths_.markdown.read_text()
    assert "## Connectivity between runs (LoRA-Curve)" in md and "### tiny" in md
    assert md.count("| " + runs["a"].name) == 6  # 3 paths + 3 paths, both connections, in the group of run A
    html_ = paths_.html.read_text()
    assert "id='connectivity'" in html_ and html_.count("connectivity profile") == 2


def test_cli_connect_mismatch_is_one_clear_line(runs, capsys, tmp_path):
    from cli.main import main

    rc = main(["--out", str(tmp_path), "connect", str(runs["a"]), str(runs["r8"]), "--steps", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be connected" in err and "rank: 4 vs 8" in err and "Traceback" not in err


@pytest.mark.server
def test_connect_flow_after_a_sweep(prefect_harness, runs, tmp_path):
    from dlm_triage import store
    from dlm_triage.params import ConnectParams
    from flows.connect import connect_flow

    params = ConnectParams(run_a=str(runs["ld_a"]), run_b=str(runs["ld_b"]), db=tmp_path / "t.duckdb",
                           out=tmp_path / "fig", steps=1, n_points=3, eval_batches=1, device="cpu")
    out = connect_flow(params)
    assert set(out["barriers"]) == {"linear_factors", "bezier"} and (tmp_path / "fig").is_dir()
    con = store.connect(tmp_path / "t.duckdb", read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM connect_profiles WHERE connect_id = ?",
                           [out["connect_id"]]).fetchall()[0][0] == 6
    finally:
        con.close()


@pytest.mark.parametrize("method", ["pissa", "nara"])
def test_pissa_and_nara_connect(runs, method):
    res = connect.connect_runs(runs[f"{method}_a"], runs[f"{method}_b"], steps=1, n_points=3, eval_batches=3,
                               device="cpu")
    assert all(math.isfinite(x) for v in res.profiles.values() for x in v)
    assert ("linear_product" in res.profiles) == (method == "pissa")
    # PiSSA's residual base weight and NaRA's core are rebuilt/loaded: the endpoints are still the runs' own losses
    ra, rb, _, held = _held(runs[f"{method}_a"], runs[f"{method}_b"])
    own_a, own_b = connect.evaluate_run(ra, held, device="cpu"), connect.evaluate_run(rb, held, device="cpu")
    for losses in res.profiles.values():
        assert losses[0] == pytest.approx(own_a, rel=1e-5) and losses[-1] == pytest.approx(own_b, rel=1e-5)


def test_nara_runs_with_other_fourier_projections_are_refused(runs):
    with pytest.raises(connect.ConnectError, match="Fourier projection W differs"):
        connect.connect_runs(runs["nara_a"], runs["nara_c"], steps=0, n_points=2, eval_batches=1, device="cpu")
