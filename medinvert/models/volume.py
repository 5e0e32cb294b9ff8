"""3D networks behind the slice-batch interface: `VolumeAsSlices`.

Everything that drives a network -- `medinvert.denoiser.Denoiser`, the solvers, data consistency,
`medinvert.engine`, `medinvert.inversion` -- works on a batch of axial slices ``(B, C, X, Y)``.  A
``"3d"`` `LipschitzUNet` denoises a volume ``(1, C, X, Y, Z)`` instead.  `VolumeAsSlices` wraps it so
that a batch holding *all the slices of one volume, in order* is one 3D evaluation: the batch is
turned into the volume, the 3D network runs over it in overlapping patches (MONAI
`sliding_window_inference`, Gaussian-weighted blending; the network was trained on patches of that
size) and the result is turned back into slices.  The sampler's state stays the whole volume, so the
probability-flow ODE couples the slices; with the ``exact`` solver the map is still a bijection on the
fixed-point grid (eps is a deterministic function of the whole state).

Contract: callers must pass every slice of the volume in one batch (``whole_volume = True`` tells
them; `medinvert.engine` and `medinvert.inversion` do), with one diffusion time for the batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medinvert.errors import MedinvertError

__all__ = ["VolumeAsSlices", "PATCH_SIZE", "as_slice_network"]

#: patch of the sliding-window evaluation (X, Y, Z), and its overlap
PATCH_SIZE: tuple[int, int, int] = (96, 96, 32)
OVERLAP = 0.25


class VolumeAsSlices(nn.Module):
    """A 3D network called like a 2D one on the ordered slices of one volume (module docstring)."""

    whole_volume = True

    def __init__(self, net: nn.Module, patch_size: tuple[int, int, int] = PATCH_SIZE) -> None:
        super().__init__()
        self.net = net
        self.patch_size = tuple(int(p) for p in patch_size)
        self.config: dict[str, Any] = dict(getattr(net, "config", {}))
        self.in_channels = int(getattr(net, "in_channels", 2))
        self.train(net.training)

    @property
    def core(self) -> nn.Module:
        """The wrapped 3D network."""
        return self.net

    @property
    def lipschitz_factor(self) -> float:
        """``Lip(wrapper) <= lipschitz_factor * Lip(core)`` in the Euclidean norm over the volume.

        The reshapes are isometries; the output is, voxel by voxel, a convex (Gaussian-weighted)
        combination of the window outputs, so by Jensen ``||d out||^2 <= sum_w ||d f(P_w x)||^2 <=
        L^2 m ||d x||^2`` with ``m`` the most windows covering one voxel: ``2^3`` for an overlap below
        one half (at most two windows per axis).
        """
        return math.sqrt(8.0) if OVERLAP < 0.5 else float("inf")

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None,
                cond_drop: torch.Tensor | None = None) -> torch.Tensor:
        """``x: (Z, C, X, Y)`` the slices of one volume, ``t: (Z,)`` one time, ``cond: (Z, K)`` equal rows
        or None -> ``(Z, 1, X, Y)``."""
        if x.ndim != 4:
            raise MedinvertError(f"a 3D network takes the slices of one volume (Z, C, X, Y), got {tuple(x.shape)}")
        times = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        if times.numel() > 1 and not bool(torch.all(times == times[0])):
            raise MedinvertError("a 3D network evaluates one diffusion time per volume")
        volume = x.permute(1, 2, 3, 0).unsqueeze(0)                                  # (1, C, X, Y, Z)
        time = times[:1]
        condition = None if cond is None else cond[:1]
        drop = None if cond_drop is None else cond_drop[:1]

        def predict(patches: torch.Tensor) -> torch.Tensor:
            n = patches.shape[0]
            return self.net(patches, time.expand(n), None if condition is None else condition.expand(n, -1),
                            None if drop is None else drop.expand(n))

        out = self._sliding(volume, predict)                                          # (1, 1, X, Y, Z)
        return out[0].permute(3, 0, 1, 2).contiguous()                                # (Z, 1, X, Y)

    def _sliding(self, volume: torch.Tensor, predict: Any) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        if all(s <= p for s, p in zip(volume.shape[2:], self.patch_size)):
            return predict(volume)  # one patch: the network pads it itself
        return sliding_window_inference(volume, self.patch_size, 1, predict, overlap=OVERLAP, mode="gaussian",
                                        padding_mode="constant", cval=0.0)


def as_slice_network(net: nn.Module) -> nn.Module:
    """``net`` itself for slice networks; a 3D `LipschitzUNet` wrapped in `VolumeAsSlices`."""
    config = getattr(net, "config", None)
    if isinstance(config, dict) and config.get("dim") == "3d" and not isinstance(net, VolumeAsSlices):
        return VolumeAsSlices(net)
    return net
