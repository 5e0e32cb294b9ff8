"""The training loop: v- or eps-prediction loss (+ optional Lipschitz penalty), AdamW, EMA, checkpoints.

Objective (Ho et al. 2020, eq. 14, in continuous time): for a clean normalised slice ``x0``, time
``t ~ U(1/N, 1)`` and noise ``eps ~ N(0, I)``,

    x_t = sqrt(abar(t)) x0 + sqrt(1 - abar(t)) eps,
    loss = || f_theta([x_t, A^H y], t, c) - target ||^2  +  lambda * penalty,

with ``target = v = sqrt(abar) eps - sqrt(1 - abar) x0`` (v-prediction, Salimans & Ho 2022),
``target = v + sqrt(1 - abar) A^H y`` (``v_adjoint``, default: v relative to the guess ``x0 = A^H y``,
so an untrained network already reconstructs as well as the adjoint image at high noise),
``edm_adjoint`` (Karras et al. 2022 preconditioning centred on ``m = A^H y``, `medinvert.denoiser`:
``target = (x0 - m - c_skip (xbar - m)) / c_out``, which weights the clean-image error by
``1 / c_out^2`` -- the EDM loss weight) or ``target = eps``.  v-prediction matters here: with eps-prediction the network must reproduce its
noisy input almost exactly at high noise (``eps ~ x_t``), which a spectrally normalised network does
poorly, and the error is amplified by ``sigma`` in the predicted clean image; with v the conversion
``eps = sqrt(1 - abar) x_t + sqrt(abar) v`` carries the identity part analytically.

where ``A^H y`` (adjoint image) and the descriptor ``c`` come from a random corruption of ``x0``;
with probability ``cond_dropout`` both are dropped (the adjoint channel zeroed, ``c`` replaced by the
learned null embedding), which trains the unconditional model used by classifier-free guidance.
The optional penalty is a hinge on a finite-difference Lipschitz ratio of the network in x
(``max(0, ||f(x+d) - f(x)|| / ||d|| - target)^2`` for a small random ``d``).
With ``unrolled_weight > 0`` (CS-TV-guess models) the loss also gets that weight times the
sampler-in-the-loop loss of the batch's k-space samples (`medinvert.train.unrolled`): the final image of
the engine's data-consistent reconstruction, against the truth, at a step count drawn per optimisation
step from ``unrolled_steps`` (`medinvert.train.unrolled.unrolled_step_count`).

Reproducibility: the sample at global index ``i`` depends only on ``(seed, i)`` (see
`medinvert.train.data`), the noise and times of step ``s`` only on ``(seed, s, rank)`` and its unrolled
step count only on ``(seed, s)``, so a resumed run repeats an uninterrupted one.  Checkpoints (rank 0,
atomic) every ``checkpoint_every`` steps and on exit; a JSON-lines log gets one record per ``log_every``
steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from medinvert.denoiser import edm_coefficients, guess_spread
from medinvert.errors import MedinvertError
from medinvert.guess import GUESSES, guess_of_config
from medinvert.intensity import FOREGROUND_FRACTION, PERCENTILE
from medinvert.models.checkpoint import read_checkpoint, save_checkpoint
from medinvert.models.unet import LipschitzUNet
from medinvert.operators import DESCRIPTOR_LENGTH
from medinvert.schedule import Schedule, make_schedule
from medinvert.train.data import TRAINABLE_MODALITIES, PatchSamples, SliceSamples, load_training_volumes
from medinvert.train.distributed import DistContext
from medinvert.train.unrolled import UNROLLED_METHODS, step_counts, unrolled_loss, unrolled_step_count

__all__ = ["TrainConfig", "train", "TRAINABLE_PREDICTIONS"]

#: network output parameterisations the loss supports (`medinvert.denoiser` converts them all)
TRAINABLE_PREDICTIONS: tuple[str, ...] = ("eps", "v", "v_adjoint", "edm_adjoint")

#: default architecture of the shipped models (lean enough for a CPU; see docs/models.md).  Spectral
#: normalisation is opt-in: at operator norm 1 per layer it costs ~2 dB of reconstruction PSNR
#: (benchmarks/ablation.py); the shipped models state their Lipschitz bound from the actual layer norms
DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "channels": [32, 64, 128], "blocks_per_level": 1, "mid_blocks": 1, "patch": 2,
    "n_cond_channels": 1, "descriptor_dim": DESCRIPTOR_LENGTH, "spectral_norm": False,
    "sn_target": 1.0,
}


@dataclass
class TrainConfig:
    """Every setting of a training run (stored in the checkpoint's config)."""

    data: str
    modality: str
    out: str
    steps: int = 2000
    dim: str = "2d"
    batch_size: int = 16
    crop: int = 96
    extra_crops: tuple[int, ...] = ()  # 2D / 2.5D: further crop sizes, cycled step by step (`SliceSamples`)
    depth: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    lipschitz_penalty: float = 0.0
    lipschitz_target: float = 10.0
    schedule: str = "linear"
    prediction: str = "edm_adjoint"
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 10
    threads: int = 2
    init: str | None = None
    guess: str = "adjoint"  # conditioning image of k-space samples: "adjoint" or "cs_tv" (`medinvert.guess`)
    unrolled_weight: float = 0.0  # weight of the sampler-in-the-loop loss on k-space samples (`medinvert.train.unrolled`)
    unrolled_steps: tuple[int, ...] = (10,)  # step counts that loss unrolls, one drawn per step (`unrolled_step_count`)
    unrolled_method: str = "bdia"  # integrator it unrolls: "bdia" (twin of the default "exact") or "ddim"
    architecture: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ARCHITECTURE))

    def __post_init__(self) -> None:
        self.unrolled_steps = step_counts(self.unrolled_steps)  # an int is accepted (configs before session 8)

    def validate(self) -> None:
        if self.steps < 1:
            raise MedinvertError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or min((self.crop, *self.extra_crops)) < 16:
            raise MedinvertError(f"batch size must be >= 1 and crops >= 16 (got {self.batch_size}, "
                                 f"{', '.join(str(c) for c in (self.crop, *self.extra_crops))})")
        if self.guess not in GUESSES:
            raise MedinvertError(f"unknown --guess {self.guess!r}; valid: {', '.join(GUESSES)}")
        if self.guess != "adjoint" and self.dim == "3d":
            raise MedinvertError("--guess cs_tv applies to 2d / 2.5d training (3d patches take the adjoint)")
        if self.extra_crops and self.dim == "3d":
            raise MedinvertError("--extra-crops applies to 2d / 2.5d training (3d patches have one size)")
        if self.unrolled_weight < 0 or not self.unrolled_steps or min(self.unrolled_steps) < 1:
            raise MedinvertError(f"--unrolled-weight must be >= 0 and --unrolled-steps >= 1 (got {self.unrolled_weight}, "
                                 f"{' '.join(map(str, self.unrolled_steps))})")
        if self.unrolled_method not in UNROLLED_METHODS:
            raise MedinvertError(f"unknown --unrolled-method {self.unrolled_method!r}; valid: {', '.join(UNROLLED_METHODS)}")
        if self.unrolled_weight > 0 and (self.guess != "cs_tv" or self.dim != "2d" or self.prediction != "edm_adjoint"):
            raise MedinvertError("--unrolled-weight trains through the sampler of 2d edm_adjoint models with "
                                 "--guess cs_tv; other set-ups are not supported")
        if self.modality not in (*TRAINABLE_MODALITIES, "all"):
            raise MedinvertError(f"unknown modality {self.modality!r}; valid: {', '.join(TRAINABLE_MODALITIES)}, all")
        if self.prediction not in TRAINABLE_PREDICTIONS:
            raise MedinvertError(f"prediction must be one of {', '.join(TRAINABLE_PREDICTIONS)}, got {self.prediction!r}")
        if self.dim not in ("2d", "2.5d", "3d"):
            raise MedinvertError(f"unknown --dim {self.dim!r}; valid: 2d, 2.5d, 3d")
        if self.dim == "3d" and not 4 <= self.depth <= 256:
            raise MedinvertError(f"--depth must be in 4..256 slices, got {self.depth}")
        if (self.dim == "2.5d") != (int(self.architecture.get("neighbours", 0)) > 0):
            raise MedinvertError("--dim 2.5d needs --neighbours >= 1, and --neighbours applies only to --dim 2.5d")


