"""`medinvert edit` end to end through `medinvert.cli.main` on real NIfTI files (random model, tiny volumes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _cli import run
from medinvert.io import load_volume

AFFINE = np.array([[-1.0, 0, 0, 20], [0, -1.0, 0, 18], [0, 0, 2.0, -3], [0, 0, 0, 1]])


pytestmark = pytest.mark.usefixtures("one_thread")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def case(tmp_path):
    """An int16 volume, a box mask (uint8, same grid) and a second co-registered volume."""
    rng = np.random.default_rng(0)
    volume = (100 + 300 * rng.random((20, 18, 4))).astype(np.int16)
    mask = np.zeros(volume.shape, np.uint8)
    mask[5:11, 4:12, 1:3] = 1
    paths = {}
    for name, data, affine in (("volume", volume, AFFINE), ("mask", mask, AFFINE),
                               ("other", (volume[::-1] * 0.8).astype(np.int16), AFFINE)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        image = nib.Nifti1Image(data, affine)
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        nib.save(image, str(paths[name]))
    return paths, volume, mask.astype(bool)


def test_edit_end_to_end(tmp_path, case, capsys):
    paths, volume, mask = case
    before = sha(paths["volume"]), sha(paths["mask"])
    out, report = tmp_path / "out" / "edited.nii.gz", tmp_path / "edit.json"
    assert run("edit", paths["volume"], "--mask", paths["mask"], "--op", "shift:0.2", "--model", "random",
               "--out", out, "--report", report, "--steps", 5, "--t-edit", 0.4) == 0
    line = capsys.readouterr().out
    assert "wrote" in line and "bit-identical" in line
    assert (sha(paths["volume"]), sha(paths["mask"])) == before  # inputs untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["edited.nii.gz"]  # no temporary left behind

    edited = load_volume(out).as_tensor().numpy()
    original = volume.astype(np.float32)
    np.testing.assert_array_equal(edited[~mask].view(np.int32), original[~mask].view(np.int32))
    assert (edited[mask] != original[mask]).all()
    image = nib.load(str(out))
    assert image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(image.affine, nib.load(str(paths["volume"])).affine)

    info = json.loads(report.read_text())
    for key in ("op", "method", "model", "steps", "edit_steps", "t_edit", "t_at_edit", "sigma_at_edit", "feather",
                "seed", "slices", "mask_voxels", "leakage", "outside_mask", "change_inside", "nfe", "seconds",
                "scale", "frac_bits", "input", "mask", "output"):
        assert key in info, key
    assert info["op"] == "shift:0.2" and info["method"] == "exact" and info["slices"] == [1, 2]
    assert info["leakage"] == {"max_abs": 0.0, "mean_abs": 0.0, "bit_identical": True, "region": "outside the mask"}
    assert info["mask_voxels"] == int(mask.sum())
    diff = np.abs(edited.astype(np.float64) - original)[mask]
    assert info["change_inside"]["max_abs"] == pytest.approx(diff.max())
    assert info["change_inside"]["mean_abs"] == pytest.approx(diff.mean())
    assert info["nfe"]["total"] == info["nfe"]["invert"] + info["nfe"]["generate"] > 0


@pytest.mark.parametrize("op", ["inpaint", "transplant", "scale:0.5"])
def test_other_ops_and_feather(tmp_path, case, op):
    paths, volume, mask = case
    if op == "transplant":
        op = f"transplant:{paths['other']}"
    out, report = tmp_path / "o.nii.gz", tmp_path / "r.json"
    assert run("edit", paths["volume"], "--mask", paths["mask"], "--op", op, "--model", "random", "--out", out,
               "--steps", 4, "--feather", 1.5, "--report", report) == 0
    info = json.loads(report.read_text())
    assert info["leakage"]["bit_identical"] and info["feather"] == 1.5
    assert info["edited_voxels"] > info["mask_voxels"]
    edited = load_volume(out).as_tensor().numpy()
    assert (edited[mask] != volume[mask]).mean() > 0.9


def test_ddim_method_reports_its_leakage(tmp_path, case):
    paths, _, _ = case
    report = tmp_path / "r.json"
    assert run("edit", paths["volume"], "--mask", paths["mask"], "--op", "shift:0.2", "--model", "random",
               "--out", tmp_path / "o.nii.gz", "--steps", 4, "--method", "ddim", "--report", report) == 0
    leakage = json.loads(report.read_text())["leakage"]
    assert leakage["max_abs"] > 0 and not leakage["bit_identical"]


def write_mask(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(path))
    return path


@pytest.mark.parametrize("problem, message", [
    ("shape", "does not match the volume shape"),
    ("affine", "geometry (affine) does not match"),
    ("empty", "mask is empty"),
])
def test_bad_masks_exit_2_with_one_line_and_no_output(tmp_path, case, capsys, problem, message):
    paths, volume, mask = case
    if problem == "shape":
        bad = write_mask(tmp_path / "bad.nii.gz", mask[:, :, :3])
    elif problem == "affine":
        bad = write_mask(tmp_path / "bad.nii.gz", mask, np.diag([1.0, 1.0, 1.0, 1.0]))
    else:
        bad = write_mask(tmp_path / "bad.nii.gz", np.zeros_like(mask))
    out = tmp_path / "o.nii.gz"
    assert run("edit", paths["volume"], "--mask", bad, "--op", "shift:0.2", "--model", "random", "--out", out,
               "--report", tmp_path / "r.json") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(bad) in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--op", "blur:3"], "unknown edit op"),
    (["--op", "transplant:missing.nii.gz"], "transplant source not found"),
    (["--op", "shift:0.1", "--steps", "1"], "steps"),
    (["--op", "shift:0.1", "--t-edit", "2"], "t_edit"),
])
def test_bad_options_exit_2(tmp_path, case, capsys, argv, message):
    paths, _, _ = case
    out = tmp_path / "o.nii.gz"
    assert run("edit", paths["volume"], "--mask", paths["mask"], "--model", "random", "--out", out, *argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_outputs_are_protected(tmp_path, case, capsys):
    paths, _, _ = case
    common = ["--mask", paths["mask"], "--op", "shift:0.1", "--model", "random", "--steps", 3]
    assert run("edit", paths["volume"], *common, "--out", paths["volume"]) == 2   # the input itself
    assert run("edit", paths["volume"], *common, "--out", tmp_path / "o.txt") == 2  # not NIfTI
    out = tmp_path / "o.nii.gz"
    assert run("edit", paths["volume"], *common, "--out", out) == 0
    first = sha(out)
    assert run("edit", paths["volume"], *common, "--out", out) == 2                 # exists
    assert "--overwrite" in capsys.readouterr().err
    assert run("edit", paths["volume"], *common, "--out", out, "--overwrite") == 0
    assert sha(out) == first                                                        # deterministic bytes
