"""Masking (missing-region) transform: a box, random blobs, dropped slices or a user mask are removed.

``y = M * (x + n)`` with ``M`` the ``(X, Y, Z)`` keep-mask (`medinvert.transforms.masks`), ``n``
optional Gaussian noise; the operator is `medinvert.operators.InpaintOperator` on the slice stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medinvert.errors import MedinvertError
from medinvert.operators.layout import as_plain_tensor, volume_to_slices
from medinvert.operators.observation import Observation
from medinvert.transforms.base import CorruptionDictTransform, CorruptionTransform, VolumeInput, gaussian_field
from medinvert.transforms.masks import blob_mask, box_mask, slice_dropout_mask

__all__ = ["RandInpaintMask", "RandInpaintMaskd", "load_mask_file", "check_user_mask", "check_mask_geometry"]

#: largest difference (mm) between entries of a mask file's affine and the volume's still counted as
#: the same grid
AFFINE_TOLERANCE = 1e-3


def check_user_mask(mask: Any, shape: tuple[int, ...], source: str | None = None) -> torch.Tensor:
    """A user keep-mask as bool ``(X, Y, Z)``: same shape as the volume, only 0 / 1 values, something kept
    and something missing.  Raises `MedinvertError` naming ``source`` otherwise."""
    data = as_plain_tensor(mask).detach().cpu()
    if data.ndim == 2:
        data = data[:, :, None]
    if tuple(data.shape) != tuple(shape):
        raise MedinvertError(f"mask shape {tuple(data.shape)} does not match the volume shape {tuple(shape)}",
                             path=source)
    if data.dtype != torch.bool:
        if data.is_complex() or not bool(torch.all((data == 0) | (data == 1))):
            raise MedinvertError("mask must contain only 0 (missing) and 1 (kept)", path=source)
        data = data != 0
    if not bool(data.any()):
        raise MedinvertError("mask keeps no voxel (all 0)", path=source)
    return data


def load_mask_file(path: str | Path) -> torch.Tensor:
    """Read a mask volume (NIfTI / DICOM, 1 = kept) with `medinvert.io.load_volume`; float32 ``(X, Y, Z)``."""
    return as_plain_tensor(_load_mask_volume(path))


def _load_mask_volume(path: str | Path) -> Any:
    from medinvert.io import load_volume

    return load_volume(path)


def check_mask_geometry(mask_affine: Any, volume_affine: Any, source: str | None = None) -> None:
    """Refuse a mask file whose voxel->RAS affine differs from the volume's (entries within
    `AFFINE_TOLERANCE` mm): same array shape on another grid would mask the wrong anatomy."""
    a = np.asarray(as_plain_tensor(mask_affine).cpu().numpy() if isinstance(mask_affine, torch.Tensor) else mask_affine,
                   dtype=np.float64)
    b = np.asarray(as_plain_tensor(volume_affine).cpu().numpy() if isinstance(volume_affine, torch.Tensor)
                   else volume_affine, dtype=np.float64)
    if a.shape != (4, 4) or b.shape != (4, 4) or not np.allclose(a, b, rtol=0.0, atol=AFFINE_TOLERANCE):
        raise MedinvertError("mask geometry (affine) does not match the volume's; resample the mask onto the volume's "
                             "grid first", path=source)


class RandInpaintMask(CorruptionTransform):
    """Remove a region of a volume ``(X, Y, Z)`` -> `Observation` (kind "mask").

    Args:
        mask_type: "box" (one box, side ``size_fraction`` of each axis), "blobs" (``n_blobs``
            ellipsoids, semi-axes ``radius_fraction`` of min(X, Y)), "slices" (``slice_fraction`` of the
            slices dropped) or "file" (a user mask: ``mask_file`` path or a ``mask`` array, 1 = kept).
        sigma / snr: optional Gaussian noise on the kept voxels.

    ``y`` is float32 ``(Z, X, Y)`` with zeros where missing; ``mask`` is the keep-mask; ``adjoint = y``.
    """

    kind = "mask"

    def __init__(self, mask_type: str = "box", size_fraction: float = 0.3, n_blobs: int = 5,
                 radius_fraction: tuple[float, float] = (0.05, 0.15), slice_fraction: float = 0.2,
                 mask_file: str | Path | None = None, mask: Any = None, sigma: float | None = None,
                 snr: float | None = None) -> None:
        if mask is not None:
            if mask_type != "file":
                raise MedinvertError(f"a mask array is only used with mask type 'file', not {mask_type!r}")
            if mask_file not in (None, "<array>"):
                raise MedinvertError("give a mask array or a mask file, not both")
            mask_file = "<array>"
        super().__init__(mask_type=mask_type, size_fraction=size_fraction, n_blobs=n_blobs,
                         radius_fraction=list(radius_fraction), slice_fraction=slice_fraction,
                         mask_file=mask_file, sigma=sigma, snr=snr)
        self.user_mask_affine: Any = None  # the mask file's affine (checked against file volumes)
        if mask is not None:
            self.user_mask: torch.Tensor | None = as_plain_tensor(mask).detach().cpu()
        elif self.params["mask_type"] == "file":
            loaded = _load_mask_volume(self.params["mask_file"])
            self.user_mask = as_plain_tensor(loaded)
            self.user_mask_affine = loaded.affine
        else:
            self.user_mask = None

    def _make_mask(self, shape: tuple[int, int, int], seed: int, source: str | None,
                   affine: Any = None) -> torch.Tensor:
        p = self.params
        if p["mask_type"] == "box":
            return box_mask(shape, p["size_fraction"], seed)
        if p["mask_type"] == "blobs":
            return blob_mask(shape, p["n_blobs"], tuple(p["radius_fraction"]), seed)
        if p["mask_type"] == "slices":
            return slice_dropout_mask(shape, p["slice_fraction"], seed)
        assert self.user_mask is not None
        label = p["mask_file"] if p["mask_file"] != "<array>" else source
        keep = check_user_mask(self.user_mask, shape, label)
        if self.user_mask_affine is not None and source is not None and affine is not None:
            check_mask_geometry(self.user_mask_affine, affine, label)  # both from files: same grid
        return keep

    def _apply(self, volume: VolumeInput, mask_seed: int, noise_seed: int) -> Observation:
        shape = tuple(int(s) for s in volume.data.shape)
        mask = self._make_mask(shape, mask_seed, volume.source, volume.affine)  # type: ignore[arg-type]
        noise = self._noise_sigma(volume)
        data = volume.data
        if noise["sigma"] > 0:
            data = data + noise["sigma"] * gaussian_field(shape, noise_seed)
        y_volume = data * mask.to(torch.float32)
        params: dict[str, Any] = {**self.params, **noise,
                                  "mask_seed": mask_seed if self.params["mask_type"] != "file" else None,
                                  "noise_seed": noise_seed if noise["sigma"] > 0 else None,
                                  "noise_model": "gaussian" if noise["sigma"] > 0 else None,
                                  "measured_fraction": float(np.count_nonzero(mask.numpy()) / mask.numel())}
        return self._observation(volume, y=volume_to_slices(y_volume).contiguous(), mask=mask,
                                 adjoint=y_volume.contiguous(), params=params)


class RandInpaintMaskd(CorruptionDictTransform):
    """Dict wrapper of `RandInpaintMask`."""

    array_class = RandInpaintMask