def _learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _lipschitz_penalty(model: torch.nn.Module, net_in: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                       eps_out: torch.Tensor, target: float, generator: torch.Generator) -> torch.Tensor:
    """Hinge on the finite-difference ratio ||f(x + d) - f(x)|| / ||d|| per sample (d only on x_t)."""
    direction = torch.zeros_like(net_in)
    direction[:, :1] = torch.randn(net_in[:, :1].shape, generator=generator)
    direction = direction * _per_sample(1e-2 / direction.flatten(1).norm(dim=1).clamp_min(1e-12), net_in)
    moved = model(net_in + direction, t, cond)
    ratio = (moved - eps_out).flatten(1).norm(dim=1) / direction.flatten(1).norm(dim=1)
    return F.relu(ratio - target).pow(2).mean()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values (B,)`` shaped to broadcast over ``like (B, C, *spatial)`` (2D slices or 3D patches)."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def sample_times(schedule: Schedule, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` float64 diffusion times: half uniform on ``[1/N, 1]``, half from a log-normal noise
    level ``ln sigma ~ N(-1.0, 1.6^2)`` (the low-noise emphasis of Karras et al. 2022, sec. 5).

    Uniform times put only ~5 % of the samples below sigma = 0.3 on the linear schedule, yet the
    last sampling steps -- where fine detail is decided -- live there.
    """
    t_min = 1.0 / schedule.num_train_timesteps
    uniform = t_min + torch.rand(n, generator=generator, dtype=torch.float64) * (1 - t_min)
    log_sigma = -1.0 + 1.6 * torch.randn(n, generator=generator, dtype=torch.float64)
    sigma = log_sigma.exp().clamp(schedule.sigma_min, schedule.sigma_max)
    lognormal = schedule.t_of_sigma(sigma).clamp(t_min, 1.0)
    pick = torch.rand(n, generator=generator) < 0.5
    return torch.where(pick, lognormal, uniform)


def diffusion_loss(net: Callable[..., torch.Tensor], batch: dict[str, torch.Tensor], schedule: Schedule,
                   generator: torch.Generator, *, prediction: str = "v", cond_dropout: float = 0.1,
                   lipschitz_penalty: float = 0.0, lipschitz_target: float = 10.0,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The training objective of the module docstring for one batch of `SliceSamples`.

    ``batch``: ``x0, adjoint (B, 1, H, W)``, ``descriptor (B, K)``.  Times, noise and condition
    dropout are drawn from ``generator`` (CPU), so a fixed generator gives a fixed loss.
    """
    x0 = batch["x0"].to(device)
    adjoint = batch["adjoint"].to(device)
    cond = batch["descriptor"].to(device)
    n = x0.shape[0]
    t = sample_times(schedule, n, generator)
    abar = _per_sample(schedule.abar(t).to(torch.float32), x0).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    dropped = (torch.rand(n, generator=generator) < cond_dropout).to(device)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    net_in = torch.cat([x_t, adjoint * _per_sample(~dropped, adjoint)], dim=1)
    t32 = t.to(torch.float32).to(device)
    prediction_out = net(net_in, t32, cond, cond_drop=dropped)
    target = _target(prediction, x0, noise, abar, net_in[:, 1:2])
    loss = F.mse_loss(prediction_out, target)
    if lipschitz_penalty > 0:
        loss = loss + lipschitz_penalty * _lipschitz_penalty(
            lambda a, b, c: net(a, b, c, cond_drop=dropped), net_in, t32, cond, prediction_out, lipschitz_target, generator)
    return loss


