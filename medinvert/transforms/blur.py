"""Blur transform: Gaussian or linear motion blur of every slice (`medinvert.operators.BlurOperator`).

``y = k * x + n`` slice by slice (zero-padded "same" convolution over array axes 0 and 1), ``n``
optional Gaussian noise.  Kernels come from `medinvert.operators.kernels`.
"""

from __future__ import annotations

from typing import Any

import torch

from medinvert.operators.blur import BlurOperator
from medinvert.operators.kernels import gaussian_kernel, motion_kernel
from medinvert.operators.layout import slices_to_volume, volume_to_slices
from medinvert.operators.observation import Observation
from medinvert.transforms.base import CorruptionDictTransform, CorruptionTransform, VolumeInput, gaussian_field

__all__ = ["RandBlur", "RandBlurd", "blur_kernel"]


def blur_kernel(params: dict[str, Any]) -> torch.Tensor:
    """The kernel described by normalised blur ``params`` (``blur``, ``blur_sigma``, ``motion_*``)."""
    if params["blur"] == "motion":
        return motion_kernel(params["motion_length"], params["motion_angle"])
    return gaussian_kernel(params["blur_sigma"])


class RandBlur(CorruptionTransform):
    """Blur every slice of a volume ``(X, Y, Z)`` -> `Observation` (kind "blur").

    Args:
        blur: "gaussian" (std ``blur_sigma`` pixels) or "motion" (``motion_length`` pixels at
            ``motion_angle`` degrees from array axis 0 towards axis 1).
        sigma / snr: optional Gaussian measurement noise.

    ``y`` is the blurred float32 image ``(Z, X, Y)``; ``mask`` all True; ``adjoint = A^H y``
    (correlation of ``y`` with the kernel); ``kernel`` is kept on the observation.
    """

    kind = "blur"

    def __init__(self, blur: str = "gaussian", blur_sigma: float = 1.5, motion_length: float = 9.0,
                 motion_angle: float = 0.0, sigma: float | None = None, snr: float | None = None) -> None:
        super().__init__(blur=blur, blur_sigma=blur_sigma, motion_length=motion_length, motion_angle=motion_angle,
                         sigma=sigma, snr=snr)

    def _apply(self, volume: VolumeInput, mask_seed: int, noise_seed: int) -> Observation:
        kernel = blur_kernel(self.params)
        operator = BlurOperator(kernel)
        slices = volume_to_slices(volume.data)
        y = operator.forward(slices)
        noise = self._noise_sigma(volume)
        if noise["sigma"] > 0:
            y = y + noise["sigma"] * gaussian_field(y.shape, noise_seed)
        params: dict[str, Any] = {**self.params, **noise,
                                  "noise_seed": noise_seed if noise["sigma"] > 0 else None,
                                  "noise_model": "gaussian" if noise["sigma"] > 0 else None,
                                  "kernel_shape": list(kernel.shape)}
        adjoint = slices_to_volume(operator.adjoint(y)).contiguous()
        mask = torch.ones(tuple(volume.data.shape), dtype=torch.bool)
        return self._observation(volume, y=y.to(torch.float32).contiguous(), mask=mask, adjoint=adjoint,
                                 params=params, kernel=kernel)


class RandBlurd(CorruptionDictTransform):
    """Dict wrapper of `RandBlur`."""

    array_class = RandBlur
