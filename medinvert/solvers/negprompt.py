"""Negative-prompt inversion (Miyake et al. 2023, "Negative-prompt Inversion: Fast Image Inversion for
Editing with Text-guided Diffusion Models", sec. 3.3): null-text inversion without the optimisation.

Null-text inversion (`medinvert.solvers.nulltext`) optimises, step by step, a null condition ``v_i``
that makes guided DDIM retrace a guidance-1 DDIM pivot.  Miyake et al. observe that the optimum is
approximately the condition itself: with ``v = c`` the guided prediction is

    eps_w = eps(x, c) + w (eps(x, c) - eps(x, c)) = eps(x, c)

for every ``w``, which is exactly the conditional prediction the pivot was built with.  Hence:

* ``invert``: DDIM inversion with guidance 1 (conditional branch only, `medinvert.solvers.ddim`),
  ``n`` NFE; the latent is the plain ``xbar`` tensor at ``sigmas[0]``;
* ``generate``: guided DDIM in which the unconditional branch is fed the *source* condition (the
  "negative prompt", option ``negative``; default: the denoiser's own condition) instead of the null
  condition.  Reconstructing with the source condition, the two branches coincide and the guided eps
  is the conditional eps bit-for-bit (``e + w (e - e) = e`` in floating point), so one network pass
  per step is evaluated (``n`` NFE); editing with another condition ``c'`` evaluates both branches,
  ``eps(c_src) + w (eps(c') - eps(c_src))`` (``2n`` NFE).

The round trip is therefore the guidance-1 DDIM round trip: approximate (first order in the step), no
optimisation, 1-2 NFE per step.  The guidance weight ``w`` (option ``guidance``; default: the
denoiser's weight if it is not 1, else 3.0) only matters for an edit.
"""

from __future__ import annotations

from typing import Any

import torch

from medinvert.errors import MedinvertError
from medinvert.solvers import ddim
from medinvert.solvers.base import Callback, EpsModel, SolverSpec, check_sigmas, check_state_tensor, emit
from medinvert.solvers.guided import Branches, guided, require_conditional, resolve_guidance

__all__ = ["generate", "invert", "SPEC"]

METHOD = "negprompt"


def _negative(negative: Any, cond: torch.Tensor, batch: int) -> torch.Tensor | None:
    """The negative condition as a tensor, or None when it equals the denoiser's condition."""
    if negative is None:
        return None
    try:
        neg = torch.as_tensor(negative.detach() if isinstance(negative, torch.Tensor) else negative, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise MedinvertError(f"negprompt option negative must be a descriptor vector, got {type(negative).__name__}") from None
    width = cond.shape[-1]
    if neg.ndim not in (1, 2) or neg.shape[-1] != width or (neg.ndim == 2 and neg.shape[0] not in (1, batch)):
        raise MedinvertError(f"negprompt option negative must have shape ({width},) or (B, {width}), got {tuple(neg.shape)}")
    if not bool(torch.isfinite(neg).all()):
        raise MedinvertError("negprompt option negative contains NaN or Inf")
    own = cond.detach().to(torch.float64)
    if torch.equal(neg.expand(batch, width), own.expand(batch, width)):
        return None
    return neg


def invert(
    denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, *, guidance: float | None = None,
    negative: Any = None, callback: Callback | None = None,
) -> torch.Tensor:
    """Guidance-1 DDIM inversion of ``x0`` (``(B, C, ...)``) under the denoiser's condition; returns
    ``xbar`` at ``sigmas[0]``.  ``guidance`` and ``negative`` are generation options, validated here so one
    option set serves both directions."""
    sig = check_sigmas(sigmas)
    x0 = check_state_tensor(x0, "x0")
    den = require_conditional(denoiser, METHOD)
    resolve_guidance(den, guidance, METHOD)
    _negative(negative, den.cond, x0.shape[0])  # type: ignore[arg-type]
    cond_only = den.replace(guidance=1.0, grad=False)

    def relay(info: dict) -> None:
        emit(callback, **{**info, "method": METHOD, "nfe": den.nfe + cond_only.nfe})

    out = ddim.invert(cond_only, x0, torch.tensor(sig, dtype=torch.float64), callback=relay)
    den.nfe += cond_only.nfe
    den.calls += cond_only.calls
    den.forward_calls += cond_only.forward_calls
    return out


def generate(
    denoiser: EpsModel, state: torch.Tensor, sigmas: torch.Tensor, *, guidance: float | None = None,
    negative: Any = None, callback: Callback | None = None,
) -> torch.Tensor:
    """Guided DDIM from ``state`` = ``xbar`` at ``sigmas[0]`` with the negative condition in the null branch.

    Args:
        denoiser: a conditional `medinvert.denoiser.Denoiser`; its ``cond`` is the target condition.
        state: ``(B, C, ...)`` latent from `invert` (or any ``xbar`` at ``sigmas[0]``).
        sigmas: decreasing float64 grid ending with 0.
        guidance: guidance weight ``w > 1`` (default: the denoiser's if not 1, else 3.0).
        negative: the source condition ``(K,)`` / ``(B, K)`` the image was inverted with; None (default)
            = the denoiser's condition (a reconstruction: 1 NFE per step).
        callback: per-step hook.
    """
    sig = check_sigmas(sigmas)
    xbar = check_state_tensor(state)
    den = require_conditional(denoiser, METHOD)
    w = resolve_guidance(den, guidance, METHOD)
    neg = _negative(negative, den.cond, xbar.shape[0])  # type: ignore[arg-type]
    branches = Branches(den, METHOD)
    steps = len(sig) - 1
    for i in range(steps):
        eps = branches.cond(xbar, sig[i])
        if neg is not None:
            eps = guided(branches.null(xbar, sig[i], neg.to(den.dtype)), eps, w)
        xbar = xbar + (sig[i + 1] - sig[i]) * eps
        emit(callback, method=METHOD, direction="generate", step=i, steps=steps, sigma=sig[i + 1], state=xbar,
             nfe=den.nfe)
    return xbar


SPEC = SolverSpec(
    name=METHOD,
    summary="negative-prompt inversion: guidance-1 DDIM pivot, the condition replaces the null branch (approximate)",
    nfe_per_step=1,
    exact_in="none",
    order=1,
    defaults={"guidance": None, "negative": None},
    _generate=generate,
    _invert=invert,
)