def _target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor,
            guess: torch.Tensor) -> torch.Tensor:
    """Regression target of the network for ``x_t = sqrt(abar) x0 + sqrt(1 - abar) noise`` (all
    ``(B, 1, H, W)``, ``abar`` ``(B, 1, 1, 1)``); ``guess`` is the adjoint channel as fed (zeros when
    the condition is dropped).  See the module docstring and `medinvert.denoiser`."""
    if prediction == "eps":
        return noise
    if prediction == "edm_adjoint":
        sigma = ((1 - abar) / abar).sqrt()
        xbar = x0 + sigma * noise
        c_skip, c_out = edm_coefficients(sigma, guess_spread(guess))
        return (x0 - guess - c_skip * (xbar - guess)) / c_out
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    if prediction == "v_adjoint":  # v relative to the guess x0 = adjoint
        return v + (1 - abar).sqrt() * guess
    return v


def initial_state(initial: dict[str, Any], model: LipschitzUNet, path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of the ``--init`` checkpoint ``initial`` (its EMA) for ``model``.

    The architectures must match, with two function-preserving exceptions (neither with spectral
    normalisation, whose power iterations would rescale the copied weights):

    * a 2D checkpoint may start a 2.5D model of otherwise equal architecture: the stem's input columns
      of the neighbours' conditioning images are zero, so the 2.5D model starts as exactly the 2D one
      and learns to use the neighbours while fine-tuning;
    * a checkpoint may start a *deeper* model (more ``blocks_per_level`` / ``mid_blocks``,
      `deepened_state`): the new residual blocks start as the identity.
    """
    source = initial.get("ema_state", initial["state_dict"])
    architecture = dict(initial["config"].get("architecture") or {})
    if architecture == model.config:
        return source
    if model.config["spectral_norm"]:
        raise MedinvertError("--init checkpoint has a different architecture (a spectrally normalised model "
                             "cannot be widened or deepened)", path)
    if _is_deeper(model.config, architecture):
        return deepened_state(source, model)
    plain = {**model.config, "dim": "2d", "neighbours": 0}
    if architecture != plain:
        raise MedinvertError("--init checkpoint has a different architecture (only 2d -> 2.5d and more blocks "
                             "per level can start from it)", path)
    state = model.state_dict()
    widened = {}
    for name, value in state.items():
        old = source[name]
        if old.shape != value.shape:  # the stem: (C0, in_channels * patch^2, 3, 3), pixel_unshuffle order
            widened[name] = torch.zeros_like(value)
            widened[name][:, :old.shape[1]] = old
        else:
            widened[name] = old
    return widened


_DEPTH_KEYS = ("blocks_per_level", "mid_blocks")


def _is_deeper(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether ``new`` is ``old`` with at least as many blocks per level and at the coarsest level."""
    same_otherwise = {k: v for k, v in new.items() if k not in _DEPTH_KEYS} == \
        {k: v for k, v in old.items() if k not in _DEPTH_KEYS}
    return same_otherwise and all(int(new[k]) >= int(old.get(k, 1)) for k in _DEPTH_KEYS)


def deepened_state(source: dict[str, torch.Tensor], model: LipschitzUNet) -> dict[str, torch.Tensor]:
    """``model``'s state with the blocks of the shallower ``source`` in place and the extra blocks as identities.

    Block ``j`` of a level (``enc.i.j``, ``dec.i.j``, ``mid.j``) keeps its weights; every block that
    ``source`` lacks keeps ``model``'s random ``conv1`` but gets a zero ``conv2`` (its FiLM starts at
    zero anyway), so ``x + conv2(...) = x``: the deeper network computes exactly the source's function
    and training grows the new blocks from there (function-preserving deepening, Net2DeeperNet of Chen
    et al. 2016, with zero-initialised residual branches as in Bachlechner et al. 2020, ReZero).  Both
    block kinds of `medinvert.models.layers` end in ``conv2`` (`ResidualBlock`: ``x + conv2(...)``;
    `AdditiveCouplingBlock`: ``x2 + conv2(...)``), so a zero ``conv2`` makes either the identity.
    """
    state = model.state_dict()
    deepened = {}
    for name, value in state.items():
        if name in source:
            if source[name].shape != value.shape:
                raise MedinvertError(f"--init weight {name} has shape {tuple(source[name].shape)}, the deeper model "
                                     f"{tuple(value.shape)}")
            deepened[name] = source[name]
        elif ".conv2." in name:
            deepened[name] = torch.zeros_like(value)
        else:
            deepened[name] = value
    return deepened


def replica_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (identifies the exact weights of a replica)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_replicas_agree(model: torch.nn.Module, context: DistContext) -> list[str]:
    """All ranks' `replica_digest`; raises RuntimeError when DDP replicas diverged."""
    digest = replica_digest(model)
    if not context.active:
        return [digest]
    digests: list[str] = [""] * context.world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP replicas diverged: weight digests {digests}")
    return digests


def _ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float, step: int) -> None:
    """EMA of floating-point parameters; buffers (spectral-norm power-iteration vectors) are copied.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so that short runs are not
    dominated by the random initialisation (with a fixed 0.999 the initial weights still carry
    ``0.999^1500 = 22 %`` of the average after 1500 steps).
    """
    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in model.state_dict().items():
            if name in params and value.is_floating_point():
                ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                ema[name].copy_(value)


