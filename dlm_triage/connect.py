"""LoRA-Curve connectivity between two fine-tuned adapters (seed related-abstracts.txt: Dold et al., "On the
Construction and Implications of Low-Loss Valleys in LoRA-based Bayesian Inference", anchored configuration).

Two completed runs with the same base model, family, method, rank (and alpha, targets, dataset, seq_len, so that
their adapters live in one space and one held-out set is held out for both). Three paths from adapter A (t=0)
to adapter B (t=1), each evaluated at `n_points` evenly spaced t on the same held-out batches:

- `linear_product`: the weight update interpolated, dW(t) = (1-t) s B_a A_a + t s B_b A_b (s the adapter scale),
  realised exactly as a rank-2r adapter A' = [A_a; A_b], B' = [(1-t) B_a, t B_b]; DoRA's magnitude vector
  linearly. Defined for the peft methods (lora, rslora, dora, pissa), whose update is linear in B A; not for
  nara (B C(lambda) A with a shared, trained core) nor lora_diffusion (a noise-dependent rank slice): skipped,
  with a note.
- `linear_factors`: every adapter tensor interpolated elementwise, (1-t) theta_a + t theta_b (the naive path).
- `bezier`: a segmented quadratic Bezier curve in adapter (factor) space, anchored at theta_a and theta_b.
  N segments: junctions P_0 = theta_a, P_1..P_{N-1}, P_N = theta_b and one control C_i per segment; segment i
  covers t in [i/N, (i+1)/N], u = N t - i, point (1-u)^2 P_i + 2u(1-u) C_i + u^2 P_{i+1}. Free: P_1..P_{N-1} and
  every C_i, initialised ON the linear factor path (P_i = lerp(i/N), C_i = lerp((i+1/2)/N), where the curve is
  the linear path exactly), then trained with Adam for `steps` updates, each at t ~ U(0, 1) on one training
  batch of run A (the held-out batches are never trained on).

Loss: the runs' training objective, the mean over the held-out batches: the masked-diffusion loss
(`objective.masked_diffusion_loss`, the runs' normalisation) at mask ratio rho (the runs' own when equal; else
give one); for a family with its own objective (diffusion_gemma's uniform corruption) that objective, its draws
seeded per batch so that every t sees the same corruption.
Held-out batches: windows of the dataset that neither run trained on (`FinetuneBatches.window_ids` of steps
0..steps of each), in index order, masked once with a fixed generator (the same masks at every t).
Noise-conditioned methods (nara, lora_diffusion) see lambda = rho.

Barrier height of a path = max loss on the path - mean of its two endpoint losses (>= 0; 0 for a path that
never rises above the endpoints' mean). Results: `ConnectResult` (profiles, barriers, figure), stored by
`store.save_connection` (tables connect_paths, connect_profiles).

One module, over 400 lines: the three paths are one measurement (one held-out set, one loss, the pair's adapters
loaded once), and the profiles, barriers and figure describe it together; the stored tables are `store/curves.py`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from dlm_triage.adapter_parts import WEIGHTS_FILENAME
from dlm_triage.config import RunConfig
from dlm_triage.schema import ADAPTER_DIRNAME, MANIFEST_FILENAME

PATH_PRODUCT = "linear_product"
PATH_FACTORS = "linear_factors"
PATH_BEZIER = "bezier"
PATHS = (PATH_PRODUCT, PATH_FACTORS, PATH_BEZIER)
PRODUCT_METHODS = ("lora", "rslora", "dora", "pissa")
EVAL_SEED = 0
"""Seed of the held-out masks (the same for every connection, so profiles of different pairs compare)."""
CURVE_SEED = 1
"""Seed of the curve training's t draws and masks."""


class ConnectError(ValueError):
    """Two runs that cannot be connected, or bad connect options; the message names the value and the fix."""


# -- the runs --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRef:
    run_id: str
    run_dir: Path
    cfg: RunConfig
    adapter_path: Path


