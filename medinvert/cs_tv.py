"""CS-TV: total-variation regularised reconstruction of real images from Cartesian k-space samples.

Per slice, for a *real* image ``x`` (``(H, W)``), solve

    min_x  0.5 ||M F x - y||_2^2 + lam TV(x),      TV(x) = sum_ij sqrt((D_1 x)_ij^2 + (D_2 x)_ij^2)

with ``F`` the centred orthonormal 2-D FFT (`medinvert.operators.fft2c`), ``M`` the 0/1 sampling
mask, ``y`` the measured (centred) k-space and ``D_1, D_2`` forward differences with a zero last
row / column (Neumann boundary), i.e. isotropic total variation (Rudin, Osher & Fatemi 1992; CS-MRI:
Lustig, Donoho & Pauly 2007, MRM 58(6)).

Solver: the first-order primal-dual algorithm of Chambolle & Pock (2011, J. Math. Imaging Vis. 40,
Algorithm 1 with theta = 1) on ``min_x G(x) + F(K x)`` with ``K = D`` (``||D||^2 <= 8``),
``F = lam ||.||_{2,1}`` (its conjugate ``F*`` is the indicator of ``{|p_ij| <= lam}``, hence the
projection) and ``G`` the data term:

    p^{n+1}  = proj_{|p_ij| <= lam}(p^n + s D xbar^n)                 (pointwise 2-vector clipping)
    x^{n+1}  = prox_{t G}(x^n - t D^T p^{n+1})
    xbar^{n+1} = 2 x^{n+1} - x^n,          with s t ||D||^2 <= 1.

The data prox has a closed form for real images.  For real ``x``, ``Re F^H M F x = F^H M_s F x`` with
the point-symmetrised mask ``M_s(f) = (M(f) + M(-f)) / 2`` (Hermitian symmetry of ``F x``), so

    prox_{t G}(v) = F^H [ F(v + t b) / (1 + t M_s) ],      b = Re F^H (M y)   (= A^T y).

``1 / (1 + t M_s)`` is a real, point-symmetric filter, i.e. a circular convolution, which commutes with
the circular shifts of the centred FFT; the prox is therefore computed with the *uncentred* real FFT
(``rfft2`` / ``irfft2``) and the filter moved to uncentred order once -- half the work of two complex
FFTs, same result to rounding.  Everything is batched over slices (``(B, H, W)`` tensors) in float64.

This module is both the classical baseline of `benchmarks/reconstruction.py` and the variational
guess of `medinvert.guess` (the conditioning image of models trained with ``guess = "cs_tv"``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from medinvert.operators.fft import fft2c, ifft2c

__all__ = ["gradient", "gradient_adjoint", "total_variation", "symmetric_mask", "data_term_normal", "data_prox",
           "objective", "cs_tv", "ITERATIONS", "TAU"]

#: primal-dual iterations and primal step (dual step 1 / (8 tau)); on 8x training slices tau = 5 reaches
#: an objective within 1.1 % of a 3000-iteration solution after 300 iterations (PSNR 0.1 dB short)
ITERATIONS = 300
TAU = 5.0
#: ||D||^2 <= 8 for forward differences in 2-D
_GRADIENT_NORM_SQ = 8.0


def gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences ``(..., H, W) -> (..., 2, H, W)``; zero in the last row / column."""
    g = x.new_zeros((*x.shape[:-2], 2, *x.shape[-2:]))
    torch.sub(x[..., 1:, :], x[..., :-1, :], out=g[..., 0, :-1, :])
    torch.sub(x[..., :, 1:], x[..., :, :-1], out=g[..., 1, :, :-1])
    return g


