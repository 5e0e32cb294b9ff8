"""Sampler-in-the-loop objective: train the network through the reconstruction it will be used in.

The denoising objective (`medinvert.train.loop.diffusion_loss`) teaches the network ``E[x0 | x_t, m]``
at one random noise level.  At inference the network instead runs ``steps`` times along a fixed grid,
each prediction replaced by its data-consistent projection (`medinvert.engine`), and the quality that
counts is the one of the *last* image.  For a model that refines a CS-TV guess these two goals
differ: at 4x the guess is already good (37-45 dB on held-out slices), and a network whose
per-step corrections are unbiased on average can still lower the final PSNR (docs/models.md, the
flair case).  Unrolling the sampler and back-propagating the final image's error through every step
(the training scheme of unrolled reconstruction networks, e.g. Aggarwal et al. 2019, MoDL, IEEE TMI
38(2); Hammernik et al. 2018, MRM 79(6); here the unrolled iteration is the sampler of the
probability-flow ODE itself) optimises exactly that.

For a k-space sample with guess ``m`` (the CS-TV image, `medinvert.guess`), normalised measurement
``y`` and mask ``M`` (all ``(B, 1, H, W)``), on the grid ``sigma_0 > ... > sigma_n = 0`` of the
engine's default for these models (trailing, `medinvert.engine.default_grid`):

    xbar_0 = m                                             (the engine's "guess" start)
    x0_i   = m + c_skip(s_i) (xbar_i - m) + c_out(s_i) F(xbar_i / sqrt(1 + s_i^2), m, t_i, c)  (`medinvert.denoiser`)
    x0_i  <- P_y(x0_i)                                     (`medinvert.engine.final_projection`)
    eps_i  = (xbar_i - x0_i) / s_i                         (`medinvert.engine.DataConsistentDenoiser`)

integrated by the package's own solver (`medinvert.solvers`): ``ddim`` (``xbar_{i+1} = x0_i + s_{i+1}
eps_i``) or ``bdia`` (default), the floating-point twin of the ``exact`` integrator that reconstructions
use by default (BDIA with gamma 1, Zhang et al. 2023; `medinvert.solvers.exact` runs it on a fixed-point
grid).  The two must not be swapped: a network trained through 3000 steps of DDIM alone did 0.5-4 dB
worse under ``exact`` than under ``ddim`` (docs/models.md, session 7), because BDIA's two-level recursion
also carries the previous state, whose errors the DDIM-trained network never had to correct.

and the loss is the mean over samples of ``log((||xbar_n - x0||^2 + d) / (||m - x0||^2 + d))``: the
PSNR change against the guess, in nepers (``10 / ln 10`` dB), with ``d`` = `_FLOOR` per pixel.  A plain
MSE would be ruled by the few samples whose guess is poor (a 48 x 48 crop at 12x: errors 100-1000x the
typical one); the log ratio weighs every sample's relative improvement alike, which is what a mean PSNR
over slices measures.

The step count ``n`` is drawn per optimisation step from a set (`unrolled_step_count`, e.g. 5, 10, 20).
Trained through one count only, the network learns the corrections of that grid alone: session 7's
models, unrolled through 10 BDIA steps, lost 3.3 dB at 20 steps under ``exact`` (docs/models.md).
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from medinvert.denoiser import Denoiser
from medinvert.engine import DataConsistentDenoiser, final_projection
from medinvert.errors import MedinvertError
from medinvert.operators.kspace import KspaceOperator
from medinvert.schedule import Schedule
from medinvert.solvers import get_solver

__all__ = ["UNROLLED_METHODS", "step_counts", "unrolled_step_count", "unrolled_reconstruction", "unrolled_loss"]

#: integrators the loss can unroll (`unrolled_reconstruction`)
UNROLLED_METHODS: tuple[str, ...] = ("bdia", "ddim")

#: per-pixel floor ``d`` of the loss's squared errors (normalised units; a 60 dB error at unit scale)
_FLOOR = 1e-6


def step_counts(value: int | Sequence[int]) -> tuple[int, ...]:
    """``unrolled_steps`` as recorded in a config (an int before session 8, a list since) -> sorted tuple."""
    counts = (value,) if isinstance(value, int) else tuple(value)
    return tuple(sorted({int(c) for c in counts}))


def unrolled_step_count(counts: Sequence[int], seed: int, step: int) -> int:
    """The step count the loss unrolls at optimisation step ``step``: drawn uniformly from ``counts``.

    Drawn from a generator seeded by ``(seed, step)`` alone, so a resumed run repeats an uninterrupted one
    and every DDP rank unrolls the same count (equal work per rank).  Drawn rather than cycled: cycling
    would lock each count to one crop size of the crop cycle (`medinvert.train.data.SliceSamples`).
    Training through several counts keeps the model good at each of them instead of at one only (session
    7's models, trained through 10 steps, lost 1.5-3 dB at 20; docs/models.md).
    """
    return int(random.Random(seed * 1_000_003 + step).choice(list(counts)))


def unrolled_reconstruction(net: Callable[..., torch.Tensor], guess: torch.Tensor, y: torch.Tensor,
                            mask: torch.Tensor, descriptor: torch.Tensor, schedule: Schedule,
                            steps: int, method: str = "bdia") -> torch.Tensor:
    """The engine's k-space reconstruction of a batch, differentiable in the network's parameters.

    Args:
        net: ``net(x (B, 2, H, W), t (B,), cond (B, K)) -> (B, 1, H, W)`` (an ``edm_adjoint`` network).
        guess: ``(B, 1, H, W)`` float32 conditioning image ``m`` (also the start).
        y: ``(B, 1, H, W)`` complex normalised centred k-space, zero off the mask.
        mask: ``(B, 1, H, W)`` bool sampling mask.
        descriptor: ``(B, K)`` corruption descriptor.
        schedule: the network's VP schedule.
        steps: sampling steps (trailing grid, as `medinvert.engine.default_grid` picks for these models).
        method: ``"bdia"`` (the floating-point twin of the default ``exact`` integrator, which is BDIA
            with gamma 1 on a fixed-point grid, `medinvert.solvers.exact`) or ``"ddim"``.

    Returns:
        ``(B, 1, H, W)`` float32 reconstruction (data-consistent, before intensity rescaling).
    """
    if method not in UNROLLED_METHODS:
        raise MedinvertError(f"unknown unrolled method {method!r}; valid: {', '.join(UNROLLED_METHODS)}")
    operator = KspaceOperator(mask)
    denoiser = Denoiser(net, schedule, prediction="edm_adjoint", cond=descriptor, extra=guess, grad=True)
    eps = DataConsistentDenoiser(denoiser, operator, y, sigma_y=0.0)  # the engine's per-step projection
    out = get_solver(method).generate(eps, guess, schedule.sigmas(steps, "trailing"))
    return final_projection(operator, out, y)


def unrolled_loss(net: Callable[..., torch.Tensor], batch: dict[str, torch.Tensor], schedule: Schedule, *,
                  steps: int, method: str = "bdia", device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The module's loss over the k-space samples of ``batch`` (``None`` when it has none).

    ``batch`` is a `medinvert.train.data.SliceSamples` batch with measurements: ``x0, adjoint (B, 1, H, W)``
    (``adjoint`` is the guess), ``descriptor (B, K)``, ``kspace (B, 1, H, W)`` complex and ``kspace_mask
    (B, 1, H, W)`` bool (all-false for samples of other corruption kinds, which are skipped).
    """
    mask = batch["kspace_mask"].to(device)
    chosen = mask.flatten(1).any(dim=1)
    if not bool(chosen.any()):
        return None
    x0 = batch["x0"].to(device)[chosen]
    guess = batch["adjoint"].to(device)[chosen, :1]
    y = batch["kspace"].to(device)[chosen]
    descriptor = batch["descriptor"].to(device)[chosen]
    out = unrolled_reconstruction(net, guess, y, mask[chosen], descriptor, schedule, steps, method)
    error = (out - x0).pow(2).flatten(1).mean(dim=1) + _FLOOR
    baseline = (guess - x0).pow(2).flatten(1).mean(dim=1) + _FLOOR
    return torch.log(error / baseline).mean()