def resolve_run(ref: str | Path, runs_dir: Path | str | None = None) -> RunRef:
    """A run directory, or a run id under `runs_dir`: its config and saved adapter (a completed run only)."""
    p = Path(ref)
    if not (p / MANIFEST_FILENAME).is_file() and runs_dir is not None:
        p = Path(runs_dir) / str(ref)
    man_path = p / MANIFEST_FILENAME
    if not man_path.is_file():
        raise ConnectError(f"run {str(ref)!r}: no {MANIFEST_FILENAME} at {p}; give a run directory or a run id "
                           f"under the runs directory ({runs_dir})")
    man = json.loads(man_path.read_text())
    if man.get("status") != "completed":
        raise ConnectError(f"run {man.get('run_id')!r} has status {man.get('status')!r}: connect completed runs only")
    cfg = RunConfig.from_dict(man["config"])
    adapter = Path(man["adapter_path"]) if man.get("adapter_path") else p / ADAPTER_DIRNAME
    if not adapter.is_dir():
        raise ConnectError(f"run {cfg.run_id!r} saved no adapter ({adapter} missing): re-run it with save_adapter=true")
    return RunRef(run_id=str(man["run_id"]), run_dir=p, cfg=cfg, adapter_path=adapter)


def _structure(run: RunRef) -> dict[str, Any]:
    from dlm_triage.families import get_family

    c = run.cfg
    s = {"family": c.family, "base model": get_family(c.family).model_id(c, check=False), "method": c.method, "rank": c.rank,
         "target_modules": c.target_modules, "dataset": c.dataset, "seq_len": c.seq_len}
    if c.method in PRODUCT_METHODS:
        s["effective alpha"] = c.effective_alpha
    if c.method == "nara":
        s["nara_eta"] = c.nara_eta
    if c.method == "lora_diffusion":
        s["lora_diffusion_schedule"] = c.lora_diffusion_schedule
    return s


def check_pair(a: RunRef, b: RunRef) -> None:
    """Raise ConnectError naming every field on which the two runs' adapters differ in structure."""
    if a.run_id == b.run_id:
        raise ConnectError(f"run_a and run_b are the same run ({a.run_id!r}): give two different runs")
    sa, sb = _structure(a), _structure(b)
    diff = [f"{k}: {sa.get(k)!r} vs {sb.get(k)!r}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
    if diff:
        raise ConnectError(f"runs {a.run_id!r} and {b.run_id!r} cannot be connected: their adapters differ in "
                           f"{'; '.join(diff)}. Connect two runs with the same base model, family, method and "
                           "rank (e.g. two seeds of one configuration)")


# -- the evaluation -------------------------------------------------------------------------------------

class _Call(nn.Module):
    """`fn(model)` as one module's forward, so torch.func.functional_call can substitute adapter tensors
    (prefixed 'model.') for whatever the objective runs."""

    def __init__(self, family: Any, model: nn.Module):
        super().__init__()
        self.model = model
        object.__setattr__(self, "family", family)

    def forward(self, fn: Any) -> torch.Tensor:
        return fn(self.model)


def has_own_objective(family: Any) -> bool:
    """A family whose trainer runs its own corruption and loss (DiffusionGemma), not the masked objective."""
    from dlm_triage.families import FamilyAdapter

    return type(family).training_loss is not FamilyAdapter.training_loss


@dataclass
class HeldOut:
    """Held-out batches drawn once: (x0, noisy, mask, seed) per batch on the model's device. Masked objective:
    the masks are drawn here; a family's own objective: `seed` seeds its corruption (noisy, mask None)."""

    batches: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]]
    window_ids: list[int]
    mask_ratio: float
    notes: list[str] = field(default_factory=list)


