"""Sampling and inpainting masks.  Mask functions only *make* masks; applying them is the operators' job.

Every function takes a ``seed`` -- an ``int`` in ``[0, 2**32)`` or a ``numpy.random.RandomState`` to
draw from -- and returns a boolean ``torch.Tensor`` (True = measured / kept).  Same seed, same mask.

k-space masks are 2-D ``(H, W)`` in centred k-space order (zero frequency at ``(H // 2, W // 2)``).
Line masks sample whole columns: the phase-encode direction is array axis 1 of the slice (``W``;
the volume's Y axis), every row (read-out, axis 0) of a sampled column is measured.  Their
conventions follow fastMRI (Zbontar et al. 2018, arXiv:1811.08839) and MONAI's
``RandomKspaceMask`` / ``EquispacedKspaceMask``:

* ``n_c = round(W * center_fraction)`` centre columns are always sampled, starting at column
  ``(W - n_c + 1) // 2`` (so the zero frequency ``W // 2`` lies inside for odd and even ``W``); where
  that rounds to 0 (``W < 0.5 / center_fraction``: at most 12 columns at 8x / 0.04) the zero-frequency
  column is sampled anyway -- without it a volume's mean intensity is lost (fastMRI and MONAI sample
  no centre there);
* random: each other column is sampled with probability
  ``p = (W / acceleration - n_c) / (W - n_c)``, so ``W / acceleration`` columns are expected;
* equispaced: columns ``round(offset + k * a)`` for ``k = 0, 1, ...`` below ``W - 1`` with the
  adjusted spacing ``a = acceleration (n_c - W) / (n_c acceleration - W)`` and a random integer
  offset in ``[0, round(a))``, which again gives ``W / acceleration`` columns in total.

Inpainting masks are 3-D ``(X, Y, Z)`` (volume layout): a box, random ellipsoidal blobs, or dropped
slices are False (missing); everything else is True (kept).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from medinvert.errors import MedinvertError

__all__ = [
    "random_line_mask",
    "equispaced_line_mask",
    "variable_density_mask",
    "center_columns",
    "box_mask",
    "blob_mask",
    "slice_dropout_mask",
]



def _rng(seed: int | np.random.RandomState) -> np.random.RandomState:
    if isinstance(seed, np.random.RandomState):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise MedinvertError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return np.random.RandomState(int(seed))


def _check_shape(shape: Sequence[int], ndim: int) -> tuple[int, ...]:
    dims = tuple(int(s) for s in shape)
    if len(dims) != ndim or any(d < 1 for d in dims):
        raise MedinvertError(f"mask shape must be {ndim} positive sizes, got {tuple(shape)}")
    return dims


def _check_acceleration(acceleration: float, center_fraction: float) -> None:
    if isinstance(acceleration, bool) or not (isinstance(acceleration, (int, float, np.integer, np.floating))
                                              and math.isfinite(acceleration) and acceleration >= 1):
        raise MedinvertError(f"acceleration must be a number >= 1, got {acceleration!r}")
    if isinstance(center_fraction, bool) or not (isinstance(center_fraction, (int, float, np.integer, np.floating))
                                                 and 0 < center_fraction < 1):
        raise MedinvertError(f"center fraction must lie strictly between 0 and 1, got {center_fraction!r}")


def _line_center_count(width: int, acceleration: float, center_fraction: float) -> int:
    """Validate a line-mask setting for ``width`` columns; return the number of centre columns."""
    _check_acceleration(acceleration, center_fraction)
    _, n_center = center_columns(width, center_fraction)
    if acceleration > 1 and n_center >= width / acceleration and n_center > 1:  # one line is always allowed
        raise MedinvertError(f"center fraction {center_fraction} is too large for acceleration {acceleration}: "
                             f"the fully sampled centre ({n_center} of {width} lines) already reaches "
                             f"1/{acceleration} of the lines")
    return n_center


def center_columns(width: int, center_fraction: float) -> tuple[int, int]:
    """``(start, count)`` of the fully sampled centre columns: ``count = round(width * center_fraction)``
    but at least 1 (the zero frequency), ``start = (width - count + 1) // 2``."""
    count = max(1, int(round(width * center_fraction)))
    return (width - count + 1) // 2, count