def _checkpoint_config(config: TrainConfig, case_ids: list[str], schedule_config: dict[str, Any],
                       step: int, seconds: float, last_loss: float | None, world_size: int = 1) -> dict[str, Any]:
    return {
        "modality": config.modality,
        "prediction": config.prediction,
        "schedule": schedule_config,
        "normalisation": {"kind": "robust_scale", "percentile": PERCENTILE,
                          "foreground_fraction": FOREGROUND_FRACTION, "computed_on": "adjoint A^H y"},
        "conditioning": {"descriptor_dim": DESCRIPTOR_LENGTH, "channels": ["adjoint_real"],
                         "guess": config.guess},
        "data": {"root": str(config.data), "cases": case_ids, "crop": config.crop},
        "training": {**{k: v for k, v in asdict(config).items() if k not in ("architecture",)},
                     "completed_steps": step, "seconds": round(seconds, 1), "final_loss": last_loss,
                     "world_size": world_size},
    }


def train(config: TrainConfig, context: DistContext, *, resume: bool = False, progress: bool = True) -> Path:
    """Run (or, with ``resume``, continue) training as in the module docstring; returns the checkpoint.

    An existing ``config.out`` without ``resume`` is refused (never overwritten).
    """
    config.validate()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(config.out)
    schedule = make_schedule(config.schedule)
    volumes, case_ids = load_training_volumes(config.data, config.modality)

    torch.manual_seed(config.seed)
    model = LipschitzUNet(dim=config.dim, **config.architecture).to(context.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.init is not None and not (resume and out.exists()):
        initial = read_checkpoint(config.init)  # fine-tuning: start from another run's EMA weights
        model.load_state_dict(initial_state(initial, model, config.init))
        inherited = guess_of_config(initial["config"])
        if inherited != config.guess and context.is_main:  # allowed (that is how cs_tv models start), but said
            print(f"note: --init {config.init} was trained with the {inherited} guess; this run uses --guess "
                  f"{config.guess}", file=sys.stderr, flush=True)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_step, elapsed = 0, 0.0
    if out.exists() and not resume:
        raise MedinvertError("checkpoint exists; pass --resume to continue it or choose another --out", out)
    if resume and out.exists():
        payload = read_checkpoint(out)
        if payload["config"].get("architecture") != model.config:
            raise MedinvertError("cannot resume: checkpoint architecture differs from this run's", out)
        recorded = payload["config"].get("training", {})
        # runs from before --unrolled-method unrolled DDIM; without the unrolled loss its settings do not matter
        recorded_unrolled = ((step_counts(recorded.get("unrolled_steps", 10)), recorded.get("unrolled_method", "ddim"))
                             if recorded.get("unrolled_weight", 0.0) else None)
        unrolled = (config.unrolled_steps, config.unrolled_method) if config.unrolled_weight else None
        if ((recorded.get("crop", config.crop), tuple(recorded.get("extra_crops", ())), recorded.get("guess", "adjoint"),
             recorded.get("unrolled_weight", 0.0), recorded_unrolled)
                != (config.crop, tuple(config.extra_crops), config.guess, config.unrolled_weight, unrolled)):
            raise MedinvertError("cannot resume: --crop / --extra-crops / --guess / --unrolled-* differ from the run "
                                 "being resumed (it would not repeat an uninterrupted run)", out)
        model.load_state_dict(payload["state_dict"])
        ema = {k: v.clone() for k, v in payload.get("ema_state", payload["state_dict"]).items()}
        if "optimizer_state" in payload:
            optimizer.load_state_dict(payload["optimizer_state"])
        start_step = int(payload["step"])
        elapsed = float(payload["config"].get("training", {}).get("seconds", 0.0))
    if start_step >= config.steps:
        return out

    net = DistributedDataParallel(model) if context.active else model
    remaining = config.steps - start_step
    per_step = config.batch_size * context.world_size
    if config.dim == "3d":
        dataset: Dataset = PatchSamples(volumes, remaining * per_step, seed=config.seed, crop=config.crop,
                                        depth=config.depth, first_index=start_step * per_step)
    else:
        dataset = SliceSamples(volumes, remaining * per_step, seed=config.seed, crop=config.crop,
                               first_index=start_step * per_step, neighbours=int(model.config["neighbours"]),
                               extra_crops=tuple(config.extra_crops), samples_per_step=per_step,
                               guess=config.guess, measurements=config.unrolled_weight > 0)
    sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=False,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=0)

    log_path = out.with_suffix(".log.jsonl")
    log_file = log_path.open("a") if context.is_main else None
    bar = None
    if progress and context.is_main:
        from tqdm import tqdm
        bar = tqdm(total=config.steps, initial=start_step, desc=f"train {config.modality}", unit="step")
    step, last_loss, started = start_step, None, time.perf_counter()

    def write_checkpoint() -> None:
        if context.is_main:
            seconds = elapsed + time.perf_counter() - started
            save_checkpoint(out, model, _checkpoint_config(config, case_ids, schedule.config, step, seconds, last_loss,
                                                           context.world_size),
                            ema_state=ema, optimizer_state=optimizer.state_dict(), step=step)

    try:
        model.train()
        for batch in loader:
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 1009 + context.rank)
            loss = diffusion_loss(net, batch, schedule, generator, prediction=config.prediction,
                                  cond_dropout=config.cond_dropout,
                                  lipschitz_penalty=config.lipschitz_penalty,
                                  lipschitz_target=config.lipschitz_target, device=context.device)
            if config.unrolled_weight > 0:
                unrolled_steps = unrolled_step_count(config.unrolled_steps, config.seed, step)
                unrolled = unrolled_loss(net, batch, schedule, steps=unrolled_steps,
                                         method=config.unrolled_method, device=context.device)
                if unrolled is not None:
                    loss = loss + config.unrolled_weight * unrolled
            lr = _learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            _ema_update(ema, model, config.ema_decay, step)
            step += 1
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise MedinvertError(f"training diverged at step {step} (loss {last_loss})", out)
            if log_file is not None and (step % config.log_every == 0 or step == config.steps):
                log_file.write(json.dumps({"step": step, "loss": last_loss, "lr": lr,
                                           "seconds": round(elapsed + time.perf_counter() - started, 2)}) + "\n")
                log_file.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}")
            if step % config.checkpoint_every == 0 and step < config.steps:
                write_checkpoint()
        digests = _check_replicas_agree(model, context)
        if log_file is not None:
            log_file.write(json.dumps({"step": step, "replica_digests": digests}) + "\n")
    finally:
        if step > start_step:
            write_checkpoint()
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    return out
