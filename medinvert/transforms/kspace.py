"""k-space undersampling transform: one mask shared by every slice of a volume.

``y = M * (F x + n)`` slice by slice, with ``F`` the centred orthonormal 2-D FFT over array axes 0 and
1 (`medinvert.operators.KspaceOperator`), ``M`` a line mask (columns = phase encodes along axis 1)
or a 2-D variable-density mask (`medinvert.transforms.masks`), ``n`` optional complex Gaussian noise.
"""

from __future__ import annotations

from typing import Any

import torch

from medinvert.operators.fft import fft2c
from medinvert.operators.kspace import KspaceOperator
from medinvert.operators.layout import slices_to_volume, volume_to_slices
from medinvert.operators.observation import Observation
from medinvert.transforms.base import CorruptionDictTransform, CorruptionTransform, VolumeInput, gaussian_field
from medinvert.errors import MedinvertError
from medinvert.transforms.masks import equispaced_line_mask, random_line_mask, variable_density_mask

__all__ = ["RandKspaceUndersample", "RandKspaceUndersampled", "kspace_mask"]


def kspace_mask(shape: tuple[int, int], acceleration: float, center_fraction: float, pattern: str,
                seed: int) -> torch.Tensor:
    """The ``(H, W)`` boolean mask of ``pattern`` ("random", "equispaced", "variable-density")."""
    makers = {"random": random_line_mask, "equispaced": equispaced_line_mask,
              "variable-density": variable_density_mask}
    return makers[pattern](shape, acceleration, center_fraction, seed)


class RandKspaceUndersample(CorruptionTransform):
    """Cartesian / 2-D k-space undersampling of a volume ``(X, Y, Z)`` -> `Observation` (kind "kspace").

    Args:
        acceleration: undersampling factor (>= 1).
        center_fraction: fraction of fully sampled centre lines (default ``0.32 / acceleration``:
            0.08 at 4x, 0.04 at 8x).
        pattern: "random", "equispaced" or "variable-density".
        sigma / snr: optional complex Gaussian measurement noise (``E|n|^2 = sigma^2`` per sample).

    The observation's ``y`` is complex64 ``(Z, X, Y)`` centred k-space (zero where not measured),
    ``mask`` the ``(H, W)`` mask repeated over slices, ``adjoint`` ``Re F^H y``.
    """

    kind = "kspace"

    def __init__(self, acceleration: float = 4.0, center_fraction: float | None = None, pattern: str = "random",
                 sigma: float | None = None, snr: float | None = None) -> None:
        super().__init__(acceleration=acceleration, center_fraction=center_fraction, pattern=pattern,
                         sigma=sigma, snr=snr)

    def _apply(self, volume: VolumeInput, mask_seed: int, noise_seed: int) -> Observation:
        p = self.params
        x_size, y_size, z_size = volume.data.shape
        mask2d = kspace_mask((x_size, y_size), p["acceleration"], p["center_fraction"], p["pattern"], mask_seed)
        if not bool(mask2d.any()):
            raise MedinvertError(f"the {p['pattern']} mask measures no k-space sample: {y_size} phase-encoding lines "
                                 f"are too few for acceleration {p['acceleration']:g} (lower it)")
        operator = KspaceOperator(mask2d)
        slices = volume_to_slices(volume.data)
        noise = self._noise_sigma(volume)
        kspace = fft2c(slices)
        if noise["sigma"] > 0:
            kspace = kspace + noise["sigma"] * gaussian_field(kspace.shape, noise_seed, complex_valued=True)
        y = kspace * mask2d.to(torch.float32)  # = operator.forward(slices) plus the measured noise
        params: dict[str, Any] = {**p, **noise, "mask_seed": mask_seed,
                                  "noise_seed": noise_seed if noise["sigma"] > 0 else None,
                                  "noise_model": "gaussian" if noise["sigma"] > 0 else None,
                                  "measured_fraction": float(mask2d.double().mean())}
        adjoint = slices_to_volume(operator.adjoint(y).real).contiguous()
        mask = mask2d[:, :, None].expand(x_size, y_size, z_size).contiguous()
        return self._observation(volume, y=y.to(torch.complex64).contiguous(), mask=mask, adjoint=adjoint,
                                 params=params)


class RandKspaceUndersampled(CorruptionDictTransform):
    """Dict wrapper of `RandKspaceUndersample`: ``d[key + "_observation"] = RandKspaceUndersample(d[key])``."""

    array_class = RandKspaceUndersample