def heldout_batches(a: RunRef, b: RunRef, tokenizer: Any, family: Any, mask_id: int, *, n_batches: int,
                    mask_ratio: float, device: torch.device) -> HeldOut:
    """`n_batches` batches of run A's batch size from windows neither run trained on (see the module doc)."""
    from dlm_triage.data import make_batches
    from dlm_triage.objective import mask_tokens

    src = make_batches(a.cfg, tokenizer)
    used: set[int] = set()
    for run in (a, b):
        batches = src if run is a else make_batches(run.cfg, tokenizer)
        for step in range(run.cfg.steps + 1):
            used.update(batches.window_ids(step))
    free = [i for i in range(src.n_windows) if i not in used]
    bs = a.cfg.batch_size
    n_avail = len(free) // bs
    if n_avail < 1:
        raise ConnectError(f"no held-out data: the two runs trained on {len(used)} of the dataset's {src.n_windows} "
                           f"windows, fewer than one batch of {bs} is left; use runs with fewer steps or a larger "
                           "dataset")
    notes = []
    if n_avail < n_batches:
        notes.append(f"only {n_avail} held-out batch(es) of {bs} windows exist (asked for {n_batches}): using them")
    own = has_own_objective(family)
    gen = torch.Generator().manual_seed(EVAL_SEED)
    out, ids = [], free[: min(n_batches, n_avail) * bs]
    for n, j in enumerate(range(0, len(ids), bs)):
        x0 = src.windows[ids[j:j + bs]].clone()
        if own:
            out.append((x0.to(device), None, None, EVAL_SEED * 1_000_003 + n))
            continue
        noisy, mask = mask_tokens(x0, mask_ratio, mask_id, gen, sampling=a.cfg.mask_sampling,
                                  protect=family.protected_positions(x0))
        out.append((x0.to(device), noisy.to(device), mask.to(device), n))
    return HeldOut(batches=out, window_ids=ids, mask_ratio=float(mask_ratio), notes=notes)


def _loss(call: _Call, theta: Mapping[str, torch.Tensor] | None, cfg: RunConfig,
          batch: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int], rho: float) -> torch.Tensor:
    """The runs' objective on one batch: the masked-diffusion loss, or the family's own (seeded) objective."""
    from dlm_triage.objective import masked_diffusion_loss
    from dlm_triage.peft_methods import noise_level

    x0, noisy, mask, seed = batch
    family = call.family
    if noisy is None:
        def fn(m):
            return family.training_loss(m, x0, torch.Generator().manual_seed(seed), cfg).loss
    else:
        def fn(m):
            return masked_diffusion_loss(family.logits(m, noisy), x0, mask, normalisation=cfg.normalisation,
                                         mask_ratio=rho)
    with noise_level(call.model, rho):
        return call(fn) if theta is None else torch.func.functional_call(call, dict(theta), (fn,))


@torch.no_grad()
def heldout_loss(call: _Call, theta: Mapping[str, torch.Tensor] | None, cfg: RunConfig, held: HeldOut) -> float:
    """Mean loss over the held-out batches; `theta` (prefixed 'model.') replaces adapter tensors, None: as loaded."""
    losses = [_loss(call, theta, cfg, batch, held.mask_ratio) for batch in held.batches]
    return float(torch.stack([l.float() for l in losses]).mean())


def _load_model(run: RunRef, device: torch.device):
    from dlm_triage.families import get_family, resolve_dtype
    from dlm_triage.peft_methods import load_adapter

    family = get_family(run.cfg.family)
    loaded = family.load(run.cfg, device, resolve_dtype(run.cfg.dtype, device))
    model = load_adapter(loaded.model, run.adapter_path, run.cfg)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return family, loaded, model


def evaluate_run(run: RunRef, held: HeldOut, *, device: str = "auto") -> float:
    """A run's own held-out loss: its adapter loaded the usual way (`load_adapter`), evaluated as it is."""
    from dlm_triage.families import resolve_device

    family, _, model = _load_model(run, resolve_device(device))
    return heldout_loss(_Call(family, model), None, run.cfg, held)


def _adapter_names(model: nn.Module, method: str) -> list[str]:
    """Names of the adapter tensors (what the paths move), in registration order."""
    from dlm_triage import lora_diffusion, nara

    if method == "nara":
        keys = set(nara.nara_state_dict(model))
    elif method == "lora_diffusion":
        keys = set(lora_diffusion.lora_diffusion_state_dict(model))
    else:
        keys = None
    names = [n for n, p in model.named_parameters()
             if (n in keys if keys is not None else any(m in n for m in ("lora_A", "lora_B", "lora_magnitude")))]
    if not names:
        raise ConnectError(f"the {method} adapter has no tensors to interpolate")
    return names


