"""Training data: cached volumes -> augmented, corrupted 2-D training samples.

Pipeline (one sample; everything random is drawn from a generator seeded by ``(seed, index)``, so
sample ``index`` is the same whatever the number of processes, and a resumed run sees exactly the
samples an uninterrupted one would have seen):

1. `load_training_volumes`: `find_cases(root)` -> the volumes of one modality, minus the held-out
   cases named in ``root/split.json`` (``{"heldout": [case ids]}``), loaded through a MONAI
   `CacheDataset` and divided by their `robust_scale`.
2. `SliceSamples[index]`: pick a volume and an axial slice with brain in it, augment with MONAI
   array transforms (flip, affine with rotation/zoom/shear, elastic deformation, bias field, gamma
   contrast, histogram shift, smoothing, intensity scale), crop/pad to ``crop x crop`` (with several
   crop sizes, the size cycles from one optimisation step to the next, so a batch shares one size
   and small matrices -- a 33 x 41 scan has a 3-line k-space centre at 4x -- are trained on), draw a random
   corruption (k-space at accelerations 2..12 with random / equispaced / variable-density masks,
   inpainting masks, Gaussian / Rician noise, Gaussian / motion blur) with `medinvert.corrupt`, and
   re-normalise clean image and adjoint by the *adjoint's* robust scale (what inference can see).
   With ``guess="cs_tv"`` a k-space sample's conditioning image is the CS-TV guess of its measurement
   (`medinvert.guess.kspace_tv_guess`, the function inference uses: each slice is solved in its own
   normalised units, so the guess does not depend on the scale jitter), divided by the sample's scale
   like everything else.

Returned dict (tensors, float32): ``x0 (1, crop, crop)`` clean image, ``adjoint (1 + 2k, crop, crop)``
real part of ``A^H y`` or the CS-TV guess (for 2.5D training with ``neighbours = k``: the slab of
`medinvert.models.slab`, centre first; the ``2k + 1`` slices are augmented and corrupted together, as one
small volume), ``descriptor (DESCRIPTOR_LENGTH,)``; with ``measurements=True`` also the centre slice's
normalised k-space ``kspace (1, crop, crop)`` complex64 and ``kspace_mask (1, crop, crop)`` bool (zero /
all-false for other corruption kinds; `medinvert.train.unrolled`).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from monai import transforms as mt
from monai.data import CacheDataset, Dataset, get_track_meta, set_track_meta

from medinvert.errors import MedinvertError
from medinvert.guess import kspace_tv_guess, uses_tv
from medinvert.intensity import robust_scale
from medinvert.io import find_cases, load_volume
from medinvert.models.slab import centre_first, spatial_slab

__all__ = ["TRAINABLE_MODALITIES", "load_training_volumes", "SliceSamples", "PatchSamples", "sample_corruption"]

#: modalities a model can be trained for (``"all"`` pools them: a multi-contrast base model)
TRAINABLE_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")


def _heldout_ids(root: Path) -> set[str]:
    split = root / "split.json" if root.is_dir() else root.parent / "split.json"
    if not split.is_file():
        return set()
    try:
        return set(json.loads(split.read_text())["heldout"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MedinvertError(f"malformed split file ({exc})", split) from None


def _load_normalised(item: dict[str, Any]) -> dict[str, Any]:
    volume = load_volume(item["path"])
    array = volume.as_tensor().float()
    return {**item, "image": array / robust_scale(array)}


def load_training_volumes(root: str | Path, modality: str) -> tuple[list[torch.Tensor], list[str]]:
    """Volumes ``(X, Y, Z)`` of ``modality`` (or ``"all"`` four) under ``root``, held-out cases excluded.

    Returns the volumes and the case ids they came from.  Raises MedinvertError when none is found.
    """
    root = Path(root)
    heldout = _heldout_ids(root)
    wanted = TRAINABLE_MODALITIES if modality == "all" else (modality,)
    items = [
        {"path": str(case.paths[m]), "case_id": f"{case.case_id}:{m}" if modality == "all" else case.case_id}
        for case in find_cases(root) if case.case_id not in heldout
        for m in wanted if m in case.paths
    ]
    if not items:
        raise MedinvertError(f"no training volumes of modality {modality!r} (held out: {sorted(heldout)})", root)
    cached = CacheDataset(data=items, transform=_load_normalised, progress=False, num_workers=0)
    volumes = [cached[i]["image"] for i in range(len(cached))]
    return volumes, [item["case_id"] for item in items]


def sample_corruption(rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    """A random corruption ``(kind, params)`` for `medinvert.corrupt` (k-space in 60 % of draws)."""
    u = rng.random()
    if u < 0.6:
        acceleration = float(rng.choice([2, 3, 4, 4, 6, 8, 8, 10, 12]))
        center_fraction = min(0.08, 0.32 / acceleration)  # fastMRI's 4x/0.08 and 8x/0.04 rule
        pattern = str(rng.choice(["random", "random", "equispaced", "variable-density"]))
        return "kspace", {"acceleration": acceleration, "center_fraction": round(center_fraction, 4),
                          "pattern": pattern}
    if u < 0.75:  # holes from small to lesion-sized (a 60-px lesion in a 96-px crop)
        if rng.random() < 0.5:
            return "mask", {"mask_type": "box", "size_fraction": round(float(rng.uniform(0.1, 0.6)), 3)}
        return "mask", {"mask_type": "blobs", "n_blobs": int(rng.integers(1, 7)),
                        "radius_fraction": [0.05, round(float(rng.uniform(0.1, 0.35)), 3)]}
    if u < 0.9:
        return "noise", {"sigma": float(rng.uniform(0.01, 0.1)),
                         "noise_model": str(rng.choice(["gaussian", "rician"]))}
    if rng.random() < 0.5:
        return "blur", {"blur": "gaussian", "blur_sigma": float(rng.uniform(0.7, 2.5))}
    return "blur", {"blur": "motion", "motion_length": float(rng.uniform(3, 9)),
                    "motion_angle": float(rng.uniform(0, 180))}


def _augmentations(crop: int) -> mt.Compose:
    """MONAI array transforms applied to one ``(1, H, W)`` slice (all randomness via ``set_random_state``)."""
    margin = crop + crop // 2
    return mt.Compose([
        mt.RandSpatialCrop(roi_size=(margin, margin), random_size=False),
        mt.RandFlip(prob=0.5, spatial_axis=0),
        mt.RandFlip(prob=0.5, spatial_axis=1),
        mt.RandRotate90(prob=0.5),
        mt.RandAffine(prob=0.9, rotate_range=math.pi / 10, scale_range=(0.25, 0.25), shear_range=(0.1, 0.1),
                      padding_mode="zeros"),
        mt.Rand2DElastic(prob=0.5, spacing=(40, 40), magnitude_range=(0.0, 2.0), padding_mode="zeros"),
        mt.RandBiasField(prob=0.7, coeff_range=(0.0, 0.4), degree=3),
        mt.RandAdjustContrast(prob=0.7, gamma=(0.5, 2.0)),
        mt.RandHistogramShift(prob=0.5, num_control_points=(5, 12)),
        mt.RandGaussianSmooth(prob=0.2, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
        mt.RandScaleIntensity(prob=0.5, factors=0.3),
        mt.ResizeWithPadOrCrop(spatial_size=(crop, crop)),
    ])


@contextmanager
def _plain_tensors() -> Iterator[None]:
    """Run MONAI transforms on plain tensors (no MetaTensor bookkeeping: ~2x faster here)."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def _brain_slices(volume: torch.Tensor) -> np.ndarray:
    """Indices of slices (axis 2) whose foreground covers at least 5 % of the slice."""
    foreground = (volume.abs() > 0.05).float().mean(dim=(0, 1))
    indices = torch.nonzero(foreground >= 0.05).flatten().numpy()
    return indices if indices.size else np.arange(volume.shape[2])


