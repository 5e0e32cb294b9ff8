"""CS-TV baseline for Cartesian k-space undersampling: the classical compressed-sensing reference.

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

    prox_{t G}(v) = F^H [ F(v + t b) / (1 + t M_s) ],      b = Re F^H (M y)   (= A^T y),

which is real because ``M_s`` is point-symmetric.  Everything is batched over slices
(``(B, H, W)`` tensors) in float64.  The regularisation weight ``lam`` lives in the engine's
normalised units (images divided by `medinvert.intensity.robust_scale` of the adjoint ``A^T y``), so
one value per acceleration transfers across volumes; `TUNED_LAMBDA` holds the values chosen by
`tune_lambda` on training slices (see ``docs/benchmarks.md``, "Reconstruction").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from medinvert.operators.fft import fft2c, ifft2c

__all__ = ["TUNED_LAMBDA", "LAMBDA_GRID", "gradient", "gradient_adjoint", "total_variation", "symmetric_mask",
           "data_term_normal", "data_prox", "objective", "cs_tv", "TuningResult", "tune_lambda", "ITERATIONS", "TAU"]

#: lam per acceleration chosen by `tune_lambda` on training slices of BraTS2021_00001 (t1), then frozen
#: (normalised intensity units; grid `LAMBDA_GRID`; `ITERATIONS` iterations; see docs/benchmarks.md)
TUNED_LAMBDA: dict[int, float] = {4: 1e-3, 8: 2e-3}
#: the grid searched by `tune_lambda` (log-spaced, normalised units)
LAMBDA_GRID: tuple[float, ...] = (2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)
#: primal-dual iterations and primal step (dual step 1 / (8 tau)); on 8x training slices tau = 5 reaches
#: an objective within 1.1 % of a 3000-iteration solution after 300 iterations (PSNR 0.1 dB short)
ITERATIONS = 300
TAU = 5.0
#: ||D||^2 <= 8 for forward differences in 2-D
_GRADIENT_NORM_SQ = 8.0


def gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences ``(..., H, W) -> (..., 2, H, W)``; zero in the last row / column."""
    g = x.new_zeros((*x.shape[:-2], 2, *x.shape[-2:]))
    g[..., 0, :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    g[..., 1, :, :-1] = x[..., :, 1:] - x[..., :, :-1]
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


def data_prox(v: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """``prox_{t G}(v)``: the real ``x`` solving ``(I + t A^T A) x = v + t b`` (``b = A^T y``), ``(..., H, W)``.

    Closed form ``F^H [F(v + t b) / (1 + t M_s)]`` (module docstring).
    """
    return ifft2c(fft2c(v + tau * b) / (1.0 + tau * symmetric_mask(mask))).real


def objective(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """``0.5 ||M F x - y||^2 + lam TV(x)`` per slice: ``x`` real ``(B, H, W)``, ``y`` complex -> ``(B,)``."""
    residual = fft2c(x) * mask.to(torch.float64) - y.to(torch.complex128) * mask.to(torch.float64)
    return 0.5 * (residual.abs() ** 2).sum(dim=(-2, -1)) + lam * total_variation(x)


def cs_tv(y: torch.Tensor, mask: torch.Tensor, lam: float, *, iterations: int = ITERATIONS,
          x0: torch.Tensor | None = None, tau: float = TAU,
          callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Chambolle-Pock CS-TV reconstruction (module docstring) of a batch of slices.

    Args:
        y: measured centred k-space, complex ``(B, H, W)`` (values outside the mask are ignored).
        mask: bool / 0-1 ``(B, H, W)`` or ``(H, W)``, True = measured.
        lam: TV weight (>= 0), in the units of ``y``.
        iterations: primal-dual iterations.
        x0: real start ``(B, H, W)``; default the zero-filled real image ``b = Re F^H (M y)``.
        tau: primal step ``t``; the dual step is ``s = 1 / (8 t)`` so that ``s t ||D||^2 <= 1``.
        callback: called as ``callback(iteration, x)`` after every iteration (1-based).

    Returns:
        real float64 ``(B, H, W)`` reconstruction.
    """
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be finite and non-negative, got {lam}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    m = mask.to(torch.float64)
    b = ifft2c(y.to(torch.complex128) * m).real
    sigma = 1.0 / (_GRADIENT_NORM_SQ * tau)
    x = b.clone() if x0 is None else x0.to(torch.float64).clone()
    xbar = x.clone()
    p = gradient(torch.zeros_like(x))
    for it in range(1, iterations + 1):
        p = p + sigma * gradient(xbar)
        magnitude = torch.sqrt(p[..., 0, :, :] ** 2 + p[..., 1, :, :] ** 2)
        if lam > 0:
            p = p / torch.clamp(magnitude / lam, min=1.0).unsqueeze(-3)
        else:
            p = torch.zeros_like(p)
        v = x - tau * gradient_adjoint(p)
        x_new = data_prox(v, b, mask, tau)
        xbar = 2.0 * x_new - x
        x = x_new
        if callback is not None:
            callback(it, x)
    return x


@dataclass(frozen=True)
class TuningResult:
    """Outcome of `tune_lambda`: the chosen weight and the mean PSNR (dB) of every grid value."""

    best: float
    psnr: dict[float, float]


def tune_lambda(y: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor, data_range: float,
                grid: Sequence[float] = LAMBDA_GRID, iterations: int = ITERATIONS) -> TuningResult:
    """Grid search of ``lam`` maximising the mean PSNR over a batch of (training) slices.

    Args:
        y, mask: as for `cs_tv` (normalised units).
        reference: clean real slices ``(B, H, W)`` in the same units.
        data_range: PSNR peak (the reference volume maximum, normalised units; fastMRI convention).
    """
    from medinvert.metrics import psnr

    scores: dict[float, float] = {}
    for lam in grid:
        x = cs_tv(y, mask, lam, iterations=iterations)
        per_slice = [psnr(x[i].numpy(), reference[i].numpy(), data_range=data_range) for i in range(x.shape[0])]
        scores[float(lam)] = float(sum(per_slice) / len(per_slice))
    best = max(scores, key=lambda k: scores[k])
    return TuningResult(best, scores)
