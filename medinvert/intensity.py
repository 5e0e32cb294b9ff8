"""Intensity normalisation shared by training and inference.

Scanner intensities are arbitrary (0..1 after some pipelines, 0..4095 raw, negative after bias
correction).  The network always sees an image divided by one positive *scale* per volume:

    x_normalised = x / scale,   scale = percentile_99.5(|x| over the foreground)

where the foreground is every voxel whose magnitude exceeds 5 % of the volume's maximum (so large
air backgrounds do not pull the percentile down).  The scale is computed from what is actually
available: at inference the observation's adjoint image ``A^H y`` (the measurement), in training the
same quantity computed from the simulated observation.  Only a scale is applied (no offset), so every
forward operator stays linear in the normalised image: ``A(x / s) = (A x) / s``.

`power_of_two_scale` rounds a scale to a power of two; dividing by it is exact in binary floating
point, which the bit-exact inversion uses so that ``x / s * s == x`` bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["FOREGROUND_FRACTION", "PERCENTILE", "SIGNED_FRACTION", "robust_scale", "power_of_two_scale",
           "negative_fraction", "is_signed"]

#: voxels above this fraction of the maximum magnitude count as foreground
FOREGROUND_FRACTION = 0.05
#: percentile of the foreground magnitude used as the scale
PERCENTILE = 99.5
#: `negative_fraction` from which an image counts as signed (z-scored, negated; `medinvert.signed`).  A
#: z-scored image has mean zero, so 0.5; the aliasing of undersampled magnitude images gives 0.007-0.036
#: (sample T1, nibabel's EPI and anatomical.nii zero-filled at 4x-16x)
SIGNED_FRACTION = 0.2


def robust_scale(image: torch.Tensor | np.ndarray) -> float:
    """Robust intensity scale of ``image`` (any shape): the 99.5th percentile of foreground |x|.

    Returns 1.0 for an all-zero image (nothing to normalise).  NaN/Inf must be rejected upstream.
    """
    magnitude = np.abs(np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image,
                                  dtype=np.float64)).ravel()
    peak = float(magnitude.max(initial=0.0))
    if peak <= 0.0:
        return 1.0
    foreground = magnitude[magnitude > FOREGROUND_FRACTION * peak]
    return float(np.percentile(foreground, PERCENTILE))


def power_of_two_scale(scale: float) -> float:
    """The power of two nearest to ``scale`` (in log2), e.g. 0.9 -> 1.0, 3000 -> 2048."""
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    return float(2.0 ** round(math.log2(scale)))


def negative_fraction(values: torch.Tensor | np.ndarray) -> float:
    """``sum(max(-v, 0)) / sum(|v|)`` over all elements (0 for an all-zero array)."""
    data = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    total = float(np.abs(data).sum())
    return float(np.clip(-data, 0.0, None).sum()) / total if total > 0 else 0.0


def is_signed(values: torch.Tensor | np.ndarray) -> bool:
    """Whether an image is signed rather than a magnitude image (`SIGNED_FRACTION`)."""
    return negative_fraction(values) >= SIGNED_FRACTION
