"""Volume I/O: NIfTI files, DICOM series folders, single DICOM files, BraTS case discovery.

Public surface::

    load_volume(path, *, series_uid=None) -> MetaTensor (X, Y, Z) float32, affine = voxel->RAS
    save_volume(volume, path, *, reference=None, dtype=float32) -> Path   (NIfTI, atomic)
    find_cases(root) -> list[Case]                  BraTS 2021/2023, plain NIfTI folders, DICOM series
    volume_stem(path) -> str                        name used for a volume's outputs
    guess_modality(path) -> str | None              t1 / t1ce / t2 / flair / seg from the name
    require_volume(volume, path=None, *, min_slices=2)    refuse 2D images where 3D is needed
    ensure_not_input(output, inputs)                 refuse to write over an input
    list_dicom_series(folder) -> list[DicomSeriesInfo]
    nifti_header(volume) -> nibabel header | None   the original NIfTI header of a loaded volume
    atomic_write_path / atomic_write_bytes / atomic_write_text   (medinvert.io.atomic)

Readers are nibabel and pydicom; nothing is parsed by hand.  Every input problem raises
`medinvert.errors.MedinvertError` with one line naming the file.
"""

from medinvert.io.atomic import atomic_write_bytes, atomic_write_path, atomic_write_text
from medinvert.io.cases import Case, find_cases
from medinvert.io.dicom import DicomSeriesInfo, list_dicom_series
from medinvert.io.load import ensure_not_input, load_volume, require_volume
from medinvert.io.naming import MODALITIES, guess_modality, parse_brats_name, volume_stem
from medinvert.io.nifti import MAX_VOXELS, nifti_header, save_volume

__all__ = [
    "MAX_VOXELS",
    "MODALITIES",
    "Case",
    "DicomSeriesInfo",
    "atomic_write_bytes",
    "atomic_write_path",
    "atomic_write_text",
    "ensure_not_input",
    "find_cases",
    "guess_modality",
    "list_dicom_series",
    "load_volume",
    "nifti_header",
    "parse_brats_name",
    "require_volume",
    "save_volume",
    "volume_stem",
]
