"""Through-plane context of the 2.5D networks: the conditioning images of neighbouring slices.

A ``"2.5d"`` network (`medinvert.models.unet.LipschitzUNet`, ``neighbours = k``) denoises one axial
slice, like the 2D one, but sees the adjoint images ``A^H y`` of ``k`` slices on each side as extra
input channels.  The *state* of the sampling ODE stays one slice: slices are still integrated
independently (streamed in batches, each a bijection on its own fixed-point grid for ``exact``),
while the network's estimate of the clean slice draws on the measurements of its neighbours -- the
through-plane redundancy that a slice-wise model ignores (the 2.5D input of e.g. Zhang et al.,
"Multi-slice compressed sensing MRI", and of most slice-stack reconstruction networks).

Channel order of the conditioning stack (shared by training, `medinvert.train.data`, and inference,
`medinvert.engine` / `medinvert.inversion`)::

    [image of slice z, image of z-k, ..., z-1, z+1, ..., z+k]

so the first channel is the centre slice's image (the guess ``m`` of the ``edm_adjoint`` skip).  At
the ends of the volume the index is clamped (the edge slice is repeated).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["slab_indices", "slab_stack", "spatial_slab", "centre_first"]


def spatial_slab(z: int, k: int, depth: int) -> list[int]:
    """Slice indices ``[z-k, ..., z+k]`` in spatial order, clamped to ``[0, depth - 1]``."""
    if depth < 1 or not 0 <= z < depth:
        raise ValueError(f"slice {z} outside a volume of depth {depth}")
    return [min(max(z + d, 0), depth - 1) for d in range(-k, k + 1)]


def centre_first(k: int) -> list[int]:
    """Positions in a spatial slab of ``2k + 1`` slices, in stack order: ``[k, 0 .. k-1, k+1 .. 2k]``."""
    return [k, *range(k), *range(k + 1, 2 * k + 1)]


def slab_indices(z: int, k: int, depth: int) -> list[int]:
    """Slice indices ``[z, z-k .. z-1, z+1 .. z+k]`` clamped to ``[0, depth - 1]`` (``2k + 1`` entries)."""
    spatial = spatial_slab(z, k, depth)
    return [spatial[i] for i in centre_first(k)]


def slab_stack(images: torch.Tensor, slices: Sequence[int], k: int) -> torch.Tensor:
    """Conditioning stacks of ``slices``: ``images (Z, X, Y)`` -> ``(len(slices), 2k + 1, X, Y)``.

    ``k = 0`` gives the plain 2D conditioning ``(B, 1, X, Y)``.
    """
    depth = images.shape[0]
    index = torch.tensor([slab_indices(int(z), k, depth) for z in slices], dtype=torch.long)
    return images[index]