class _SampleStream(Dataset):
    """Shared part of `SliceSamples` and `PatchSamples`: sample ``first_index + i`` draws, from a
    generator seeded by ``(seed, first_index + i)`` alone, a volume, a slice with brain in it, the
    augmentation seed, a corruption and the intensity jitter -- in that order."""

    def __init__(self, volumes: list[torch.Tensor], length: int, seed: int, crop: int, first_index: int) -> None:
        super().__init__(data=range(int(length)))
        self.volumes = volumes
        self.brain_slices = [_brain_slices(v) for v in volumes]
        self.seed, self.crop, self.first_index = int(seed), int(crop), int(first_index)

    def _draw(self, index: int) -> tuple[np.random.Generator, torch.Tensor, int]:
        """``(generator, volume (X, Y, Z), slice z)`` of sample ``index``."""
        rng = np.random.default_rng([self.seed, self.first_index + int(index)])
        v = int(rng.integers(len(self.volumes)))
        return rng, self.volumes[v], int(rng.choice(self.brain_slices[v]))

    @staticmethod
    def _corrupted(clean: torch.Tensor, rng: np.random.Generator) -> Any:
        """A random corruption (`sample_corruption`) of the clean volume ``(X, Y, S)`` -> `Observation`."""
        from medinvert.transforms import corrupt

        kind, params = sample_corruption(rng)
        return corrupt(clean, kind, seed=int(rng.integers(2**31)), **params)


