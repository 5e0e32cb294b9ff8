"""Thin MONAI dictionary transforms that let a MONAI bundle config drive `reconstruct_volume`.

The bundle in ``bundles/medinvert_mri_recon`` chains them (``configs/inference.json``)::

    LoadVolumed("image")                        d["image"] = load_volume(path)            (X, Y, Z)
    CentralSlabd("image", slices=8)             central slab of axial slices, affine shifted
    SeededCorruptiond(RandKspaceUndersampled("image", acceleration=4), seed=0)
                                                d["image_observation"] = Observation
    ReconstructVolumed("image", model=path)     d["image_reconstruction"] = ReconstructionResult
    SaveReconstructiond("image", output_dir)    <stem>_recon.nii.gz + <stem>_report.{html,json}

Each transform does one job and keeps all logic in the package functions it calls
(`medinvert.io.load_volume`, `medinvert.reconstruct.reconstruct_volume`,
`medinvert.report.write_outputs`).  Nothing is stored on the transforms between calls.

Volumes are channel-less ``(X, Y, Z)`` MetaTensors (the package contract, docs/architecture.md), so
MONAI's channel-first spatial transforms are not used on them; `CentralSlabd` crops along axis 2 and
moves the affine's origin itself.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from medinvert.errors import MedinvertError

__all__ = ["LoadVolumed", "CentralSlabd", "SeededCorruptiond", "ReconstructVolumed", "SaveReconstructiond",
           "central_slab", "slab_affine"]

logger = logging.getLogger("medinvert.bundle")


def slab_affine(affine: np.ndarray, start: int) -> np.ndarray:
    """Voxel->world affine of the sub-volume that starts at slice ``start`` along array axis 2.

    Voxel ``(i, j, k)`` of the slab is voxel ``(i, j, k + start)`` of the volume, so the new affine is
    ``A @ T`` with ``T`` the translation by ``start`` along axis 2 (the origin moves by ``start`` times
    the third column; rotation, zooms and shear are unchanged).
    """
    shift = np.eye(4, dtype=np.float64)
    shift[2, 3] = float(start)
    return np.asarray(affine, dtype=np.float64) @ shift


def central_slab(volume: Any, slices: int | None) -> Any:
    """The ``slices`` central axial slices of a ``(X, Y, Z)`` volume as a MetaTensor with the matching affine.

    ``slices=None`` (or ``>= Z``) returns ``volume`` unchanged.  The slab starts at ``(Z - slices) // 2``;
    its meta keeps the loader's keys (NIfTI header, modality, file name) and adds ``slab = [start, stop]``
    and ``slab_of_shape`` (the full volume's shape).
    """
    from medinvert.io.nifti import make_meta_tensor

    if slices is None:
        return volume
    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
        raise MedinvertError(f"slices must be a positive integer or null, got {slices!r}")
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3:
        raise MedinvertError(f"expected a volume of shape (X, Y, Z), got {shape}",
                             path=(getattr(volume, "meta", None) or {}).get("filename_or_obj"))
    if slices >= shape[2]:
        return volume
    start = (shape[2] - slices) // 2
    source_meta = dict(getattr(volume, "meta", None) or {})
    meta = {k: v for k, v in source_meta.items() if k not in ("affine", "original_affine")}
    meta.update({"slab": [start, start + slices], "slab_of_shape": list(shape)})
    data = np.asarray(torch.as_tensor(volume).detach().cpu().as_subclass(torch.Tensor))[:, :, start:start + slices]
    given = getattr(volume, "affine", None)
    affine = np.eye(4) if given is None else np.asarray(torch.as_tensor(given).detach().cpu().to(torch.float64))
    return make_meta_tensor(np.ascontiguousarray(data), slab_affine(affine, start), meta)


class LoadVolumed(MapTransform):
    """``d[key] = medinvert.io.load_volume(d[key])``: NIfTI file, DICOM series folder or DICOM file.

    The result is a float32 MetaTensor ``(X, Y, Z)`` with the file's affine kept exactly (no
    reorientation) and its NIfTI header in ``meta`` (so the saved reconstruction keeps it).  Values
    that are already volumes (not paths) pass through.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medinvert.io import load_volume

        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], (str, Path)):
                d[key] = load_volume(d[key])
        return d


