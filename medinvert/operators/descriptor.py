"""The conditioning descriptor ``c``: a fixed-length float32 vector describing a corruption.

The network conditions on ``c`` (docs/architecture.md, "Conditioning descriptor").  Slots (all
zero unless stated; every value is O(1) for the usual settings):

====  =====================  ===============================================================
slot  name                   value
====  =====================  ===============================================================
0     kind_kspace            1 for k-space undersampling
1     kind_mask              1 for masking / inpainting
2     kind_noise             1 for denoising (Gaussian or Rician noise)
3     kind_blur              1 for deblurring
4     log2_acceleration      kspace: log2(acceleration) / 4  (4x -> 0.5, 8x -> 0.75)
5     center_fraction        kspace: center_fraction * 10     (0.08 -> 0.8)
6     pattern_equispaced     kspace: 1 for equispaced line masks
7     pattern_2d             kspace: 1 for the 2-D variable-density mask (random lines: 6 = 7 = 0)
8     missing_fraction       mask: fraction of voxels not kept (1 - measured fraction)
9     slice_dropout          mask: 1 when whole slices are missing (mask type "slices")
10    noise_level            any kind: noise std / mean foreground intensity * 10 (0 = noiseless)
11    rician                 noise: 1 for Rician (magnitude) noise
12    blur_width             blur: Gaussian sigma or motion length, in pixels, / 10
13    motion                 blur: 1 for linear motion blur
14    motion_cos2            blur (motion): cos(2 * angle)  (a line at angle a and a + 180 is the same)
15    motion_sin2            blur (motion): sin(2 * angle)
====  =====================  ===============================================================

The all-zero vector is reserved for "no condition" (a real corruption always sets one kind slot).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

__all__ = ["DESCRIPTOR_LENGTH", "DESCRIPTOR_SLOTS", "KINDS", "make_descriptor", "null_descriptor"]

#: observation kinds, in descriptor one-hot order
KINDS: tuple[str, ...] = ("kspace", "mask", "noise", "blur")

#: slot names, in order (see the module docstring for their values)
DESCRIPTOR_SLOTS: tuple[str, ...] = (
    "kind_kspace", "kind_mask", "kind_noise", "kind_blur",
    "log2_acceleration", "center_fraction", "pattern_equispaced", "pattern_2d",
    "missing_fraction", "slice_dropout",
    "noise_level", "rician",
    "blur_width", "motion", "motion_cos2", "motion_sin2",
)

DESCRIPTOR_LENGTH: int = len(DESCRIPTOR_SLOTS)


def null_descriptor() -> torch.Tensor:
    """The reserved all-zero "no condition" vector, ``(DESCRIPTOR_LENGTH,)`` float32."""
    return torch.zeros(DESCRIPTOR_LENGTH, dtype=torch.float32)


def make_descriptor(kind: str, params: Mapping[str, Any]) -> torch.Tensor:
    """Descriptor ``(DESCRIPTOR_LENGTH,)`` float32 for an observation of ``kind`` with ``params``.

    ``params`` are an observation's normalised parameters (`medinvert.operators.Observation.params`):
    kspace uses ``acceleration``, ``center_fraction``, ``pattern``; mask ``measured_fraction`` and
    ``mask_type``; noise ``noise_model``; blur ``blur``, ``blur_sigma``, ``motion_length``,
    ``motion_angle``; every kind ``sigma_rel`` (noise std relative to the mean foreground, 0 if absent).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown observation kind {kind!r} (expected one of {', '.join(KINDS)})")
    c = null_descriptor()
    slot = {name: i for i, name in enumerate(DESCRIPTOR_SLOTS)}
    c[KINDS.index(kind)] = 1.0
    c[slot["noise_level"]] = 10.0 * float(params.get("sigma_rel", 0.0) or 0.0)
    if kind == "kspace":
        c[slot["log2_acceleration"]] = math.log2(float(params["acceleration"])) / 4.0
        c[slot["center_fraction"]] = 10.0 * float(params["center_fraction"])
        c[slot["pattern_equispaced"]] = float(params["pattern"] == "equispaced")
        c[slot["pattern_2d"]] = float(params["pattern"] == "variable-density")
    elif kind == "mask":
        c[slot["missing_fraction"]] = 1.0 - float(params["measured_fraction"])
        c[slot["slice_dropout"]] = float(params.get("mask_type") == "slices")
    elif kind == "noise":
        c[slot["rician"]] = float(params.get("noise_model") == "rician")
    else:
        motion = params["blur"] == "motion"
        width = float(params["motion_length"] if motion else params["blur_sigma"])
        c[slot["blur_width"]] = width / 10.0
        if motion:
            angle = math.radians(float(params["motion_angle"]))
            c[slot["motion"]] = 1.0
            c[slot["motion_cos2"]] = math.cos(2 * angle)
            c[slot["motion_sin2"]] = math.sin(2 * angle)
    return c
