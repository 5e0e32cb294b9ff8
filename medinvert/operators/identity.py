"""Identity operator for denoising: ``y = x + n`` (Gaussian) or ``y = |x + n|`` (Rician magnitude).

For Rician data the identity is the usual first-order model (the magnitude bias ``sqrt(x^2 + 2
sigma^2) - x`` is left to the prior); the data-consistency step is the weighted average
``x0 + lambda (y - x0)``.
"""

from __future__ import annotations

import torch

from medinvert.operators.base import LinearOperator, as_weight

__all__ = ["IdentityOperator"]


class IdentityOperator(LinearOperator):
    """``A = I`` on images ``(..., H, W)``."""

    kind = "noise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (a copy, so callers may modify the result in place)."""
        return x.clone()

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` (a copy)."""
        return y.clone()

    def data_consistency(self, x0_pred: torch.Tensor, y: torch.Tensor,
                         weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``x0 + lambda (y - x0)``."""
        lam = as_weight(weight, x0_pred)
        return x0_pred + lam * (y.to(x0_pred.dtype) - x0_pred)
