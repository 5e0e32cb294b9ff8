"""DICOM series / single files through pydicom, with a voxel->RAS affine built from the patient geometry.

Geometry (DICOM PS3.3 C.7.6.2, facts): ``ImageOrientationPatient`` (IOP) holds two direction cosines
in LPS patient space -- ``r`` = the direction of increasing column index (along a row) and ``c`` =
the direction of increasing row index; ``PixelSpacing = (row spacing, column spacing)`` in mm;
``ImagePositionPatient`` (IPP) is the centre of the first transmitted pixel.  Slices are ordered by
the projection of IPP on the slice normal ``n = r x c`` (never by file name or InstanceNumber).

Array layout: ``volume[i, j, k]`` = column ``i``, row ``j`` of the ``k``-th slice along ``+n``, so
the LPS affine has columns ``r * col_spacing``, ``c * row_spacing``, the slice step
``(IPP_last - IPP_first) / (N - 1)`` (exact also for tilted stacks) and origin ``IPP_first``; the
RAS affine is ``diag(-1, -1, 1, 1) @ LPS``.  A single slice uses ``n * SpacingBetweenSlices`` (else
``SliceThickness``, else 1 mm) as its third column.  ``RescaleSlope`` / ``RescaleIntercept`` are
applied per slice.  Enhanced (multi-frame) files take per-frame positions from their functional
groups; frames are sorted exactly like the files of a series.

Refused with `MedinvertError`: non-DICOM bytes named ``.dcm``, files without pixel data, colour
images, mixed orientations or matrix sizes, two slices at the same position (several echoes / time
points in one series), non-uniform slice spacing (missing slices), and more than `MAX_VOXELS` voxels.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from medinvert.errors import MedinvertError
from medinvert.io.naming import DICOM_SUFFIXES, guess_modality, guess_series_modality, is_nifti_name
from medinvert.io.nifti import check_voxel_count, exception_reason, make_meta_tensor
from medinvert.io.quiet import quiet_readers

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor
    from pydicom.dataset import Dataset

__all__ = [
    "DicomSeriesInfo",
    "LPS_TO_RAS",
    "is_dicom_file",
    "iter_image_files",
    "scan_dicom_files",
    "series_info",
    "describe_series",
    "list_dicom_series",
    "read_dicom_file",
    "read_dicom_folder",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ORIENTATION_TOL = 1e-4  # max difference between direction cosines of slices of one stack
_NO_PIXELS = "DICOM image file has no pixel data (a truncated copy, or a header without its image)"
_PART10_HEADER = 132  # bytes before the first element of a Part 10 file: preamble + "DICM"


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found in a folder (header facts only; no pixel data read)."""

    series_uid: str
    folder: Path            #: deepest folder holding all of the series' files
    files: tuple[Path, ...]  #: sorted by path (NOT the slice order)
    n_slices: int           #: total frames (files x NumberOfFrames)
    rows: int
    columns: int
    description: str        #: SeriesDescription ("" when absent)
    dicom_modality: str     #: the DICOM Modality tag, e.g. "MR" ("" when absent)


@dataclass(frozen=True)
class _Frame:
    """Geometry and scaling of one 2D frame."""

    position: np.ndarray     # IPP (3,), LPS mm
    orientation: np.ndarray  # IOP (6,)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None


@contextlib.contextmanager
def _malformed_as_user_error(path: Path) -> Iterator[None]:
    """Turn anything pydicom raises on a malformed file (bad VRs, odd values) into a `MedinvertError`."""
    try:
        yield
    except MedinvertError:
        raise
    except Exception as exc:
        raise MedinvertError(f"malformed DICOM file ({exception_reason(exc, path)})", path=path) from None


def is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM Part 10 marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def looks_like_bare_dataset(path: Path) -> bool:
    """True when the file starts like a DICOM data set written without the Part 10 preamble (old
    ACR-NEMA-style files, some PACS exports): its first element is in group 0002 or 0008, little or big
    endian, with an explicit VR or a plausible implicit length (PS3.5 section 7.1).  Only a sniff: the
    caller still parses the file and skips it unless it is an image."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    if len(head) < 8:
        return False
    for order in ("little", "big"):
        group, element = int.from_bytes(head[0:2], order), int.from_bytes(head[2:4], order)
        if group in (0x0002, 0x0008) and element <= 0x00FF:
            explicit_vr = head[4:6].isalpha() and head[4:6].isupper()
            return explicit_vr or (order == "little" and int.from_bytes(head[4:8], "little") < 1024)
    return False


def _bare_image_dataset(path: Path) -> "Dataset | None":
    """A preamble-less file's data set when it holds an image (``Rows`` and pixel data), else ``None``
    (bytes that only start like a data set).  An image whose header values are corrupt is an error
    naming the file: dropping it would silently shorten its series."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), force=True, defer_size=4096)  # values stay unconverted here
    except Exception:
        return None
    if not ("Rows" in ds and _has_pixels(ds)):
        return None
    with _malformed_as_user_error(path):
        return _with_transfer_syntax(_parse_header_values(ds))