def gradient_adjoint(p: torch.Tensor) -> torch.Tensor:
    """``D^T p`` for ``p`` shaped ``(..., 2, H, W)`` -> ``(..., H, W)`` (minus the discrete divergence)."""
    p1, p2 = p[..., 0, :, :], p[..., 1, :, :]
    out = torch.zeros_like(p1)
    out[..., :-1, :] -= p1[..., :-1, :]
    out[..., 1:, :] += p1[..., :-1, :]
    out[..., :, :-1] -= p2[..., :, :-1]
    out[..., :, 1:] += p2[..., :, :-1]
    return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV of each image: ``(..., H, W) -> (...)``."""
    g = gradient(x)
    return torch.sqrt(g[..., 0, :, :] ** 2 + g[..., 1, :, :] ** 2).sum(dim=(-2, -1))


def _reflect_index(n: int) -> torch.Tensor:
    """Index of frequency ``-f`` for each centred index (zero frequency at ``n // 2``)."""
    centre = n // 2
    return (2 * centre - torch.arange(n)) % n


def symmetric_mask(mask: torch.Tensor) -> torch.Tensor:
    """``M_s(f) = (M(f) + M(-f)) / 2`` in centred k-space order, float64, same shape as ``mask``."""
    m = mask.to(torch.float64)
    flipped = m.index_select(-2, _reflect_index(m.shape[-2])).index_select(-1, _reflect_index(m.shape[-1]))
    return 0.5 * (m + flipped)


def data_term_normal(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``A^T A x = Re F^H M F x`` for real ``x`` ``(..., H, W)`` (computed directly, for checks)."""
    return ifft2c(fft2c(x) * mask.to(torch.float64)).real


def _prox_filter(mask: torch.Tensor, tau: float) -> torch.Tensor:
    """``1 / (1 + t M_s)`` in uncentred, half-spectrum (``rfft2``) order: ``(..., H, W // 2 + 1)``."""
    uncentred = torch.fft.ifftshift(symmetric_mask(mask), dim=(-2, -1))
    return 1.0 / (1.0 + tau * uncentred[..., : mask.shape[-1] // 2 + 1])


def _apply_filter(v: torch.Tensor, half_filter: torch.Tensor) -> torch.Tensor:
    """``F^H [filter * F v]`` for real ``v`` ``(..., H, W)`` and a point-symmetric real filter."""
    return torch.fft.irfft2(torch.fft.rfft2(v) * half_filter, s=v.shape[-2:])


def data_prox(v: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """``prox_{t G}(v)``: the real ``x`` solving ``(I + t A^T A) x = v + t b`` (``b = A^T y``), ``(..., H, W)``.

    Closed form ``F^H [F(v + t b) / (1 + t M_s)]`` (module docstring).
    """
    return _apply_filter(v + tau * b, _prox_filter(mask, tau))


def objective(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """``0.5 ||M F x - y||^2 + lam TV(x)`` per slice: ``x`` real ``(B, H, W)``, ``y`` complex -> ``(B,)``."""
    residual = fft2c(x) * mask.to(torch.float64) - y.to(torch.complex128) * mask.to(torch.float64)
    return 0.5 * (residual.abs() ** 2).sum(dim=(-2, -1)) + lam * total_variation(x)


def _weights(lam: float | torch.Tensor, batch: int) -> torch.Tensor:
    """TV weight per slice, ``(B, 1, 1, 1)`` float64 (a scalar is shared by the batch)."""
    weights = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
    if weights.numel() == 1:
        weights = weights.expand(batch)
    if weights.numel() != batch:
        raise ValueError(f"lam has {weights.numel()} values for {batch} slices")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"lam must be finite and non-negative, got {weights.tolist()}")
    return weights.reshape(batch, 1, 1, 1)


def cs_tv(y: torch.Tensor, mask: torch.Tensor, lam: float | torch.Tensor, *, iterations: int = ITERATIONS,
          x0: torch.Tensor | None = None, tau: float = TAU,
          callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Chambolle-Pock CS-TV reconstruction (module docstring) of a batch of slices.

    Args:
        y: measured centred k-space, complex ``(B, H, W)`` (values outside the mask are ignored).
        mask: bool / 0-1 ``(B, H, W)`` or ``(H, W)``, True = measured.
        lam: TV weight (>= 0), in the units of ``y``: one value, or one per slice ``(B,)``.
        iterations: primal-dual iterations.
        x0: real start ``(B, H, W)``; default the zero-filled real image ``b = Re F^H (M y)``.
        tau: primal step ``t``; the dual step is ``s = 1 / (8 t)`` so that ``s t ||D||^2 <= 1``.
        callback: called as ``callback(iteration, x)`` after every iteration (1-based).

    Returns:
        real float64 ``(B, H, W)`` reconstruction.
    """
    if y.ndim != 3:
        raise ValueError(f"y must be a batch of slices (B, H, W), got shape {tuple(y.shape)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be positive, got {tau}")
    weights = _weights(lam, y.shape[0])
    m = mask.to(torch.float64)
    b = ifft2c(y.to(torch.complex128) * m).real
    half_filter = _prox_filter(mask, tau)
    sigma = 1.0 / (_GRADIENT_NORM_SQ * tau)
    x = b.clone() if x0 is None else x0.to(torch.float64).clone()
    xbar = x.clone()
    p = gradient(torch.zeros_like(x))
    tb = tau * b
    for it in range(1, iterations + 1):
        p.add_(gradient(xbar), alpha=sigma)
        magnitude = torch.sqrt(p[..., 0, :, :] ** 2 + p[..., 1, :, :] ** 2).unsqueeze(-3)
        # projection onto |p_ij| <= lam (lam = 0: p = 0)
        p = torch.where(weights > 0, p / torch.clamp(magnitude / weights.clamp_min(1e-300), min=1.0),
                        torch.zeros_like(p))
        v = x - tau * gradient_adjoint(p)
        x_new = _apply_filter(v + tb, half_filter)
        xbar = 2.0 * x_new - x
        x = x_new
        if callback is not None:
            callback(it, x)
    return x
