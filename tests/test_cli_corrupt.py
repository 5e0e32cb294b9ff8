"""`medinvert corrupt` end to end on real NIfTI files and a BraTS-layout folder written in tmp_path."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medinvert.cli import main
from medinvert.operators import Observation, fft2c, volume_to_slices

SUFFIXES = ("_corrupted.nii.gz", "_mask.nii.gz", "_observation.npz", "_observation.json")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["corrupt", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _outputs(out: Path, stem: str) -> list[Path]:
    return [out / f"{stem}{suffix}" for suffix in SUFFIXES]


@pytest.fixture
def brain(tmp_path, make_nifti) -> Path:
    rng = np.random.default_rng(0)
    data = np.zeros((20, 18, 5), np.float32)
    data[4:16, 3:15] = 100 + 10 * rng.standard_normal((12, 12, 5))
    return make_nifti(tmp_path / "in" / "brain.nii.gz", data)


def test_kspace_end_to_end(capsys, tmp_path, brain, oblique_affine):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, brain, "--kind", "kspace", "--acceleration", 4, "--center-fraction", 0.08,
                                "--seed", 3, "--out", out)
    assert code == 0, stderr
    assert "brain" in stdout and stderr == ""
    for path in _outputs(out, "brain"):
        assert path.is_file()
    source = nib.load(brain)
    mask_img, corrupted_img = nib.load(out / "brain_mask.nii.gz"), nib.load(out / "brain_corrupted.nii.gz")
    assert mask_img.shape == source.shape and mask_img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask_img.affine, oblique_affine)
    np.testing.assert_allclose(corrupted_img.affine, oblique_affine)
    obs = Observation.load(out / "brain")
    mask = np.asarray(mask_img.dataobj)
    assert np.array_equal(mask, obs.mask.numpy().astype(np.uint8))
    # voxel (i, j, k) = 1 <=> k-space sample (i, j) of slice k measured: y is F x there and 0 elsewhere
    k_full = fft2c(volume_to_slices(torch.from_numpy(np.asarray(source.dataobj, np.float32))))
    m = volume_to_slices(torch.from_numpy(mask.astype(bool)))
    torch.testing.assert_close(obs.y[m], k_full[m].to(torch.complex64), rtol=1e-5, atol=1e-3)
    assert (obs.y[~m] == 0).all()
    assert all(np.array_equal(mask[:, :, k], mask[:, :, 0]) for k in range(mask.shape[2]))
    assert abs(mask.mean() - 0.25) <= 1.5 / 18
    np.testing.assert_allclose(np.asarray(corrupted_img.dataobj), obs.image().numpy(), rtol=1e-6)
    assert obs.params["seed"] == 3 and obs.source == str(brain)

    # same settings -> same bytes; an existing output is refused, and kept, without --overwrite
    again = tmp_path / "again"
    assert _run(capsys, brain, "--kind", "kspace", "--center-fraction", 0.08, "--seed", 3, "--out", again)[0] == 0
    for a, b in zip(_outputs(out, "brain"), _outputs(again, "brain")):
        assert a.read_bytes() == b.read_bytes(), a.name
    before = (out / "brain_mask.nii.gz").read_bytes()
    code, _, stderr = _run(capsys, brain, "--kind", "kspace", "--seed", 4, "--out", out)
    assert code == 2 and "--overwrite" in stderr and stderr.count("\n") == 1
    assert (out / "brain_mask.nii.gz").read_bytes() == before
    assert _run(capsys, brain, "--kind", "kspace", "--seed", 4, "--out", out, "--overwrite")[0] == 0
    assert (out / "brain_mask.nii.gz").read_bytes() != before


@pytest.mark.parametrize("options", [
    ["--kind", "mask", "--mask-type", "blobs"],
    ["--kind", "mask", "--mask-type", "slices", "--slice-fraction", "0.4"],
    ["--kind", "noise", "--snr", "20", "--noise-model", "rician"],
    ["--kind", "blur", "--blur", "motion", "--motion-length", "5", "--motion-angle", "30", "--sigma", "1"],
    ["--kind", "kspace", "--acceleration", "8", "--pattern", "variable-density"],
])
def test_every_kind(capsys, tmp_path, brain, options):
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, brain, *options, "--out", out)
    assert code == 0, stderr
    obs = Observation.load(out / "brain_observation.json")
    assert obs.kind == options[1]
    assert nib.load(out / "brain_mask.nii.gz").shape == (20, 18, 5)


def test_user_mask_file(capsys, tmp_path, brain, make_nifti):
    keep = np.ones((20, 18, 5), np.uint8)
    keep[5:10, 5:10, :] = 0
    mask_file = make_nifti(tmp_path / "keep.nii.gz", keep)
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, brain, "--kind", "mask", "--mask-type", "file", "--mask-file", mask_file,
                           "--out", out)
    assert code == 0, stderr
    assert np.array_equal(np.asarray(nib.load(out / "brain_mask.nii.gz").dataobj), keep)
    corrupted = np.asarray(nib.load(out / "brain_corrupted.nii.gz").dataobj)
    assert (corrupted[keep == 0] == 0).all()


def test_brats_folder(capsys, brats_layouts, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, brats_layouts.root, "--kind", "kspace", "--out", out)
    assert code == 0, stderr
    produced = sorted(p.name for p in out.iterdir())
    assert len(produced) == 2 * 4 * len(SUFFIXES)  # two cases x four modalities; seg is not corrupted
    assert not any("seg" in name for name in produced)
    for case, paths in brats_layouts.paths.items():
        for modality, path in paths.items():
            if modality == "seg":
                continue
            stem = path.name[: -len(".nii.gz")]
            assert all(p.is_file() for p in _outputs(out, stem))
            assert nib.load(out / f"{stem}_mask.nii.gz").shape == nib.load(path).shape
    masks = [Observation.load(out / f"BraTS2021_00001_{m}").mask for m in ("t1", "t2")]
    assert not torch.equal(masks[0], masks[1])  # seeds come from the volume names
    # running on one case folder, outputs inside the input tree are not picked up again
    case_dir = brats_layouts.root / brats_layouts.case_2021
    code, _, stderr = _run(capsys, case_dir, "--kind", "noise", "--sigma", 1, "--out", case_dir / "noisy")
    assert code == 0, stderr
    code, _, stderr = _run(capsys, case_dir, "--kind", "noise", "--sigma", 1, "--out", case_dir / "noisy",
                           "--overwrite")
    assert code == 0, stderr
    assert len(list((case_dir / "noisy").iterdir())) == 4 * len(SUFFIXES)


def _write_truncated(path: Path, source: Path) -> Path:
    path.write_bytes(source.read_bytes()[:200])
    return path


def _nan_volume(path: Path, make_nifti) -> Path:
    data = np.ones((6, 6, 3), np.float32)
    data[1, 1, 1] = np.nan
    return make_nifti(path, data)


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "nan", "acceleration", "center", "sigma",
                                  "wrong-kind-option", "mask-file-missing", "slices-2d", "empty-folder"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, brain, make_nifti, case):
    args: list = [brain, "--kind", "kspace"]
    if case == "missing":
        args[0] = tmp_path / "nope.nii.gz"
    elif case == "text":
        args[0] = tmp_path / "notes.txt"
        args[0].write_text("not an image\n")
    elif case == "truncated":
        big = make_nifti(tmp_path / "big.nii.gz", np.random.default_rng(1).random((30, 30, 10)).astype(np.float32))
        args[0] = _write_truncated(tmp_path / "cut.nii.gz", big)
        assert len(gzip.decompress(big.read_bytes())) > 200
    elif case == "nan":
        args[0] = _nan_volume(tmp_path / "nan.nii.gz", make_nifti)
    elif case == "acceleration":
        args += ["--acceleration", "0.5"]
    elif case == "center":
        args += ["--center-fraction", "1.5"]
    elif case == "sigma":
        args = [brain, "--kind", "noise", "--sigma", "-1"]
    elif case == "wrong-kind-option":
        args += ["--sigma", "1", "--blur-sigma", "2"]
    elif case == "mask-file-missing":
        args = [brain, "--kind", "mask", "--mask-type", "file", "--mask-file", tmp_path / "none.nii.gz"]
    elif case == "slices-2d":
        args = [make_nifti(tmp_path / "flat.nii.gz", np.ones((6, 6), np.float32)), "--kind", "mask",
                "--mask-type", "slices"]
    elif case == "empty-folder":
        args[0] = tmp_path / "empty"
        args[0].mkdir()
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, *args, "--out", out)
    assert code == 2, stderr
    assert stderr.startswith("medinvert corrupt: error:") and stderr.count("\n") == 1
    if case in ("missing", "text", "truncated", "nan", "slices-2d"):
        assert Path(args[0]).name in stderr  # the message names the file
    assert not out.exists()


def test_bad_volume_in_folder_leaves_nothing_of_its_own(capsys, tmp_path, make_nifti):
    folder = tmp_path / "cases"
    make_nifti(folder / "a_good.nii.gz", np.ones((6, 6, 3), np.float32))
    _nan_volume(folder / "b_bad.nii.gz", make_nifti)
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, folder, "--kind", "noise", "--sigma", "0.1", "--out", out)
    assert code == 2 and "b_bad" in stderr
    assert not list(out.glob("b_bad*"))
    assert all(p.is_file() for p in _outputs(out, "a_good"))
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_dicom_series_folder(capsys, tmp_path, dicom_series):
    from medinvert.io import load_volume

    out = tmp_path / "out"
    code, _, stderr = _run(capsys, dicom_series.folder, "--kind", "blur", "--out", out)
    assert code == 0, stderr
    stem = dicom_series.folder.name
    assert all(p.is_file() for p in _outputs(out, stem))
    volume = load_volume(dicom_series.folder)
    mask_img = nib.load(out / f"{stem}_mask.nii.gz")
    assert mask_img.shape == tuple(volume.shape)
    np.testing.assert_allclose(mask_img.affine, np.asarray(volume.affine), atol=1e-5)
