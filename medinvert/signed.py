"""Signed volumes (z-scored, scaled to [-1, 1], offset or negated intensities) reconstructed as magnitude images.

The models were trained on magnitude images: non-negative, with air at about zero.  A z-scored volume
has its air at ``-mean / std`` and half of its signal below zero.  Reconstructed as it is, the 8
central slices of the held-out sample, z-scored, came out at 22.4 dB (SSIM 0.39) at 4x; through the
map below at 35.3 dB (SSIM 0.97), as good as the same slices in scanner units (docs/benchmarks.md,
session 9).

Every corruption is linear (Rician noise aside, see below), so an intensity map ``x' = s (x - c)`` (offset ``c``, sign ``s = +-1``)
moves into the measurement exactly::

    A x' = s (A x - c A 1) = s (y - c A 1)

``A 1`` is the measurement of a constant image: for k-space (centred, orthonormal FFT) ``sqrt(X Y)``
at the zero frequency, which every mask measures; for masks the kept pixels; for noise ``1``; for
blur the blurred constant.  `reconstruct_volume` reconstructs ``x'`` from ``y'`` with the unchanged
engine and returns ``x = s x' + c``; data consistency, its report and the reference metrics are in the
volume's own units.

Choosing the map from the measurement only, on ``a = A^H y / A^H A 1`` (the adjoint image corrected
for the operator's gain: 1 for k-space and noise, the kept pixels for masks, the border fall-off of
zero-padded blur) over the pixels where ``A^H A 1 >`` `MIN_GAIN`:

1. A magnitude volume is left alone (``c = 0``, ``s = +1``) unless its *negative fraction*
   ``sum(max(-a, 0)) / sum(|a|)`` is at least `medinvert.intensity.SIGNED_FRACTION` (0.2), after the
   share that the measurement's Gaussian noise (std ``sigma``) alone can produce, ``sigma / sqrt(2 pi)``
   per pixel, is taken off (unchecked, the noisy air of a mostly-air magnitude volume at SNR 2 reads
   0.25-0.4).  A z-scored image has mean zero, so its fraction is 0.5; the aliasing of undersampled
   magnitude images gives 0.007-0.036 (sample T1, nibabel's EPI and ``anatomical.nii`` at 4x-16x).
2. Air: the darkest level ``b`` where the pixels on the in-plane border of every slice cluster (the
   edge of a field of view is air in almost every MR image; `_densest_level`).  If ``b`` is the *dark* end of the image (at most
   `DARKER_LIMIT` of the pixels lie more than ``near`` below it, and at least `DARKER_LIMIT` lie within
   ``near`` of it; ``near`` = `NEAR_FRACTION` of the 0.5-99.5 percentile span, or `NOISE_WIDTH` noise
   stds if wider), then ``c = b, s = +1``; if it is the bright end by the same test on ``-a`` (a negated
   image), ``c = b, s = -1``.
3. No air at the border (a crop that is all tissue): ``c`` = the 0.5th percentile, ``s = +1`` -- the
   darkest tissue maps to zero.  The true offset is not recoverable from a z-scored crop.

With noise, the mapped observation's noise level relative to its foreground (a descriptor entry the
network is conditioned on) is recomputed for the mapped image.  Rician noise is not linear: a Rician
measurement is a magnitude (non-negative) image and is left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from medinvert.intensity import SIGNED_FRACTION, negative_fraction
from medinvert.operators import Observation
from medinvert.operators.descriptor import make_descriptor
from medinvert.transforms.base import foreground_mean

__all__ = ["IntensityMap", "corrupted_image", "estimate_intensity_map", "map_observation"]

#: air test of step 2: distance from the border median, as a fraction of the percentile span
NEAR_FRACTION = 0.05
#: air test of step 2: at most this fraction of voxels darker than the air, at least this fraction near it
DARKER_LIMIT = 0.1
#: air test of step 2 on noisy measurements: the air is at least this many noise stds wide
NOISE_WIDTH = 3.0
#: where ``A^H A 1`` exceeds this the estimation image is defined (zero-padded blur: about 1/2 on the
#: border of a slice and 1/4 in its corners)
MIN_GAIN = 0.2


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

    @classmethod
    def from_report(cls, section: dict[str, Any] | None) -> "IntensityMap":
        """The map a report's ``settings.intensity_map`` records (identity when absent: older reports)."""
        if not section:
            return cls()
        return cls(float(section["offset"]), int(section["sign"]), str(section.get("rule", "")))

    def describe(self) -> str:
        """One line for notes and the HTML summary."""
        sign = "-" if self.sign < 0 else ""
        return f"reconstructed as {sign}(x - ({self.offset:.4g})) and mapped back ({self.rule})"


