"""DDIM (Song et al. 2021, eq. 12 with eta = 0): Euler in DDIM-ODE coordinates; approximate inversion.

Generation, step ``i -> i+1`` (sigma decreasing), one NFE::

    xbar_{i+1} = xbar_i + (sigma_{i+1} - sigma_i) * eps(xbar_i, sigma_i)

Inversion, step ``i+1 -> i`` (sigma increasing), one NFE: the usual DDIM inversion (as in
Mokady et al. 2023 and diffusers' inverse scheduler), which needs eps at the unknown point ``x_i`` and
feeds the network the current latent ``x_{i+1}`` (VP coordinates) with the target level ``sigma_i``::

    xbar_i = xbar_{i+1} + (sigma_i - sigma_{i+1}) * eps(x_{i+1} sqrt(1 + sigma_i^2), sigma_i),
    x_{i+1} = xbar_{i+1} / sqrt(1 + sigma_{i+1}^2)

(substituting in ``x`` rather than ``xbar`` keeps the large top steps sane: at high noise ``x`` is
nearly constant along the flow while ``xbar`` grows like sigma), so ``generate(invert(x0))`` differs from ``x0`` by the accumulated mismatch (first order in the
step).  The network is never evaluated at sigma = 0.  NFE: ``steps`` in each direction.  First-order
accurate; the state stays in the dtype of the input.
"""

from __future__ import annotations

import torch

from medinvert.schedule import x_from_xbar
from medinvert.solvers.base import Callback, EpsModel, SolverSpec, check_sigmas, check_state_tensor, emit, eps_in_x

__all__ = ["generate", "invert", "SPEC"]


def generate(denoiser: EpsModel, state: torch.Tensor, sigmas: torch.Tensor, *, callback: Callback | None = None) -> torch.Tensor:
    """DDIM sampling from ``state`` = ``xbar`` at ``sigmas[0]`` (``(B, C, ...)``) to the clean image."""
    sig = check_sigmas(sigmas)
    xbar = check_state_tensor(state)
    steps = len(sig) - 1
    for i in range(steps):
        xbar = xbar + (sig[i + 1] - sig[i]) * denoiser(xbar, sig[i])
        emit(callback, method="ddim", direction="generate", step=i, steps=steps, sigma=sig[i + 1], state=xbar, nfe=denoiser.nfe)
    return xbar


def invert(denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, *, callback: Callback | None = None) -> torch.Tensor:
    """Approximate DDIM inversion of the clean image ``x0`` (``(B, C, ...)``); returns ``xbar`` at ``sigmas[0]``."""
    sig = check_sigmas(sigmas)
    xbar = check_state_tensor(x0, "x0")
    steps = len(sig) - 1
    for k, i in enumerate(range(steps - 1, -1, -1)):
        xbar = xbar + (sig[i] - sig[i + 1]) * eps_in_x(denoiser, x_from_xbar(xbar, sig[i + 1]), sig[i])
        emit(callback, method="ddim", direction="invert", step=k, steps=steps, sigma=sig[i], state=xbar, nfe=denoiser.nfe)
    return xbar


SPEC = SolverSpec(
    name="ddim",
    summary="DDIM: Euler in xbar coordinates; approximate inversion (the baseline)",
    nfe_per_step=1,
    exact_in="none",
    order=1,
    defaults={},
    _generate=generate,
    _invert=invert,
)