class SliceSamples(_SampleStream):
    """Indexable stream of augmented, corrupted training slices (see the module docstring).

    ``SliceSamples(volumes, length, seed, crop, first_index)[i]`` is sample ``first_index + i``; the
    sample depends only on ``(seed, first_index + i)``.
    """

    def __init__(self, volumes: list[torch.Tensor], length: int, *, seed: int, crop: int = 96,
                 first_index: int = 0, neighbours: int = 0, extra_crops: tuple[int, ...] = (),
                 samples_per_step: int | None = None, guess: str = "adjoint", measurements: bool = False) -> None:
        super().__init__(volumes, length, seed, crop, first_index)
        self.guess = guess
        self.measurements = bool(measurements)
        if extra_crops and (samples_per_step is None or samples_per_step < 1):
            raise ValueError("extra_crops needs samples_per_step (batch size x processes), so a batch shares one size")
        self.neighbours = int(neighbours)
        self.crops = (self.crop, *(int(c) for c in extra_crops))
        self.samples_per_step = int(samples_per_step or 1)
        self.augments = {size: _augmentations(size) for size in self.crops}

    def crop_of(self, index: int) -> int:
        """Crop size of sample ``index``: ``crops[step % len(crops)]``, ``step`` = its optimisation step
        (``(first_index + index) // samples_per_step``), so every batch of a step shares one size."""
        step = (self.first_index + int(index)) // self.samples_per_step
        return self.crops[step % len(self.crops)]

    def _conditioning(self, observation: Any, adjoint: torch.Tensor, order: list[int]) -> torch.Tensor:
        """The conditioning slab ``(S, crop, crop)`` in the observation's units: ``adjoint`` or, for
        k-space under ``guess="cs_tv"``, the CS-TV guess (`medinvert.guess.kspace_tv_guess`: each slice
        solved in its own normalised units, exactly as inference does)."""
        if not uses_tv(self.guess, observation.kind):
            return adjoint
        from medinvert.operators.layout import volume_to_slices

        y = observation.y[order]                                                    # (S, crop, crop)
        mask = volume_to_slices(observation.mask).to(torch.bool)[order]
        return kspace_tv_guess(y, mask).to(torch.float32)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        rng, volume, z = self._draw(index)
        slab = spatial_slab(z, self.neighbours, volume.shape[2])              # z-k .. z+k, spatial order
        image = volume[:, :, slab].permute(2, 0, 1).float()                   # (S, X, Y), S = 2k + 1
        augment = self.augments[self.crop_of(index)]
        augment.set_random_state(seed=int(rng.integers(2**31)))
        with _plain_tensors():  # spatial transforms move all S slices together
            clean = torch.as_tensor(augment(image)).float().clamp_min(0.0)  # (S, crop, crop)
        # corrupted as the small volume it is (a box or blob mask spans neighbouring slices), then
        # reordered centre first, as the network takes it (`medinvert.models.slab`)
        observation = self._corrupted(clean.permute(1, 2, 0), rng)
        order = centre_first(self.neighbours)
        clean = clean[order]
        adjoint = torch.as_tensor(observation.adjoint).float().permute(2, 0, 1)[order]  # (S, crop, crop)
        scale = robust_scale(adjoint[0]) * float(rng.uniform(0.8, 1.25))
        conditioning = self._conditioning(observation, adjoint, order)
        sample = {
            "x0": clean[:1] / scale,
            "adjoint": conditioning / scale,
            "descriptor": torch.as_tensor(observation.descriptor).float(),
        }
        if self.measurements:
            sample.update(self._measurement(observation, order, scale))
        return sample

    @staticmethod
    def _measurement(observation: Any, order: list[int], scale: float) -> dict[str, torch.Tensor]:
        """The centre slice's normalised k-space ``kspace (1, crop, crop)`` complex64 and its mask
        ``kspace_mask (1, crop, crop)`` bool (zeros and all-false for the other corruption kinds), for
        the sampler-in-the-loop objective (`medinvert.train.unrolled`)."""
        from medinvert.operators.layout import volume_to_slices

        shape = tuple(observation.adjoint.shape[:2])
        if observation.kind != "kspace":
            return {"kspace": torch.zeros((1, *shape), dtype=torch.complex64),
                    "kspace_mask": torch.zeros((1, *shape), dtype=torch.bool)}
        centre = order[0]
        mask = volume_to_slices(observation.mask).to(torch.bool)[centre:centre + 1]
        return {"kspace": (observation.y[centre:centre + 1] / scale).to(torch.complex64), "kspace_mask": mask}