class CentralSlabd(MapTransform):
    """``d[key] = central_slab(d[key], slices)``: keep the central ``slices`` axial slices (None or
    ``"all"``: every slice; ``"all"`` because ``monai.bundle run`` drops a ``--slices None`` override)."""

    def __init__(self, keys: KeysCollection, slices: int | str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if slices == "all":
            slices = None
        if slices is not None and (isinstance(slices, bool) or not isinstance(slices, int) or slices < 1):
            raise MedinvertError(f"slices must be a positive integer, 'all' or null, got {slices!r}")
        self.slices = slices

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = central_slab(d[key], self.slices)
        return d


class SeededCorruptiond(Transform):
    """Seed a corruption dict transform per volume from the volume's name, then apply it.

    ``transform`` is one of the package's ``Rand...d`` corruption transforms (e.g.
    `medinvert.transforms.RandKspaceUndersampled`).  Before each call it is reseeded with
    ``seed_from_name(name, seed)`` -- ``name`` the file name of the first key's volume -- exactly as
    `medinvert.transforms.corrupt` / ``medinvert corrupt --seed`` seed it, so the bundle draws the same
    mask for a file as the CLI does, whatever the dataset order, and every slice shares one mask.  The
    observation's ``params`` get the same ``seed`` / ``name`` / ``random_seed`` entries as `corrupt`'s.
    Each call seeds and runs its own copy of ``transform``, so concurrent calls (MONAI's ``CacheDataset``
    with several workers treats this deterministic transform as cacheable and runs it in threads) cannot
    draw one another's masks.
    """

    def __init__(self, transform: Any, seed: int = 0) -> None:
        if not isinstance(transform, Randomizable) or not hasattr(transform, "observation_suffix"):
            raise MedinvertError(f"expected a medinvert corruption dict transform, got {type(transform).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise MedinvertError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        self.transform = transform
        self.seed = seed

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medinvert.io.naming import volume_stem
        from medinvert.transforms.seeding import seed_from_name

        keys = list(self.transform.key_iterator(dict(data)))
        if not keys:
            return dict(data)
        meta = getattr(data[keys[0]], "meta", None) or {}
        source = meta.get("filename_or_obj")
        name = str(source) if source else None
        random_seed = seed_from_name(name, self.seed) if name else self.seed
        transform = copy.deepcopy(self.transform)  # a private copy: CacheDataset runs this in threads at once
        transform.set_random_state(random_seed)
        d = transform(data)
        extra = {"seed": self.seed, "name": volume_stem(name) if name else None, "random_seed": random_seed}
        for key in keys:
            out_key = f"{key}{self.transform.observation_suffix}"
            d[out_key] = dataclasses.replace(d[out_key], params={**d[out_key].params, **extra})
        return d


class ReconstructVolumed(MapTransform):
    """``d[key + result_suffix] = reconstruct_volume(d[key + observation_suffix], model, ...)``.

    Args:
        keys: keys of the clean volumes whose observations are reconstructed.
        model: shipped model name or checkpoint path (the bundle passes ``models/model.pt``).
        method, steps, guidance, batch_size, device, seed, checks: as in `reconstruct_volume`.
        observation_suffix: where the corruption transform put the `Observation`.
        result_suffix: where the `ReconstructionResult` goes.
        use_reference: compute the report's metrics against ``d[key]`` (the clean volume).

    The result's report gets a ``bundle`` section naming the slab (``meta["slab"]``) when the volume
    was cropped by `CentralSlabd`.
    """

    def __init__(self, keys: KeysCollection, model: str, method: str = "exact", steps: int | None = None,
                 guidance: float = 1.0, batch_size: int = 8, device: str = "cpu", seed: int = 0,
                 checks: str = "fast", observation_suffix: str = "_observation",
                 result_suffix: str = "_reconstruction", use_reference: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        path = Path(str(model)).expanduser()
        self.model = str(path.resolve()) if path.is_file() else str(model)  # absolute path in the report
        self.options: dict[str, Any] = {"method": method, "steps": None if steps is None else int(steps),
                                         "guidance": float(guidance),
                                         "batch_size": int(batch_size), "device": str(device), "seed": int(seed),
                                         "checks": checks}
        self.observation_suffix = observation_suffix
        self.result_suffix = result_suffix
        self.use_reference = use_reference

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medinvert.reconstruct import reconstruct_volume

        d = dict(data)
        for key in self.key_iterator(d):
            observation = d.get(f"{key}{self.observation_suffix}")
            if observation is None:
                raise MedinvertError(f"no observation under {key + self.observation_suffix!r}: put a corruption "
                                     "transform before ReconstructVolumed")
            reference = d[key] if self.use_reference else None
            result = reconstruct_volume(observation, self.model, reference=reference, return_latent=False,
                                        **self.options)
            meta = getattr(d[key], "meta", None) or {}
            section = {"model_path": self.model, "slab": meta.get("slab"), "slab_of_shape": meta.get("slab_of_shape")}
            d[f"{key}{self.result_suffix}"] = dataclasses.replace(result, report={**result.report, "bundle": section})
        return d


class SaveReconstructiond(MapTransform):
    """Write ``d[key + result_suffix]`` to ``output_dir`` with `medinvert.report.write_outputs`.

    Files (all atomic; the JSON report last): ``<stem>_recon.nii.gz`` (float32, the volume's affine and
    NIfTI header), ``<stem>_report.html``, ``<stem>_report.json``; ``<stem>`` is the input file's
    `medinvert.io.volume_stem`.  Sets ``d[key + "_report_json"]`` to the JSON report's path.
    """

    def __init__(self, keys: KeysCollection, output_dir: str, result_suffix: str = "_reconstruction",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.result_suffix = result_suffix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medinvert.io import ensure_not_input, volume_stem
        from medinvert.report import output_paths, write_outputs

        d = dict(data)
        for key in self.key_iterator(d):
            result = d.get(f"{key}{self.result_suffix}")
            if result is None:
                raise MedinvertError(f"no reconstruction under {key + self.result_suffix!r}: put ReconstructVolumed "
                                     "before SaveReconstructiond")
            meta = getattr(d[key], "meta", None) or {}
            source = meta.get("filename_or_obj") or result.observation.source
            if not source:
                raise MedinvertError("the volume has no file name to name its outputs after")
            paths = output_paths(self.output_dir, volume_stem(Path(str(source))))
            for target in paths.files:
                ensure_not_input(target, [source])
            write_outputs(result, paths, reference=d[key], source_volume=d[key],
                          title=f"medinvert bundle reconstruction: {volume_stem(Path(str(source)))}")
            logger.info("wrote %s and its reports", paths.recon)
            d[f"{key}_report_json"] = str(paths.report_json)
        return d
