"""Write the bundled ``sample_data/`` tree: two BraTS-layout cases, a lesion-free twin, a DICOM series.

Layout (see ``docs/data.md`` for provenance, licence and the train / held-out split)::

    BraTS2021_00001/BraTS2021_00001_{t1,t1ce,t2,flair,seg}.nii.gz          training
    healthy/BraTS2021_00001_{t1,t1ce,t2,flair}.nii.gz                       training (no tumour)
    BraTS-GLI-00002-000/BraTS-GLI-00002-000-{t1n,t1c,t2w,t2f,seg}.nii.gz    held out
    dicom/T1_series/<hash>.dcm                                             held out (T1 of case 2)
    manifest.json                                                          files, labels, brain slices
    split.json                                                             train / heldout case ids

Byte-for-byte reproducible: NIfTI files are serialised in memory by nibabel and gzipped with
``mtime=0`` and no file name in the gzip header; DICOM UIDs come from
``pydicom.uid.generate_uid(entropy_srcs=...)``; nothing depends on the clock.  Every file is
written atomically (`medinvert.io.atomic`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medinvert.data.synth import BRATS_AFFINE, LABELS_2021, SEQUENCES, SubjectSpec, load_template, synthesize_subject
from medinvert.errors import MedinvertError
from medinvert.io.atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "SampleCase",
    "CASES",
    "BRATS_SUFFIXES",
    "SPLIT",
    "DICOM_CASE",
    "DICOM_SLICES",
    "DICOM_FOLDER",
    "DICOM_RESCALE",
    "nifti_gz_bytes",
    "dicom_series_files",
    "brain_slice_range",
    "make_sample_data",
    "main",
]

#: file-name suffix per canonical modality, by BraTS release
BRATS_SUFFIXES: dict[int, dict[str, str]] = {
    2021: {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    2023: {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}

#: enhancing-tumour label per release (BraTS 2023 GLI renumbered 4 -> 3)
_ENHANCING_LABEL: dict[int, int] = {2021: 4, 2023: 3}


@dataclass(frozen=True)
class SampleCase:
    """One bundled case: BraTS id, naming release (2021 / 2023), subject spec, split."""

    case_id: str
    release: int
    spec: SubjectSpec
    split: str  #: "train" or "held-out"
    with_healthy: bool = False


CASES: tuple[SampleCase, ...] = (
    SampleCase("BraTS2021_00001", 2021,
               SubjectSpec(seed=1, rotation_deg=(4.0, -2.0, 3.0), scale=(0.93, 0.9, 0.94), shift_mm=(1.0, -2.0, 0.0),
                           tumour_centre_mni=(28.0, -10.0, 26.0), tumour_radius_mm=(16.0, 14.0, 13.0)),
               split="train", with_healthy=True),
    SampleCase("BraTS-GLI-00002-000", 2023,
               SubjectSpec(seed=2, rotation_deg=(-3.0, 2.5, -4.0), scale=(0.9, 0.93, 0.91), shift_mm=(-2.0, 1.5, -1.0),
                           tumour_centre_mni=(-34.0, -38.0, 14.0), tumour_radius_mm=(14.0, 15.0, 12.0)),
               split="held-out"),
)

#: ``split.json``: case ids as `medinvert.io.find_cases` names them (the lesion-free twin is
#: ``healthy_<id>``, the DICOM series its folder name); training code skips everything under
#: ``heldout`` (`medinvert.train.data`)
SPLIT: dict[str, object] = {
    "description": "Training / evaluation split of the bundled sample data (see docs/data.md). "
                   "Cases listed under heldout are never trained on.",
    "train": ["BraTS2021_00001", "healthy_BraTS2021_00001"],
    "heldout": ["BraTS-GLI-00002-000", "T1_series"],
}

#: the DICOM series: these axial slices (array axis 2) of this case's T1
DICOM_CASE = "BraTS-GLI-00002-000"
DICOM_SLICES: range = range(66, 90)
DICOM_FOLDER = "dicom/T1_series"
#: (RescaleSlope, RescaleIntercept): value = stored * slope + intercept, stored = 2 * (value + 100)
DICOM_RESCALE: tuple[float, float] = (0.5, -100.0)
_DICOM_BITS_STORED = 12
_UID_ROOT = "medinvert-sample-data-v1"


# ------------------------------------------------------------------------------------------ NIfTI
def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray, description: str) -> bytes:
    """A complete ``.nii.gz`` file as bytes: NIfTI-1, qform = sform = ``affine`` (code 1, scanner),
    units mm / s, ``descrip`` = ``description``; gzip level 9 with mtime 0 (deterministic)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    header = image.header
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = description.encode("ascii")[:79]
    return gzip.compress(image.to_bytes(), compresslevel=9, mtime=0)


