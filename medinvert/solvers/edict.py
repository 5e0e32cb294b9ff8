"""EDICT (Wallace, Gokul & Naik 2022, "EDICT: Exact diffusion inversion via coupled transformations").

Two coupled copies ``(x, y)`` of the state in the original VP ``x`` coordinates.  Generation step
``i -> i+1`` (eq. 14 of the paper; ``a, b`` the DDIM coefficients of
`medinvert.schedule.ddim_coefficients`, eps evaluated at the noisier level ``sigma_i``), 2 NFE::

    x' = a x + b eps(y);     y' = a y + b eps(x')                  (affine coupling)
    x'' = p x' + (1 - p) y'; y'' = p y' + (1 - p) x''              (mixing, default p = 0.93)

Inversion undoes the four lines in reverse order (eq. 15), dividing by ``p`` twice and by ``a``::

    y' = (y'' - (1 - p) x'') / p;  x' = (x'' - (1 - p) y') / p
    y = (y' - b eps(x')) / a;      x = (x' - b eps(y)) / a

Exact in exact arithmetic (each line is an exact inverse), 2 NFE per step in both directions.
Parasitic mode: the mixing contracts ``y - x`` by ``p^2`` per generation step, so inversion stretches
it by ``1 / p^2`` per step (about 1.4e3 over 50 steps at p = 0.93): rounding errors of the pair grow
accordingly, which is why the paper runs in float64.  Generation from a tensor starts with
``x = y``; the returned image is the ``x`` component (``x`` and ``y`` agree to the method's accuracy).
First-order accurate (DDIM-like).
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

__all__ = ["EdictState", "generate", "invert", "SPEC"]


@dataclass(frozen=True)
class EdictState:
    """The EDICT pair, both ``(B, C, ...)`` in VP ``x`` coordinates, at ``sigmas[0]``; ``sigmas`` is
    the rest of the generation grid (down to 0) this state belongs to."""

    x: torch.Tensor
    y: torch.Tensor
    sigmas: tuple[float, ...]

    @property
    def sigma(self) -> float:
        """The noise level of the pair."""
        return self.sigmas[0]


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 < p <= 1.0:
        raise MedinvertError(f"EDICT mixing p must lie in (0, 1], got {p}")
    return p


def generate(
    denoiser: EpsModel, state: torch.Tensor | EdictState, sigmas: torch.Tensor, *, p: float = 0.93, callback: Callback | None = None
) -> torch.Tensor:
    """EDICT sampling; ``state`` is ``xbar`` at ``sigmas[0]`` or an `EdictState` from `invert`."""
    sig = check_sigmas(sigmas)
    p = _check_p(p)
    if isinstance(state, EdictState):
        check_grid(state.sigmas, sig, "EDICT state")
        x, y = state.x, state.y
    else:
        x = x_from_xbar(check_state_tensor(state), sig[0])
        y = x
    steps = len(sig) - 1
    for i in range(steps):
        a, b = ddim_coefficients(sig[i], sig[i + 1])
        x_inter = a * x + b * eps_in_x(denoiser, y, sig[i])
        y_inter = a * y + b * eps_in_x(denoiser, x_inter, sig[i])
        x = p * x_inter + (1 - p) * y_inter
        y = p * y_inter + (1 - p) * x
        emit(callback, method="edict", direction="generate", step=i, steps=steps, sigma=sig[i + 1],
             state=EdictState(x, y, tuple(sig[i + 1 :])), nfe=denoiser.nfe)
    return x


def invert(denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, *, p: float = 0.93, callback: Callback | None = None) -> EdictState:
    """Exact (in exact arithmetic) EDICT inversion of ``x0`` (``(B, C, ...)``); the pair at ``sigmas[0]``."""
    sig = check_sigmas(sigmas)
    p = _check_p(p)
    x = check_state_tensor(x0, "x0")
    y = x
    steps = len(sig) - 1
    for k, i in enumerate(range(steps - 1, -1, -1)):
        a, b = ddim_coefficients(sig[i], sig[i + 1])
        y_inter = (y - (1 - p) * x) / p
        x_inter = (x - (1 - p) * y_inter) / p
        y = (y_inter - b * eps_in_x(denoiser, x_inter, sig[i])) / a
        x = (x_inter - b * eps_in_x(denoiser, y, sig[i])) / a
        emit(callback, method="edict", direction="invert", step=k, steps=steps, sigma=sig[i],
             state=EdictState(x, y, tuple(sig[i:])), nfe=denoiser.nfe)
    return EdictState(x, y, tuple(sig))


SPEC = SolverSpec(
    name="edict",
    summary="EDICT: coupled pair with mixing p; exact in exact arithmetic, 2 NFE/step",
    nfe_per_step=2,
    exact_in="exact_arithmetic",
    order=1,
    defaults={"p": 0.93},
    _generate=generate,
    _invert=invert,
)
