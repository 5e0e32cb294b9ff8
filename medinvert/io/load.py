"""`load_volume`: one entry point for NIfTI files, DICOM series folders and single DICOM files.

Also the small guards every command uses: `require_volume` (a 3D volume is needed) and
`ensure_not_input` (never write over an input).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from medinvert.errors import MedinvertError
from medinvert.io.dicom import read_dicom_file, read_dicom_folder
from medinvert.io.naming import is_nifti_name
from medinvert.io.nifti import read_nifti
from medinvert.io.quiet import quiet_readers

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor

__all__ = ["load_volume", "require_volume", "ensure_not_input"]


def _check_finite(volume: "MetaTensor", path: Path) -> None:
    import torch

    data = volume.as_tensor()
    finite = torch.isfinite(data)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(data).sum())
    n_inf = int(torch.isinf(data).sum())
    raise MedinvertError(f"contains {n_nan} NaN and {n_inf} Inf voxels (of {data.numel()}); "
                         "medinvert needs finite intensities (a NaN background, as SPM writes outside its mask, "
                         "can be set to 0 first, e.g. numpy.nan_to_num)", path=path)


def load_volume(path: str | os.PathLike[str], *, series_uid: str | None = None) -> "MetaTensor":
    """Load a volume as a float32 ``monai.data.MetaTensor`` of shape ``(X, Y, Z)``.

    ``path`` may be a NIfTI file (``.nii`` / ``.nii.gz``), a folder holding a DICOM series (searched
    recursively; with several series pass ``series_uid``, otherwise the error lists them with their
    slice counts), or a single DICOM file (one slice -> ``(X, Y, 1)``, multi-frame -> ``(X, Y, F)``).

    Array axes are kept as stored (NIfTI) or as (column, row, slice along the normal) for DICOM; no
    reorientation.  ``volume.affine`` is the float64 4x4 voxel->RAS affine.  ``volume.meta`` holds
    ``filename_or_obj``, ``spacing`` (3 floats, mm, norms of the affine columns), ``modality``
    (canonical name guessed from the file/folder name, or None), ``source_format`` (``"nifti"`` /
    ``"dicom"``), ``stored_dtype``; NIfTI adds ``nifti_header`` (raw bytes, see
    `medinvert.io.nifti_header`), ``qform_code``, ``sform_code``; DICOM adds ``series_uid``,
    ``series_description``, ``dicom_modality``.

    Every input problem -- missing path, empty or truncated file, non-image bytes, absurd header
    dimensions (more than `medinvert.io.MAX_VOXELS` voxels, refused before allocating), true 4D data,
    NaN/Inf voxels (counted in the message), DICOM without pixel data, several series -- raises
    `MedinvertError` with one line naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise MedinvertError("no such file or folder", path=p)
    with quiet_readers():  # header repairs and reader warnings never reach stderr (one line per bad file)
        if p.is_dir():
            volume = read_dicom_folder(p, series_uid)
        else:
            if p.stat().st_size == 0:
                raise MedinvertError("file is empty (0 bytes)", path=p)
            if is_nifti_name(p):
                if series_uid is not None:
                    raise MedinvertError("series_uid (--series-uid) only applies to DICOM input", path=p)
                volume = read_nifti(p)
            else:
                volume = read_dicom_file(p, series_uid)
    _check_finite(volume, p)
    return volume


def require_volume(volume: "MetaTensor", path: str | os.PathLike[str] | None = None, *,
                   min_slices: int = 2) -> "MetaTensor":
    """Return ``volume`` unchanged if it is a real 3D volume, else raise `MedinvertError`.

    "Real 3D" means shape ``(X, Y, Z)`` with ``X, Y >= 2`` and at least ``min_slices`` (default 2)
    slices along axis 2.  Commands that work slice by slice may accept ``(X, Y, 1)`` and skip this
    check; commands that need a volume (3D SSIM, volume statistics, through-plane operations) call
    it right after `load_volume`.  ``path`` names the file in the message (default: the volume's
    ``filename_or_obj``).
    """
    meta = getattr(volume, "meta", {}) or {}
    label = path if path is not None else meta.get("filename_or_obj")
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3 or shape[0] < 2 or shape[1] < 2 or shape[2] < min_slices:
        pretty = "x".join(map(str, shape))
        raise MedinvertError(f"is a 2D image (shape {pretty}); this command needs a 3D volume with at least "
                             f"{min_slices} slices along axis 2", path=label)
    return volume


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def ensure_not_input(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Raise `MedinvertError` when ``output`` is (or resolves to, via links) one of ``inputs``."""
    out = Path(output)
    for item in inputs:
        if _same_path(out, Path(item)):
            raise MedinvertError(f"output would overwrite the input {item}", path=out)


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` lies in ``folder`` (both resolved; False when ``folder`` does not exist yet)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def inputs_inside_out(out: str | Path, where: str | Path) -> MedinvertError:
    """The error for an input whose every volume lies inside the output folder ``out`` (batch commands
    skip files below ``--out`` as their own earlier outputs, so nothing would be left to do)."""
    return MedinvertError(f"every volume here lies inside --out {out} (where earlier outputs are skipped); choose "
                          "an --out outside the input", path=where)
