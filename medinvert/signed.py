"""Signed volumes (z-scored, scaled to [-1, 1], offset or negated intensities) reconstructed as magnitude images.

The models were trained on magnitude images: non-negative, with air at about zero.  A z-scored volume
has its air at ``-mean / std`` and half of its signal below zero.  Reconstructed as it is, the 8
central slices of the held-out sample, z-scored, came out at 22.4 dB (SSIM 0.39) at 4x; through the
map below at 35.3 dB (SSIM 0.97), as good as the same slices in scanner units (docs/benchmarks.md,
session 9).

Every corruption is linear, so an intensity map ``x' = s (x - c)`` (offset ``c``, sign ``s = +-1``)
moves into the measurement exactly::

    A x' = s (A x - c A 1) = s (y - c A 1)

``A 1`` is the measurement of a constant image: for k-space (centred, orthonormal FFT) ``sqrt(X Y)``
at the zero frequency, which every mask measures; for masks the kept pixels; for noise ``1``; for
blur the blurred constant.  `reconstruct_volume` reconstructs ``x'`` from ``y'`` with the unchanged
engine and returns ``x = s x' + c``; data consistency, its report and the reference metrics are in the
volume's own units.

Choosing the map from the measurement only (the adjoint image ``A^H y``, over the measured pixels):

1. A magnitude volume is left alone (``c = 0``, ``s = +1``) unless its *negative fraction*
   ``sum(max(-a, 0)) / sum(|a|)`` is at least `medinvert.intensity.SIGNED_FRACTION` (0.2).  A z-scored image has mean zero, so
   its fraction is 0.5; the aliasing of undersampled magnitude images gives 0.007-0.036 (sample T1,
   nibabel's EPI and ``anatomical.nii`` at 4x-16x).
2. Air: the median ``b`` of the voxels on the in-plane border of every slice (the edge of a field of
   view is air in almost every MR image).  If ``b`` is the *dark* end of the image (at most
   `DARKER_LIMIT` of the voxels lie more than `NEAR_FRACTION` of the 0.5-99.5 percentile span below
   it, and at least `DARKER_LIMIT` lie within that distance of it), then ``c = b, s = +1``; if it is
   the bright end by the same test on ``-a`` (a negated image), ``c = b, s = -1``.
3. No air at the border (a crop that is all tissue): ``c`` = the 0.5th percentile, ``s = +1`` -- the
   darkest tissue maps to zero.  The true offset is not recoverable from a z-scored crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medinvert.intensity import is_signed
from medinvert.operators import Observation

__all__ = ["IntensityMap", "corrupted_image", "estimate_intensity_map", "map_observation"]

#: air test of step 2: distance from the border median, as a fraction of the percentile span
NEAR_FRACTION = 0.05
#: air test of step 2: at most this fraction of voxels darker than the air, at least this fraction near it
DARKER_LIMIT = 0.1


@dataclass(frozen=True)
class IntensityMap:
    """``x' = sign * (x - offset)``: the volume as the network sees it (before its scale)."""

    offset: float = 0.0
    sign: int = 1
    rule: str = "magnitude image: unchanged"

    @property
    def identity(self) -> bool:
        return self.offset == 0.0 and self.sign == 1

    def restore(self, volume: torch.Tensor) -> torch.Tensor:
        """``x = sign * x' + offset`` of a float32 volume (float32 arithmetic, so deterministic)."""
        if self.identity:
            return volume
        return (volume * float(self.sign) + float(self.offset)).to(torch.float32)

    def as_report(self) -> dict[str, object]:
        return {"offset": self.offset, "sign": self.sign, "rule": self.rule,
                "what": "the network reconstructed sign * (x - offset); the output is mapped back"}


def _border_values(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Values of the measured voxels on the in-plane border of every slice of ``image (X, Y, Z)``."""
    edge = np.zeros(image.shape[:2], dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    on_border = edge[:, :, None] & valid
    return image[on_border]


def _is_dark_end(values: np.ndarray, level: float, span: float) -> bool:
    near = NEAR_FRACTION * span
    return (float(np.mean(values < level - near)) <= DARKER_LIMIT
            and float(np.mean(np.abs(values - level) <= near)) >= DARKER_LIMIT)


def estimate_intensity_map(observation: Observation) -> IntensityMap:
    """The map of the module docstring, from ``observation.adjoint`` (over the kept pixels for masks)."""
    image = observation.adjoint.numpy().astype(np.float64)
    valid = observation.mask.numpy() if observation.kind == "mask" else np.ones(image.shape, dtype=bool)
    values = image[valid]
    if values.size == 0 or not is_signed(values):
        return IntensityMap()
    low, high = np.percentile(values, [0.5, 99.5])
    span = float(high - low)
    border = _border_values(image, valid)
    if span > 0 and border.size:
        air = float(np.median(border))
        if _is_dark_end(values, air, span):
            return IntensityMap(air, 1, "signed image: the air at the border of the slices maps to zero")
        if _is_dark_end(-values, -air, span):
            return IntensityMap(air, -1, "negated image: the air at the border maps to zero, the sign flips")
    return IntensityMap(float(low), 1, "signed image without air at the border: the 0.5th percentile maps to zero")


def map_observation(observation: Observation, intensity_map: IntensityMap) -> Observation:
    """``observation`` of ``x' = s (x - c)``: measurement ``s (y - c A 1)`` and its adjoint."""
    if intensity_map.identity:
        return observation
    y = observation.y.to(torch.complex128 if observation.y.is_complex() else torch.float64)
    constant = observation.operator().forward(torch.ones(tuple(y.shape), dtype=torch.float64)).to(y.dtype)
    mapped = (float(intensity_map.sign) * (y - float(intensity_map.offset) * constant)).to(observation.y.dtype)
    return observation.with_measurement(mapped)


def corrupted_image(observation: Observation, intensity_map: IntensityMap | None = None) -> torch.Tensor:
    """The corrupted image in the volume's own units, float32 ``(X, Y, Z)``: `Observation.image` (the
    zero-filled magnitude for k-space) of the mapped observation, mapped back.  For a magnitude volume
    this is `Observation.image` itself; for a z-scored one the air stays at its level instead of the
    magnitude folding the negative half of the image up."""
    intensity_map = estimate_intensity_map(observation) if intensity_map is None else intensity_map
    return intensity_map.restore(map_observation(observation, intensity_map).image())
