"""The edit region: mask validation, feathering weights and the slices an edit touches.

A mask is any ``(X, Y, Z)`` array, tensor, MetaTensor or volume file (NIfTI / DICOM) whose non-zero
voxels mark the region to edit (a BraTS segmentation works as it is).  It must have the volume's
shape and, when both carry geometry (a file or a MetaTensor), the volume's affine; it must select at
least one voxel.

Feathering.  ``feather = F`` (voxels, >= 0) gives every voxel the weight

    w = clip(1 - d / (F + 1), 0, 1),    d = Euclidean distance (in voxels, 3-D) to the nearest mask voxel,

so ``w = 1`` on the mask, falls linearly across a band of voxels at distance ``0 < d <= F`` and is 0
beyond.  The edit is blended with the held trajectory by ``w`` at every step; voxels with ``w = 0``
(outside the mask dilated by ``F``) are held exactly, hence bit-identical in the output.  ``F = 0``:
``w`` is the mask itself.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medinvert.errors import MedinvertError
from medinvert.operators.layout import as_plain_tensor

__all__ = ["Region", "load_mask", "make_region", "affine_of"]

#: largest difference (mm) between two affines' entries still counted as the same geometry
AFFINE_TOLERANCE = 1e-3


def affine_of(value: Any) -> np.ndarray | None:
    """The float64 ``(4, 4)`` affine a volume-like object carries (MetaTensor / loaded file), else None."""
    affine = getattr(value, "affine", None)
    if affine is None:
        return None
    data = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    data = np.asarray(data, dtype=np.float64)
    return data if data.shape == (4, 4) else None


def _squeeze(data: torch.Tensor) -> torch.Tensor:
    """Drop trailing singleton axes beyond 3 and lift 2-D to ``(X, Y, 1)`` (as volumes are loaded)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    return data


def load_mask(mask: Any, shape: tuple[int, int, int], volume_affine: np.ndarray | None = None) -> torch.Tensor:
    """The edit mask as bool ``(X, Y, Z)`` (non-zero = edit).

    Args:
        mask: a path (any volume `medinvert.load_volume` reads), MetaTensor, tensor or array.
        shape: the volume's ``(X, Y, Z)``.
        volume_affine: the volume's affine when it carries geometry; then a mask with geometry must
            have the same affine (entries within `AFFINE_TOLERANCE`).

    Raises `MedinvertError` (naming the mask file when there is one) for a shape or affine mismatch,
    non-finite or complex values, or an empty mask.
    """
    label: str | None = None
    if isinstance(mask, (str, os.PathLike)):
        from medinvert.io import load_volume

        label = os.fspath(mask)
        mask = load_volume(label)
    affine = affine_of(mask)
    try:
        data = as_plain_tensor(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    except (TypeError, ValueError, RuntimeError):
        raise MedinvertError(f"mask must be a path, a tensor or an array, got {type(mask).__name__}") from None
    if data.is_complex():
        raise MedinvertError("mask must be real-valued", path=label)
    data = _squeeze(data)
    if tuple(data.shape) != tuple(shape):
        raise MedinvertError(f"mask shape {tuple(data.shape)} does not match the volume shape {tuple(shape)}",
                             path=label)
    if volume_affine is not None and affine is not None and not np.allclose(affine, volume_affine, rtol=0.0,
                                                                              atol=AFFINE_TOLERANCE):
        raise MedinvertError("mask geometry (affine) does not match the volume's; resample the mask onto the "
                             "volume grid first", path=label)
    if data.dtype != torch.bool:
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):
            raise MedinvertError("mask contains NaN or Inf", path=label)
        data = data != 0
    if not bool(data.any()):
        raise MedinvertError("mask is empty (no non-zero voxel): nothing to edit", path=label)
    return data.contiguous()


@dataclass(frozen=True)
class Region:
    """Where an edit acts.

    Attributes:
        mask: bool ``(X, Y, Z)``, the user's mask.
        weight: float64 ``(X, Y, Z)`` blend weight in ``[0, 1]`` (module docstring): 1 on the mask,
            0 where the trajectory is held exactly.
        feather: the band width ``F`` in voxels.
    """

    mask: torch.Tensor
    weight: torch.Tensor
    feather: float

    @property
    def edited(self) -> torch.Tensor:
        """bool ``(X, Y, Z)``: voxels the edit may change (``weight > 0``)."""
        return self.weight > 0

    @property
    def held(self) -> torch.Tensor:
        """bool ``(X, Y, Z)``: voxels held on their trajectory, bit-identical in the output (``weight == 0``)."""
        return self.weight == 0

    @property
    def slices(self) -> list[int]:
        """Axial slices (array axis 2) holding at least one edited voxel, ascending."""
        return [int(k) for k in torch.nonzero(self.edited.any(dim=0).any(dim=0)).reshape(-1)]


def make_region(mask: torch.Tensor, feather: float = 0.0) -> Region:
    """`Region` of a bool mask with a feathering band of ``feather`` voxels (module docstring)."""
    if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not math.isfinite(feather) or feather < 0:
        raise MedinvertError(f"feather must be a finite number of voxels >= 0, got {feather!r}")
    feather = float(feather)
    if feather == 0.0:
        return Region(mask, mask.to(torch.float64), 0.0)
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~mask.numpy())
    weight = np.clip(1.0 - distance / (feather + 1.0), 0.0, 1.0)
    return Region(mask, torch.from_numpy(weight), feather)
