"""`medinvert invert` / `generate` / `roundtrip` end to end through `medinvert.cli.main` on real files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _cli import run
from medinvert.io import load_volume

SAMPLE_T1 = Path(__file__).resolve().parents[1] / "sample_data" / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t1n.nii.gz"


pytestmark = pytest.mark.usefixtures("one_thread")


def voxel_bits(path: Path) -> np.ndarray:
    return load_volume(path).as_tensor().numpy().view(np.int32)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_invert_generate_singleton_4d_nifti_is_bit_identical_with_header_kept(tmp_path, nifti_4d_singleton, capsys):
    latent, report, out = tmp_path / "lat.npz", tmp_path / "report.json", tmp_path / "back.nii.gz"
    assert run("invert", nifti_4d_singleton, "--out", latent, "--steps", 4, "--report", report, "--batch-size", 4) == 0
    assert "wrote" in capsys.readouterr().out
    info = json.loads(report.read_text())
    for key in ("method", "steps", "nfe", "nfe_per_step", "seconds", "dtype", "model_sha256", "shape", "patch_size"):
        assert key in info
    assert info["method"] == "exact" and info["steps"] == 4 and info["nfe"] == 4 and info["nfe_per_step"] == 1
    assert info["shape"] == [12, 10, 6] and info["batch_size"] == 4 and info["threads"] == 1

    assert run("generate", latent, "--out", out) == 0
    np.testing.assert_array_equal(voxel_bits(out), voxel_bits(nifti_4d_singleton))
    source, back = nib.load(str(nifti_4d_singleton)), nib.load(str(out))
    np.testing.assert_array_equal(back.affine, source.affine)
    assert back.get_data_dtype() == np.float32
    for field in ("qform_code", "sform_code", "xyzt_units"):
        assert back.header[field] == source.header[field], field
    np.testing.assert_array_equal(back.header["pixdim"][1:4], source.header["pixdim"][1:4])


def test_dicom_series_to_nifti(tmp_path, dicom_series):
    latent, out = tmp_path / "lat.npz", tmp_path / "series.nii.gz"
    assert run("invert", dicom_series.folder, "--out", latent, "--steps", 3) == 0
    assert run("generate", latent, "--out", out) == 0
    source, back = load_volume(dicom_series.folder), load_volume(out)
    np.testing.assert_array_equal(back.as_tensor().numpy().view(np.int32), source.as_tensor().numpy().view(np.int32))
    np.testing.assert_allclose(back.affine.numpy(), source.affine.numpy(), atol=1e-4)  # NIfTI stores float32


@pytest.mark.skipif(not SAMPLE_T1.is_file(), reason="sample data not present")
def test_sample_data_crop_round_trip(tmp_path):
    """Real-derived intensities (int16 T1 of the held-out sample case), a crop of three slices."""
    image = nib.load(str(SAMPLE_T1))
    crop = np.asarray(image.dataobj)[80:160:2, 60:180:3, 70:73]
    path = tmp_path / "t1_crop.nii.gz"
    nib.save(nib.Nifti1Image(crop, image.affine, image.header), str(path))
    latent, out = tmp_path / "lat.npz", tmp_path / "back.nii.gz"
    assert run("invert", path, "--out", latent, "--steps", 5) == 0
    assert run("generate", latent, "--out", out) == 0
    np.testing.assert_array_equal(voxel_bits(out), voxel_bits(path))


def test_roundtrip_json_reports_exactness_and_costs(tmp_path, make_nifti, capsys):
    path = make_nifti(tmp_path / "vol.nii.gz", shape=(13, 11, 3))
    assert run("roundtrip", path, "--steps", 4, "--json") == 0
    exact = json.loads(capsys.readouterr().out)
    assert exact["bit_identical"] is True and exact["max_abs_error"] == 0.0 and exact["relative_error"] == 0.0
    assert exact["nfe_per_step"] == 1 and exact["nfe"] == 4 + 3 and exact["seconds"] >= 0
    assert run("roundtrip", path, "--steps", 4, "--method", "edict", "--dtype", "float64", "--json") == 0
    edict = json.loads(capsys.readouterr().out)
    assert edict["relative_error"] < 1e-9 and edict["nfe_per_step"] == 2 and edict["nfe"] == 16
    assert run("roundtrip", path, "--steps", 4, "--method", "ddim", "--json") == 0
    ddim = json.loads(capsys.readouterr().out)
    assert ddim["max_abs_error"] > 0 and ddim["bit_identical"] is False
    assert run("roundtrip", path, "--steps", 3, "--method", "exact", "--option", "scheme=heun") == 0
    text = capsys.readouterr().out
    assert "bit identical   yes" in text and "max abs error" in text
    assert listing(tmp_path) == ["vol.nii.gz"]  # roundtrip writes nothing


def test_invert_is_byte_deterministic(tmp_path, make_nifti):
    path = make_nifti(tmp_path / "vol.nii.gz", shape=(9, 8, 3))
    assert run("invert", path, "--out", tmp_path / "a.npz", "--steps", 3) == 0
    assert run("invert", path, "--out", tmp_path / "b.npz", "--steps", 3) == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--steps", "-3"], "--steps must be a positive integer"),
    (["--method", "magic"], "invalid choice"),
    (["--batch-size", "0"], "--batch-size"),
    (["--option", "p=0.9"], "no option"),
    (["--option", "nonsense"], "KEY=VALUE"),
    (["--guidance", "2"], "needs a condition"),
    (["--method", "nulltext"], "nulltext inversion needs a condition"),
    (["--method", "negprompt", "--option", "guidance=3"], "with --guidance"),
    (["--method", "ode", "--option", "method=rk4"], "'method' is now 'ode_method'"),
    (["--ode-method", "rk4"], "applies to --method ode only"),
    (["--method", "ode", "--ode-method", "rk5"], "unknown ode_method"),
    (["--model", "no_such_model.pt"], "no_such_model"),
])
def test_invert_bad_inputs_exit_2_with_one_line_and_nothing_written(tmp_path, make_nifti, capsys, extra, message):
    path = make_nifti(tmp_path / "vol.nii.gz", shape=(9, 8, 2))
    before = listing(tmp_path)
    assert run("invert", path, "--out", tmp_path / "sub" / "lat.npz", "--report", tmp_path / "r.json", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == before


def test_output_guards(tmp_path, make_nifti, capsys):
    path = make_nifti(tmp_path / "vol.nii.gz", shape=(9, 8, 2))
    latent = tmp_path / "lat.npz"
    assert run("invert", tmp_path / "missing.nii.gz", "--out", latent) == 2
    assert run("invert", path, "--out", tmp_path / "lat.nii.gz") == 2  # a latent is an .npz
    assert run("invert", path, "--out", latent, "--steps", 2) == 0
    stamp = latent.read_bytes()
    assert run("invert", path, "--out", latent, "--steps", 2) == 2  # exists, no --overwrite
    assert run("invert", path, "--out", latent, "--report", latent, "--steps", 2, "--overwrite") == 2
    assert run("generate", latent, "--out", path, "--overwrite") == 2  # never over the source volume
    assert run("generate", latent, "--out", tmp_path / "back.npz") == 2  # NIfTI names only
    assert latent.read_bytes() == stamp and voxel_bits(path).size == 9 * 8 * 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 6 and all(line.startswith("medinvert ") for line in errors)
    assert run("invert", path, "--out", latent, "--steps", 3, "--overwrite") == 0
    assert latent.read_bytes() != stamp


def test_generate_refuses_a_corrupted_latent(tmp_path, make_nifti, capsys):
    path = make_nifti(tmp_path / "vol.nii.gz", shape=(9, 8, 2))
    latent = tmp_path / "lat.npz"
    assert run("invert", path, "--out", latent, "--steps", 2) == 0
    latent.write_bytes(latent.read_bytes()[:-200])
    assert run("generate", latent, "--out", tmp_path / "back.nii.gz") == 2
    assert "lat.npz" in capsys.readouterr().err
    assert not (tmp_path / "back.nii.gz").exists()


def test_cli_choices_match_the_engine():
    from medinvert.cli.invert import METHODS, SPACINGS
    from medinvert.schedule import SPACINGS as SCHEDULE_SPACINGS
    from medinvert.solvers import SOLVERS

    assert set(METHODS) == set(SOLVERS)
    assert set(SPACINGS) == set(SCHEDULE_SPACINGS)


def test_condition_and_guidance_from_an_observation_file(tmp_path, make_nifti, capsys):
    from medinvert import corrupt

    path = make_nifti(tmp_path / "vol.nii.gz", shape=(12, 10, 2))
    corrupt(load_volume(path), "mask", seed=3).save(tmp_path / "vol")
    observation = tmp_path / "vol_observation.json"
    assert run("roundtrip", path, "--steps", 3, "--condition", observation, "--guidance", 2, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bit_identical"] is True and result["nfe_per_step"] == 2
    latent, out = tmp_path / "lat.npz", tmp_path / "back.nii.gz"
    assert run("invert", path, "--out", latent, "--steps", 3, "--condition", observation, "--guidance", 2) == 0
    assert run("generate", latent, "--out", out) == 0  # the condition travels inside the latent
    np.testing.assert_array_equal(voxel_bits(out), voxel_bits(path))


def test_nulltext_latent_file_generates_the_null_text_reconstruction(tmp_path, make_nifti, capsys):
    from medinvert import corrupt
    from medinvert.inversion import generate, invert

    path = make_nifti(tmp_path / "vol.nii.gz", shape=(12, 10, 2))
    corrupt(load_volume(path), "mask", seed=3).save(tmp_path / "vol")
    observation = tmp_path / "vol_observation.json"
    latent, report, out = tmp_path / "nt.npz", tmp_path / "nt.json", tmp_path / "back.nii.gz"
    assert run("invert", path, "--method", "nulltext", "--steps", 3, "--condition", observation, "--guidance", 2,
               "--option", "inner_steps=2", "--out", latent, "--report", report) == 0
    info = json.loads(report.read_text())
    assert info["method"] == "nulltext" and info["guidance"] == 2.0 and info["options"]["inner_steps"] == 2
    assert 3 + 3 * 3 <= info["nfe"] <= 3 + 3 * 4  # pivot + per step: cond, 1-2 inner passes, final null pass
    assert run("generate", latent, "--out", out) == 0
    # the same inversion in memory, generated without a file: the file reproduces it bit for bit
    expected = generate(invert(path, "random", method="nulltext", steps=3, condition=observation, guidance=2.0,
                               inner_steps=2, threads=1))
    np.testing.assert_array_equal(voxel_bits(out), expected.numpy().view(np.int32))


def test_ode_method_option(tmp_path, make_nifti, capsys):
    path = make_nifti(tmp_path / "vol.nii.gz", shape=(9, 8, 1))
    assert run("roundtrip", path, "--method", "ode", "--ode-method", "rk4", "--steps", 2, "--json") == 0
    assert json.loads(capsys.readouterr().out)["nfe_per_step"] == 4  # rk4 on the grid: 4 stages per step
    assert run("roundtrip", path, "--method", "ode", "--option", "ode_method=euler", "--steps", 2, "--json") == 0
    assert json.loads(capsys.readouterr().out)["nfe_per_step"] == 1
