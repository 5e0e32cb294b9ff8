"""NIfTI reading and writing through nibabel, keeping the affine and the qform/sform codes exactly.

Reading (`read_nifti`): the header is checked before any voxel is allocated (dimensions, data type,
affine), trailing singleton axes are squeezed (``128x128x10x1 -> 128x128x10``), a 2D image becomes
``(X, Y, 1)``, and a true 4D series (more than one frame) is refused: medinvert works on single 3D
volumes, extract the frame you want first (e.g. ``fslroi in out 0 1``).  Array axes are kept as
stored (no reorientation).  The original header travels with the volume as
``meta["nifti_header"]`` (its raw ``binaryblock`` bytes, so the volume stays picklable and
collatable); `nifti_header(volume)` turns it back into a nibabel header.

Writing (`save_volume`): see its docstring for how the header, affine and codes are chosen.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medinvert.errors import MedinvertError
from medinvert.io.atomic import atomic_write_path
from medinvert.io.naming import guess_modality, is_nifti_name

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    from monai.data import MetaTensor

__all__ = ["MAX_VOXELS", "read_nifti", "save_volume", "nifti_header", "spacing_from_affine", "make_meta_tensor"]

#: largest number of voxels medinvert will allocate for one volume (2**31, i.e. 8 GiB as float32);
#: a header announcing more is treated as corrupt and refused before reading any data.
MAX_VOXELS: int = 2**31


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along array axes 0, 1, 2: the norms of the affine's first three columns."""
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return float(norms[0]), float(norms[1]), float(norms[2])


