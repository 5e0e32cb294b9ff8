"""MONAI corruption transforms, sampling / inpainting masks, and `corrupt`.

Array transforms hold the logic and return an `medinvert.operators.Observation`; dict transforms
(``...d``) are thin wrappers; randomness comes only from each transform's ``self.R``
(``set_random_state``), and `seed_from_name` derives a per-volume seed from the file name so all
slices of a volume share one mask (fastMRI's convention).

====================================  ======  ==================================================
transform (array / dict)              kind    corruption
====================================  ======  ==================================================
RandKspaceUndersample(d)              kspace  Cartesian random / equispaced lines, 2-D variable density
RandInpaintMask(d)                    mask    box, random blobs, slice dropout, user mask file
RandGaussianNoise(d) / RandRicianNoise(d)   noise   additive Gaussian / Rician magnitude noise
RandBlur(d)                           blur    Gaussian or linear motion blur
====================================  ======  ==================================================
"""

from medinvert.transforms.base import CorruptionDictTransform, CorruptionTransform, foreground_mean
from medinvert.transforms.blur import RandBlur, RandBlurd, blur_kernel
from medinvert.transforms.corrupt import apply_transform, corrupt, make_transform
from medinvert.transforms.inpaint import RandInpaintMask, RandInpaintMaskd
from medinvert.transforms.kspace import RandKspaceUndersample, RandKspaceUndersampled, kspace_mask
from medinvert.transforms.measured import estimate_noise_sigma, measured_noise, parse_measured_spec
from medinvert.transforms.masks import (
    blob_mask,
    box_mask,
    center_columns,
    equispaced_line_mask,
    random_line_mask,
    slice_dropout_mask,
    variable_density_mask,
)
from medinvert.transforms.noise import (
    RandGaussianNoise,
    RandGaussianNoised,
    RandNoise,
    RandRicianNoise,
    RandRicianNoised,
)
from medinvert.transforms.params import DEFAULTS, normalize_params, parse_corruption_spec
from medinvert.transforms.seeding import seed_from_name

__all__ = [
    "DEFAULTS",
    "CorruptionDictTransform",
    "CorruptionTransform",
    "RandBlur",
    "RandBlurd",
    "RandGaussianNoise",
    "RandGaussianNoised",
    "RandInpaintMask",
    "RandInpaintMaskd",
    "RandKspaceUndersample",
    "RandKspaceUndersampled",
    "RandNoise",
    "RandRicianNoise",
    "RandRicianNoised",
    "apply_transform",
    "blob_mask",
    "blur_kernel",
    "box_mask",
    "center_columns",
    "corrupt",
    "equispaced_line_mask",
    "estimate_noise_sigma",
    "foreground_mean",
    "kspace_mask",
    "make_transform",
    "measured_noise",
    "normalize_params",
    "parse_corruption_spec",
    "parse_measured_spec",
    "random_line_mask",
    "seed_from_name",
    "slice_dropout_mask",
    "variable_density_mask",
]