def _border_values(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Values of the valid voxels on the in-plane border of every slice of ``image (X, Y, Z)``."""
    edge = np.zeros(image.shape[:2], dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    on_border = edge[:, :, None] & valid
    return image[on_border]


def _densest_level(values: np.ndarray, window: float, iterations: int = 5) -> float:
    """The dark level where ``values`` cluster: from their 10th percentile, repeatedly the median of the
    values within ``window`` of the current level.  The border of a slice is air plus tissue (a head
    that touches two edges: 40 % air) or aliased tissue, a mixture whose median is not the air (the
    z-scored phantom at k-space 4x with noise 0.3: the median is off by 2.5 % of the span, this by 0.2 %)."""
    level = float(np.percentile(values, 10))
    for _ in range(iterations):
        level = float(np.median(values[np.abs(values - level) <= window]))
    return level


def _is_dark_end(values: np.ndarray, level: float, near: float) -> bool:
    return (float(np.mean(values < level - near)) <= DARKER_LIMIT
            and float(np.mean(np.abs(values - level) <= near)) >= DARKER_LIMIT)


def _estimation_image(observation: Observation) -> tuple[np.ndarray, np.ndarray]:
    """``A^H y / A^H A 1`` ``(X, Y, Z)`` and where it is defined (``A^H A 1 >`` `MIN_GAIN`).

    Where the image is a constant ``c`` over the operator's reach, this is ``c`` exactly: for k-space
    ``A^H A 1 = 1`` (the zero frequency is always measured), for masks it is the mask (the holes are
    left out), for noise 1, and for zero-padded blur it falls towards the border of the slices, where
    ``A^H y`` alone would read the air at about half its level.
    """
    gain = _operator_gain(observation)
    valid = gain > MIN_GAIN
    image = observation.adjoint.numpy().astype(np.float64)
    return np.where(valid, image / np.where(valid, gain, 1.0), 0.0), valid


def _negative_excess(values: np.ndarray, sigma: float) -> float:
    """``(sum(max(-v, 0)) - n sigma / sqrt(2 pi)) / sum(|v|)``: the negative fraction of step 1 (equal to
    `medinvert.intensity.negative_fraction` for noiseless data) less what Gaussian noise of std ``sigma``
    alone can contribute -- ``E[max(-(m + n), 0)] <= sigma / sqrt(2 pi)`` for any mean ``m >= 0``."""
    total = float(np.abs(values).sum())
    noise_share = values.size * sigma / math.sqrt(2.0 * math.pi)
    return negative_fraction(values) - (noise_share / total if total > 0 else 0.0)


def _operator_gain(observation: Observation) -> np.ndarray:
    """``A^H A 1`` as a float64 ``(X, Y, Z)`` array (closed forms where there is one)."""
    shape = observation.shape
    if observation.kind == "kspace":  # F^H M F 1 = 1 where the slice's zero frequency is measured, else 0
        measured = observation.mask[shape[0] // 2, shape[1] // 2, :].numpy()
        return np.broadcast_to(measured.astype(np.float64), shape)
    if observation.kind == "mask":
        return observation.mask.numpy().astype(np.float64)
    if observation.kind == "noise":
        return np.ones(shape)
    operator = observation.operator()
    ones = torch.ones(tuple(observation.y.shape), dtype=torch.float64)
    gain = operator.adjoint(operator.forward(ones))
    return (gain.real if gain.is_complex() else gain).permute(1, 2, 0).numpy()


def estimate_intensity_map(observation: Observation) -> IntensityMap:
    """The map of the module docstring, from ``A^H y / A^H A 1`` over the pixels where it is defined."""
    image, valid = _estimation_image(observation)
    values = image[valid]
    sigma = float(observation.params.get("sigma") or 0.0)
    if values.size == 0 or _negative_excess(values, sigma) < SIGNED_FRACTION:
        return IntensityMap()
    low, high = np.percentile(values, [0.5, 99.5])
    near = max(NEAR_FRACTION * float(high - low), NOISE_WIDTH * sigma)
    border = _border_values(image, valid)
    if near > 0 and border.size:
        window = max(NEAR_FRACTION * float(high - low), sigma)
        for sign, rule in ((1, "signed image: the air at the border of the slices maps to zero"),
                           (-1, "negated image: the air at the border maps to zero, the sign flips")):
            air = sign * _densest_level(sign * border, window)  # the dark end of s * a
            if _is_dark_end(sign * values, sign * air, near):
                return IntensityMap(air, sign, rule)
    return IntensityMap(float(low), 1, "signed image without air at the border: the 0.5th percentile maps to zero")


def map_observation(observation: Observation, intensity_map: IntensityMap) -> Observation:
    """``observation`` of ``x' = s (x - c)``: measurement ``s (y - c A 1)`` and its adjoint."""
    if intensity_map.identity:
        return observation
    y = observation.y.to(torch.complex128 if observation.y.is_complex() else torch.float64)
    constant = observation.operator().forward(torch.ones(tuple(y.shape), dtype=torch.float64)).to(y.dtype)
    mapped = (float(intensity_map.sign) * (y - float(intensity_map.offset) * constant)).to(observation.y.dtype)
    moved = observation.with_measurement(mapped)
    sigma = float(observation.params.get("sigma") or 0.0)
    if sigma > 0:  # the noise level relative to the foreground (descriptor slot) is that of the mapped image
        foreground = foreground_mean(moved.adjoint)
        params = {**moved.params, "foreground_mean": foreground, "sigma_rel": sigma / foreground if foreground > 0 else 0.0,
                  "snr": foreground / sigma if foreground > 0 else None}
        moved = replace(moved, params=params, descriptor=make_descriptor(moved.kind, params))
    return moved


def corrupted_image(observation: Observation, intensity_map: IntensityMap | None = None) -> torch.Tensor:
    """The corrupted image in the volume's own units, float32 ``(X, Y, Z)``: `Observation.image` (the
    zero-filled magnitude for k-space) of the mapped observation, mapped back.  For a magnitude volume
    this is `Observation.image` itself; for a z-scored one the air stays at its level instead of the
    magnitude folding the negative half of the image up."""
    intensity_map = estimate_intensity_map(observation) if intensity_map is None else intensity_map
    return intensity_map.restore(map_observation(observation, intensity_map).image())
