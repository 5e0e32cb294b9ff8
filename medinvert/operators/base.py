"""The interface every forward operator implements.

An operator ``A`` maps an image batch ``x`` shaped ``(..., H, W)`` (in-plane axes last, any leading
batch dimensions; a volume is passed as its slice stack ``(Z, X, Y)``, see `medinvert.operators.layout`)
to measurements ``y = A x``.  It offers

* ``forward(x)``   -- ``A x``
* ``adjoint(y)``   -- ``A^H y``, the exact adjoint: ``<A x, y> = <x, A^H y>`` for the (complex, where
  the data are complex) Euclidean inner product ``<a, b> = sum(conj(a) * b)``;
* ``data_consistency(x0_pred, y, weight)`` -- pull a predicted clean image towards the measurements.
  ``weight`` (lambda) lies in ``[0, 1]``: 0 leaves ``x0_pred`` unchanged, 1 trusts the measurements
  fully (a hard projection where one exists in closed form).  A float applies to every image; a
  tensor must broadcast against ``x0_pred`` (e.g. ``(B, 1, 1)`` for one weight per image), which lets
  a sampler lower the weight where the measurement noise dominates the diffusion noise.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

__all__ = ["LinearOperator", "MaskedOperator", "as_weight", "as_bool_mask"]


def as_weight(weight: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``weight`` as a real tensor on ``like``'s device and real dtype, checked to lie in ``[0, 1]``."""
    real_dtype = like.real.dtype if like.is_complex() else like.dtype
    if not real_dtype.is_floating_point:
        real_dtype = torch.float32
    w = torch.as_tensor(weight, dtype=real_dtype, device=like.device)
    if w.is_complex() or not bool(torch.all((w >= 0) & (w <= 1))):
        raise ValueError(f"data-consistency weight must lie in [0, 1], got {weight!r}")
    return w


class LinearOperator(abc.ABC):
    """A linear measurement operator acting on the last two dimensions of its input (see module doc)."""

    #: observation kind this operator belongs to ("kspace", "mask", "noise", "blur")
    kind: ClassVar[str]

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x`` shaped ``(..., H, W)``."""

    @abc.abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^H y`` for measurements ``y`` shaped like ``forward``'s output."""

    @abc.abstractmethod
    def data_consistency(self, x0_pred: torch.Tensor, y: torch.Tensor,
                         weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``x0_pred`` (``(..., H, W)``) moved towards consistency with ``y``; same shape and dtype."""

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


def as_bool_mask(mask: torch.Tensor, what: str, min_ndim: int = 0) -> torch.Tensor:
    """``mask`` as a bool tensor; ValueError unless it is boolean or holds only 0 and 1."""
    mask = torch.as_tensor(mask)
    if mask.ndim < min_ndim:
        raise ValueError(f"{what} mask needs at least {min_ndim} dimensions (H, W), got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(torch.all((mask == 0) | (mask == 1))):
            raise ValueError(f"{what} mask must be boolean or contain only 0 and 1")
        mask = mask != 0
    return mask


class MaskedOperator(LinearOperator):
    """An operator defined by a 0/1 mask ``self.mask`` (bool), applied in its own domain."""

    def _mask_like(self, t: torch.Tensor) -> torch.Tensor:
        """The mask as a real tensor of ``t``'s (real) dtype and device."""
        real = t.real.dtype if t.is_complex() else t.dtype
        return self.mask.to(device=t.device, dtype=real if real.is_floating_point else torch.float32)
