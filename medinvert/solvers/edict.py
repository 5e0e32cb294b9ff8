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

State precision (option ``state_dtype``, default ``"float64"``).  The pair and every line above (the
affine couplings, the mixing and the divisions by ``p`` and ``a``) are computed in ``state_dtype``;
the network still runs in its own dtype (the denoiser casts its input down and returns eps in the
state's dtype).  Generation returns the image in ``state_dtype`` (the volume API rounds it to
float32 once, at the end).  Why: a float32 pair loses most at the top of the grid -- on the shipped
t1 model at 10 linear steps, rounding the otherwise float64 pair to float32 once at sigma 157 costs
8e-4 relative, at sigma 60 1.6e-4, below sigma 6 <= 2e-6 (docs/methods.md) -- and the coupled steps
there amplify pair differences.  With the float64 pair the network still sees float32 inputs, which
are the same bits in both directions unless a float64 value straddles a float32 rounding boundary, so
eps matches and the float32 round trip is 2.4e-7 / 3.9e-7 / 4.5e-9 relative at 10 / 20 / 50 steps
(float32 pair: 1.6e-3 / 1.6e-3 / 6.4e-5; docs/benchmarks.md), for 2-4 % more time.
``state_dtype="float32"`` keeps the pair in float32 too.  The paper's code runs everything in
float64.  A state passed to `generate` must have the dtype of ``state_dtype``.
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


#: state precisions accepted by the ``state_dtype`` option
STATE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def _state_dtype(name: str) -> torch.dtype:
    if not isinstance(name, str) or name not in STATE_DTYPES:
        raise MedinvertError(f"EDICT state_dtype must be one of {', '.join(STATE_DTYPES)}, got {name!r}")
    return STATE_DTYPES[name]


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 < p <= 1.0:
        raise MedinvertError(f"EDICT mixing p must lie in (0, 1], got {p}")
    return p


def generate(
    denoiser: EpsModel, state: torch.Tensor | EdictState, sigmas: torch.Tensor, *, p: float = 0.93,
    state_dtype: str = "float64", callback: Callback | None = None
) -> torch.Tensor:
    """EDICT sampling; ``state`` is ``xbar`` at ``sigmas[0]`` or an `EdictState` from `invert`.

    Returns the ``x`` component in ``state_dtype`` (see the module docstring).
    """
    sig = check_sigmas(sigmas)
    p = _check_p(p)
    dtype = _state_dtype(state_dtype)
    if isinstance(state, EdictState):
        check_grid(state.sigmas, sig, "EDICT state")
        if state.x.dtype != dtype or state.y.dtype != dtype:
            raise MedinvertError(f"the EDICT state is {str(state.x.dtype).replace('torch.', '')}, but state_dtype is "
                                 f"{state_dtype!r}; generate with the state_dtype used for inversion")
        x, y = state.x, state.y
    else:
        x = x_from_xbar(check_state_tensor(state).to(dtype), sig[0])
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


def invert(denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, *, p: float = 0.93, state_dtype: str = "float64",
           callback: Callback | None = None) -> EdictState:
    """Exact (in exact arithmetic) EDICT inversion of ``x0`` (``(B, C, ...)``); the pair at ``sigmas[0]``,
    in ``state_dtype``."""
    sig = check_sigmas(sigmas)
    p = _check_p(p)
    x = check_state_tensor(x0, "x0").to(_state_dtype(state_dtype))
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
    summary="EDICT: coupled pair with mixing p (pair arithmetic in float64 by default); exact in exact arithmetic, 2 NFE/step",
    nfe_per_step=2,
    exact_in="exact_arithmetic",
    order=1,
    defaults={"p": 0.93, "state_dtype": "float64"},
    _generate=generate,
    _invert=invert,
)
