"""`medinvert info` and `medinvert convert` end to end (in process, and once as a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medinvert.cli import main
from medinvert.io import load_volume


def _run_json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_nifti(capsys, oblique_nifti: Path, oblique_affine: np.ndarray) -> None:
    report = _run_json(capsys, "info", "--json", str(oblique_nifti))
    assert report["path"] == str(oblique_nifti)
    assert report["shape"] == [9, 8, 7]
    assert np.allclose(report["spacing"], np.linalg.norm(oblique_affine[:3, :3], axis=0))
    assert np.array_equal(np.array(report["affine"]), oblique_affine)
    assert report["orientation"] == "".join(nib.aff2axcodes(oblique_affine))
    assert report["modality"] is None and report["dtype"] == "float32" and report["source_format"] == "nifti"
    assert (report["qform_code"], report["sform_code"]) == (1, 2)


def test_info_text_and_4d_singleton(capsys, nifti_4d_singleton: Path) -> None:
    assert main(["info", str(nifti_4d_singleton)]) == 0
    out = capsys.readouterr().out
    assert "12 x 10 x 6" in out and "orientation  RAS" in out and "int16" in out


def test_info_dicom_series_and_series_listing(capsys, dicom_series, two_series_folder) -> None:
    report = _run_json(capsys, "info", "--json", str(dicom_series.folder))
    assert report["shape"] == [12, 10, 8] and report["series_uid"] == dicom_series.series_uid
    assert report["source_format"] == "dicom" and report["dtype"] == "int16"
    listing = _run_json(capsys, "info", "--json", str(two_series_folder.folder))
    assert sorted(s["series_uid"] for s in listing["series"]) == sorted(two_series_folder.uids)
    assert {s["series_uid"]: s["n_slices"] for s in listing["series"]} == {
        s.series_uid: len(s.files) for s in two_series_folder.series}
    chosen = two_series_folder.series[1]
    report = _run_json(capsys, "info", "--json", "--series-uid", chosen.series_uid, str(two_series_folder.folder))
    assert report["series_uid"] == chosen.series_uid and report["shape"] == [11, 9, 5]
    assert main(["info", str(two_series_folder.folder)]) == 0
    text = capsys.readouterr().out
    assert all(uid in text for uid in two_series_folder.uids)


def test_info_lists_cases_of_a_brats_folder(capsys, brats_layouts, make_dicom_series) -> None:
    listing = _run_json(capsys, "info", "--json", str(brats_layouts.root))
    assert [c["case_id"] for c in listing["cases"]] == sorted([brats_layouts.case_2021, brats_layouts.case_2023])
    assert list(listing["cases"][0]["paths"]) == ["t1", "t1ce", "t2", "flair", "seg"]
    # one DICOM series next to NIfTI cases: still a listing, the series is one more case
    spec = make_dicom_series(brats_layouts.root / "dicom_t2", n_slices=3)
    listing = _run_json(capsys, "info", "--json", str(brats_layouts.root))
    series_case = next(c for c in listing["cases"] if c["series_uid"] == spec.series_uid)
    assert series_case["case_id"] == "dicom_t2" and series_case["paths"] == {"t2": str(spec.folder)}


def test_convert_dicom_to_nifti(capsys, dicom_series, tmp_path: Path) -> None:
    out = tmp_path / "converted" / "series.nii.gz"
    assert main(["convert", str(dicom_series.folder), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    source, converted = load_volume(dicom_series.folder), load_volume(out)
    assert np.array_equal(converted.numpy(), source.numpy())
    # the sform stores float32: the affine survives to float32 precision
    assert np.allclose(converted.affine.numpy(), source.affine.numpy(), rtol=0, atol=1e-5)
    header = nib.load(str(out)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)


def test_convert_nifti_keeps_header_exactly(capsys, oblique_nifti: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.nii"
    assert main(["convert", str(oblique_nifti), str(out)]) == 0
    a, b = load_volume(oblique_nifti), load_volume(out)
    assert np.array_equal(a.numpy(), b.numpy()) and np.array_equal(a.affine.numpy(), b.affine.numpy())
    assert (b.meta["qform_code"], b.meta["sform_code"]) == (1, 2)


def test_convert_selects_series_and_refuses_overwrite(capsys, two_series_folder, tmp_path: Path) -> None:
    out = tmp_path / "t1.nii.gz"
    assert main(["convert", str(two_series_folder.folder), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(uid in err for uid in two_series_folder.uids)
    assert not out.exists()
    uid = two_series_folder.series[0].series_uid
    assert main(["convert", "--series-uid", uid, str(two_series_folder.folder), str(out)]) == 0
    first_bytes = out.read_bytes()
    capsys.readouterr()
    assert main(["convert", "--series-uid", uid, str(two_series_folder.folder), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", "--overwrite", "--series-uid", uid, str(two_series_folder.folder), str(out)]) == 0
    assert out.read_bytes() == first_bytes  # deterministic output


def test_convert_refuses_input_as_output_and_bad_suffix(capsys, oblique_nifti: Path, tmp_path: Path) -> None:
    before = oblique_nifti.read_bytes()
    assert main(["convert", "--overwrite", str(oblique_nifti), str(oblique_nifti)]) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert oblique_nifti.read_bytes() == before
    assert main(["convert", str(oblique_nifti), str(tmp_path / "out.mha")]) == 2
    assert ".nii" in capsys.readouterr().err


def test_convert_failure_writes_nothing(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"broken" * 30)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["convert", str(bad), str(out_dir / "x.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medinvert convert: error: ") and str(bad) in err and err.count("\n") == 1
    assert list(out_dir.iterdir()) == []


def _subprocess(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MEDINVERT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "medinvert", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_subprocess_bad_file_exit_2_one_line_no_output(make_nifti, tmp_path: Path) -> None:
    full = make_nifti(tmp_path / "full.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32),
                      np.eye(4))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    out = tmp_path / "out.nii.gz"
    result = _subprocess("convert", str(truncated), str(out), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("medinvert convert: error: ") and str(truncated) in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.nii.gz", "truncated.nii.gz"]
    ok = _subprocess("info", "--json", str(full), cwd=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout)["shape"] == [20, 20, 20]


@pytest.mark.parametrize("argv", [["info", "/nonexistent/x.nii.gz"], ["info", "--series-uid", "1.2", "FILE"]])
def test_info_errors(capsys, argv: list[str], oblique_nifti: Path) -> None:
    argv = [str(oblique_nifti) if a == "FILE" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
