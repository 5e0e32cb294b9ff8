"""Volume <-> slice-stack layout helpers.

Volumes are stored ``(X, Y, Z)`` (array axes as in the NIfTI file, see docs/architecture.md): the
in-plane axes are array axes 0 and 1 and slices run along axis 2.  Every operator in this package
works on images shaped ``(..., H, W)`` whose in-plane axes are the *last two* dimensions, so a volume
is handed to an operator as the slice stack ``(Z, X, Y)`` (``H = X``, ``W = Y``) and comes back with
`slices_to_volume`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_plain_tensor", "volume_to_slices", "slices_to_volume"]


def as_plain_tensor(data: Any) -> torch.Tensor:
    """``data`` (numpy array, torch tensor or MONAI MetaTensor) as a plain ``torch.Tensor`` (no copy
    when possible); metadata is dropped.  Numpy arrays in a non-native byte order are converted, and
    unsigned integers wider than 8 bits become the next wider signed type (uint64: float64), exactly."""
    if isinstance(data, torch.Tensor):
        return data.as_subclass(torch.Tensor) if type(data) is not torch.Tensor else data
    array = np.asarray(data)
    if any(stride < 0 for stride in array.strides):  # np.flip / nib.as_closest_canonical views
        array = np.ascontiguousarray(array)
    if not array.dtype.isnative:  # big-endian files: np.asarray(nibabel_image.dataobj) keeps ">i2"
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:  # DICOM's uint16: torch has few unsigned ops
        array = array.astype({2: np.int32, 4: np.int64}.get(array.dtype.itemsize, np.float64))
    return torch.as_tensor(array)


def volume_to_slices(volume: Any) -> torch.Tensor:
    """``(X, Y, Z)`` volume -> ``(Z, X, Y)`` stack of in-plane slices (a view, not a copy)."""
    vol = as_plain_tensor(volume)
    if vol.ndim != 3:
        raise ValueError(f"expected a volume of shape (X, Y, Z), got {tuple(vol.shape)}")
    return vol.permute(2, 0, 1)


def slices_to_volume(slices: Any) -> torch.Tensor:
    """``(Z, X, Y)`` stack of slices -> ``(X, Y, Z)`` volume (a view, not a copy); inverse of
    `volume_to_slices`."""
    stack = as_plain_tensor(slices)
    if stack.ndim != 3:
        raise ValueError(f"expected a slice stack of shape (Z, X, Y), got {tuple(stack.shape)}")
    return stack.permute(1, 2, 0)
