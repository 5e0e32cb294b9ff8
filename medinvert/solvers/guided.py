"""What the guided-inversion peers (`nulltext`, `negprompt`) share: branch-wise evaluation of a
`medinvert.denoiser.Denoiser`, the guidance weight, and the guided combination.

Classifier-free guidance (Ho & Salimans 2022) combines a conditional and an unconditional ("null")
prediction, ``eps = eps_null + w (eps_cond - eps_null)``.  Null-text and negative-prompt inversion
change what the null branch sees, so they evaluate the two branches separately:

* `Branches.cond` -- the conditional branch alone (guidance 1, one network pass);
* `Branches.null` -- the unconditional branch with a given null condition (a descriptor ``(K,)`` or
  ``(B, K)`` passed to the network in place of its learned null condition), optionally with autograd
  enabled so that the null condition can be optimised.

Both run through `Denoiser.replace`, i.e. the very same input conversion, slice batching and output
conversion as the wrapped denoiser, and every network evaluation is added to the wrapped
denoiser's counters (`nfe`, `calls`, `forward_calls`), so a caller reading ``denoiser.nfe`` sees the
full cost.  `guided` is the one place the two branches are combined, used by inversion and by
generation alike (so a replayed trajectory is bit-identical to the one inversion followed).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medinvert.denoiser import Denoiser
from medinvert.errors import MedinvertError

__all__ = ["DEFAULT_GUIDANCE", "Branches", "require_conditional", "guidance_weight", "resolve_guidance", "guided"]

#: guidance weight used when neither the method option nor the denoiser sets one (w = 1 would make
#: the null branch irrelevant); Mokady et al. 2023 use 7.5 for Stable Diffusion, 3 suits the small
#: descriptor-conditioned networks here.
DEFAULT_GUIDANCE = 3.0


def require_conditional(denoiser: Any, method: str) -> Denoiser:
    """``denoiser`` as a conditional `Denoiser`, or `MedinvertError`.

    Guided inversion needs the branches separately (so a `Denoiser`, not any eps callable) and a
    condition ``c`` (``denoiser.cond``): without one the two branches coincide.
    """
    if not isinstance(denoiser, Denoiser):
        raise MedinvertError(f"{method} inversion needs a medinvert.denoiser.Denoiser (it evaluates the conditional and "
                             f"unconditional branches separately), got {type(denoiser).__name__}")
    if denoiser.cond is None:
        raise MedinvertError(f"{method} inversion needs a condition (the denoiser has cond=None); pass condition=...")
    return denoiser


def guidance_weight(option: Any, base: float, method: str, base_name: str = "the denoiser's guidance") -> float:
    """The guidance weight ``w`` of a guided-inversion method from its ``guidance`` option and a base weight.

    ``option`` when given (not None); else ``base`` when it is not 1; else `DEFAULT_GUIDANCE`.  An
    option that contradicts a base weight other than 1 is refused, and ``w`` must be finite and > 1
    (at ``w = 1`` the null branch has no effect).  ``base`` is the denoiser's weight (solver level,
    `resolve_guidance`) or the ``guidance`` argument of `medinvert.invert` (volume level, where the
    result becomes the latent's one ``guidance`` record).
    """
    base = float(base)
    if option is None:
        w = base if base != 1.0 else DEFAULT_GUIDANCE
    else:
        if isinstance(option, bool) or not isinstance(option, (int, float)):
            raise MedinvertError(f"{method} option guidance must be a number, got {option!r}")
        try:
            w = float(option)
        except OverflowError:  # an integer beyond float range
            raise MedinvertError(f"{method} option guidance {option} is out of range") from None
        if base not in (1.0, w):
            raise MedinvertError(f"{method}: option guidance={w} contradicts {base_name} {base}")
    if not math.isfinite(w) or w <= 1.0:
        raise MedinvertError(f"{method} needs a guidance weight w > 1, got {w}")
    return float(w)


def resolve_guidance(denoiser: Denoiser, option: float | None, method: str) -> float:
    """The guidance weight ``w`` of a guided-inversion method: `guidance_weight` of the method's
    ``guidance`` option and the denoiser's own weight."""
    return guidance_weight(option, denoiser.guidance, method)


def guided(eps_null: torch.Tensor, eps_cond: torch.Tensor, w: float) -> torch.Tensor:
    """``eps_null + w (eps_cond - eps_null)`` (same expression as `Denoiser`'s guidance)."""
    return eps_null + w * (eps_cond - eps_null)


def _null_rows(null_cond: torch.Tensor, batch: int, width: int, method: str) -> torch.Tensor:
    if not isinstance(null_cond, torch.Tensor) or null_cond.ndim not in (1, 2) or null_cond.shape[-1] != width:
        raise MedinvertError(f"{method}: a null condition must be a ({width},) or (B, {width}) tensor")
    if null_cond.ndim == 2 and null_cond.shape[0] not in (1, batch):
        raise MedinvertError(f"{method}: null condition batch {null_cond.shape[0]} does not match the state batch {batch}")
    return null_cond


class Branches:
    """The two guidance branches of ``parent`` evaluated one at a time (costs counted on ``parent``).

    Args:
        parent: a conditional `Denoiser` (see `require_conditional`).
        method: method name used in error messages.
    """

    def __init__(self, parent: Denoiser, method: str) -> None:
        self.parent = parent
        self.method = method
        self._cond = parent.replace(guidance=1.0, grad=False)

    @property
    def width(self) -> int:
        """Length ``K`` of the condition descriptor."""
        return int(self.parent.cond.shape[-1])  # type: ignore[union-attr]

    def initial_null(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Starting null condition ``(batch, K)``: the parent's ``null_cond`` if it has one, else zeros
        (the descriptor reserved for "no condition")."""
        start = self.parent.null_cond
        if start is None:
            return torch.zeros(batch, self.width, dtype=dtype)
        start = _null_rows(start, batch, self.width, self.method)
        return start.detach().to(dtype).expand(batch, self.width).clone()

    def cond(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        """Conditional eps ``(B, C, ...)`` (one network pass, no autograd)."""
        return self._counted(self._cond, xbar, sigma)

    def null(self, xbar: torch.Tensor, sigma: float, null_cond: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Unconditional eps ``(B, C, ...)`` with ``null_cond`` (``(K,)`` or ``(B, K)``) as the null condition.

        ``grad=True`` runs the network with autograd enabled (gradients flow to ``null_cond``).
        """
        _null_rows(null_cond, xbar.shape[0], self.width, self.method)
        branch = self.parent.replace(guidance=0.0, null_cond=null_cond, grad=grad)
        return self._counted(branch, xbar, sigma)

    def _counted(self, child: Denoiser, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        before = (child.nfe, child.calls, child.forward_calls)
        eps = child(xbar, sigma)
        self.parent.nfe += child.nfe - before[0]
        self.parent.calls += child.calls - before[1]
        self.parent.forward_calls += child.forward_calls - before[2]
        return eps
