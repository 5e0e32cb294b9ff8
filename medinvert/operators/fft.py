"""Orthonormal, centred 2-D FFT over the last two dimensions.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` and its inverse ``ifft2c``; "centred" means
the zero frequency sits at index ``(H // 2, W // 2)`` (numpy's ``fftshift`` convention, also for odd
sizes), "orthonormal" means ``ifft2c = fft2c^H = fft2c^{-1}``, so the FFT preserves inner products.
Both wrap MONAI's `fftn_centered_t` / `ifftn_centered_t` (``monai.networks.blocks.fft_utils_t``),
which compute exactly this on a real/imaginary-last layout.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.fft_utils_t import fftn_centered_t, ifftn_centered_t

__all__ = ["fft2c", "ifft2c", "complex_dtype_for"]


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """complex128 for float64 / complex128 inputs, complex64 otherwise."""
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    if not x.is_complex():
        x = x.to(complex_dtype_for(x.dtype))
    return x.contiguous()


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT of ``x`` (real or complex, ``(..., H, W)``) -> complex ``(..., H, W)``."""
    out = fftn_centered_t(torch.view_as_real(_as_complex(x)), spatial_dims=2, is_complex=True)
    return torch.view_as_complex(out.contiguous())


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2-D FFT of k-space ``k`` (``(..., H, W)``) -> complex image."""
    out = ifftn_centered_t(torch.view_as_real(_as_complex(k)), spatial_dims=2, is_complex=True)
    return torch.view_as_complex(out.contiguous())