def _load_second(model: nn.Module, run: RunRef) -> None:
    """Load run B's saved adapter tensors into the adapter already built (and loaded) for run A."""
    from safetensors.torch import load_file

    from dlm_triage import lora_diffusion, nara

    method = run.cfg.method
    if method in PRODUCT_METHODS:
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(model, load_file(str(run.adapter_path / WEIGHTS_FILENAME)))
        unexpected = list(getattr(res, "unexpected_keys", []) or [])
        if unexpected:
            raise ConnectError(f"run {run.run_id!r}: adapter tensors {unexpected[:5]} do not fit run A's adapter")
        return
    state = load_file(str(run.adapter_path / WEIGHTS_FILENAME))
    expected = nara.nara_state_dict(model) if method == "nara" else lora_diffusion.lora_diffusion_state_dict(model)
    if set(state) != set(expected):
        raise ConnectError(f"run {run.run_id!r}: its {method} tensors do not fit run A's adapter (other targets?)")
    if method == "nara":
        w = "nara_core.embed.W"  # fixed, seed-drawn and not trained: the two adapters must share it
        if not torch.equal(state[w].to(expected[w].device), expected[w]):
            raise ConnectError(f"run {run.run_id!r}: NaRA's fixed Fourier projection W differs from run A's (it is "
                               "drawn from the seed): the two adapters embed lambda differently and do not share a "
                               "space; connect NaRA runs that share W")
    model.load_state_dict(state, strict=False)


# -- the paths ------------------------------------------------------------------------------------------

