"""BDIA (Zhang, Lewis & Kleijn 2023, "Exact diffusion inversion via bi-directional integration approximation").

Works in the original VP ``x`` coordinates with the DDIM increment
``D(i -> j | x_i) = (a_ij - 1) x_i + b_ij eps(x_i, sigma_i)`` (``a_ij, b_ij`` from
`medinvert.schedule.ddim_coefficients`), i.e. the DDIM step from level ``i`` to level ``j``
evaluated at ``x_i``.  With grid levels ``i = 0 .. n`` (``sigma_0 = sigma_max``, ``sigma_n = 0``),
generation computes each new level from the two before it, one NFE (eps at ``x_i``)::

    x_{i+1} = gamma (x_{i-1} - x_i) + x_i - gamma D(i -> i-1 | x_i) + D(i -> i+1 | x_i)

The state is the pair ``(x_{i-1}, x_i)``, passed explicitly.  The first step from a single tensor
is a plain DDIM step.  Inversion solves the same line for the older level::

    x_{i-1} = x_i + (x_{i+1} - x_i + gamma D(i -> i-1 | x_i) - D(i -> i+1 | x_i)) / gamma

starting from the clean image with one DDIM-inversion step to create its partner
(``x_{n-1} = DDIM(x_n, eps(x_n, sigma_{n-1}))``), and returns the pair at ``(sigma_0, sigma_1)``.
Exact in exact arithmetic.  NFE: generation ``steps`` from a tensor, ``steps - 1`` from a pair;
inversion ``steps``.  With gamma = 1 the update is second order on smooth grids (the two DDIM
increments cancel their leading errors); gamma = 0 is DDIM.

Parasitic mode: the homogeneous part ``x_{i+1} = gamma x_{i-1} + (1 - gamma) x_i`` has roots 1 and
``-gamma``: the spurious root is ``-gamma`` when generating and ``-1/gamma`` when inverting, so
gamma = 1 is neutral (may oscillate) and gamma < 1 amplifies rounding errors by ``gamma^-steps``
during inversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medinvert.errors import MedinvertError
from medinvert.schedule import ddim_coefficients, x_from_xbar
from medinvert.solvers.base import (
    Callback,
    EpsModel,
    SolverSpec,
    check_grid,
    check_sigmas,
    check_state_tensor,
    emit,
    eps_in_x,
)

__all__ = ["BdiaState", "ddim_increment", "generate", "invert", "SPEC"]


@dataclass(frozen=True)
class BdiaState:
    """The BDIA pair in VP ``x`` coordinates, both ``(B, C, ...)``: ``x`` at ``sigmas[0]`` and
    ``x_next`` at ``sigmas[1]``; ``sigmas`` is the rest of the generation grid (down to 0)."""

    x: torch.Tensor
    x_next: torch.Tensor
    sigmas: tuple[float, ...]

    @property
    def sigma(self) -> float:
        """The noise level of ``x``."""
        return self.sigmas[0]


def ddim_increment(x: torch.Tensor, eps: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """``D(from -> to | x) = (a - 1) x + b eps``: the DDIM step from ``sigma_from`` to ``sigma_to`` minus ``x``."""
    a, b = ddim_coefficients(sigma_from, sigma_to)
    return (a - 1.0) * x + b * eps


def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not 0.0 < gamma <= 1.0:
        raise MedinvertError(f"BDIA gamma must lie in (0, 1], got {gamma}")
    return gamma


def generate(
    denoiser: EpsModel, state: torch.Tensor | BdiaState, sigmas: torch.Tensor, *, gamma: float = 1.0, callback: Callback | None = None
) -> torch.Tensor:
    """BDIA sampling; ``state`` is ``xbar`` at ``sigmas[0]`` or a `BdiaState` from `invert`."""
    sig = check_sigmas(sigmas)
    gamma = _check_gamma(gamma)
    steps = len(sig) - 1
    if isinstance(state, BdiaState):
        check_grid(state.sigmas, sig, "BDIA state")
        prev, cur = state.x, state.x_next
    else:
        prev = x_from_xbar(check_state_tensor(state), sig[0])
        cur = prev + ddim_increment(prev, eps_in_x(denoiser, prev, sig[0]), sig[0], sig[1])
        emit(callback, method="bdia", direction="generate", step=0, steps=steps, sigma=sig[1],
             state=BdiaState(prev, cur, tuple(sig)), nfe=denoiser.nfe)
    for i in range(1, steps):
        e = eps_in_x(denoiser, cur, sig[i])
        new = gamma * (prev - cur) + cur - gamma * ddim_increment(cur, e, sig[i], sig[i - 1]) + ddim_increment(cur, e, sig[i], sig[i + 1])
        prev, cur = cur, new
        emit(callback, method="bdia", direction="generate", step=i, steps=steps, sigma=sig[i + 1],
             state=BdiaState(prev, cur, tuple(sig[i:])), nfe=denoiser.nfe)
    return cur


def invert(denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, *, gamma: float = 1.0, callback: Callback | None = None) -> BdiaState:
    """BDIA inversion of ``x0`` (``(B, C, ...)``); returns the pair at ``(sigmas[0], sigmas[1])``."""
    sig = check_sigmas(sigmas)
    gamma = _check_gamma(gamma)
    steps = len(sig) - 1
    if steps < 2:
        raise MedinvertError("BDIA inversion needs a grid of at least 2 steps")
    n = steps
    nxt = check_state_tensor(x0, "x0")  # level n
    cur = nxt + ddim_increment(nxt, eps_in_x(denoiser, nxt, sig[n - 1]), sig[n], sig[n - 1])  # level n-1
    emit(callback, method="bdia", direction="invert", step=0, steps=steps, sigma=sig[n - 1],
         state=BdiaState(cur, nxt, tuple(sig[n - 1 :])), nfe=denoiser.nfe)
    for k, i in enumerate(range(n - 1, 0, -1), start=1):
        e = eps_in_x(denoiser, cur, sig[i])
        older = cur + (nxt - cur + gamma * ddim_increment(cur, e, sig[i], sig[i - 1]) - ddim_increment(cur, e, sig[i], sig[i + 1])) / gamma
        nxt, cur = cur, older
        emit(callback, method="bdia", direction="invert", step=k, steps=steps, sigma=sig[i - 1],
             state=BdiaState(cur, nxt, tuple(sig[i - 1 :])), nfe=denoiser.nfe)
    return BdiaState(cur, nxt, tuple(sig))


SPEC = SolverSpec(
    name="bdia",
    summary="BDIA: bi-directional DDIM increments in x coordinates; exact in exact arithmetic at 1 NFE/step",
    nfe_per_step=1,
    exact_in="exact_arithmetic",
    order=2,
    defaults={"gamma": 1.0},
    _generate=generate,
    _invert=invert,
)