def _augmentations_3d(crop: int, depth: int) -> mt.Compose:
    """MONAI array transforms for one ``(1, X, Y, D)`` patch: the 2D set's spatial part in-plane (the
    slice axis is kept: flips, 90° turns and rotations act in the axial plane only), its intensity part
    on the whole patch.  No elastic deformation (slow in 3D)."""
    margin = crop + crop // 2
    return mt.Compose([
        mt.RandSpatialCrop(roi_size=(margin, margin, depth), random_size=False),
        mt.RandFlip(prob=0.5, spatial_axis=0),
        mt.RandFlip(prob=0.5, spatial_axis=1),
        mt.RandRotate90(prob=0.5, spatial_axes=(0, 1)),
        mt.RandAffine(prob=0.9, rotate_range=(0.0, 0.0, math.pi / 10), scale_range=(0.25, 0.25, 0.0),
                      padding_mode="zeros"),
        mt.RandBiasField(prob=0.7, coeff_range=(0.0, 0.4), degree=3),
        mt.RandAdjustContrast(prob=0.7, gamma=(0.5, 2.0)),
        mt.RandHistogramShift(prob=0.5, num_control_points=(5, 12)),
        mt.RandScaleIntensity(prob=0.5, factors=0.3),
        mt.ResizeWithPadOrCrop(spatial_size=(crop, crop, depth)),
    ])


class PatchSamples(_SampleStream):
    """Indexable stream of augmented, corrupted 3D training patches ``crop x crop x depth`` (the 3D
    counterpart of `SliceSamples`; same seeding, corruption draw and normalisation).

    Returned dict: ``x0 (1, crop, crop, depth)``, ``adjoint (1, crop, crop, depth)``, ``descriptor (K,)``.
    The slab of ``depth`` slices is centred on a slice with brain in it (clamped to the volume; a volume
    with fewer slices is zero padded).
    """

    def __init__(self, volumes: list[torch.Tensor], length: int, *, seed: int, crop: int = 64, depth: int = 16,
                 first_index: int = 0) -> None:
        super().__init__(volumes, length, seed, crop, first_index)
        self.depth = int(depth)
        self.augment = _augmentations_3d(self.crop, self.depth)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        rng, volume, z = self._draw(index)
        start = min(max(z - self.depth // 2, 0), max(volume.shape[2] - self.depth, 0))
        image = volume[:, :, start:start + self.depth][None].float()               # (1, X, Y, <= depth)
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        with _plain_tensors():
            clean = torch.as_tensor(self.augment(image)).float().clamp_min(0.0)   # (1, crop, crop, depth)
        observation = self._corrupted(clean[0], rng)
        adjoint = torch.as_tensor(observation.adjoint).float()[None]
        scale = robust_scale(adjoint) * float(rng.uniform(0.8, 1.25))
        return {"x0": clean / scale, "adjoint": adjoint / scale,
                "descriptor": torch.as_tensor(observation.descriptor).float()}