def _parse_header_values(ds: "Dataset") -> "Dataset":
    """Convert every header value now (pydicom converts lazily), so a corrupt value (an unknown VR, a
    broken number) fails while the file is read, where it is reported with its name, not later in
    whatever code first touches it.  Values whose reading was deferred (longer than the reader's
    ``defer_size``: pixel data, large private blobs) and group 7FE0 stay unread, so a scan of a large
    export does not load its pixels."""
    for tag in list(ds.keys()):
        if tag.group == 0x7FE0 or ds.get_item(tag, keep_deferred=True).value is None:
            continue
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _parse_header_values(item)
    return ds


def _with_transfer_syntax(ds: "Dataset") -> "Dataset":
    """Give a data set read without file meta (no Part 10 header) the transfer syntax it was read with,
    so its pixel data decode: implicit or explicit VR, little or big endian (the encoding pydicom
    detected while parsing; PS3.5 sections 7.1 and A.1-A.3)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return ds
    implicit_vr, little_endian = ds.original_encoding
    syntax = (ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian) if little_endian \
        else ExplicitVRBigEndian
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _read_dataset(path: Path) -> "Dataset":
    """Read a DICOM file's header (every value converted, `_parse_header_values`; pixel data are read on
    demand).  Raises `MedinvertError` naming the file when it is not a readable DICOM image."""
    import pydicom

    if not is_dicom_file(path):
        if path.stat().st_size == 0:
            raise MedinvertError("file is empty (0 bytes)", path=path)
        bare = _bare_image_dataset(path)  # old files without the Part 10 preamble: accepted if images
        if bare is None:
            raise MedinvertError("is not a DICOM image file (no 'DICM' marker at byte 128) nor a NIfTI file "
                                 "(.nii / .nii.gz)", path=path)
        return bare
    try:
        return _parse_header_values(pydicom.dcmread(str(path), defer_size=4096))
    except Exception as exc:
        raise MedinvertError(f"not a readable DICOM file ({exception_reason(exc, path)})", path=path) from None


def _int(ds: "Dataset", keyword: str, default: int, path: Path) -> int:
    """Integer header value (``default`` when absent or empty); malformed values raise `MedinvertError`."""
    value = ds.get(keyword)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MedinvertError(f"DICOM {keyword} is malformed ({value!r})", path=path) from None


def _has_pixels(ds: "Dataset") -> bool:
    return any(tag in ds for tag in _PIXEL_TAGS)


def iter_image_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (recursive, sorted), skipping hidden files/folders and DICOMDIR."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = Path(dirpath) / name
            if path.is_file():
                found.append(path)
    return sorted(found)


@quiet_readers()
def scan_dicom_files(files: Sequence[Path]) -> dict[str, list[tuple[Path, "Dataset"]]]:
    """Group DICOM image files by SeriesInstanceUID -> [(path, dataset)], in sorted path order.

    Files with the ``DICM`` marker or a DICOM suffix (``.dcm``, ``.dicom``, ``.ima``) are read; a
    suffixed file that is not DICOM is an error; a file with neither that starts like a bare DICOM data
    set (`looks_like_bare_dataset`) and parses into an image is read too; other non-DICOM files and
    DICOM objects that are not images (no ``Rows``: reports, presentation states) are skipped.  An image header without
    pixel data is an error.  NIfTI files are ignored.
    """
    groups: dict[str, list[tuple[Path, "Dataset"]]] = {}
    stubs: list[Path] = []  # numbered name without extension, too short for a DICOM header: a cut slice?
    for path in sorted(files):
        if is_nifti_name(path):
            continue
        if not (is_dicom_file(path) or path.name.lower().endswith(DICOM_SUFFIXES)):
            ds = _bare_image_dataset(path) if looks_like_bare_dataset(path) else None
            if ds is None:  # not DICOM (or no image): skipped
                if not path.suffix and path.stat().st_size < _PART10_HEADER:
                    stubs.append(path)
                continue
            uid = str(ds.get("SeriesInstanceUID", "")).strip()  # an image without the preamble and suffix
        else:
            with _malformed_as_user_error(path):
                ds = _read_dataset(path)
                if "Rows" not in ds and not _has_pixels(ds):
                    _refuse_truncated(ds, path)
                    continue  # a non-image object: report, presentation state, ...
                if not _has_pixels(ds):
                    raise MedinvertError(_NO_PIXELS, path=path)
                uid = str(ds.get("SeriesInstanceUID", "")).strip()
        if not uid:
            raise MedinvertError("DICOM file has no SeriesInstanceUID", path=path)
        groups.setdefault(uid, []).append((path, ds))
    series_names = {(p.parent, _numbered_prefix(p.name)) for members in groups.values() for p, _ in members}
    for path in stubs:
        if (path.parent, _numbered_prefix(path.name)) in series_names and any(c.isdigit() for c in path.name):
            raise MedinvertError(f"is {path.stat().st_size} bytes, too short for a DICOM file, among the files of a "
                                 "DICOM series: a truncated copy of a slice? (remove it if it is not one)", path=path)
    return dict(sorted(groups.items()))


def _numbered_prefix(name: str) -> str:
    """``"IM0004"`` -> ``"IM"``, ``"00000012"`` -> ``""``: the name with its digits removed, which the
    files of one numbered series share (so ``VERSION`` next to ``IM0001`` is not taken for a slice)."""
    return re.sub(r"\d+", "", Path(name).stem)


def _refuse_truncated(ds: "Dataset", path: Path) -> None:
    """Raise when a file without Rows / pixel data is a cut-off image rather than a non-image object:
    its data set is empty, or its SOP class (or its file meta's) is an image storage class."""
    meta = getattr(ds, "file_meta", None)
    classes = (ds.get("SOPClassUID"), None if meta is None else meta.get("MediaStorageSOPClassUID"))
    if len(ds) == 0 or any(uid is not None and "Image Storage" in str(getattr(uid, "name", "")) for uid in classes):
        raise MedinvertError("DICOM image file is truncated: its header ends before Rows and the pixel data",
                             path=path)


def series_info(uid: str, members: list[tuple[Path, "Dataset"]]) -> DicomSeriesInfo:
    """Summarise one group returned by `scan_dicom_files` (no pixel data read)."""
    files = tuple(p for p, _ in members)
    first = members[0][1]
    n_slices = sum(_int(ds, "NumberOfFrames", 1, p) for p, ds in members)
    return DicomSeriesInfo(
        series_uid=uid,
        folder=Path(os.path.commonpath([str(p.parent) for p in files])),
        files=files,
        n_slices=n_slices,
        rows=_int(first, "Rows", 0, files[0]),
        columns=_int(first, "Columns", 0, files[0]),
        description=str(first.get("SeriesDescription", "")).strip(),
        dicom_modality=str(first.get("Modality", "")).strip(),
    )


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """All DICOM series under ``folder`` (recursive), sorted by SeriesInstanceUID."""
    groups = scan_dicom_files(iter_image_files(Path(folder)))
    return [series_info(uid, members) for uid, members in groups.items()]


def _floats(value: Any, count: int, name: str, path: Path) -> np.ndarray:
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise MedinvertError(f"DICOM {name} is missing or malformed ({value!r})", path=path)
    return array


def _lookup(groups: Sequence["Dataset"], sequence: str, keyword: str) -> Any:
    """First ``keyword`` found in ``group.<sequence>[0]`` over the functional groups given."""
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _thickness(ds: "Dataset") -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, ""):
            try:
                value = abs(float(value))
            except (TypeError, ValueError):
                continue
            if value > 0:
                return value
    return None


