"""find_cases on synthetic BraTS 2021 / 2023, plain NIfTI and DICOM layouts; naming helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medinvert.errors import MedinvertError
from medinvert.io import Case, find_cases, guess_modality, load_volume, parse_brats_name, volume_stem

MODALITY_KEYS = ("t1", "t1ce", "t2", "flair", "seg")


def test_brats_2021_and_2023_folder_of_cases(brats_layouts) -> None:
    cases = find_cases(brats_layouts.root)
    assert [c.case_id for c in cases] == sorted([brats_layouts.case_2021, brats_layouts.case_2023])
    for case in cases:
        assert case.modalities == MODALITY_KEYS
        assert case.paths == brats_layouts.paths[case.case_id]
        assert case.series_uid is None
    case_2023 = next(c for c in cases if c.case_id == brats_layouts.case_2023)
    assert case_2023.paths["flair"].name.endswith("-t2f.nii.gz")
    assert case_2023.paths["t1ce"].name.endswith("-t1c.nii.gz")
    flair = case_2023.load("flair")
    assert flair.meta["modality"] == "flair" and tuple(flair.shape) == (8, 8, 4)
    with pytest.raises(MedinvertError, match="no 'image' image"):
        case_2023.load("image")


def test_single_case_folder_and_single_file(brats_layouts) -> None:
    folder = brats_layouts.root / brats_layouts.case_2021
    cases = find_cases(folder)
    assert len(cases) == 1 and cases[0].case_id == brats_layouts.case_2021
    assert cases[0].modalities == MODALITY_KEYS
    single = find_cases(brats_layouts.paths[brats_layouts.case_2021]["t2"])
    assert single == [Case(brats_layouts.case_2021, {"t2": brats_layouts.paths[brats_layouts.case_2021]["t2"]})]


@pytest.mark.parametrize("cohort", ["MEN", "PED", "SSA", "MET"])
def test_other_brats_2023_cohorts(make_brats_case, tmp_path: Path, cohort: str) -> None:
    case_id = f"BraTS-{cohort}-00123-001"
    paths = make_brats_case(tmp_path, case_id, year=2023, shape=(4, 4, 2))
    (case,) = find_cases(tmp_path)
    assert case.case_id == case_id and case.paths == paths


def test_duplicate_brats_modality_in_one_folder_is_an_error(make_brats_case, make_nifti, tmp_path: Path) -> None:
    make_brats_case(tmp_path, "BraTS2021_00007", shape=(4, 4, 2))
    make_nifti(tmp_path / "BraTS2021_00007" / "BraTS2021_00007_t1.nii", shape=(4, 4, 2))
    with pytest.raises(MedinvertError, match="two t1 images"):
        find_cases(tmp_path)


def test_same_brats_id_in_two_folders_gives_two_cases(make_brats_case, make_nifti, tmp_path: Path) -> None:
    """Like sample_data/: BraTS2021_00001/ (with lesion) next to healthy/BraTS2021_00001_*.nii.gz."""
    lesion = make_brats_case(tmp_path, "BraTS2021_00001", shape=(4, 4, 2))
    healthy = {m: make_nifti(tmp_path / "healthy" / f"BraTS2021_00001_{m}.nii.gz", shape=(4, 4, 2))
               for m in ("t1", "t1ce", "t2", "flair")}
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["BraTS2021_00001", "healthy_BraTS2021_00001"]
    assert cases[0].paths == lesion and cases[1].paths == healthy


def test_plain_nifti_folder(make_nifti, tmp_path: Path) -> None:
    make_nifti(tmp_path / "b_subject.nii.gz", shape=(3, 3, 3))
    make_nifti(tmp_path / "a_subject_T2w.nii", shape=(3, 3, 3))
    make_nifti(tmp_path / "site1" / "brain.nii.gz", shape=(3, 3, 3))
    make_nifti(tmp_path / "site2" / "brain.nii.gz", shape=(3, 3, 3))
    make_nifti(tmp_path / ".hidden.tmp-x.nii.gz", shape=(3, 3, 3))  # temp files are skipped
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a_subject_T2w", "b_subject", "site1_brain", "site2_brain"]
    assert cases[0].paths == {"t2": tmp_path / "a_subject_T2w.nii"}
    assert cases[1].paths == {"image": tmp_path / "b_subject.nii.gz"}
    assert find_cases(tmp_path) == cases  # deterministic


def test_dicom_folder_each_series_a_case(two_series_folder, make_dicom_series, tmp_path: Path) -> None:
    root = tmp_path
    lone = make_dicom_series(root / "patient" / "sag_t1", seed=7, n_slices=4)
    cases = find_cases(root)
    lone_case = next(c for c in cases if c.series_uid == lone.series_uid)
    assert lone_case.case_id == "sag_t1" and lone_case.paths == {"t1": lone.folder}
    assert np.array_equal(lone_case.load("t1").numpy(), lone.expected_volume)
    shared = [c for c in cases if c.series_uid in two_series_folder.uids]
    assert len(shared) == 2 and len({c.case_id for c in shared}) == 2
    for case in shared:
        spec = next(s for s in two_series_folder.series if s.series_uid == case.series_uid)
        assert case.case_id.startswith("two_series_")
        key = {"AX T1": "t1", "AX FLAIR": "flair"}[spec.description]  # modality from SeriesDescription
        assert case.paths == {key: two_series_folder.folder}
        assert np.array_equal(case.load(key).numpy(), spec.expected_volume)
    assert [c.case_id for c in cases] == sorted(c.case_id for c in cases)


def test_single_dicom_file_case(dicom_series) -> None:
    (case,) = find_cases(dicom_series.files[0])
    assert case.case_id == volume_stem(dicom_series.files[0]) and case.series_uid == dicom_series.series_uid
    assert tuple(case.load("image").shape) == (12, 10, 1)


def test_empty_and_missing_roots(tmp_path: Path) -> None:
    with pytest.raises(MedinvertError, match="no such file"):
        find_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(MedinvertError, match="no NIfTI or DICOM images"):
        find_cases(tmp_path / "empty")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x01" * 300)
    with pytest.raises(MedinvertError, match="neither a NIfTI"):
        find_cases(junk)


def test_case_is_hashable_by_id() -> None:
    case = Case("x", {"t1": Path("x_t1.nii.gz")})
    assert hash(case) == hash(Case("x", {"t2": Path("other")}))
    with pytest.raises(AttributeError):
        case.case_id = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BraTS2021_00000_t1.nii.gz", "t1"),
        ("BraTS2021_00000_t1ce.nii.gz", "t1ce"),
        ("BraTS2021_00000_t2.nii.gz", "t2"),
        ("BraTS2021_00000_flair.nii.gz", "flair"),
        ("BraTS2021_00000_seg.nii.gz", "seg"),
        ("BraTS20_Training_001_t1ce.nii", "t1ce"),
        ("BraTS-GLI-00000-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"),
        ("BraTS-GLI-00000-000-t2w.nii.gz", "t2"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("BraTS-PED-00000-000-seg.nii.gz", "seg"),
        ("sub-01_ses-1_T1w.nii.gz", "t1"),
        ("sub-01_FLAIR.nii", "flair"),
        ("brain.nii.gz", None),
        ("t1_mprage_sag.nii.gz", None),
        ("IM0001.dcm", None),
    ],
)
def test_guess_modality(name: str, expected: str | None) -> None:
    assert guess_modality(name) == expected


def test_parse_brats_name_case_ids() -> None:
    assert parse_brats_name("BraTS2021_01234_flair.nii.gz") == ("BraTS2021_01234", "flair")
    assert parse_brats_name("BraTS-SSA-00126-000-t1c.nii.gz") == ("BraTS-SSA-00126-000", "t1ce")
    assert parse_brats_name("BraTS2021_01234_flair.txt") is None
    assert parse_brats_name("subject_t1.nii.gz") is None


def test_volume_stem(tmp_path: Path) -> None:
    assert volume_stem("a/BraTS2021_00000_t1.nii.gz") == "BraTS2021_00000_t1"
    assert volume_stem("scan.NII") == "scan"
    assert volume_stem("IM0001.dcm") == "IM0001"
    assert volume_stem("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    (tmp_path / "series_07").mkdir()
    assert volume_stem(tmp_path / "series_07") == "series_07"
    assert load_volume is not None


def test_a_folder_of_unreadable_dicom_files_is_one_failing_case(make_dicom_series, tmp_path: Path) -> None:
    """One broken case must not hide the others: find_cases lists it with its error, loading it raises."""
    root = tmp_path / "cases"
    make_dicom_series(root / "good1", n_slices=3, seed=1)
    make_dicom_series(root / "good2", n_slices=3, seed=2)
    bad = make_dicom_series(root / "bad", n_slices=3, seed=3)
    (bad.folder / "notes.dcm").write_text("not a DICOM file")
    cases = {case.case_id: case for case in find_cases(root)}
    assert sorted(cases) == ["bad", "good1", "good2"]
    assert cases["good1"].error is None and cases["good1"].load("t2").shape[-1] == 3  # "AX T2 TSE"
    assert "notes.dcm" in cases["bad"].error
    with pytest.raises(MedinvertError, match="notes.dcm: is not a DICOM image file"):
        cases["bad"].load("t2")
    with pytest.raises(MedinvertError, match="notes.dcm: is not a DICOM image file"):
        find_cases(bad.folder)  # alone, the error is raised at once


def test_series_description_names_the_modality() -> None:
    from medinvert.io.naming import guess_series_modality

    cases = {"T2 axial": "t2", "AX T2 FLAIR": "flair", "t2_tirm_tra_dark-fluid": "flair", "t1_mprage_sag": "t1",
             "AX T1 +C": "t1ce", "T1 post Gd": "t1ce", "T2W_TSE": "t2", "localizer": None, "DWI b1000": None, "": None,
             "AX T1 FLAIR": "t1", "Ax T1 FLAIR POST": "t1ce", "AX T1 PRE-CONTRAST": "t1", "T1 W/O CONTRAST": "t1",
             "T1 non-contrast": "t1", "T1 pre Gd": "t1"}
    assert {text: guess_series_modality(text) for text in cases} == cases