def brain_slice_range(volume: np.ndarray) -> tuple[int, int]:
    """First and last index along axis 2 (axial slices) holding a non-zero voxel."""
    nonzero = np.flatnonzero(np.any(volume != 0, axis=(0, 1)))
    if nonzero.size == 0:
        raise MedinvertError("volume is empty; no slice holds brain")
    return int(nonzero[0]), int(nonzero[-1])


# ------------------------------------------------------------------------------------------ DICOM
def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[_UID_ROOT, *[str(p) for p in parts]])


def _ds(value: float) -> str:
    """DICOM decimal string of a float (at most 16 characters, exact for our grid values)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def dicom_series_files(volume: np.ndarray, affine: np.ndarray, slices: Sequence[int], *, case_id: str,
                       description: str) -> dict[str, bytes]:
    """Encode axial ``slices`` of an int16 ``(X, Y, Z)`` volume as one MR DICOM series.

    Returns file name -> Part 10 bytes.  Slice ``k`` becomes an image whose pixel at row ``r``,
    column ``c`` is ``volume[c, r, k]``; ``ImageOrientationPatient`` holds the LPS directions of
    array axes 0 and 1 and ``ImagePositionPatient`` the LPS position of voxel ``(0, 0, k)``, both
    from ``LPS = diag(-1, -1, 1) @ affine``.  Pixels are stored unsigned 12-bit with
    `DICOM_RESCALE`.  ``InstanceNumber`` counts from the most superior slice down (as many scanners
    do), and file names are hashes of the SOP instance UIDs, so neither gives the slice order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    slope, intercept = DICOM_RESCALE
    study_uid, series_uid, frame_uid = (_uid(case_id, kind) for kind in ("study", "series", "frame"))
    files: dict[str, bytes] = {}
    ordered = sorted(int(k) for k in slices)
    for k in ordered:
        values = np.asarray(volume[:, :, k], dtype=np.float64).T  # (rows = axis 1, columns = axis 0)
        stored = np.rint((values - intercept) / slope)
        exact = np.array_equal(stored * slope + intercept, values)
        if stored.min() < 0 or stored.max() >= 2**_DICOM_BITS_STORED or not exact:
            raise MedinvertError(f"slice {k} does not fit {_DICOM_BITS_STORED}-bit storage with rescale "
                                 f"{DICOM_RESCALE} exactly")
        position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        sop_uid = _uid(case_id, "sop", k)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _uid("implementation")
        meta.ImplementationVersionName = "MEDINVERT_0_1"

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "MR"
        ds.Manufacturer = "medinvert (synthetic)"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "medinvert sample data (synthetic, MNI ICBM152 2009a derived)"
        ds.SeriesDescription = description
        ds.PatientName = f"Synthetic^{case_id}"
        ds.PatientID = f"SYN-{case_id}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "synthetic (MNI ICBM152 2009a template), no patient"
        ds.BodyPartExamined = "BRAIN"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = ["SP", "MP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.SliceThickness = _ds(spacing[2])
        ds.RepetitionTime = "2300"
        ds.EchoTime = "2.98"
        ds.InversionTime = "900"
        ds.MagneticFieldStrength = "3"
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.FlipAngle = "9"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.InstanceNumber = len(ordered) - ordered.index(k)  # 1 = most superior slice
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_dir, col_dir])]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(position[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = values.shape
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (row spacing, column spacing)
        ds.BitsAllocated = 16
        ds.BitsStored = _DICOM_BITS_STORED
        ds.HighBit = _DICOM_BITS_STORED - 1
        ds.PixelRepresentation = 0
        ds.WindowCenter = _ds(float(np.percentile(values[values > 0], 50)) if (values > 0).any() else 0.0)
        ds.WindowWidth = _ds(max(float(values.max() - values.min()), 1.0))
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.PixelData = stored.astype("<u2").tobytes()

        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        name = hashlib.sha256(sop_uid.encode("ascii")).hexdigest()[:16] + ".dcm"
        files[name] = buffer.getvalue()
    return files


# -------------------------------------------------------------------------------------- assemble
def _case_paths(case: SampleCase, root: Path) -> dict[str, Path]:
    suffixes = BRATS_SUFFIXES[case.release]
    return {m: root / case.case_id / f"{case.case_id}{suffixes[m]}.nii.gz" for m in (*SEQUENCES, "seg")}


def make_sample_data(out: str | Path, *, only: Sequence[str] | None = None, with_dicom: bool = True) -> list[Path]:
    """Generate the sample data under ``out`` and return the paths written.

    ``only``: case ids to (re)generate (default: all; the DICOM series is written whenever its case
    is); ``manifest.json`` and ``split.json`` are rewritten only for a full run.  Needs nilearn for the template.
    """
    root = Path(out)
    known = {case.case_id for case in CASES}
    unknown = sorted(set(only or ()) - known)
    if unknown:
        raise MedinvertError(f"unknown sample case(s) {unknown}; known: {sorted(known)}")
    selected = [case for case in CASES if not only or case.case_id in only]
    template = load_template()
    written: list[Path] = []
    manifest_cases = []
    for case in selected:
        subject = synthesize_subject(template, case.spec)
        paths = _case_paths(case, root)
        paths["seg"].parent.mkdir(parents=True, exist_ok=True)
        labels = subject.labels.copy()
        labels[labels == LABELS_2021["enhancing"]] = _ENHANCING_LABEL[case.release]
        for modality in SEQUENCES:
            written.append(atomic_write_bytes(paths[modality], nifti_gz_bytes(
                subject.images[modality], subject.affine, f"medinvert synthetic {modality} (ICBM152 2009a)")))
        written.append(atomic_write_bytes(paths["seg"], nifti_gz_bytes(
            labels, subject.affine, f"medinvert synthetic tumour labels (BraTS {case.release})")))
        entry = {"case_id": case.case_id, "release": case.release, "split": case.split,
                 "files": {m: p.relative_to(root).as_posix() for m, p in paths.items()},
                 "labels": {"necrotic": 1, "oedema": 2, "enhancing": _ENHANCING_LABEL[case.release]},
                 "brain_slices": list(brain_slice_range(subject.images["t1"]))}
        if case.with_healthy:
            healthy_dir = root / "healthy"
            healthy_dir.mkdir(parents=True, exist_ok=True)
            healthy_files = {}
            for modality in SEQUENCES:
                path = healthy_dir / paths[modality].name
                written.append(atomic_write_bytes(path, nifti_gz_bytes(
                    subject.healthy[modality], subject.affine, f"medinvert synthetic {modality}, lesion-free")))
                healthy_files[modality] = path.relative_to(root).as_posix()
            entry["healthy_files"] = healthy_files
        manifest_cases.append(entry)
        if with_dicom and case.case_id == DICOM_CASE:
            written.extend(_write_dicom(root, subject.images["t1"], subject.affine, case))
    if not only:
        manifest = {
            "description": "medinvert sample data: synthetic BraTS-layout subjects derived from the MNI ICBM152 "
                           "2009a nonlinear symmetric template; see README.md and LICENSE-ICBM152.txt",
            "generator": "python scripts/make_sample_data.py",
            "shape": [240, 240, 155], "spacing_mm": [1.0, 1.0, 1.0], "affine": BRATS_AFFINE.tolist(),
            "orientation": "LPS (nibabel axis codes): axis 0 right->left, 1 anterior->posterior, 2 inferior->superior",
            "cases": manifest_cases,
            "dicom": {"folder": DICOM_FOLDER, "source_case": DICOM_CASE, "source_modality": "t1",
                      "source_slices": [DICOM_SLICES.start, DICOM_SLICES.stop - 1], "split": "held-out",
                      "rescale_slope": DICOM_RESCALE[0], "rescale_intercept": DICOM_RESCALE[1]},
        }
        written.append(atomic_write_text(root / "manifest.json", _json_text(manifest)))
        written.append(atomic_write_text(root / "split.json", _json_text(SPLIT)))
    return written


def _json_text(obj: object) -> str:
    """Indented JSON with innermost lists of numbers / strings kept on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: "[" + ", ".join(p.strip() for p in m.group(0)[1:-1].split(",")) + "]"
                  if m.group(0)[1:-1].strip() else "[]", text) + "\n"


def _write_dicom(root: Path, volume: np.ndarray, affine: np.ndarray, case: SampleCase) -> list[Path]:
    folder = root / DICOM_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    first, last = DICOM_SLICES.start, DICOM_SLICES.stop - 1
    files = dicom_series_files(volume, affine, DICOM_SLICES, case_id=case.case_id,
                               description=f"T1 synthetic ({case.case_id} slices {first}-{last})")
    for stale in folder.glob("*.dcm"):
        if stale.name not in files:
            stale.unlink()
    return [atomic_write_bytes(folder / name, data) for name, data in sorted(files.items())]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python scripts/make_sample_data.py [--out DIR] [--only CASE ...] [--no-dicom]``."""
    parser = argparse.ArgumentParser(description="Regenerate medinvert's sample data from the MNI ICBM152 2009a "
                                                 "template shipped in the nilearn wheel (no download).")
    parser.add_argument("--out", default="sample_data", help="output folder (default: sample_data)")
    parser.add_argument("--only", nargs="+", metavar="CASE", help="regenerate only these case ids")
    parser.add_argument("--no-dicom", action="store_true", help="skip the DICOM series")
    args = parser.parse_args(argv)
    try:
        written = make_sample_data(args.out, only=args.only, with_dicom=not args.no_dicom)
    except MedinvertError as exc:
        parser.exit(2, f"error: {exc}\n")
    total = sum(path.stat().st_size for path in written)
    print(f"wrote {len(written)} files, {total / 1e6:.1f} MB, under {args.out}")
    return 0
