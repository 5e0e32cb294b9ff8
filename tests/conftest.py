"""Shared pytest fixtures: they MAKE small, real image files in ``tmp_path`` (nibabel / pydicom writers).

Nothing here is mocked: the files are genuine NIfTI-1 and DICOM Part 10 files, so every reader in
the package meets them exactly as it would meet a user's data.  Sizes are tiny (a few kB) to keep
tests fast.

File fixtures (each returns a `Path` unless said otherwise; ``oblique_affine`` returns the array):

* ``oblique_nifti``       9x8x7 float32 NIfTI with a rotated, anisotropic, translated affine
                          (`OBLIQUE_AFFINE`), ``sform_code=2`` (aligned), ``qform_code=1`` (scanner).
* ``nifti_4d_singleton``  12x10x6x1 int16 NIfTI (trailing singleton axis; loads as 12x10x6).
* ``dicom_series``        `DicomSeriesSpec` of an 8-slice oblique MR series (int16, rescale slope 2,
                          intercept -100) with SHUFFLED file names and InstanceNumbers.
* ``two_series_folder``   `TwoSeries`: one folder holding two interleaved series (8 and 5 slices).
* ``brats_layouts``       `BraTSLayouts`: a root holding one BraTS 2021 case folder and one BraTS
                          2023 (GLI) case folder, 5 modality files each (tiny 8x8x4 volumes).

Factory fixtures (return a function, so a test can make as many files as it needs):

* ``make_nifti(path, data=None, affine=None, *, shape=(9, 8, 7), qform_code=1, sform_code=1)``
* ``make_dicom_series(folder, **geometry)`` -> `DicomSeriesSpec` (see `write_dicom_series`)
* ``make_brats_case(root, case_id, *, year=2021, shape=(8, 8, 4))`` -> dict modality -> Path
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings

#: A deliberately awkward voxel->RAS affine: rotation about an oblique axis, anisotropic voxels
#: (0.9, 1.2, 2.5 mm) and a non-zero origin.  All entries are float32-representable, so a NIfTI
#: round trip must reproduce it exactly.
OBLIQUE_AFFINE = np.array(
    [
        [0.84375, -0.3125, 0.5, -40.25],
        [0.28125, 1.125, -0.25, 12.5],
        [-0.0625, 0.21875, 2.4375, 33.75],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

# Property tests draw the same examples on every run and machine (CI included): a failure is a bug
# to reproduce, never luck.  `derandomize` fixes Hypothesis' seed; the example database is not used.
hypothesis_settings.register_profile("medinvert", derandomize=True, database=None)
hypothesis_settings.load_profile("medinvert")


def _pattern(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth ramp plus deterministic noise, so no two voxels along any axis are equal."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    ramp = sum((i + 1) * 10.0 * g for i, g in enumerate(grids))
    return ramp + rng.uniform(0.0, 5.0, size=shape)


def write_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None, *,
                shape: tuple[int, ...] = (9, 8, 7), qform_code: int = 1, sform_code: int = 1) -> Path:
    """Write ``data`` (default: a float32 pattern of ``shape``) with ``affine`` (default `OBLIQUE_AFFINE`)."""
    import nibabel as nib

    if data is None:
        data = _pattern(shape).astype(np.float32)
    affine = OBLIQUE_AFFINE if affine is None else np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(data), affine)
    image.set_sform(affine, code=sform_code)
    image.set_qform(affine, code=qform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


@dataclass
class DicomSeriesSpec:
    """What `write_dicom_series` wrote; lists are in spatial order along the slice normal."""

    folder: Path
    files: list[Path]                 #: slice k's file (names are shuffled unless shuffle=False)
    series_uid: str
    orientation: np.ndarray           #: ImageOrientationPatient (6,), LPS
    positions: np.ndarray             #: ImagePositionPatient per slice (N, 3), LPS mm
    pixel_spacing: tuple[float, float]  #: (row spacing, column spacing), mm
    slice_thickness: float
    slope: float
    intercept: float
    pixels: np.ndarray                #: stored int16 pixels (N, rows, cols) in slice order
    description: str = ""

    @property
    def expected_volume(self) -> np.ndarray:
        """The (X=cols, Y=rows, Z=N) float32 array a loader must return (rescale applied)."""
        return (self.pixels.astype(np.float64) * self.slope + self.intercept).transpose(2, 1, 0).astype(np.float32)


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _rotation(angle_deg: float, axis: tuple[float, float, float]) -> np.ndarray:
    axis_v = np.asarray(axis, dtype=np.float64)
    axis_v /= np.linalg.norm(axis_v)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis_v[2], axis_v[1]], [axis_v[2], 0, -axis_v[0]], [-axis_v[1], axis_v[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def write_dicom_series(folder: Path, *, n_slices: int = 8, rows: int = 10, cols: int = 12,
                       angle_deg: float = 17.0, axis: tuple[float, float, float] = (0.3, -0.5, 0.8),
                       origin: tuple[float, float, float] = (-60.5, 42.25, -18.0),
                       pixel_spacing: tuple[float, float] = (0.9, 1.1), slice_spacing: float = 2.5,
                       slope: float = 2.0, intercept: float = -100.0, series_uid: str | None = None,
                       description: str = "AX T2 TSE", shuffle: bool = True, seed: int = 0,
                       prefix: str = "IM", study_uid: str | None = None) -> DicomSeriesSpec:
    """Write an MR series of ``n_slices`` single-frame int16 DICOM files into ``folder``.

    Geometry: row / column direction cosines are the x / y axes rotated by ``angle_deg`` about
    ``axis``; slice k sits at ``origin + k * slice_spacing * normal``.  With ``shuffle`` the file
    names (``<prefix>NNNN.dcm``) and InstanceNumbers are a random permutation of the slice order, so
    a reader that sorts by either gets it wrong.  All UIDs are deterministic in ``seed``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rot = _rotation(angle_deg, axis)
    row_dir, col_dir = rot[:, 0], rot[:, 1]
    orientation = np.round(np.concatenate([row_dir, col_dir]), 8)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.round(np.asarray(origin) + np.arange(n_slices)[:, None] * slice_spacing * normal[None, :], 6)
    pixels = np.stack([(_pattern((rows, cols), seed + 1 + k) + 37.0 * k).astype(np.int16) for k in range(n_slices)])
    series_uid = series_uid or _uid("series", seed, description)
    study_uid = study_uid or _uid("study", seed)
    frame_uid = _uid("frame", seed)
    order = rng.permutation(n_slices) if shuffle else np.arange(n_slices)
    files = []
    for k in range(n_slices):
        sop_uid = _uid("sop", seed, series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "MR"
        ds.PatientName = "Test^Phantom"
        ds.PatientID = "medinvert-test"
        ds.SeriesDescription = description
        ds.SeriesNumber = 1 + seed
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
        ds.SliceThickness = f"{slice_spacing:g}"
        ds.SpacingBetweenSlices = f"{slice_spacing:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.set_pixel_data(pixels[k], photometric_interpretation="MONOCHROME2", bits_stored=16)
        path = folder / f"{prefix}{int(order[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    # the values as a reader sees them after the decimal-string round trip
    return DicomSeriesSpec(folder=folder, files=files, series_uid=series_uid,
                           orientation=np.array([float(f"{v:.8f}") for v in orientation]),
                           positions=np.array([[float(f"{v:.6f}") for v in p] for p in positions]),
                           pixel_spacing=(float(f"{pixel_spacing[0]:g}"), float(f"{pixel_spacing[1]:g}")),
                           slice_thickness=slice_spacing, slope=slope, intercept=intercept, pixels=pixels,
                           description=description)


@dataclass
class TwoSeries:
    """A folder holding two DICOM series side by side (files A*.dcm and B*.dcm)."""

    folder: Path
    series: list[DicomSeriesSpec] = field(default_factory=list)

    @property
    def uids(self) -> list[str]:
        return [s.series_uid for s in self.series]


def write_brats_case(root: Path, case_id: str, *, year: int = 2021, shape: tuple[int, int, int] = (8, 8, 4),
                     affine: np.ndarray | None = None) -> dict[str, Path]:
    """Write ``root/case_id/`` with the 4 modalities + seg under BraTS ``year`` (2021 or 2023) names.

    Returns canonical modality -> path.  2021: ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz``; 2023:
    ``<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``.
    """
    suffixes = {2021: {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
                2023: {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"}}[year]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine
    paths = {}
    for i, (modality, suffix) in enumerate(suffixes.items()):
        data = _pattern(shape, seed=i).astype(np.float32)
        if modality == "seg":
            data = (data > np.median(data)).astype(np.uint8)
        seed_bytes = hashlib.sha256(case_id.encode()).digest()[0]
        data = data + (seed_bytes % 7 if modality != "seg" else 0)
        paths[modality] = write_nifti(root / case_id / f"{case_id}{suffix}.nii.gz", data, affine)
    return paths


@dataclass
class BraTSLayouts:
    """Root folder holding one BraTS 2021 and one BraTS 2023 case (see `write_brats_case`)."""

    root: Path
    case_2021: str
    case_2023: str
    paths: dict[str, dict[str, Path]]


@pytest.fixture
def make_nifti() -> Callable[..., Path]:
    """Factory: ``make_nifti(path, data=None, affine=None, *, shape, qform_code, sform_code) -> Path``."""
    return write_nifti


@pytest.fixture
def make_dicom_series() -> Callable[..., DicomSeriesSpec]:
    """Factory: ``make_dicom_series(folder, **options) -> DicomSeriesSpec`` (see `write_dicom_series`)."""
    return write_dicom_series


@pytest.fixture
def make_brats_case() -> Callable[..., dict[str, Path]]:
    """Factory: ``make_brats_case(root, case_id, *, year=2021, shape=(8, 8, 4)) -> {modality: path}``."""
    return write_brats_case


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """A copy of `OBLIQUE_AFFINE`, the affine written by ``oblique_nifti`` and, by default, ``make_nifti``."""
    return OBLIQUE_AFFINE.copy()


@pytest.fixture
def oblique_nifti(tmp_path: Path) -> Path:
    """9x8x7 float32 NIfTI with `OBLIQUE_AFFINE`, sform_code 2 and qform_code 1."""
    return write_nifti(tmp_path / "oblique.nii.gz", shape=(9, 8, 7), qform_code=1, sform_code=2)


@pytest.fixture
def nifti_4d_singleton(tmp_path: Path) -> Path:
    """12x10x6x1 int16 NIfTI (trailing singleton 4th axis)."""
    data = _pattern((12, 10, 6)).astype(np.int16)[..., None]
    return write_nifti(tmp_path / "singleton4d.nii.gz", data, np.diag([1.5, 1.5, 3.0, 1.0]))


@pytest.fixture
def dicom_series(tmp_path: Path) -> DicomSeriesSpec:
    """8-slice oblique MR series with shuffled file names in ``tmp_path / "series"``."""
    return write_dicom_series(tmp_path / "series", n_slices=8, shuffle=True, seed=0)


@pytest.fixture
def two_series_folder(tmp_path: Path) -> TwoSeries:
    """``tmp_path / "two_series"`` holding an 8-slice and a 5-slice series with different UIDs."""
    folder = tmp_path / "two_series"
    first = write_dicom_series(folder, n_slices=8, seed=1, description="AX T1", prefix="A")
    second = write_dicom_series(folder, n_slices=5, seed=2, description="AX FLAIR", prefix="B", rows=9, cols=11,
                                angle_deg=-8.0, slice_spacing=3.0)
    return TwoSeries(folder=folder, series=[first, second])


@pytest.fixture
def brats_layouts(tmp_path: Path) -> BraTSLayouts:
    """``tmp_path / "brats"`` with ``BraTS2021_00001/`` and ``BraTS-GLI-00002-000/`` case folders."""
    root = tmp_path / "brats"
    paths = {
        "BraTS2021_00001": write_brats_case(root, "BraTS2021_00001", year=2021),
        "BraTS-GLI-00002-000": write_brats_case(root, "BraTS-GLI-00002-000", year=2023),
    }
    return BraTSLayouts(root=root, case_2021="BraTS2021_00001", case_2023="BraTS-GLI-00002-000", paths=paths)


@pytest.fixture
def one_thread(monkeypatch) -> Iterator[None]:
    """One intra-op thread (the machine running the tests is small and shared): for medinvert's own
    thread setting (``MEDINVERT_THREADS``, recorded like any other) and for torch calls made directly by
    the test, restored afterwards.  Modules that want it say ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    monkeypatch.setenv("MEDINVERT_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
