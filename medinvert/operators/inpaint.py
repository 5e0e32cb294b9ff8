"""Inpainting (missing-region) operator: ``A x = M * x`` with ``M`` a 0/1 mask, 1 = kept / measured.

Measurements keep the image's shape (missing pixels are zero), so ``A`` is a diagonal 0/1 matrix:
self-adjoint, idempotent, and the data-consistency projection is a pixel-wise replacement.
"""

from __future__ import annotations

import torch

from medinvert.operators.base import MaskedOperator, as_bool_mask, as_weight

__all__ = ["InpaintOperator"]


class InpaintOperator(MaskedOperator):
    """Pixel mask over the last two dimensions.

    Args:
        mask: boolean (or 0/1) tensor broadcastable to the images ``(..., H, W)``; True = kept.
    """

    kind = "mask"

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = as_bool_mask(mask, "inpainting")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``M * x`` (missing pixels set to zero)."""
        return x * self._mask_like(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``M * y`` (the operator is self-adjoint)."""
        return y * self._mask_like(y)

    def data_consistency(self, x0_pred: torch.Tensor, y: torch.Tensor,
                         weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``(1 - lambda M) x0 + lambda M y``: kept pixels replaced by (or blended with) ``y``, missing
        pixels untouched."""
        lam = as_weight(weight, x0_pred) * self._mask_like(x0_pred)
        return x0_pred * (1 - lam) + lam * y.to(x0_pred.dtype)
