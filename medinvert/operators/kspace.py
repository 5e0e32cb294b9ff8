"""Cartesian / 2-D k-space undersampling: ``A x = M * F x`` with ``F`` the centred orthonormal 2-D FFT.

``M`` is a boolean sampling mask in centred k-space order (entry ``(i, j)`` = sample at frequency
index ``(i - H // 2, j - W // 2)``), shaped ``(H, W)`` (one mask for every slice) or anything that
broadcasts against the image batch, e.g. ``(Z, H, W)``.  Unmeasured samples of ``A x`` are zero, so
measurements keep the image's shape.  Because ``F`` is unitary and ``M`` a 0/1 diagonal,
``A^H y = F^H (M * y)`` and the data-consistency step has a closed form.
"""

from __future__ import annotations

import torch

from medinvert.operators.base import MaskedOperator, as_bool_mask, as_weight
from medinvert.operators.fft import fft2c, ifft2c

__all__ = ["KspaceOperator"]


class KspaceOperator(MaskedOperator):
    """Masked centred 2-D Fourier transform over the last two dimensions.

    Args:
        mask: boolean (or 0/1) tensor ``(..., H, W)`` broadcastable to the images; True = measured.
    """

    kind = "kspace"

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = as_bool_mask(mask, "k-space", min_ndim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``M * F x``: complex k-space ``(..., H, W)`` (zeros where not measured)."""
        k = fft2c(x)
        return k * self._mask_like(k)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``F^H (M * y)``: complex image ``(..., H, W)``; for real images the adjoint is its real part."""
        return ifft2c(y * self._mask_like(y))

    def data_consistency(self, x0_pred: torch.Tensor, y: torch.Tensor,
                         weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``F^H((1 - lambda M) F x0 + lambda M y)``.

        With ``lambda = 1`` this is the orthogonal projection onto ``{x : M F x = M y}`` (measured
        samples replaced by ``y``, unmeasured ones untouched); smaller ``lambda`` blends the measured
        samples (noise-aware soft consistency).  A complex ``x0_pred`` gets the complex result; a real
        one gets its real part (images are real; the imaginary part is what the mask cannot explain).
        """
        k = fft2c(x0_pred)
        lam = as_weight(weight, k) * self._mask_like(k)
        out = ifft2c(k * (1 - lam) + lam * y.to(k.dtype))
        return out if x0_pred.is_complex() else out.real.to(x0_pred.dtype)