def lerp(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    return {n: torch.lerp(a[n], b[n], float(t)) for n in a}


def product_point(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """The rank-2r adapter whose update is (1-t) s B_a A_a + t s B_b A_b exactly (peft names: lora_A / lora_B)."""
    out = {}
    for n in a:
        if ".lora_A." in n:
            out[n] = torch.cat([a[n], b[n]], dim=0)                      # [2r, in]
        elif ".lora_B." in n:
            out[n] = torch.cat([(1 - t) * a[n], t * b[n]], dim=1)      # [out, 2r]
        else:                                                            # DoRA's magnitude: linear
            out[n] = torch.lerp(a[n], b[n], float(t))
    return out


class BezierCurve(nn.Module):
    """Segmented quadratic Bezier curve from theta_a to theta_b (anchored), free points initialised on the line."""

    def __init__(self, theta_a: Mapping[str, torch.Tensor], theta_b: Mapping[str, torch.Tensor], segments: int):
        super().__init__()
        if not isinstance(segments, int) or segments < 1:
            raise ConnectError(f"segments={segments!r} is invalid: use an integer >= 1")
        self.segments = segments
        self.names = list(theta_a)
        self.theta_a = {n: t.detach() for n, t in theta_a.items()}
        self.theta_b = {n: t.detach() for n, t in theta_b.items()}
        key = {n: f"p{i}" for i, n in enumerate(self.names)}  # ParameterDict keys cannot hold dots
        self._key = key

        def free(t: float) -> nn.ParameterDict:
            return nn.ParameterDict({key[n]: nn.Parameter(v.clone()) for n, v in lerp(self.theta_a, self.theta_b, t).items()})

        self.junctions = nn.ModuleList([free(i / segments) for i in range(1, segments)])
        self.controls = nn.ModuleList([free((i + 0.5) / segments) for i in range(segments)])

    def _p(self, d: Any, n: str) -> torch.Tensor:
        return d[n] if isinstance(d, dict) else d[self._key[n]]

    def point(self, t: float) -> dict[str, torch.Tensor]:
        n_seg = self.segments
        i = min(int(t * n_seg), n_seg - 1)
        u = t * n_seg - i
        p0 = self.theta_a if i == 0 else self.junctions[i - 1]
        p1 = self.theta_b if i == n_seg - 1 else self.junctions[i]
        c = self.controls[i]
        return {n: (1 - u) ** 2 * self._p(p0, n) + 2 * u * (1 - u) * self._p(c, n) + u ** 2 * self._p(p1, n)
                for n in self.names}


def barrier_height(losses: Sequence[float]) -> float:
    """max loss on the path - mean of its endpoint losses (losses[0] at t=0, losses[-1] at t=1)."""
    return float(max(losses) - (losses[0] + losses[-1]) / 2)


# -- the result -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectResult:
    connect_id: str
    created_at: str
    run_a: str
    run_b: str
    family: str
    model_id: str
    method: str
    rank: int
    mask_ratio: float
    segments: int
    curve_steps: int
    curve_lr: float
    n_eval_batches: int
    ts: tuple[float, ...]
    profiles: dict[str, tuple[float, ...]]
    """path -> loss at each t of `ts` (only the paths defined for the method)."""
    barriers: dict[str, float]
    loss_a: float
    loss_b: float
    figure: str | None
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def plot_profiles(result: ConnectResult, path: Path) -> Path:
    """Loss along each path (x: t from run A to run B), endpoints marked, barrier heights in the legend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from dlm_triage.fsutil import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    styles = {PATH_PRODUCT: ("tab:red", "-"), PATH_FACTORS: ("tab:orange", "--"), PATH_BEZIER: ("tab:blue", "-")}
    for name, losses in result.profiles.items():
        color, ls = styles.get(name, ("k", "-"))
        ax.plot(result.ts, losses, ls, color=color, marker="o", ms=3,
                label=f"{name} (barrier {result.barriers[name]:.3g})")
    ax.scatter([0, 1], [result.loss_a, result.loss_b], color="k", zorder=5, label="the two runs")
    ax.set_xlabel(f"t  (0: {result.run_a[:28]}, 1: {result.run_b[:28]})", fontsize=8)
    ax.set_ylabel(f"held-out masked-diffusion loss (rho={result.mask_ratio:g})")
    ax.set_title(f"LoRA-Curve connectivity, {result.family} {result.method} r={result.rank}", fontsize=10)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    plt.close(fig)
    write_bytes_atomic(Path(path), buf.getvalue())
    return Path(path)


def connect_runs(run_a: str | Path, run_b: str | Path, *, runs_dir: Path | str | None = None,
                 segments: int = 2, steps: int = 50, n_points: int = 11, eval_batches: int = 4,
                 mask_ratio: float | None = None, lr: float | None = None, device: str = "auto",
                 out_dir: Path | str | None = None) -> ConnectResult:
    """Evaluate the linear paths and train + evaluate the anchored Bezier curve between two runs' adapters.

    `steps` curve updates (0: the curve stays on the linear factor path); `lr` Adam's rate for the free points
    (None: run A's learning rate); `out_dir` where the figure goes (None: no figure).
    """
    from dlm_triage.families import resolve_device
    from dlm_triage.train import seed_everything

    if not isinstance(steps, int) or steps < 0:
        raise ConnectError(f"steps={steps!r} is invalid: use an integer >= 0 (0: no curve training)")
    if not isinstance(n_points, int) or n_points < 2:
        raise ConnectError(f"n_points={n_points!r} is invalid: use an integer >= 2 (t = 0 and 1 at least)")
    if not isinstance(eval_batches, int) or eval_batches < 1:
        raise ConnectError(f"eval_batches={eval_batches!r} is invalid: use an integer >= 1")
    a, b = resolve_run(run_a, runs_dir), resolve_run(run_b, runs_dir)
    check_pair(a, b)
    if mask_ratio is None:
        if a.cfg.mask_ratio != b.cfg.mask_ratio:
            raise ConnectError(f"the runs trained at mask ratios {a.cfg.mask_ratio} and {b.cfg.mask_ratio}: give the "
                               "evaluation's mask ratio (--mask-ratio)")
        mask_ratio = a.cfg.mask_ratio
    if not (isinstance(mask_ratio, (int, float)) and 0 < mask_ratio < 1):
        raise ConnectError(f"mask_ratio={mask_ratio!r} is out of range: use a number strictly between 0 and 1")
    rho = float(mask_ratio)
    lr = float(a.cfg.learning_rate if lr is None else lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ConnectError(f"lr={lr!r} is invalid: use a finite number > 0")

    dev = resolve_device(device)
    seed_everything(CURVE_SEED)
    family, loaded, model = _load_model(a, dev)
    call = _Call(family, model)
    held = heldout_batches(a, b, loaded.tokenizer, family, loaded.mask_token_id, n_batches=eval_batches,
                           mask_ratio=rho, device=dev)
    notes = list(held.notes)
    method = a.cfg.method
    names = _adapter_names(model, method)
    params = dict(model.named_parameters())
    theta_a = {n: params[n].detach().clone().float() for n in names}
    _load_second(model, b)
    params = dict(model.named_parameters())
    theta_b = {n: params[n].detach().clone().float() for n in names}

    def prefixed(theta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"model." + n: t.to(params[n].dtype) for n, t in theta.items()}

    ts = tuple(i / (n_points - 1) for i in range(n_points))  # exact 0 and 1, and tidy values in DuckDB
    profiles: dict[str, tuple[float, ...]] = {}
    if method in PRODUCT_METHODS:
        profiles[PATH_PRODUCT] = tuple(heldout_loss(call, prefixed(product_point(theta_a, theta_b, t)), a.cfg, held)
                                       for t in ts)
    else:
        notes.append(f"{PATH_PRODUCT}: not defined for {method} (its update is not linear in one B A product); "
                     "the factor path and the curve are reported")
    profiles[PATH_FACTORS] = tuple(heldout_loss(call, prefixed(lerp(theta_a, theta_b, t)), a.cfg, held) for t in ts)

    curve = BezierCurve(theta_a, theta_b, segments).to(dev)
    if steps:
        _train_curve(curve, call, a, loaded, family, prefixed, steps=steps, lr=lr, rho=rho)
    with torch.no_grad():
        profiles[PATH_BEZIER] = tuple(heldout_loss(call, prefixed(curve.point(t)), a.cfg, held) for t in ts)

    connect_id = f"connect-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    result = ConnectResult(
        connect_id=connect_id, created_at=datetime.now(timezone.utc).isoformat(), run_a=a.run_id, run_b=b.run_id,
        family=a.cfg.family, model_id=str(_structure(a)["base model"]), method=method, rank=a.cfg.rank,
        mask_ratio=rho, segments=segments, curve_steps=steps, curve_lr=lr, n_eval_batches=len(held.batches),
        ts=ts, profiles=profiles, barriers={k: barrier_height(v) for k, v in profiles.items()},
        loss_a=profiles[PATH_FACTORS][0], loss_b=profiles[PATH_FACTORS][-1], figure=None, notes=tuple(notes),
    )
    if out_dir is not None:
        fig = plot_profiles(result, Path(out_dir) / f"{connect_id}.png")
        result = dataclasses.replace(result, figure=str(fig.resolve()))
    return result


def _train_curve(curve: BezierCurve, call: _Call, a: RunRef, loaded: Any, family: Any, prefixed, *,
                 steps: int, lr: float, rho: float) -> None:
    """Adam on the free points; step j: t ~ U(0, 1), run A's training batch j, fresh masks at rho."""
    from dlm_triage.data import make_batches
    from dlm_triage.objective import mask_tokens

    batches = make_batches(a.cfg, loaded.tokenizer)
    gen = torch.Generator().manual_seed(CURVE_SEED)
    dev = next(call.model.parameters()).device
    opt = torch.optim.Adam(curve.parameters(), lr=lr)  # every segment has a control point: never empty
    for j in range(steps):
        t = float(torch.rand((), generator=gen))
        x0 = batches.batch(j % (a.cfg.steps + 1))
        if has_own_objective(family):
            batch = (x0.to(dev), None, None, CURVE_SEED * 1_000_003 + j)
        else:
            noisy, mask = mask_tokens(x0, rho, loaded.mask_token_id, gen, sampling=a.cfg.mask_sampling,
                                      protect=family.protected_positions(x0))
            batch = (x0.to(dev), noisy.to(dev), mask.to(dev), j)
        loss = _loss(call, prefixed(curve.point(t)), a.cfg, batch, rho)
        if not torch.isfinite(loss):
            raise ConnectError(f"curve training diverged at update {j} (t={t:.3f}, loss {float(loss)}): "
                               "lower --lr or --steps")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def connect_and_store(run_a: str | Path, run_b: str | Path, db: Path | str, **kwargs: Any) -> ConnectResult:
    """`connect_runs(run_a, run_b, **kwargs)`, then the result into DuckDB (`store.save_connection`)."""
    from dlm_triage import store

    result = connect_runs(run_a, run_b, **kwargs)
    con = store.connect(db)
    try:
        store.save_connection(con, result)
    finally:
        con.close()
    return result


def summary_rows(result: ConnectResult) -> list[tuple[str, float, float, float]]:
    """(path, loss at t=0, max loss, barrier) per path, for printing and artifacts."""
    return [(p, v[0], max(v), result.barriers[p]) for p, v in result.profiles.items()]
