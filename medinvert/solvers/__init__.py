"""Samplers and inverters, one module per method, registered by name in `SOLVERS`.

Every method is a pair of plain functions (k-diffusion style; state passed explicitly, nothing kept
on an object)::

    generate(denoiser, state, sigmas, *, callback=None, **options) -> x0
    invert(denoiser, x0, sigmas, *, callback=None, **options) -> state

with ``denoiser(xbar, sigma) -> eps`` (`medinvert.denoiser.Denoiser`) and ``sigmas`` a strictly
decreasing float64 grid ending with 0 (`medinvert.schedule.Schedule.sigmas`); see
`medinvert.solvers.base` for the conventions and docs/methods.md for the mathematics and measurements.

=========  ============  ======================  ==================================================
name       NFE / step    exact in                update
=========  ============  ======================  ==================================================
ddim       1             none                    Euler in xbar; approximate inversion
edict      2             exact arithmetic        coupled pair + mixing p (Wallace et al. 2022); pair in float64 by default
bdia       1             exact arithmetic        bi-directional DDIM increments (Zhang et al. 2023)
exact      1             floating point (bits)   BDIA gamma=1 / leapfrog / reversible Heun on int64
ode        adaptive      none (tolerance)        torchdiffeq odeint (dopri5, rk4, ...)
nulltext   3 + k_i       none (approximate)      guided DDIM + per-step Adam (k_i <= 10 iterations, each + 1 backward) on the null condition (Mokady et al. 2023)
negprompt  1 (2: edit)   none (approximate)      guidance-1 DDIM pivot, condition as negative (Miyake et al. 2023)
=========  ============  ======================  ==================================================
"""

from __future__ import annotations

from medinvert.errors import MedinvertError
from medinvert.solvers import bdia, ddim, edict, exact, negprompt, nulltext, ode
from medinvert.solvers.base import Callback, EpsModel, SolverSpec
from medinvert.solvers.bdia import BdiaState
from medinvert.solvers.edict import EdictState
from medinvert.solvers.exact import FixedPointState
from medinvert.solvers.nulltext import NullTextState

__all__ = [
    "SOLVERS",
    "get_solver",
    "SolverSpec",
    "Callback",
    "EpsModel",
    "BdiaState",
    "EdictState",
    "FixedPointState",
    "NullTextState",
]

#: method name -> `SolverSpec`
SOLVERS: dict[str, SolverSpec] = {spec.name: spec for spec in (ddim.SPEC, edict.SPEC, bdia.SPEC, exact.SPEC, ode.SPEC,
                                                               nulltext.SPEC, negprompt.SPEC)}


def get_solver(name: str) -> SolverSpec:
    """The registered method ``name``; `MedinvertError` listing the valid names otherwise."""
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise MedinvertError(f"unknown method {name!r}; valid: {', '.join(SOLVERS)}") from None
