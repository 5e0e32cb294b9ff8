"""Noise transforms (denoising task; operator `medinvert.operators.IdentityOperator`).

Gaussian: ``y = x + sigma n``.  Rician: ``y = |x + sigma (n1 + i n2)|`` -- the magnitude of the
image plus complex Gaussian noise with std ``sigma`` in each of the real and imaginary channels
(Gudbjartsson & Patz 1995), as in magnitude MR images.  ``sigma`` is absolute, or derived from
``snr = mean foreground intensity / sigma`` (`medinvert.transforms.base.foreground_mean`).
"""

from __future__ import annotations

from typing import Any

import torch

from medinvert.operators.layout import volume_to_slices
from medinvert.operators.observation import Observation
from medinvert.transforms.base import CorruptionDictTransform, CorruptionTransform, VolumeInput, gaussian_field

__all__ = ["RandGaussianNoise", "RandGaussianNoised", "RandRicianNoise", "RandRicianNoised", "RandNoise"]


class RandNoise(CorruptionTransform):
    """Add Gaussian or Rician noise to a volume ``(X, Y, Z)`` -> `Observation` (kind "noise").

    Args:
        sigma: absolute noise std (> 0), or
        snr: mean foreground intensity / sigma (> 0); exactly one of the two.
        noise_model: "gaussian" or "rician".

    ``y`` is the noisy float32 image ``(Z, X, Y)``; ``mask`` all True; ``adjoint = y``.
    """

    kind = "noise"

    def __init__(self, sigma: float | None = None, snr: float | None = None, noise_model: str = "gaussian") -> None:
        super().__init__(sigma=sigma, snr=snr, noise_model=noise_model)

    def _apply(self, volume: VolumeInput, mask_seed: int, noise_seed: int) -> Observation:
        noise = self._noise_sigma(volume)
        shape = tuple(volume.data.shape)
        sigma = noise["sigma"]
        if self.params["noise_model"] == "rician":
            n = gaussian_field(shape, noise_seed, complex_valued=True) * (2.0**0.5)  # E|n|^2 = 2
            noisy = torch.abs(volume.data + sigma * n)
        else:
            noisy = volume.data + sigma * gaussian_field(shape, noise_seed)
        noisy = noisy.to(torch.float32).contiguous()
        params: dict[str, Any] = {**self.params, **noise, "noise_seed": noise_seed}
        mask = torch.ones(shape, dtype=torch.bool)
        return self._observation(volume, y=volume_to_slices(noisy).contiguous(), mask=mask, adjoint=noisy,
                                 params=params)


class RandGaussianNoise(RandNoise):
    """`RandNoise` with ``noise_model="gaussian"``: ``y = x + sigma n``."""

    def __init__(self, sigma: float | None = None, snr: float | None = None) -> None:
        super().__init__(sigma=sigma, snr=snr, noise_model="gaussian")


class RandRicianNoise(RandNoise):
    """`RandNoise` with ``noise_model="rician"``: ``y = |x + sigma (n1 + i n2)|``."""

    def __init__(self, sigma: float | None = None, snr: float | None = None) -> None:
        super().__init__(sigma=sigma, snr=snr, noise_model="rician")


class RandGaussianNoised(CorruptionDictTransform):
    """Dict wrapper of `RandGaussianNoise`."""

    array_class = RandGaussianNoise


class RandRicianNoised(CorruptionDictTransform):
    """Dict wrapper of `RandRicianNoise`."""

    array_class = RandRicianNoise
