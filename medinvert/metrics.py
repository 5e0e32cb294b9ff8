"""Image quality metrics with fastMRI conventions: NMSE, PSNR, SSIM, plus masked and per-slice variants.

All functions take numpy arrays or torch tensors of shape ``(X, Y, Z)`` (slices along axis 2, the
medinvert volume layout) or ``(X, Y)`` (one slice), compute in float64 and return Python floats.

Conventions (fastMRI ``evaluate.py``, Zbontar et al. 2018, arXiv:1811.08839):

* ``data_range`` defaults to ``ref.max()`` over the whole *reference volume* (not per slice, not
  ``max - min``); the masked variants use the same volume maximum.  A *signed* reference (z-scored or
  negated, `medinvert.intensity.is_signed`), outside fastMRI's magnitude images, uses ``max - min``
  instead (`default_data_range`).
* ``nmse = ||x - ref||^2 / ||ref||^2``.
* ``psnr = 10 log10(data_range^2 / mse)``; identical inputs give ``inf``.
* ``ssim`` (Wang et al. 2004, IEEE TIP 13(4), eq. 13) with K1 = 0.01, K2 = 0.03.  Default
  ``mode="slice"``: the 2D SSIM of every slice, averaged over slices, each slice's SSIM being the mean
  of its SSIM map after cropping ``(win_size - 1) // 2`` border pixels -- exactly
  ``skimage.metrics.structural_similarity(ref_slice, x_slice, data_range=ref.max())`` (7x7 uniform
  window, sample covariance), as fastMRI computes it.  ``mode="3d"`` uses a 7x7x7 window over the
  volume.  ``gaussian=True`` switches to Wang et al.'s 11-tap Gaussian window (sigma 1.5, population
  covariance).  Masked SSIM is the mean of the (uncropped) SSIM map over the voxels inside the mask,
  pooled over all slices; the map near the volume border uses reflected padding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medinvert.errors import MedinvertError

__all__ = ["psnr", "ssim", "nmse", "ssim_map", "per_slice_metrics", "ssim_defined", "default_data_range"]

K1 = 0.01
K2 = 0.03
GAUSSIAN_SIGMA = 1.5
GAUSSIAN_TRUNCATE = 3.5  # gives an 11-tap window at sigma 1.5, as Wang et al. and skimage


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        import torch

        return value.detach().cpu().as_subclass(torch.Tensor).to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def _prepare(x: Any, ref: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate shapes; return float64 ``(X, Y, Z)`` arrays and a boolean mask (or None)."""
    a, b = _to_numpy(x), _to_numpy(ref)
    if a.shape != b.shape:
        raise MedinvertError(f"metric inputs have different shapes {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    if a.ndim != 3:
        raise MedinvertError(f"metrics expect (X, Y) or (X, Y, Z) arrays, got shape {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise MedinvertError("metric inputs contain NaN or Inf")
    m = None
    if mask is not None:
        m = _to_numpy(mask) != 0
        if m.ndim == 2:
            m = m[:, :, None]
        if m.shape != a.shape:
            raise MedinvertError(f"mask shape {m.shape} differs from the image shape {a.shape}")
        if not m.any():
            raise MedinvertError("mask is empty: no voxel to evaluate")
    return a, b, m


def default_data_range(ref: Any) -> float:
    """``ref.max()`` (fastMRI), or ``ref.max() - ref.min()`` for a signed reference (module docstring)."""
    from medinvert.intensity import is_signed

    values = _to_numpy(ref)
    return float(values.max() - values.min()) if is_signed(values) else float(values.max())


def _data_range(ref: np.ndarray, data_range: float | None) -> float:
    value = default_data_range(ref) if data_range is None else float(data_range)
    if not value > 0 or not math.isfinite(value):
        raise MedinvertError(f"data range must be positive and finite (got {value}; the reference maximum, or "
                             "max - min for a signed reference, is used by default)")
    return value


def nmse(x: Any, ref: Any, *, mask: Any = None) -> float:
    """Normalised MSE ``||x - ref||^2 / ||ref||^2`` (over the mask when given)."""
    a, b, m = _prepare(x, ref, mask)
    if m is not None:
        a, b = a[m], b[m]
    energy = float(np.sum(b * b))
    if energy == 0.0:
        raise MedinvertError("reference is all zero (in the evaluated region): NMSE is undefined")
    return float(np.sum((a - b) ** 2)) / energy


def psnr(x: Any, ref: Any, data_range: float | None = None, *, mask: Any = None) -> float:
    """PSNR in dB, ``10 log10(data_range^2 / mse)``; ``data_range`` defaults to `default_data_range` (volume).

    With ``mask`` the MSE is taken over the voxels inside the mask only.  Returns ``inf`` when the
    (masked) MSE is zero.
    """
    a, b, m = _prepare(x, ref, mask)
    peak = _data_range(b, data_range)
    diff = a - b if m is None else a[m] - b[m]
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def ssim_defined(shape: tuple[int, ...], *, mode: str = "slice", win_size: int = 7, gaussian: bool = False) -> bool:
    """Whether an image of ``shape`` ``(X, Y[, Z])`` holds one whole SSIM window (``ssim`` raises otherwise).

    A tiny volume (a 4 x 5 x 7 test image, a localiser) has no SSIM at the fastMRI window; callers that
    report many metrics record ``None`` / ``nan`` for it instead of failing.
    """
    win = 2 * int(GAUSSIAN_TRUNCATE * GAUSSIAN_SIGMA + 0.5) + 1 if gaussian else win_size
    axes = 2 if mode == "slice" else 3
    return len(shape) >= axes and min(shape[:axes]) >= win


def ssim_map(x: Any, ref: Any, data_range: float | None = None, *, mode: str = "slice", win_size: int = 7,
             gaussian: bool = False) -> np.ndarray:
    """Local SSIM map, same shape as the inputs ``(X, Y, Z)`` (float64).

    ``mode="slice"`` filters in-plane only (axes 0, 1), ``"3d"`` over all three axes.  Uniform
    ``win_size`` window with sample covariance (fastMRI / skimage default), or the Gaussian window of
    Wang et al. (sigma 1.5, 11 taps, population covariance) with ``gaussian=True``.
    """
    from scipy import ndimage

    a, b, _ = _prepare(x, ref)
    if mode not in ("slice", "3d"):
        raise MedinvertError(f"unknown SSIM mode {mode!r} (expected 'slice' or '3d')")
    axes = 2 if mode == "slice" else 3
    if gaussian:
        win = 2 * int(GAUSSIAN_TRUNCATE * GAUSSIAN_SIGMA + 0.5) + 1
    else:
        if win_size < 3 or win_size % 2 == 0:
            raise MedinvertError(f"SSIM window size must be odd and >= 3 (got {win_size})")
        win = win_size
    if min(a.shape[:axes]) < win:
        raise MedinvertError(f"image of shape {a.shape} is smaller than the {win}-voxel SSIM window in "
                             f"{'the slice plane' if axes == 2 else 'some axis'}")
    peak = _data_range(b, data_range)
    if gaussian:
        sigma = [GAUSSIAN_SIGMA] * axes + [0.0] * (3 - axes)

        def filt(img: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(img, sigma=sigma, truncate=GAUSSIAN_TRUNCATE, mode="reflect")

        cov_norm = 1.0
    else:
        size = [win] * axes + [1] * (3 - axes)

        def filt(img: np.ndarray) -> np.ndarray:
            return ndimage.uniform_filter(img, size=size, mode="reflect")

        n = win**axes
        cov_norm = n / (n - 1.0)
    mu_a, mu_b = filt(a), filt(b)
    var_a = cov_norm * (filt(a * a) - mu_a * mu_a)
    var_b = cov_norm * (filt(b * b) - mu_b * mu_b)
    cov = cov_norm * (filt(a * b) - mu_a * mu_b)
    c1, c2 = (K1 * peak) ** 2, (K2 * peak) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def _crop(values: np.ndarray, pad: int, axes: int) -> np.ndarray:
    index = tuple(slice(pad, s - pad) for s in values.shape[:axes]) + (slice(None),) * (values.ndim - axes)
    return values[index]


def ssim(x: Any, ref: Any, data_range: float | None = None, *, mode: str = "slice", mask: Any = None,
         win_size: int = 7, gaussian: bool = False) -> float:
    """Mean SSIM (see the module docstring for the exact conventions).

    ``mode="slice"``: mean over slices of each slice's border-cropped mean SSIM (fastMRI).
    ``mode="3d"``: border-cropped mean of the 3D SSIM map.  With ``mask``: mean of the uncropped map
    over the voxels inside the mask.  ``data_range`` defaults to `default_data_range` of the whole volume.
    """
    values = ssim_map(x, ref, data_range, mode=mode, win_size=win_size, gaussian=gaussian)
    if mask is not None:
        _, _, m = _prepare(x, ref, mask)
        return float(values[m].mean())
    axes = 2 if mode == "slice" else 3
    win = 2 * int(GAUSSIAN_TRUNCATE * GAUSSIAN_SIGMA + 0.5) + 1 if gaussian else win_size
    cropped = _crop(values, (win - 1) // 2, axes)
    if mode == "slice":
        return float(cropped.mean(axis=(0, 1)).mean())
    return float(cropped.mean())


def per_slice_metrics(x: Any, ref: Any, data_range: float | None = None, *, per_slice_range: bool = False,
                      win_size: int = 7) -> dict[str, list[float]]:
    """PSNR, SSIM (2D) and NMSE of every slice along axis 2 -> ``{"psnr": [...], "ssim": [...], "nmse": [...]}``.

    ``data_range`` defaults to the reference *volume*'s `default_data_range` (fastMRI), or each reference slice's own
    maximum with ``per_slice_range=True``.  A slice identical to its reference has PSNR ``inf``; a
    slice whose reference is all zero has NMSE ``nan`` (and, with ``per_slice_range``, PSNR / SSIM ``nan``);
    slices smaller than the SSIM window have SSIM ``nan`` (`ssim_defined`).
    """
    a, b, _ = _prepare(x, ref)
    volume_peak = None if per_slice_range else _data_range(b, data_range)
    out: dict[str, list[float]] = {"psnr": [], "ssim": [], "nmse": []}
    for k in range(a.shape[2]):
        xs, rs = a[:, :, k], b[:, :, k]
        energy = float(np.sum(rs * rs))
        out["nmse"].append(float(np.sum((xs - rs) ** 2)) / energy if energy > 0 else math.nan)
        peak = volume_peak if volume_peak is not None else float(rs.max())
        if not peak > 0:
            out["psnr"].append(math.nan)
            out["ssim"].append(math.nan)
            continue
        out["psnr"].append(psnr(xs, rs, data_range=peak))
        out["ssim"].append(ssim(xs, rs, data_range=peak, win_size=win_size)
                           if ssim_defined(xs.shape, win_size=win_size) else math.nan)
    return out
