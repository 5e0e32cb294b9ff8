"""The bundled sample data (``sample_data/``) and its generator (`medinvert.data`).

Everything runs on the committed files with nibabel / pydicom / numpy / scipy only, so it passes in
CI where nilearn is absent.  The two tests that regenerate data from the MNI template (byte-identical
regeneration, contrast ordering inside the template's own tissue maps) skip without nilearn.

Tissue classes for the contrast checks are derived *across* sequences: classes cut from the T1 image
judge the T2 and FLAIR orderings, classes cut from the T2 image judge T1 and T1ce, so no sequence is
judged by classes made from itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1] / "sample_data"
SHAPE = (240, 240, 155)
#: the affine every BraTS 2021 / 2023 GLI volume carries (x = -i, y = 239 - j, z = k)
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
CASE1, CASE2 = "BraTS2021_00001", "BraTS-GLI-00002-000"
FILES = {
    CASE1: {m: f"{CASE1}/{CASE1}_{s}.nii.gz" for m, s in
            [("t1", "t1"), ("t1ce", "t1ce"), ("t2", "t2"), ("flair", "flair"), ("seg", "seg")]},
    CASE2: {m: f"{CASE2}/{CASE2}-{s}.nii.gz" for m, s in
            [("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f"), ("seg", "seg")]},
}
HEALTHY = {m: f"healthy/{CASE1}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")}
ENHANCING = {CASE1: 4, CASE2: 3}
DICOM_DIR = ROOT / "dicom" / "T1_series"
HAS_NILEARN = importlib.util.find_spec("nilearn") is not None

_cache: dict[str, np.ndarray] = {}


def volume(relative: str) -> np.ndarray:
    """Stored array of ``sample_data/relative`` (cached; loaded without scaling to float)."""
    if relative not in _cache:
        _cache[relative] = np.asanyarray(nib.load(ROOT / relative).dataobj)
    return _cache[relative]


def healthy_region(case: str) -> np.ndarray:
    """Brain voxels at least 2 voxels inside the brain and 5 voxels away from any tumour label."""
    brain = volume(FILES[case]["t1"]) > 0
    lesion = ndi.binary_dilation(volume(FILES[case]["seg"]) > 0, iterations=5)
    return ndi.binary_erosion(brain, iterations=2) & ~lesion


def classes_from(image: np.ndarray, region: np.ndarray, bright: str) -> dict[str, np.ndarray]:
    """CSF / GM / WM masks cut from ``image`` by quantiles inside ``region``.

    ``bright`` names the class that is brightest on ``image`` ("wm" for T1, "csf" for T2).
    """
    values = image[region].astype(np.float64)
    q = {p: np.quantile(values, p / 100) for p in (5, 15, 30, 50, 70, 85, 95)}
    inside = region & (image > 0)
    if bright == "wm":  # T1: CSF darkest 5 %, GM around the 30-50 % band, WM brightest 15 %
        return {"csf": inside & (image < q[5]), "gm": inside & (image > q[30]) & (image < q[50]),
                "wm": inside & (image > q[85])}
    return {"csf": inside & (image > q[95]), "gm": inside & (image > q[50]) & (image < q[70]),
            "wm": inside & (image < q[15])}


def means(image: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(image[mask].mean()) for name, mask in masks.items()}


# ---------------------------------------------------------------------------------- files, header
@pytest.mark.parametrize("relative", [p for case in FILES.values() for p in case.values()] + list(HEALTHY.values()))
def test_nifti_files_have_the_brats_grid(relative: str) -> None:
    image = nib.load(ROOT / relative)
    assert image.shape == SHAPE
    assert image.header.get_zooms() == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(image.affine, BRATS_AFFINE)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    assert image.header.get_xyzt_units()[0] == "mm"
    expected = np.uint8 if relative.endswith("seg.nii.gz") else np.int16
    assert image.get_data_dtype() == expected


def test_images_look_like_skull_stripped_scanner_data() -> None:
    maxima = {}
    for case, files in FILES.items():
        brain = volume(files["t1"]) > 0
        for modality in ("t1", "t1ce", "t2", "flair"):
            data = volume(files[modality])
            assert data.min() == 0
            assert not data[~brain].any(), "all sequences share the brain mask; zero outside"
            assert 1.2e6 < int(np.count_nonzero(data)) < 2.0e6  # ~1.2-2 L of brain at 1 mm
            maxima[(case, modality)] = int(data.max())
    for case in FILES:
        ranges = [maxima[(case, m)] for m in ("t1", "t1ce", "t2", "flair")]
        assert len(set(ranges)) == 4 and all(500 < r < 4000 for r in ranges)
        assert maxima[(case, "t2")] == max(ranges)  # CSF on T2 is the brightest signal


def test_manifest_matches_the_files() -> None:
    manifest = json.loads((ROOT / "manifest.json").read_text())
    cases = {entry["case_id"]: entry for entry in manifest["cases"]}
    assert set(cases) == set(FILES)
    for case, entry in cases.items():
        assert entry["files"] == FILES[case]
        assert entry["labels"]["enhancing"] == ENHANCING[case]
        nonzero = np.flatnonzero(volume(FILES[case]["t1"]).any(axis=(0, 1)))
        assert entry["brain_slices"] == [int(nonzero[0]), int(nonzero[-1])]
    assert cases[CASE1]["healthy_files"] == HEALTHY
    assert cases[CASE1]["split"] == "train" and cases[CASE2]["split"] == "held-out"
    assert manifest["dicom"]["source_case"] == CASE2 and manifest["dicom"]["split"] == "held-out"
    for name in ("README.md", "LICENSE-ICBM152.txt"):
        assert (ROOT / name).is_file()
    licence = (ROOT / "LICENSE-ICBM152.txt").read_text()
    assert "Louis Collins" in licence and "McGill University" in licence


def test_split_names_every_case_that_find_cases_reports() -> None:
    from medinvert.io import find_cases

    split = json.loads((ROOT / "split.json").read_text())
    train, heldout = set(split["train"]), set(split["heldout"])
    assert not train & heldout
    assert {CASE2, "T1_series"} <= heldout and {CASE1, f"healthy_{CASE1}"} <= train
    assert {case.case_id for case in find_cases(ROOT)} == train | heldout


def test_total_size_is_under_30_mb() -> None:
    total = sum(path.stat().st_size for path in ROOT.rglob("*") if path.is_file())
    assert total < 30e6, f"sample_data holds {total / 1e6:.1f} MB"


# ------------------------------------------------------------------------------------ contrasts
@pytest.mark.parametrize("case", list(FILES))
def test_tissue_contrast_ordering(case: str) -> None:
    files, region = FILES[case], healthy_region(case)
    by_t1 = classes_from(volume(files["t1"]), region, bright="wm")
    by_t2 = classes_from(volume(files["t2"]), region, bright="csf")
    t1, t1ce = means(volume(files["t1"]), by_t2), means(volume(files["t1ce"]), by_t2)
    t2, flair = means(volume(files["t2"]), by_t1), means(volume(files["flair"]), by_t1)
    assert t1["wm"] > 1.1 * t1["gm"] > 1.1 * 1.1 * t1["csf"]
    assert t1ce["wm"] > 1.05 * t1ce["gm"] > 1.05 * 1.1 * t1ce["csf"]
    assert t2["csf"] > 1.1 * t2["gm"] > 1.1 * 1.1 * t2["wm"]
    assert flair["gm"] > 1.05 * flair["wm"] > 1.05 * 1.5 * flair["csf"]  # CSF suppressed


@pytest.mark.parametrize("case", list(FILES))
def test_tumour_appearance(case: str) -> None:
    files = FILES[case]
    seg = volume(files["seg"])
    region = healthy_region(case)
    wm = classes_from(volume(files["t2"]), region, bright="csf")["wm"]
    oedema, necrotic, enhancing = seg == 2, seg == 1, seg == ENHANCING[case]
    img = {m: volume(files[m]).astype(np.float64) for m in ("t1", "t1ce", "t2", "flair")}
    assert img["flair"][oedema].mean() > 1.5 * img["flair"][wm].mean()  # oedema bright on FLAIR
    assert img["t2"][oedema].mean() > 1.5 * img["t2"][wm].mean()
    assert img["t1"][necrotic].mean() < 0.6 * img["t1"][wm].mean()  # necrosis dark on T1
    assert img["t1ce"][enhancing].mean() > 1.3 * img["t1ce"][wm].mean()  # enhancing rim
    enhancement = img["t1ce"][enhancing].mean() / img["t1"][enhancing].mean()
    assert enhancement > 1.5 * img["t1ce"][wm].mean() / img["t1"][wm].mean()


@pytest.mark.parametrize("case", list(FILES))
def test_segmentation_labels(case: str) -> None:
    seg = volume(FILES[case]["seg"])
    assert set(np.unique(seg).tolist()) == {0, 1, 2, ENHANCING[case]}
    necrotic, enhancing = seg == 1, seg == ENHANCING[case]
    # the necrotic core is wrapped in enhancing tumour: its 6-neighbours are core or rim only
    ring = ndi.binary_dilation(necrotic) & ~necrotic
    assert np.all(enhancing[ring])
    assert np.all(volume(FILES[case]["t1"])[seg > 0] > 0), "tumour lies inside the brain"
    _, n_pieces = ndi.label(seg > 0, structure=np.ones((3, 3, 3)))
    assert n_pieces == 1
    whole = int(np.count_nonzero(seg))
    assert 20_000 < whole < 200_000  # 20-200 mL, a typical glioma with oedema
    assert int(np.count_nonzero(necrotic)) < int(np.count_nonzero(seg == 2))


def test_healthy_twin_equals_lesioned_case_outside_the_lesion() -> None:
    from medinvert.data.synth import TUMOUR_REACH

    seg = volume(FILES[CASE1]["seg"])
    near = ndi.binary_dilation(seg > 0, structure=np.ones((3, 3, 3)), iterations=TUMOUR_REACH)
    for modality, relative in HEALTHY.items():
        healthy, lesioned = volume(relative), volume(FILES[CASE1][modality])
        np.testing.assert_array_equal(healthy[~near], lesioned[~near])
        assert np.count_nonzero(healthy[seg > 0] != lesioned[seg > 0]) > 0.9 * np.count_nonzero(seg)
    flair_healthy = volume(HEALTHY["flair"]).astype(np.float64)
    flair = volume(FILES[CASE1]["flair"]).astype(np.float64)
    assert flair[seg == 2].mean() > 1.4 * flair_healthy[seg == 2].mean()


# ----------------------------------------------------------------------------------------- DICOM
def _dicom_series() -> list:
    import pydicom

    return [(path, pydicom.dcmread(path)) for path in sorted(DICOM_DIR.iterdir())]


def test_dicom_series_reproduces_its_source_slices_and_geometry() -> None:
    files = _dicom_series()
    assert len(files) >= 20 and all(path.suffix == ".dcm" for path, _ in files)
    datasets = [ds for _, ds in files]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    for ds in datasets:
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "MR" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.BitsAllocated == 16 and ds.Rows == 240 and ds.Columns == 240
        assert ds.PixelRepresentation in (0, 1) and ds.SamplesPerPixel == 1
    iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    assert np.ptp(iop, axis=0).max() == 0
    row_dir, col_dir = iop[0, :3], iop[0, 3:]
    normal = np.cross(row_dir, col_dir)
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(ipp @ normal)
    names = [path.name for path, _ in files]  # sorted by name
    assert list(order) != list(range(len(files))), "file names must not give the slice order"
    steps = np.diff((ipp @ normal)[order])
    thickness = float(datasets[0].SliceThickness)
    np.testing.assert_allclose(steps, thickness, atol=1e-4)
    assert float(datasets[0].SpacingBetweenSlices) == thickness
    # geometry: the voxel -> RAS affine from IPP / IOP / PixelSpacing equals the NIfTI's for those slices
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row_dir * col_spacing, col_dir * row_spacing
    lps[:3, 2], lps[:3, 3] = normal * steps[0], ipp[order[0]]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    source = nib.load(ROOT / FILES[CASE2]["t1"])
    first = np.linalg.solve(source.affine, ras[:, 3])  # voxel index of the first DICOM slice
    k0 = int(round(first[2]))
    np.testing.assert_allclose(first[:3], [0, 0, k0], atol=1e-6)
    expected = source.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, k0], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(ras, expected, atol=1e-6)
    # pixels: modality LUT (slope / intercept) applied, slice k of the series = NIfTI slice k0 + k
    data = volume(FILES[CASE2]["t1"])
    for k, index in enumerate(order):
        ds = datasets[index]
        values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(values.T, data[:, :, k0 + k])
    assert len(set(names)) == len(names)


# ------------------------------------------------------------------------ generator unit checks
def test_bspline_field_is_smooth_standardised_and_seeded() -> None:
    from medinvert.data.synth import _bspline_matrix, bspline_field

    weights = _bspline_matrix(50, 7)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(weights >= 0)
    a = bspline_field(np.random.default_rng(3), (40, 30, 20), 8.0)
    b = bspline_field(np.random.default_rng(3), (40, 30, 20), 8.0)
    c = bspline_field(np.random.default_rng(4), (40, 30, 20), 8.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert abs(float(a.mean())) < 1e-5 and abs(float(a.std()) - 1.0) < 1e-4
    # smooth: neighbour differences far below the field's spread (white noise would give ~1.4)
    assert float(np.abs(np.diff(a, axis=0)).mean()) < 0.25


def test_soft_class_weights_stay_within_the_reach() -> None:
    from medinvert.data.synth import TUMOUR_REACH, soft_class_weights

    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[10:20, 10:20, 10:20] = 2
    labels[13:17, 13:17, 13:17] = 4
    labels[14:16, 14:16, 14:16] = 1
    weights = soft_class_weights(labels)
    total = sum(weights.values())
    assert float(total.max()) <= 1.0 + 1e-6
    near = ndi.binary_dilation(labels > 0, structure=np.ones((3, 3, 3)), iterations=TUMOUR_REACH)
    assert not total[~near].any()
    assert float(total[labels > 0].min()) > 0.25  # even at the corner voxels of the cube


def test_dicom_writer_round_trip_on_a_small_volume(tmp_path: Path) -> None:
    import pydicom

    from medinvert.data.sample import DICOM_RESCALE, dicom_series_files

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1500, size=(12, 9, 6)).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 40.0], [0, -0.9, 0, 60.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
    files = dicom_series_files(vol, affine, [4, 1, 2], case_id="unit", description="unit test")
    assert len(files) == 3
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    again = dicom_series_files(vol, affine, [1, 2, 4], case_id="unit", description="unit test")
    assert again == files  # deterministic, independent of the order slices are given in
    datasets = sorted((pydicom.dcmread(tmp_path / n) for n in files), key=lambda d: float(d.ImagePositionPatient[2]))
    for k, ds in zip([1, 2, 4], datasets):
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == DICOM_RESCALE
        assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.8]  # (row spacing, column spacing)
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(values.T, vol[:, :, k])
        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.append([float(v) for v in ds.ImagePositionPatient], 1.0)
        np.testing.assert_allclose(ras, affine @ np.array([0, 0, k, 1.0]), atol=1e-6)


# ----------------------------------------------------------------------- regeneration (nilearn)
@pytest.mark.slow
@pytest.mark.skipif(not HAS_NILEARN, reason="regenerating needs nilearn (pip install 'medinvert[data]')")
def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    from medinvert.data.sample import make_sample_data

    written = make_sample_data(tmp_path, only=[CASE2])
    assert len(written) == 5 + len(list(DICOM_DIR.iterdir()))
    for path in written:
        committed = ROOT / path.relative_to(tmp_path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(committed.read_bytes()).hexdigest(), \
            f"{committed} differs from its regeneration"


@pytest.mark.skipif(not HAS_NILEARN, reason="the template tissue maps come from nilearn")
def test_contrast_ordering_inside_template_tissue_maps() -> None:
    """The same orderings, judged on the ICBM152 GM / WM / CSF maps pulled through case 1's pose."""
    from medinvert.data.sample import CASES
    from medinvert.data.synth import load_template, sampling_coordinates

    template = load_template()
    spec = next(case.spec for case in CASES if case.case_id == CASE1)
    zs_all, maps = [], {"gm": [], "wm": [], "csf": []}
    for zs, coords in sampling_coordinates(spec, template.affine):
        if zs.start < 64 or zs.stop > 112:  # three 16-slice chunks through the lesion level suffice
            continue
        zs_all.append(zs)
        for name in maps:
            maps[name].append(ndi.map_coordinates(getattr(template, name), coords, order=1))
    z = slice(zs_all[0].start, zs_all[-1].stop)
    region = healthy_region(CASE1)[:, :, z]
    masks = {"csf": (np.concatenate(maps["csf"], axis=2) > 0.9) & region,
             "gm": (np.concatenate(maps["gm"], axis=2) > 0.7) & region,
             "wm": (np.concatenate(maps["wm"], axis=2) > 0.9) & region}
    assert all(mask.sum() > 2000 for mask in masks.values())
    m = {mod: means(volume(FILES[CASE1][mod])[:, :, z], masks) for mod in ("t1", "t1ce", "t2", "flair")}
    assert m["t1"]["wm"] > m["t1"]["gm"] > m["t1"]["csf"]
    assert m["t1ce"]["wm"] > m["t1ce"]["gm"] > m["t1ce"]["csf"]
    assert m["t2"]["csf"] > m["t2"]["gm"] > m["t2"]["wm"]
    assert m["flair"]["gm"] > m["flair"]["wm"] > m["flair"]["csf"]
