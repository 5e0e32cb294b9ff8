"""Null-text inversion (Mokady et al. 2023, "Null-text Inversion for Editing Real Images using Guided
Diffusion Models", sec. 3 and Algorithm 1): guided DDIM made to retrace an unguided DDIM pivot by
optimising the null condition at every step.

Guided DDIM inversion drifts: with guidance ``w > 1`` the step ``xbar_{i+1} = xbar_i + (sigma_{i+1} -
sigma_i) eps_w`` amplifies the error of evaluating eps at the wrong point.  Null-text inversion keeps
the conditional branch and the sampler as they are and adapts only the unconditional branch:

1. **Pivot** -- DDIM inversion with guidance 1 (conditional branch only, `medinvert.solvers.ddim`):
   the trajectory ``xbar*_n = x0, xbar*_{n-1}, ..., xbar*_0`` (``n`` NFE).
2. **Per-step null optimisation**, walking down from ``xbar_0 = xbar*_0``, for ``i = 0 .. n-1``
   (``i = 0`` the noisiest step; the objective of sec. 3.2 in VP ``x`` coordinates
   ``x = xbar / sqrt(1 + sigma^2)``, the analogue of the paper's latent ``z_t``)::

       e_c = eps_cond(xbar_i, sigma_i)                                         (1 NFE, kept fixed)
       x_{i+1}(v) = x( xbar_i + (sigma_{i+1} - sigma_i) [eps_null(xbar_i, sigma_i; v) + w (e_c - eps_null)] )
       L_i(v) = mean |x_{i+1}(v) - x*_{i+1}|^2            (per sample, over its pixels)
       repeat up to N times, starting from v = v_{i-1}:
           forward L_i(v) (with autograd), backward, one Adam update of v (learning rate lr_i);
           stop once the L_i evaluated in this iteration was < tol_i (the update is kept)
       xbar_{i+1} = xbar_i + (sigma_{i+1} - sigma_i) guided(eps_null(xbar_i, sigma_i; v_i), e_c, w)

   Here the optimised "null-text embedding" is the null *condition descriptor* ``v`` ``(B, K)``, one
   per slice, that the `medinvert.denoiser.Denoiser` passes to the network's unconditional branch in
   place of its learned null condition (the network's learned null is an embedding the descriptor
   interface cannot reach; ``v`` starts at the denoiser's ``null_cond`` or, if it has none, at the
   all-zero descriptor reserved for "no condition").  A fresh Adam optimiser per step.  The gradient
   comes from `torch.autograd.grad` (the network's own parameters are never touched).  Each slice
   stops on its own (the paper inverts one image at a time): a slice whose loss fell below ``tol_i``
   keeps its updated ``v`` while the others go on.

Defaults = the published method (facts from the paper and the code released with it; no code of
theirs is used here): the paper runs ``N = 10`` inner iterations per step with Adam, guidance 7.5,
50 DDIM steps, early stopping, and reports about one minute per image on an A100; the released code
sets the learning rate of step ``i`` to ``1e-2 (1 - i / 100)`` and stops a step's inner loop once the
mean squared error (in the latent) is below ``1e-5 + 2e-5 i``, testing after the Adam update (so every
inner iteration costs one forward and one backward pass).  Options: ``inner_steps = N = 10``,
``lr = 1e-2`` and ``lr_decay = 1e-2`` (``lr_i = lr (1 - lr_decay i)``), ``tol = 1e-5`` and
``tol_growth = 2e-5`` (``tol_i = tol + tol_growth i``).  ``lr_decay = tol_growth = 0`` give a
constant rate and threshold.  The released code's last, state-advancing pass evaluates both branches
again; here the conditional eps ``e_c`` of the same point is reused (same bits, one pass less).

The latent is the pair ``(xbar_0, [v_0 .. v_{n-1}])`` (`NullTextState`); `generate` replays step 2's
last line with the stored ``v_i`` -- bit-for-bit the trajectory the optimisation followed -- so the
round-trip error is the optimisation residual at the last step, not zero: approximate inversion.

Cost (``n`` steps, NFE = forward network passes): inversion ``n`` (pivot) + per step ``1`` (cond)
``+ k_i`` (inner forward passes with autograd, ``1 <= k_i <= N``) ``+ 1`` (final null pass without
autograd), and ``k_i`` backward passes (`NullTextState.iterations` and `NullTextState.backward`);
with the defaults up to 13 NFE and 10 backward passes per step.  Generation: 2 NFE per step.  The
guidance weight ``w`` (option ``guidance``; default: the denoiser's weight if it is not 1, else 3.0)
is part of the state; in a `medinvert.latent.Latent` it is the latent's ``guidance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from medinvert.errors import MedinvertError
from medinvert.schedule import x_from_xbar
from medinvert.solvers import ddim
from medinvert.solvers.base import Callback, EpsModel, SolverSpec, check_grid, check_sigmas, check_state_tensor, emit
from medinvert.solvers.guided import Branches, guided, require_conditional, resolve_guidance

__all__ = ["NullTextState", "generate", "invert", "SPEC"]

METHOD = "nulltext"


@dataclass(frozen=True)
class NullTextState:
    """The null-text latent.

    Attributes:
        xbar: ``(B, C, ...)`` state at ``sigmas[0]`` (the pivot's top), dtype of the inverted image.
        null_conds: ``(n, B, K)`` optimised null condition of generation step ``i`` (``sigma_i -> sigma_{i+1}``),
            in the network's dtype.
        guidance: the guidance weight ``w`` the null conditions were optimised for.
        iterations: ``(n,)`` int64 inner forward passes ``k_i`` of each step.
        backward: ``(n,)`` int64 backward passes (Adam updates) of each step; equal to ``iterations``
            with the published loop (every inner iteration updates), kept as the cost record.
        sigmas: the generation grid (down to 0) this state belongs to.
    """

    xbar: torch.Tensor
    null_conds: torch.Tensor
    guidance: float
    iterations: torch.Tensor
    backward: torch.Tensor
    sigmas: tuple[float, ...]

    @property
    def sigma(self) -> float:
        """The noise level of ``xbar``."""
        return self.sigmas[0]


def _check_options(inner_steps: int, lr: float, lr_decay: float, tol: float, tol_growth: float,
                   steps: int | None = None) -> tuple[int, float, float, float, float]:
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise MedinvertError(f"nulltext inner_steps must be a positive integer, got {inner_steps!r}")
    lr, lr_decay, tol, tol_growth = float(lr), float(lr_decay), float(tol), float(tol_growth)
    if not (math.isfinite(lr) and lr > 0):
        raise MedinvertError(f"nulltext lr must be positive, got {lr}")
    if not (math.isfinite(lr_decay) and lr_decay >= 0):
        raise MedinvertError(f"nulltext lr_decay must be >= 0, got {lr_decay}")
    if not (math.isfinite(tol) and tol >= 0):
        raise MedinvertError(f"nulltext tol must be >= 0, got {tol}")
    if not (math.isfinite(tol_growth) and tol_growth >= 0):
        raise MedinvertError(f"nulltext tol_growth must be >= 0, got {tol_growth}")
    if steps is not None and not 1.0 - lr_decay * (steps - 1) > 0:
        raise MedinvertError(f"nulltext: lr_decay={lr_decay} makes the learning rate of step {steps - 1} "
                             f"lr (1 - lr_decay i) <= 0; lower lr_decay (the published 0.01 suits <= 100 steps)")
    return inner_steps, lr, lr_decay, tol, tol_growth


def _sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference ``(B,)``."""
    return (a - b).pow(2).reshape(a.shape[0], -1).mean(dim=1)


def _pivot(branches: Branches, x0: torch.Tensor, sig: list[float], callback: Callback | None) -> list[torch.Tensor]:
    """Guidance-1 DDIM inversion; returns ``xbar*`` at ``sigma_0 .. sigma_n`` (generation order)."""
    cond_only = branches.parent.replace(guidance=1.0, grad=False)
    base = branches.parent.nfe
    trajectory = [x0]

    def record(info: dict) -> None:
        trajectory.append(info["state"])
        emit(callback, method=METHOD, direction="invert", phase="pivot", step=info["step"], steps=info["steps"],
             sigma=info["sigma"], state=info["state"], nfe=base + cond_only.nfe)

    ddim.invert(cond_only, x0, torch.tensor(sig, dtype=torch.float64), callback=record)
    branches.parent.nfe += cond_only.nfe
    branches.parent.calls += cond_only.calls
    branches.parent.forward_calls += cond_only.forward_calls
    return trajectory[::-1]


def _step(xbar: torch.Tensor, sig_a: float, sig_b: float, eps: torch.Tensor) -> torch.Tensor:
    """The DDIM step ``xbar_b = xbar_a + (sigma_b - sigma_a) eps``."""
    return xbar + (sig_b - sig_a) * eps


def _optimise_null(
    branches: Branches, xbar: torch.Tensor, sig_a: float, sig_b: float, eps_cond: torch.Tensor, target_x: torch.Tensor,
    start: torch.Tensor, w: float, inner_steps: int, lr: float, tol: float,
) -> tuple[torch.Tensor, int, int, float]:
    """Adam on the null condition of one step (learning rate ``lr``, threshold ``tol``); returns
    ``(v (B, K), forward passes, backward passes, last loss)``, the loss the largest over the batch."""
    v = start.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([v], lr=lr)
    active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    kept = v.detach().clone()  # final values of the slices that already stopped
    forwards = backwards = 0
    loss = float("inf")
    for _ in range(inner_steps):
        eps_null = branches.null(xbar, sig_a, v, grad=True)
        forwards += 1
        moved = x_from_xbar(_step(xbar, sig_a, sig_b, guided(eps_null, eps_cond, w)), sig_b)
        per_sample = _sample_mse(moved, target_x)
        losses = per_sample.detach().to(v.device)
        loss = float(losses[active].max())
        if not math.isfinite(loss):
            raise MedinvertError(f"nulltext: the null-condition loss became {loss} at sigma={sig_a:.6g}; lower lr")
        (grad,) = torch.autograd.grad(per_sample.sum(), v)
        v.grad = grad
        optimiser.step()
        backwards += 1
        with torch.no_grad():
            v[~active] = kept[~active]  # stopped slices keep their value
            done = active & (losses < tol)
            kept[done] = v[done]
        active &= ~done
        if not bool(active.any()):
            break
    return v.detach(), forwards, backwards, loss


def invert(
    denoiser: EpsModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    guidance: float | None = None,
    inner_steps: int = 10,
    lr: float = 1e-2,
    lr_decay: float = 1e-2,
    tol: float = 1e-5,
    tol_growth: float = 2e-5,
    callback: Callback | None = None,
) -> NullTextState:
    """Null-text inversion of ``x0`` (``(B, C, ...)``) on the grid ``sigmas``.

    Args:
        denoiser: a conditional `medinvert.denoiser.Denoiser` (``cond`` set).
        x0: the clean images; the state keeps their dtype.
        sigmas: decreasing float64 grid ending with 0.
        guidance: guidance weight ``w > 1`` (default: the denoiser's if not 1, else 3.0).
        inner_steps: maximum inner iterations (forward, backward, Adam update) per step (published: 10).
        lr, lr_decay: Adam learning rate of step ``i``: ``lr (1 - lr_decay i)`` (published: 1e-2, 1e-2).
        tol, tol_growth: a slice stops its step-``i`` optimisation once its mean squared error (in ``x``)
            was < ``tol + tol_growth i`` (published: 1e-5, 2e-5).
        callback: receives the pivot steps (``phase="pivot"``) and the optimisation steps
            (``phase="null_optimisation"``, with ``iterations``, ``backward`` and ``loss``).

    Raises:
        MedinvertError: no condition, ``w <= 1``, bad options, or a non-finite loss.
    """
    sig = check_sigmas(sigmas)
    x0 = check_state_tensor(x0, "x0")
    den = require_conditional(denoiser, METHOD)
    w = resolve_guidance(den, guidance, METHOD)
    steps = len(sig) - 1
    inner_steps, lr, lr_decay, tol, tol_growth = _check_options(inner_steps, lr, lr_decay, tol, tol_growth, steps)
    branches = Branches(den, METHOD)
    pivot = _pivot(branches, x0, sig, callback)
    v = branches.initial_null(x0.shape[0], den.dtype)
    xbar = pivot[0]
    nulls, iterations, backward = [], [], []
    for i in range(steps):
        eps_cond = branches.cond(xbar, sig[i])
        target = x_from_xbar(pivot[i + 1], sig[i + 1])
        v, forwards, backwards, loss = _optimise_null(branches, xbar, sig[i], sig[i + 1], eps_cond, target, v, w,
                                                      inner_steps, lr * (1.0 - lr_decay * i), tol + tol_growth * i)
        # the step generation will replay: autograd off, exactly as in `generate`
        xbar = _step(xbar, sig[i], sig[i + 1], guided(branches.null(xbar, sig[i], v), eps_cond, w))
        nulls.append(v)
        iterations.append(forwards)
        backward.append(backwards)
        emit(callback, method=METHOD, direction="invert", phase="null_optimisation", step=i, steps=steps,
             sigma=sig[i + 1], state=xbar, nfe=den.nfe, iterations=forwards, backward=backwards, loss=loss)
    return NullTextState(
        xbar=pivot[0], null_conds=torch.stack(nulls), guidance=w,
        iterations=torch.tensor(iterations, dtype=torch.int64), backward=torch.tensor(backward, dtype=torch.int64),
        sigmas=tuple(sig),
    )


def generate(
    denoiser: EpsModel,
    state: NullTextState,
    sigmas: torch.Tensor,
    *,
    guidance: float | None = None,
    inner_steps: int = 10,
    lr: float = 1e-2,
    lr_decay: float = 1e-2,
    tol: float = 1e-5,
    tol_growth: float = 2e-5,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Guided DDIM from a `NullTextState`, the null branch fed the stored ``v_i`` at step ``i`` (2 NFE/step).

    The conditional branch uses the denoiser's condition (the inversion's for a reconstruction, another
    one for an edit).  ``guidance`` must be None or the state's weight; ``inner_steps``, ``lr``,
    ``lr_decay``, ``tol`` and ``tol_growth`` are inversion options, validated (and unused) so one option
    set serves both directions.
    """
    _check_options(inner_steps, lr, lr_decay, tol, tol_growth)
    sig = check_sigmas(sigmas)
    if not isinstance(state, NullTextState):
        raise MedinvertError("nulltext generates from the NullTextState its inversion returned (it holds the per-step "
                             "null conditions); for fresh noise use ddim with guidance")
    check_grid(state.sigmas, sig, "null-text state")
    den = require_conditional(denoiser, METHOD)
    w = float(state.guidance)
    if guidance is not None and float(guidance) != w:
        raise MedinvertError(f"nulltext: the null conditions were optimised for guidance {w}, not {guidance}")
    steps = len(sig) - 1
    if state.null_conds.ndim != 3 or state.null_conds.shape[0] != steps or state.null_conds.shape[1] != state.xbar.shape[0]:
        raise MedinvertError(f"nulltext: null_conds of shape {tuple(state.null_conds.shape)} do not fit {steps} steps "
                             f"and a batch of {state.xbar.shape[0]}")
    branches = Branches(den, METHOD)
    xbar = check_state_tensor(state.xbar)
    for i in range(steps):
        eps_cond = branches.cond(xbar, sig[i])
        xbar = _step(xbar, sig[i], sig[i + 1], guided(branches.null(xbar, sig[i], state.null_conds[i]), eps_cond, w))
        emit(callback, method=METHOD, direction="generate", step=i, steps=steps, sigma=sig[i + 1], state=xbar,
             nfe=den.nfe)
    return xbar


SPEC = SolverSpec(
    name=METHOD,
    summary="null-text inversion: per-step Adam on the null condition around a guidance-1 DDIM pivot (approximate)",
    nfe_per_step=None,
    exact_in="none",
    order=1,
    defaults={"guidance": None, "inner_steps": 10, "lr": 1e-2, "lr_decay": 1e-2, "tol": 1e-5, "tol_growth": 2e-5},
    _generate=generate,
    _invert=invert,
)