def exception_reason(exc: BaseException, path: Path) -> str:
    """``"Type: message"`` of a library exception, without the file path (the caller names the file)."""
    text = " ".join(str(exc).replace(str(path), "").replace("''", "").split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_failure(exc: BaseException, path: Path) -> str:
    """Why nibabel could not open ``path``: a gzip stream under a ``.nii`` name and a file without a
    NIfTI header are said in words (nibabel's "Cannot work out file type" names neither)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(2)
    except OSError:
        magic = b""
    if magic == b"\x1f\x8b" and not path.name.lower().endswith(".gz"):
        return "it is gzip-compressed but named .nii; rename it to .nii.gz"
    if magic and magic != b"\x1f\x8b" and path.name.lower().endswith(".gz"):
        return "it is named .gz but not gzip-compressed (decompressed by a download?); rename it to .nii"
    if "Cannot work out file type" in str(exc):
        return "no NIfTI-1 or NIfTI-2 header at its start"
    return exception_reason(exc, path)


def check_voxel_count(shape: tuple[int, ...], path: Path) -> None:
    """Raise `MedinvertError` when ``prod(shape)`` exceeds `MAX_VOXELS` (a corrupt or absurd header)."""
    count = math.prod(int(s) for s in shape)
    if count > MAX_VOXELS:
        dims = "x".join(str(int(s)) for s in shape)
        raise MedinvertError(f"header announces {dims} = {count} voxels, more than the limit of {MAX_VOXELS} "
                             "(corrupt header?)", path=path)


def make_meta_tensor(data: np.ndarray, affine: np.ndarray, meta: dict[str, Any]) -> "MetaTensor":
    """Wrap a float32 ``(X, Y, Z)`` array and its 4x4 voxel->RAS affine into a MONAI MetaTensor.

    Adds the keys every loader provides: ``spacing`` (from the affine), ``spatial_shape``,
    ``original_affine`` and ``space = "RAS"`` on top of ``meta``.
    """
    import torch
    from monai.data import MetaTensor
    from monai.utils import SpaceKeys

    affine = np.asarray(affine, dtype=np.float64)
    full = dict(meta)
    full["spacing"] = spacing_from_affine(affine)
    full["spatial_shape"] = tuple(int(s) for s in data.shape)
    full["original_affine"] = affine.copy()
    full["space"] = SpaceKeys.RAS
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return MetaTensor(tensor, affine=torch.from_numpy(affine.copy()), meta=full)


def _squeezed_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """(X, Y, Z) after dropping trailing singleton axes; refuses 1D and true 4D+ data."""
    dims = tuple(int(s) for s in shape)
    if any(d <= 0 for d in dims):
        raise MedinvertError(f"header has a non-positive dimension {dims}", path=path)
    while len(dims) > 3 and dims[-1] == 1:
        dims = dims[:-1]
    if len(dims) > 3:
        pretty = "x".join(map(str, shape))
        raise MedinvertError(f"is a {len(dims)}D image ({pretty}) with {math.prod(dims[3:])} frames; medinvert reads "
                             "single 3D volumes, extract one frame first", path=path)
    if len(dims) < 2:
        raise MedinvertError(f"is a {len(dims)}D image (shape {shape}); expected a 2D slice or a 3D volume", path=path)
    if len(dims) == 2:
        dims = dims + (1,)
    return dims  # type: ignore[return-value]


def read_nifti(path: Path) -> "MetaTensor":
    """Read a ``.nii`` / ``.nii.gz`` file into a float32 MetaTensor of shape ``(X, Y, Z)``.

    Voxel values have the header's ``scl_slope`` / ``scl_inter`` applied.  ``meta`` holds
    ``filename_or_obj``, ``spacing``, ``modality`` (guessed from the name), ``source_format="nifti"``,
    ``nifti_header`` (raw header bytes), ``qform_code``, ``sform_code`` and ``stored_dtype``.
    Raises `MedinvertError` for anything unreadable (NaN/Inf are checked by `load_volume`).
    """
    import nibabel as nib

    try:
        image = nib.load(str(path), mmap=False)
    except Exception as exc:  # nibabel raises many types for garbage input
        raise MedinvertError(f"not a readable NIfTI file ({_load_failure(exc, Path(path))})", path=path) from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedinvertError(f"is not a NIfTI image (nibabel read it as {type(image).__name__})", path=path)
    header = image.header
    stored_shape = tuple(int(s) for s in header.get_data_shape())
    shape = _squeezed_shape(stored_shape, path)
    check_voxel_count(stored_shape, path)
    stored_dtype = header.get_data_dtype()
    if stored_dtype.kind not in "biuf" or stored_dtype.names is not None:
        raise MedinvertError(f"has unsupported voxel type {stored_dtype} (expected real-valued scalars)", path=path)
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise MedinvertError("has a singular or non-finite affine (broken qform/sform and pixdim)", path=path)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # truncated gzip / short file / decompression errors
        raise MedinvertError(f"voxel data cannot be read, the file is truncated or corrupt "
                             f"({exception_reason(exc, path)})", path=path) from None
    data = data.reshape(shape)
    meta = {
        "filename_or_obj": str(path),
        "modality": guess_modality(path),
        "source_format": "nifti",
        "nifti_header": bytes(header.binaryblock),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "stored_dtype": str(stored_dtype),
        "stored_shape": stored_shape,
    }
    return make_meta_tensor(data, affine, meta)


def nifti_header(volume: Any) -> "nib.Nifti1Header | nib.Nifti2Header | None":
    """The original NIfTI header of a volume loaded from NIfTI (a fresh copy), or None."""
    import nibabel as nib

    meta = getattr(volume, "meta", None)
    block = meta.get("nifti_header") if isinstance(meta, dict) else None
    if not isinstance(block, (bytes, bytearray)):
        return None
    header_class = nib.Nifti2Header if len(block) == nib.Nifti2Header.template_dtype.itemsize else nib.Nifti1Header
    return header_class(binaryblock=bytes(block), check=False)


def _monai_codes(volume: Any) -> tuple[int, int] | None:
    """``(qform_code, sform_code)`` that MONAI's ``NibabelReader`` copies into a MetaTensor's meta, or None."""
    meta = getattr(volume, "meta", None)
    if not isinstance(meta, dict) or "qform_code" not in meta or "sform_code" not in meta:
        return None
    try:
        return int(np.asarray(meta["qform_code"]).reshape(())), int(np.asarray(meta["sform_code"]).reshape(()))
    except (TypeError, ValueError):
        return None


def _as_numpy(volume: Any) -> np.ndarray:
    if hasattr(volume, "detach"):
        import torch

        return torch.Tensor.numpy(volume.detach().cpu().as_subclass(torch.Tensor))
    return np.asarray(volume)


def _cast(data: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        rounded = np.rint(data)
        if rounded.size and (not np.all(np.isfinite(rounded)) or rounded.min() < info.min or rounded.max() > info.max):
            raise MedinvertError(f"values do not fit the requested output type {dtype}", path=path)
        return rounded.astype(dtype)
    if dtype.kind == "f":
        return data.astype(dtype)
    raise MedinvertError(f"unsupported output data type {dtype}", path=path)


def save_volume(volume: Any, path: str | Path, *, reference: Any = None, dtype: Any = np.float32) -> Path:
    """Write a volume ``(X, Y, Z)`` (or ``(X, Y)``, or channel-first ``(1, X, Y, Z)``) to NIfTI atomically.

    ``volume`` is a MetaTensor, a torch tensor or a numpy array.  The output format follows the name
    (``.nii`` or ``.nii.gz``, anything else is refused); missing parent folders are created.

    Affine: ``volume.affine`` when it has one, else ``reference.affine``, else the identity.
    Header: the original NIfTI header of ``volume`` (``meta["nifti_header"]``), else that of
    ``reference`` (without either, a new header whose qform / sform codes are those MONAI's
    ``NibabelReader`` puts in the meta data, non-zero ones kept, else 1); its descriptive fields
    (units, intent, description) are kept, scaling and display range are reset because the data are new.
    When the affine is unchanged from that header's own
    (``header.get_best_affine()``), the qform and sform fields and codes are kept verbatim, so a load ->
    save round trip reproduces them bit for bit (a header with both codes 0 stays so: its affine comes
    from pixdim, and writing code 1 would claim a scanner space it never had).  Otherwise both
    are set from the affine, each keeping the source's non-zero code, else code 1 (scanner); the sform
    is then exact to float32 precision (the NIfTI storage type) and the qform holds the nearest shear-free
    approximation (a DICOM series with gantry tilt has a sheared affine; ITK-based tools refuse a file
    whose only transform is non-orthonormal, so the qform is kept rather than zeroed).

    ``dtype`` (default float32): an integer type rounds and refuses out-of-range values.  Written bytes
    are deterministic (nibabel's gzip stream carries no time stamp).  Returns ``Path(path)``.
    """
    import nibabel as nib

    out = Path(path)
    if not is_nifti_name(out):
        raise MedinvertError("output must be a NIfTI file name ending in .nii or .nii.gz", path=out)
    data = _as_numpy(volume)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise MedinvertError(f"cannot save an array of shape {tuple(data.shape)} as a volume (expected X, Y, Z)",
                             path=out)
    out_dtype = np.dtype(dtype)
    data = _cast(np.asarray(data), out_dtype, out)

    source = volume if getattr(volume, "affine", None) is not None else reference
    affine = np.eye(4) if getattr(source, "affine", None) is None else _as_numpy(source.affine).astype(np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise MedinvertError(f"invalid affine of shape {affine.shape} (expected a finite 4x4)", path=out)
    header = nifti_header(volume)
    if header is None:
        header = nifti_header(reference)

    if header is None:
        qcode, scode = _monai_codes(volume) or _monai_codes(reference) or (1, 1)
        image = nib.Nifti1Image(data, affine)
        image.set_sform(affine, code=scode if scode > 0 else (qcode if qcode > 0 else 1))
        image.set_qform(affine, code=qcode if qcode > 0 else (scode if scode > 0 else 1))
        image.header.set_xyzt_units("mm", "sec")
    else:
        header.set_data_shape(data.shape)
        header.set_data_dtype(out_dtype)
        header.set_slope_inter(None, None)
        header["cal_min"] = 0.0
        header["cal_max"] = 0.0
        qcode, scode = int(header["qform_code"]), int(header["sform_code"])
        keep = np.array_equal(header.get_best_affine(), affine)  # codes 0 / 0 too: no space is claimed
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = image_class(data, None, header=header)
        if not keep:
            image.set_sform(affine, code=scode if scode > 0 else (qcode if qcode > 0 else 1))
            image.set_qform(affine, code=qcode if qcode > 0 else (scode if scode > 0 else 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(out) as tmp:
        nib.save(image, str(tmp))
    return out
