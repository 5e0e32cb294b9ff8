"""The probability-flow ODE integrated by torchdiffeq (Chen et al. 2018): the accuracy reference.

``d xbar / d sigma = eps(xbar, sigma)`` is integrated with ``torchdiffeq.odeint`` from ``sigmas[0]``
down to exactly ``sigma = 0`` (generation) or from 0 up to ``sigmas[0]`` (inversion); in ``xbar``
coordinates the right-hand side is finite at sigma = 0.  Adaptive methods (``dopri5`` default,
``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) take their own steps under ``rtol`` /
``atol`` and report the solution at the grid points; fixed-grid methods (``euler``, ``midpoint``,
``heun2``, ``heun3``, ``rk4``, ``explicit_adams``, ``implicit_adams``) step along ``sigmas`` itself
(unless ``options={"step_size": ...}``).  The NFE is whatever the solver used -- read it from the
denoiser's counter.  The callback is called once per grid point after the integration (adaptive
solvers do not stop at the grid points).  Accurate to the tolerance in both directions, not exactly
invertible.

Options: ``ode_method`` (the torchdiffeq method, default ``dopri5``), ``rtol``, ``atol``, ``options``
(passed to ``odeint``).  ``ode_method`` was called ``method`` before; that name collided with the
``method`` argument of `medinvert.invert` (which names the solver), so it is refused with a pointer
to the new name (`SolverSpec.renamed`), and latent files of format version 1 are upgraded on load.
"""

from __future__ import annotations

from typing import Any

import torch
from torchdiffeq import odeint

from medinvert.errors import MedinvertError
from medinvert.solvers.base import Callback, EpsModel, SolverSpec, check_sigmas, check_state_tensor, emit

__all__ = ["METHODS", "ADAPTIVE", "generate", "invert", "SPEC"]

#: torchdiffeq methods this solver accepts, with their order.
METHODS: dict[str, int] = {
    "dopri5": 5,
    "dopri8": 8,
    "bosh3": 3,
    "fehlberg2": 2,
    "adaptive_heun": 2,
    "euler": 1,
    "midpoint": 2,
    "heun2": 2,
    "heun3": 3,
    "rk4": 4,
    "explicit_adams": 4,
    "implicit_adams": 4,
}
#: the adaptive ones among them
ADAPTIVE: frozenset[str] = frozenset({"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"})


def _check(method: str, rtol: float, atol: float, options: dict[str, Any] | None) -> None:
    if not isinstance(method, str) or method not in METHODS:
        raise MedinvertError(f"unknown ode_method {method!r}; valid: {', '.join(METHODS)}")
    if not (rtol > 0 and atol > 0):
        raise MedinvertError(f"rtol and atol must be positive, got {rtol}, {atol}")
    if options is not None and not isinstance(options, dict):
        raise MedinvertError("ODE options must be a dict")


def _integrate(denoiser: EpsModel, y0: torch.Tensor, grid: list[float], method: str, rtol: float, atol: float,
               options: dict[str, Any] | None) -> torch.Tensor:
    t = torch.tensor(grid, dtype=torch.float64)
    opts = dict(options) if options else {}
    if method in ADAPTIVE and "step_t" not in opts:
        # adaptive torchdiffeq solvers step past the last output time and interpolate back; landing
        # a step on the end point keeps every evaluation inside [0, sigma_max]
        opts["step_t"] = t[-1:]

    def rhs(sigma: torch.Tensor, xbar: torch.Tensor) -> torch.Tensor:
        return denoiser(xbar, abs(float(sigma)))  # abs: sigma = 0 may arrive as -0.0 on a reversed grid

    return odeint(rhs, y0, t, rtol=rtol, atol=atol, method=method, options=opts or None)


def generate(
    denoiser: EpsModel,
    state: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    ode_method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Integrate from ``xbar`` at ``sigmas[0]`` (``(B, C, ...)``) to sigma = 0; returns the clean image."""
    sig = check_sigmas(sigmas)
    _check(ode_method, rtol, atol, options)
    xbar = check_state_tensor(state)
    path = _integrate(denoiser, xbar, sig, ode_method, rtol, atol, options)
    steps = len(sig) - 1
    for i in range(steps):
        emit(callback, method="ode", direction="generate", step=i, steps=steps, sigma=sig[i + 1], state=path[i + 1], nfe=denoiser.nfe)
    return path[-1]


def invert(
    denoiser: EpsModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    ode_method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Integrate from the clean image ``x0`` (sigma = 0) up to ``sigmas[0]``; returns ``xbar`` there."""
    sig = check_sigmas(sigmas)
    _check(ode_method, rtol, atol, options)
    x0 = check_state_tensor(x0, "x0")
    rising = sig[::-1]
    path = _integrate(denoiser, x0, rising, ode_method, rtol, atol, options)
    steps = len(sig) - 1
    for k in range(steps):
        emit(callback, method="ode", direction="invert", step=k, steps=steps, sigma=rising[k + 1], state=path[k + 1], nfe=denoiser.nfe)
    return path[-1]


SPEC = SolverSpec(
    name="ode",
    summary="probability-flow ODE with torchdiffeq (dopri5 default); accurate to tolerance, adaptive NFE",
    nfe_per_step=None,
    exact_in="none",
    order=None,
    defaults={"ode_method": "dopri5", "rtol": 1e-7, "atol": 1e-9, "options": None},
    _generate=generate,
    _invert=invert,
    renamed={"method": "ode_method"},
)