def _columns_to_mask(columns: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    return torch.from_numpy(np.tile(columns[None, :], (shape[0], 1)))


def random_line_mask(shape: Sequence[int], acceleration: float, center_fraction: float,
                     seed: int | np.random.RandomState = 0, *, fixed_count: bool = True) -> torch.Tensor:
    """Random Cartesian line mask ``(H, W)``: centre columns plus randomly chosen other columns.

    ``fixed_count=True`` (default) samples exactly ``round(W / acceleration) - n_c`` of the non-centre
    columns, uniformly without replacement: each has the fastMRI inclusion probability ``p`` (up to
    rounding) and the achieved acceleration is the requested one.  ``fixed_count=False`` draws every
    column independently with probability ``p`` exactly as fastMRI's ``RandomMaskFunc`` and MONAI's
    ``RandomKspaceMask`` do (one uniform number per column, centre included, from ``seed``); the
    count then varies by about ``sqrt(W p (1 - p))`` columns around ``W / acceleration``.
    """
    h, w = _check_shape(shape, 2)
    n_center = _line_center_count(w, acceleration, center_fraction)
    rng = _rng(seed)
    start, _ = center_columns(w, center_fraction)
    columns = np.zeros(w, dtype=bool)
    if fixed_count:
        center = np.zeros(w, dtype=bool)
        center[start:start + n_center] = True
        others = np.flatnonzero(~center)
        count = min(len(others), max(0, int(round(w / acceleration)) - n_center))
        columns[rng.choice(others, size=count, replace=False)] = True
    else:
        prob = (w / acceleration - n_center) / (w - n_center) if w > n_center else 0.0
        columns = rng.uniform(size=w) < prob
    columns[start:start + n_center] = True
    return _columns_to_mask(columns, (h, w))


def equispaced_line_mask(shape: Sequence[int], acceleration: float, center_fraction: float,
                         seed: int | np.random.RandomState = 0) -> torch.Tensor:
    """Equispaced Cartesian line mask ``(H, W)`` (fastMRI ``EquispacedMaskFractionFunc`` / MONAI
    ``EquispacedKspaceMask``): centre columns plus columns at the adjusted spacing from a random offset
    (one integer drawn from ``seed``)."""
    h, w = _check_shape(shape, 2)
    n_center = _line_center_count(w, acceleration, center_fraction)
    rng = _rng(seed)
    start, _ = center_columns(w, center_fraction)
    columns = np.zeros(w, dtype=bool)
    columns[start:start + n_center] = True
    if n_center * acceleration < w:  # else the centre alone is the line budget (tiny matrices)
        spacing = acceleration * (n_center - w) / (n_center * acceleration - w)
        offset = rng.randint(0, max(1, round(spacing)))
        picks = np.around(np.arange(offset, w - 1, spacing)).astype(np.int64)
        columns[picks] = True
    return _columns_to_mask(columns, (h, w))


def variable_density_mask(shape: Sequence[int], acceleration: float, center_fraction: float,
                          seed: int | np.random.RandomState = 0, *, power: float = 2.0) -> torch.Tensor:
    """2-D variable-density random mask ``(H, W)`` (Lustig et al. 2007 style polynomial density).

    A centre disc of diameter ``center_fraction * min(H, W)`` (in pixels around ``(H // 2, W // 2)``) is
    fully sampled.  Every other sample is weighted by ``(1 - r)^power`` with ``r`` the distance from the
    centre normalised so that the k-space corners have ``r = 1`` (axes scaled by ``H / 2`` and ``W / 2``).
    Exactly ``round(H W / acceleration)`` samples are measured in total: the missing ones are drawn by
    weighted sampling without replacement (Efraimidis-Spirakis keys ``u^(1/weight)``), so the measured
    fraction equals ``1 / acceleration`` up to one sample and the density follows the polynomial.
    """
    h, w = _check_shape(shape, 2)
    if not power >= 0:
        raise MedinvertError(f"variable-density power must be >= 0, got {power}")
    _check_acceleration(acceleration, center_fraction)
    rng = _rng(seed)
    di = (np.arange(h) - h // 2)[:, None].astype(np.float64)
    dj = (np.arange(w) - w // 2)[None, :].astype(np.float64)
    disc = di**2 + dj**2 <= (center_fraction * min(h, w) / 2.0) ** 2
    r = np.sqrt((di / max(h / 2.0, 1.0)) ** 2 + (dj / max(w / 2.0, 1.0)) ** 2) / math.sqrt(2.0)
    weight = np.clip(1.0 - r, 0.0, 1.0) ** power
    total = int(round(h * w / acceleration))
    n_disc = int(disc.sum())
    if n_disc > total:
        raise MedinvertError(f"center fraction {center_fraction} is too large for acceleration {acceleration}: "
                             f"the centre disc ({n_disc} samples) exceeds the {total} samples allowed")
    u = rng.uniform(size=(h, w))
    with np.errstate(divide="ignore"):
        keys = np.where(weight > 0, np.log(np.maximum(u, np.finfo(np.float64).tiny)) / np.where(weight > 0, weight, 1.0),
                        -np.inf)
    keys[disc] = np.inf
    order = np.argsort(-keys.ravel(), kind="stable")
    mask = np.zeros(h * w, dtype=bool)
    mask[order[:total]] = True
    return torch.from_numpy(mask.reshape(h, w))


# ----------------------------------------------------------------------------- inpainting masks


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise MedinvertError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return float(value)


def box_mask(shape: Sequence[int], size_fraction: float = 0.3,
             seed: int | np.random.RandomState = 0) -> torch.Tensor:
    """``(X, Y, Z)`` mask with one missing box: side ``max(1, round(size_fraction * n))`` along each
    axis of size ``n``, placed uniformly at random inside the volume."""
    dims = _check_shape(shape, 3)
    _check_fraction("box size fraction", size_fraction)
    rng = _rng(seed)
    mask = np.ones(dims, dtype=bool)
    region = []
    for n in dims:
        side = max(1, int(round(size_fraction * n)))
        start = int(rng.randint(0, n - side + 1))
        region.append(slice(start, start + side))
    mask[tuple(region)] = False
    return torch.from_numpy(mask)


def blob_mask(shape: Sequence[int], n_blobs: int = 5, radius_fraction: tuple[float, float] = (0.05, 0.15),
              seed: int | np.random.RandomState = 0) -> torch.Tensor:
    """``(X, Y, Z)`` mask with ``n_blobs`` missing axis-aligned ellipsoids.

    Each blob has a centre uniform in the volume and three semi-axes (voxels) drawn uniformly from
    ``radius_fraction * min(X, Y)``; blobs may overlap and be cut by the volume border.
    """
    dims = _check_shape(shape, 3)
    if not isinstance(n_blobs, (int, np.integer)) or n_blobs < 1:
        raise MedinvertError(f"number of blobs must be a positive integer, got {n_blobs!r}")
    lo, hi = (float(v) for v in radius_fraction)
    if not 0 < lo <= hi < 1:
        raise MedinvertError(f"blob radius fractions must satisfy 0 < min <= max < 1, got {radius_fraction}")
    rng = _rng(seed)
    grids = np.ogrid[tuple(slice(0, n) for n in dims)]
    scale = min(dims[0], dims[1])
    missing = np.zeros(dims, dtype=bool)
    for _ in range(int(n_blobs)):
        centre = [rng.uniform(0, n) for n in dims]
        radii = [max(0.5, rng.uniform(lo, hi) * scale) for _ in dims]
        dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
        missing |= dist <= 1.0
    if missing.all():
        raise MedinvertError("blob mask removed every voxel; use fewer or smaller blobs")
    return torch.from_numpy(~missing)


def slice_dropout_mask(shape: Sequence[int], fraction: float = 0.2,
                       seed: int | np.random.RandomState = 0) -> torch.Tensor:
    """``(X, Y, Z)`` mask with ``max(1, round(fraction * Z))`` whole slices (along axis 2) missing,
    chosen uniformly without replacement; at least one slice is kept."""
    dims = _check_shape(shape, 3)
    _check_fraction("slice dropout fraction", fraction)
    z = dims[2]
    if z < 2:
        raise MedinvertError(f"slice dropout needs at least 2 slices, the volume has {z}")
    count = min(z - 1, max(1, int(round(fraction * z))))
    rng = _rng(seed)
    mask = np.ones(dims, dtype=bool)
    mask[:, :, rng.choice(z, size=count, replace=False)] = False
    return torch.from_numpy(mask)