def _frame_from_values(ipp: Any, iop: Any, spacing: Any, ds: "Dataset", path: Path,
                       slope: Any, intercept: Any, thickness: float | None) -> _Frame:
    if ipp is None or iop is None:
        raise MedinvertError("DICOM image lacks ImagePositionPatient / ImageOrientationPatient "
                             "(no patient geometry)", path=path)
    if spacing is None:
        raise MedinvertError("DICOM image lacks PixelSpacing", path=path)
    ps = _floats(spacing, 2, "PixelSpacing", path)
    if np.any(ps <= 0):
        raise MedinvertError(f"DICOM PixelSpacing must be positive ({ps.tolist()})", path=path)
    return _Frame(
        position=_floats(ipp, 3, "ImagePositionPatient", path),
        orientation=_floats(iop, 6, "ImageOrientationPatient", path),
        pixel_spacing=(float(ps[0]), float(ps[1])),
        rows=_int(ds, "Rows", 0, path),
        columns=_int(ds, "Columns", 0, path),
        slope=1.0 if slope in (None, "") else float(slope),
        intercept=0.0 if intercept in (None, "") else float(intercept),
        thickness=thickness,
    )


def _frames_of(ds: "Dataset", path: Path) -> list[_Frame]:
    """Geometry of every frame of one file (one entry for a classic single-frame image)."""
    if _int(ds, "SamplesPerPixel", 1, path) != 1:
        raise MedinvertError("colour DICOM images are not supported (SamplesPerPixel != 1)", path=path)
    n_frames = _int(ds, "NumberOfFrames", 1, path)
    shared = list(ds.get("SharedFunctionalGroupsSequence") or [])
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    if n_frames > 1 and per_frame:
        if len(per_frame) != n_frames:
            raise MedinvertError(f"has {n_frames} frames but {len(per_frame)} per-frame functional groups", path=path)
        frames = []
        thickness = _thickness(ds)
        for group in per_frame:
            groups = [group] + shared
            measured = _lookup(groups, "PixelMeasuresSequence", "SpacingBetweenSlices")
            if measured in (None, ""):
                measured = _lookup(groups, "PixelMeasuresSequence", "SliceThickness")
            frame_thickness = thickness
            if measured not in (None, "") and float(measured) != 0:
                frame_thickness = abs(float(measured))
            frames.append(_frame_from_values(
                _lookup(groups, "PlanePositionSequence", "ImagePositionPatient"),
                _lookup(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
                _lookup(groups, "PixelMeasuresSequence", "PixelSpacing"),
                ds, path,
                _lookup(groups, "PixelValueTransformationSequence", "RescaleSlope"),
                _lookup(groups, "PixelValueTransformationSequence", "RescaleIntercept"),
                frame_thickness,
            ))
        return frames
    base = _frame_from_values(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"),
                              ds.get("PixelSpacing"), ds, path, ds.get("RescaleSlope"),
                              ds.get("RescaleIntercept"), _thickness(ds))
    if n_frames == 1:
        return [base]
    # Multi-frame without functional groups: frames stacked along the normal, at the offsets of
    # GridFrameOffsetVector (RT dose) when present, else every SpacingBetweenSlices / SliceThickness.
    normal = np.cross(base.orientation[:3], base.orientation[3:])
    offsets_value = ds.get("GridFrameOffsetVector")
    if offsets_value:
        offsets = _floats(offsets_value, n_frames, "GridFrameOffsetVector", path)
    elif base.thickness is not None:
        offsets = np.arange(n_frames) * base.thickness
    else:
        raise MedinvertError("multi-frame DICOM without per-frame positions, GridFrameOffsetVector or "
                             "SpacingBetweenSlices", path=path)
    return [_Frame(base.position + float(offset) * normal, base.orientation, base.pixel_spacing, base.rows,
                   base.columns, base.slope, base.intercept, base.thickness) for offset in offsets]


def _assemble(frames: list[_Frame], read_pixels: Callable[[list[int]], list[np.ndarray]],
              path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Sort frames along the slice normal, check the stack, read pixels -> (data (X, Y, Z), RAS affine)."""
    first = frames[0]
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise MedinvertError(f"slices have different matrix sizes ({first.rows}x{first.columns} and "
                                 f"{frame.rows}x{frame.columns})", path=path)
        if np.max(np.abs(frame.orientation - first.orientation)) > _ORIENTATION_TOL:
            raise MedinvertError("slices have different ImageOrientationPatient (several stacks in one series?)",
                                 path=path)
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise MedinvertError("slices have different PixelSpacing", path=path)
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-2 or abs(float(row_dir @ col_dir)) > 1e-2:
        raise MedinvertError("ImageOrientationPatient is not two orthonormal directions "
                             f"({first.orientation.tolist()})",
                             path=path)
    check_voxel_count((first.columns, first.rows, len(frames)), path)
    projections = np.array([float(f.position @ normal) for f in frames])
    order = [int(i) for i in np.argsort(projections, kind="stable")]
    sorted_proj = projections[order]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * first.pixel_spacing[1]
    lps[:3, 1] = col_dir * first.pixel_spacing[0]
    lps[:3, 3] = frames[order[0]].position
    if len(frames) > 1:
        steps = np.diff(sorted_proj)
        if np.min(steps) < 1e-3:
            positions = Counter(np.round(projections, 3).tolist())
            repeated = max(positions.values())
            raise MedinvertError(f"{repeated} slices share the same position along the slice normal (several echoes, "
                                 "time points or stacks in one series?)", path=path)
        mean_step = float(np.mean(steps))
        if float(np.max(np.abs(steps - mean_step))) > max(1e-3, 0.01 * mean_step):
            raise MedinvertError(f"non-uniform slice spacing ({np.min(steps):.4g} to {np.max(steps):.4g} mm): missing "
                                 "slices?", path=path)
        lps[:3, 2] = (frames[order[-1]].position - frames[order[0]].position) / (len(frames) - 1)
        _check_collinear([frames[i].position for i in order], lps[:3, 2], normal, min(first.pixel_spacing), path)
    else:
        lps[:3, 2] = normal * (first.thickness or 1.0)
    pixels = read_pixels(order)
    data = np.empty((first.columns, first.rows, len(frames)), dtype=np.float32)
    for k, (index, slice_pixels) in enumerate(zip(order, pixels)):
        if slice_pixels.shape != (first.rows, first.columns):
            raise MedinvertError(f"pixel data of shape {slice_pixels.shape} does not match Rows x Columns "
                                 f"({first.rows}x{first.columns})", path=path)
        frame = frames[index]
        data[:, :, k] = (slice_pixels.astype(np.float64) * frame.slope + frame.intercept).T
    return data, LPS_TO_RAS @ lps


def _check_collinear(positions: list[np.ndarray], step: np.ndarray, normal: np.ndarray, pixel: float,
                     path: Path) -> None:
    """Refuse a stack whose slice origins (sorted, (3,) each, mm) leave the line ``positions[0] + k * step``
    within the slice plane (``normal``: unit (3,) slice normal).

    The slice-normal spacing is checked separately; this catches a slice moved within its plane,
    which one affine cannot describe.  A gantry tilt shifts every slice by the same amount per slice,
    so its origins stay on the line (the affine's third column is then oblique to the slices).
    Tolerance: 0.05 mm or a tenth of a pixel, whichever is larger -- positions written with two
    decimals are off by up to 0.009 mm, a misplaced stack by millimetres.
    """
    tolerance = max(0.05, 0.1 * pixel)
    expected = positions[0] + np.arange(len(positions))[:, None] * step[None, :]
    residual = np.stack(positions) - expected
    offsets = np.linalg.norm(residual - (residual @ normal)[:, None] * normal[None, :], axis=1)
    worst = int(np.argmax(offsets))
    if offsets[worst] > tolerance:
        raise MedinvertError(f"slice {worst + 1} of {len(positions)} (sorted along the normal) lies "
                             f"{offsets[worst]:.3g} mm off the line through the other slice positions: slices "
                             "moved within their plane (several stacks in one series?)", path=path)


def _pixel_array(ds: "Dataset", path: Path) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", syntax)
        raise MedinvertError(f"cannot decode DICOM pixel data (transfer syntax {syntax_name}; "
                             f"{exception_reason(exc, path)})", path=path) from None


def _meta(path: Path, ds: "Dataset", uid: str, name_for_modality: Path, n_files: int) -> dict[str, Any]:
    modality = guess_modality(name_for_modality)
    description = str(ds.get("SeriesDescription", "")).strip()
    if modality is None:
        modality = guess_series_modality(description)
    return {
        "filename_or_obj": str(path),
        "modality": modality,
        "source_format": "dicom",
        "series_uid": uid,
        "series_description": description,
        "dicom_modality": str(ds.get("Modality", "")).strip(),
        "n_files": n_files,
        "stored_dtype": _stored_dtype(ds, path),
    }


def _stored_dtype(ds: "Dataset", path: Path) -> str:
    if "FloatPixelData" in ds:
        return "float32"
    if "DoubleFloatPixelData" in ds:
        return "float64"
    bits = _int(ds, "BitsAllocated", 16, path)
    signed = _int(ds, "PixelRepresentation", 0, path) == 1
    return f"{'int' if signed else 'uint'}{max(8, bits)}"


def _read_members(members: list[tuple[Path, "Dataset"]], uid: str, label: Path,
                  name_for_modality: Path) -> "MetaTensor":
    """Assemble the volume of one series (or one file); malformed headers become `MedinvertError`."""
    with _malformed_as_user_error(label):
        return _read_members_unchecked(members, uid, label, name_for_modality)


def _read_members_unchecked(members: list[tuple[Path, "Dataset"]], uid: str, label: Path,
                            name_for_modality: Path) -> "MetaTensor":
    multi = [p for p, ds in members if _int(ds, "NumberOfFrames", 1, p) > 1]
    if multi and len(members) > 1:
        what = (f"holds {len(members)} multi-frame files" if len(multi) == len(members)
                else f"mixes {len(multi)} multi-frame files with {len(members) - len(multi)} single-frame files")
        raise MedinvertError(f"series {uid} {what}; pass one multi-frame file", path=label)
    if multi:
        path, ds = members[0]
        frames = _frames_of(ds, path)

        def read_multi(order: list[int]) -> list[np.ndarray]:
            stack = _pixel_array(ds, path)
            if stack.ndim != 3 or stack.shape[0] != len(frames):
                raise MedinvertError(f"pixel data of shape {stack.shape} does not hold {len(frames)} frames", path=path)
            return [stack[i] for i in order]

        data, affine = _assemble(frames, read_multi, path)
    else:
        frames = []
        for path, ds in members:
            with _malformed_as_user_error(path):  # name the file, not the series folder
                frames.append(_frames_of(ds, path)[0])

        def read_files(order: list[int]) -> list[np.ndarray]:
            return [_pixel_array(members[i][1], members[i][0]) for i in order]

        data, affine = _assemble(frames, read_files, label)
    return make_meta_tensor(data, affine, _meta(label, members[0][1], uid, name_for_modality, len(members)))


def read_dicom_file(path: Path, series_uid: str | None = None) -> "MetaTensor":
    """Read one DICOM file (single slice -> ``(X, Y, 1)``; multi-frame -> ``(X, Y, frames)``)."""
    with _malformed_as_user_error(path):
        ds = _read_dataset(path)
        if not _has_pixels(ds):
            if "Rows" not in ds:
                _refuse_truncated(ds, path)
            raise MedinvertError(_NO_PIXELS, path=path)
        uid = str(ds.get("SeriesInstanceUID", "")).strip()
    if series_uid is not None and series_uid != uid:
        raise MedinvertError(f"file belongs to series {uid or '(none)'}, not the requested {series_uid}", path=path)
    return _read_members([(path, ds)], uid, path, path)


def describe_series(groups: dict[str, list[tuple[Path, "Dataset"]]]) -> str:
    """``uid (N slices, description), ...`` for error messages."""
    parts = []
    for uid, members in groups.items():
        info = series_info(uid, members)
        text = f"{uid} ({info.n_slices} slices"
        text += f", {info.description!r})" if info.description else ")"
        parts.append(text)
    return ", ".join(parts)


def read_dicom_folder(folder: Path, series_uid: str | None = None) -> "MetaTensor":
    """Read the DICOM series under ``folder`` (recursive); with several series ``series_uid`` picks one."""
    files = iter_image_files(folder)
    groups = scan_dicom_files(files)
    if not groups:
        n_nifti = sum(1 for f in files if is_nifti_name(f))
        if n_nifti:
            raise MedinvertError(f"folder holds no DICOM series but {n_nifti} NIfTI file(s); pass one file "
                                 "(folders of cases are handled by find_cases)", path=folder)
        raise MedinvertError("no NIfTI or DICOM images found in folder", path=folder)
    if series_uid is None:
        if len(groups) > 1:
            raise MedinvertError(f"folder holds {len(groups)} DICOM series; choose one with load_volume(folder, "
                                 f"series_uid=...) or `medinvert convert --series-uid` (corrupt / reconstruct take "
                                 f"each series as a case): {describe_series(groups)}", path=folder)
        series_uid = next(iter(groups))
    elif series_uid not in groups:
        raise MedinvertError(f"no DICOM series {series_uid} in folder; found {describe_series(groups)}", path=folder)
    return _read_members(groups[series_uid], series_uid, folder, folder)
