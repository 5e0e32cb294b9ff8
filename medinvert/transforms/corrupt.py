"""`corrupt(volume, kind, seed=..., **params)`: the one-call corruption used by the CLI and the Python API."""

from __future__ import annotations

import dataclasses
from typing import Any

from medinvert.errors import MedinvertError
from medinvert.operators.observation import Observation
from medinvert.transforms.base import CorruptionTransform
from medinvert.transforms.blur import RandBlur
from medinvert.transforms.inpaint import RandInpaintMask
from medinvert.transforms.kspace import RandKspaceUndersample
from medinvert.transforms.noise import RandNoise
from medinvert.transforms.params import normalize_params
from medinvert.transforms.seeding import seed_from_name

__all__ = ["corrupt", "make_transform", "apply_transform"]


def make_transform(kind: str, *, mask: Any = None, **params: Any) -> CorruptionTransform:
    """The array transform for ``kind`` with ``params`` (validated; `MedinvertError` when wrong)."""
    if kind == "mask" and mask is not None:
        if params.get("mask_file") is not None:
            raise MedinvertError("give a mask array or a mask file, not both")
        params = {**params, "mask_type": "file", "mask_file": "<array>"}
    p = normalize_params(kind, params)
    if kind == "kspace":
        return RandKspaceUndersample(**p)
    if kind == "mask":
        return RandInpaintMask(mask=mask, **p)
    if mask is not None:
        raise MedinvertError(f"a mask array only applies to kind 'mask', not {kind!r}")
    if kind == "noise":
        return RandNoise(**p)
    return RandBlur(**p)


def corrupt(volume: Any, kind: str, *, seed: int = 0, name: str | None = None, mask: Any = None,
            **params: Any) -> Observation:
    """Corrupt a volume ``(X, Y, Z)`` and return its `Observation`.

    Args:
        volume: MetaTensor (affine and ``filename_or_obj`` are kept), torch tensor or numpy array.
        kind: "kspace", "mask", "noise" or "blur".
        seed: user seed (non-negative integer).
        name: the volume's name for seeding; default: the file name in ``volume.meta``.  With a name the
            transform is seeded with ``seed_from_name(name, seed)`` -- so every volume gets its own
            mask / noise and every slice of a volume shares one mask -- without one with ``seed``.
        mask: for kind "mask", a keep-mask array ``(X, Y, Z)`` (1 = kept) instead of a mask file.
        **params: the kind's parameters (`medinvert.transforms.params`), e.g. ``acceleration=8``,
            ``pattern="equispaced"``, ``sigma=0.05``, ``blur="motion"``.

    The observation's ``params`` record everything needed to redo it: the normalised parameters,
    ``seed``, ``name`` and the derived ``random_seed`` plus the drawn ``mask_seed`` / ``noise_seed``.
    Same volume, name, seed and parameters -> identical observation.
    """
    transform = make_transform(kind, mask=mask, **params)
    return apply_transform(transform, volume, seed=seed, name=name)


def apply_transform(transform: CorruptionTransform, volume: Any, *, seed: int = 0,
                    name: str | None = None) -> Observation:
    """Seed ``transform`` for this volume and apply it -- `corrupt` with a prepared transform (so a
    mask file is read once for a whole folder).  Seeding and the recorded params as in `corrupt`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise MedinvertError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if name is None:
        meta = getattr(volume, "meta", None) or {}
        source = meta.get("filename_or_obj")
        name = str(source) if source else None
    random_seed = seed_from_name(name, seed) if name else seed
    transform.set_random_state(random_seed)
    observation = transform(volume)
    from medinvert.io.naming import volume_stem

    extra = {"seed": seed, "name": volume_stem(name) if name else None, "random_seed": random_seed}
    meta = getattr(volume, "meta", None)
    header = meta.get("nifti_header") if isinstance(meta, dict) else None  # kept for the reconstruction's file
    modality = meta.get("modality") if isinstance(meta, dict) else None  # a DICOM series' from its description
    return dataclasses.replace(observation, params={**observation.params, **extra},
                               nifti_header=bytes(header) if isinstance(header, (bytes, bytearray)) else None,
                               modality=modality if isinstance(modality, str) else None)
