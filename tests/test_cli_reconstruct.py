"""`medinvert reconstruct / evaluate / demo` end to end on real files written in tmp_path.

The model is a tiny real checkpoint (`_recon_helpers.write_tiny_model`), never the shipped weights.
Checks are off (``--checks none``) where they are not the point; `tests/test_report.py` covers them.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _recon_helpers import phantom, write_tiny_model
from _torchrun import rank_errors, run_torchrun
from medinvert.cli import main

FAST = ["--steps", "3", "--checks", "none", "--batch-size", "4"]


def _run(capsys, command: str, *argv: object) -> tuple[int, str, str]:
    code = main([command, *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _outputs(out: Path, stem: str) -> list[Path]:
    return [out / f"{stem}_{suffix}" for suffix in ("recon.nii.gz", "report.json", "report.html")]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> dict:
    """Three phantoms corrupted with `medinvert corrupt --kind kspace` into one folder."""
    from conftest import OBLIQUE_AFFINE

    root = tmp_path_factory.mktemp("corrupted")
    (root / "clean").mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(phantom(seed=i), OBLIQUE_AFFINE), root / "clean" / f"head{i}_t1.nii.gz")
    assert main(["corrupt", str(root / "clean"), "--kind", "kspace", "--acceleration", "4", "--seed", "1",
                 "--out", str(root / "obs")]) == 0
    return {"root": root, "obs": root / "obs", "affine": OBLIQUE_AFFINE}


def test_corrupt_folder_reconstructs_consistently(capsys, tmp_path, model, corrupted):
    """Observation input: affine kept, measured k-space kept, identical bytes twice."""
    from medinvert.operators import Observation, fft2c, volume_to_slices

    obs_file = corrupted["obs"] / "head0_t1_observation.json"
    outs = []
    for name in ("a", "b"):
        code, stdout, stderr = _run(capsys, "reconstruct", obs_file, "--out", tmp_path / name, "--model", model, *FAST)
        assert code == 0, stderr
        assert "1 done, 0 skipped, 0 failed" in stdout
        outs.append(tmp_path / name)
    recon_a, recon_b = (out / "head0_t1_recon.nii.gz" for out in outs)
    assert recon_a.read_bytes() == recon_b.read_bytes()
    image = nib.load(recon_a)
    np.testing.assert_allclose(image.affine, corrupted["affine"], atol=1e-6)
    observation = Observation.load(obs_file)
    k = fft2c(volume_to_slices(torch.from_numpy(np.asarray(image.dataobj, np.float32)).to(torch.float64)))
    m = volume_to_slices(observation.mask)
    y = observation.y.to(torch.complex128)
    assert float(torch.linalg.vector_norm(k[m] - y[m]) / torch.linalg.vector_norm(y[m])) < 1e-3
    report = json.loads((outs[0] / "head0_t1_report.json").read_text())
    assert report["data_consistency"]["relative_residual"] < 1e-3
    assert "metrics" not in report  # no reference for measured data
    row, = _summary(outs[0])
    assert row["status"] == "done" and row["stem"] == "head0_t1" and row["output"] == str(recon_a)


def test_reference_metrics_and_reference_validation(capsys, tmp_path, model, corrupted):
    reference = corrupted["root"] / "clean" / "head1_t1.nii.gz"
    code, _, stderr = _run(capsys, "reconstruct", corrupted["obs"], "--out", tmp_path / "x", "--model", model,
                           "--reference", reference, *FAST)
    assert code == 2 and "single input" in stderr and not (tmp_path / "x").exists()
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(phantom(shape=(32, 28, 2)), np.eye(4)), small)
    code, _, stderr = _run(capsys, "reconstruct", corrupted["obs"] / "head1_t1_observation.json", "--out",
                           tmp_path / "x", "--model", model, "--reference", small, *FAST)
    assert code == 2 and "reference shape" in stderr and not (tmp_path / "x").exists()
    code, _, stderr = _run(capsys, "reconstruct", corrupted["obs"] / "head1_t1_observation.json", "--out",
                           tmp_path / "y", "--model", model, "--reference", reference, *FAST)
    assert code == 0, stderr
    report = json.loads((tmp_path / "y" / "head1_t1_report.json").read_text())
    recon = np.asarray(nib.load(tmp_path / "y" / "head1_t1_recon.nii.gz").dataobj, np.float64)
    ref = phantom(seed=1).astype(np.float64)
    assert report["metrics"]["psnr"] == pytest.approx(10 * math.log10(ref.max() ** 2 / np.mean((recon - ref) ** 2)))
    row, = _summary(tmp_path / "y")
    assert float(row["psnr"]) == pytest.approx(report["metrics"]["psnr"], rel=1e-5)


def test_brats_folder_with_corruption_and_resume(capsys, tmp_path, model, make_brats_case):
    root = tmp_path / "brats"
    make_brats_case(root, "BraTS2021_00007", shape=(24, 20, 4))
    out = tmp_path / "out"
    select = ["--modalities", "t1,t2f",  # two of the four modalities (BraTS 2023 alias for flair); seg never
              "--allow-modality-mismatch"]  # the tiny test model is a t1 checkpoint
    code, stdout, stderr = _run(capsys, "reconstruct", root, "--corruption", "kspace:4", "--out", out,
                                "--model", model, *select, *FAST)
    assert code == 0, stderr
    assert "2 done, 0 skipped, 0 failed" in stdout
    stems = ["BraTS2021_00007_t1", "BraTS2021_00007_flair"]
    for stem in stems:
        assert all(p.is_file() for p in _outputs(out, stem))
        report = json.loads((out / f"{stem}_report.json").read_text())
        assert report["input"]["kind"] == "kspace" and report["input"]["params"]["acceleration"] == 4
        assert report["metrics"]["psnr"] is not None  # the clean input is the reference
        source = nib.load(root / "BraTS2021_00007" / f"{stem}.nii.gz")
        np.testing.assert_array_equal(nib.load(out / f"{stem}_recon.nii.gz").affine, source.affine)
    assert not list(out.glob("*seg*")) and not list(out.glob("*_t2_*")) and not list(out.glob("*t1ce*"))
    rows = _summary(out)
    assert sorted(r["stem"] for r in rows) == sorted(stems) and {r["case"] for r in rows} == {"BraTS2021_00007"}

    before = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.csv"}
    code, stdout, stderr = _run(capsys, "reconstruct", root, "--corruption", "kspace:4", "--out", out,
                                "--model", model, *select, *FAST)
    assert code == 0 and "0 done, 2 skipped, 0 failed" in stdout
    assert stderr.count("skipped") == 2
    assert before == {p: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.csv"}
    assert {r["status"] for r in _summary(out)} == {"skipped"}

    (out / "BraTS2021_00007_flair_report.json").unlink()  # an interrupted volume is redone
    code, stdout, _ = _run(capsys, "reconstruct", root, "--corruption", "kspace:4", "--out", out,
                           "--model", model, *select, *FAST)
    assert code == 0 and "1 done, 1 skipped, 0 failed" in stdout

    # other settings into the same folder: each volume fails, naming what changed; nothing is touched
    before = {p: p.read_bytes() for p in out.iterdir() if p.name != "summary.csv"}
    code, stdout, stderr = _run(capsys, "reconstruct", root, "--corruption", "kspace:8", "--out", out,
                                "--model", model, *select, *FAST[:1], "4", *FAST[2:])
    assert code == 2 and "0 done, 0 skipped, 2 failed" in stdout
    assert stderr.count("other settings") == 2 and "steps: 3 -> 4" in stderr and "acceleration: 4.0 -> 8.0" in stderr
    assert before == {p: p.read_bytes() for p in out.iterdir() if p.name != "summary.csv"}

    recon = out / "BraTS2021_00007_t1_recon.nii.gz"  # damaged after the run (outputs are written atomically)
    recon.write_bytes(recon.read_bytes()[:300])
    code, stdout, stderr = _run(capsys, "reconstruct", root, "--corruption", "kspace:4", "--out", out,
                                "--model", model, *select, *FAST)
    assert code == 0 and "1 done, 1 skipped, 0 failed" in stdout and "earlier outputs were damaged" in stderr
    assert recon.read_bytes() == before[recon]  # redone: deterministic, so the same bytes as the first run


def test_dicom_series_with_corruption(capsys, tmp_path, model, make_dicom_series):
    from medinvert.io import load_volume

    spec = make_dicom_series(tmp_path / "T1_series", n_slices=4, rows=20, cols=24, description="AX T1 SE")
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "reconstruct", spec.folder, "--corruption", "kspace:4", "--out", out,
                                "--model", model, *FAST)
    assert code == 0, stderr
    assert all(p.is_file() for p in _outputs(out, "T1_series"))
    image = nib.load(out / "T1_series_recon.nii.gz")
    source = load_volume(spec.folder)
    assert image.shape == tuple(source.shape)
    np.testing.assert_allclose(image.affine, np.asarray(source.affine), atol=1e-4)
    report = json.loads((out / "T1_series_report.json").read_text())
    assert report["data_consistency"]["relative_residual"] < 1e-3


def test_bad_case_is_skipped_and_reported(capsys, tmp_path, model):
    folder = tmp_path / "cases"
    folder.mkdir()
    nib.save(nib.Nifti1Image(phantom(), np.eye(4)), folder / "good.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "reconstruct", folder, "--corruption", "kspace:4", "--out", out,
                                "--model", model, *FAST)
    assert code == 2
    assert "1 done, 0 skipped, 1 failed" in stdout
    failed = [line for line in stderr.splitlines() if "failed broken" in line]
    assert len(failed) == 1 and "broken.nii.gz" in failed[0]
    assert all(p.is_file() for p in _outputs(out, "good"))
    assert not list(out.glob("broken*"))
    statuses = {r["stem"]: r["status"] for r in _summary(out)}
    assert statuses == {"broken": "failed", "good": "done"}


def test_arguments_are_validated_before_writing(capsys, tmp_path, model, corrupted):
    out = tmp_path / "never"
    for argv in (["--corruption", "kspace:-3"], ["--steps", "0"], ["--model", tmp_path / "missing.pt"]):
        code, _, stderr = _run(capsys, "reconstruct", corrupted["root"] / "clean", "--out", out,
                               *(["--model", model] if "--model" not in argv else []),
                               *(["--corruption", "kspace:4"] if "--corruption" not in argv else []), *argv)
        assert code == 2 and stderr.count("\n") == 1, stderr
        assert not out.exists()
    code, _, stderr = _run(capsys, "reconstruct", corrupted["root"] / "clean", "--out", out, "--model", model)
    assert code == 2 and "--corruption" in stderr and not out.exists()
    code, _, stderr = _run(capsys, "reconstruct", corrupted["obs"], "--out", out, "--model", model,
                           "--corruption", "kspace:4")
    assert code == 2 and "without --corruption" in stderr and not out.exists()


def test_evaluate_end_to_end(capsys, tmp_path):
    rng = np.random.default_rng(0)
    ref = phantom()
    recon = ref + rng.normal(0, 3, ref.shape).astype(np.float32)
    mask = np.zeros(ref.shape, np.uint8)
    mask[8:24, 6:20] = 1
    for name, data in (("ref", ref), ("recon", recon), ("mask", mask), ("small", mask[:, :, :2])):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{name}.nii.gz")
    code, stdout, stderr = _run(capsys, "evaluate", tmp_path / "recon.nii.gz", tmp_path / "ref.nii.gz", "--mask",
                                tmp_path / "mask.nii.gz", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    r64, f64, inside = recon.astype(np.float64), ref.astype(np.float64), mask.astype(bool)
    assert result["volume"]["psnr"] == pytest.approx(10 * math.log10(f64.max() ** 2 / np.mean((r64 - f64) ** 2)))
    assert result["volume"]["nmse"] == pytest.approx(np.sum((r64 - f64) ** 2) / np.sum(f64 ** 2))
    masked_mse = np.mean((r64[inside] - f64[inside]) ** 2)
    assert result["masked"]["psnr"] == pytest.approx(10 * math.log10(f64.max() ** 2 / masked_mse))
    assert result["masked"]["voxels"] == int(inside.sum())
    assert len(result["per_slice"]["ssim"]) == ref.shape[2] and 0 < result["volume"]["ssim"] < 1
    code, stdout, _ = _run(capsys, "evaluate", tmp_path / "recon.nii.gz", tmp_path / "ref.nii.gz")
    assert code == 0 and "PSNR" in stdout and f"{result['volume']['psnr']:.3f}" in stdout
    code, _, stderr = _run(capsys, "evaluate", tmp_path / "recon.nii.gz", tmp_path / "ref.nii.gz", "--mask",
                           tmp_path / "small.nii.gz")
    assert code == 2 and "small.nii.gz: shape (32, 28, 2) differs" in stderr and "recon.nii.gz" in stderr
    code, stdout, _ = _run(capsys, "evaluate", tmp_path / "ref.nii.gz", tmp_path / "ref.nii.gz", "--json")
    assert code == 0 and json.loads(stdout)["volume"]["psnr"] == "inf"


def test_demo_on_a_thin_slab(capsys, tmp_path, model):
    from medinvert.cli.demo import sample_path

    code, stdout, stderr = _run(capsys, "demo", "--out", tmp_path / "demo", "--model", model, "--slices", "70:71",
                                "--steps", "2", "--checks", "none")
    assert code == 0, stderr
    assert "zero-filled" in stdout and "report:" in stdout
    stem = "BraTS-GLI-00002-000-t1n_slices70-70"
    assert all(p.is_file() for p in _outputs(tmp_path / "demo", stem))
    source = nib.load(sample_path())
    image = nib.load(tmp_path / "demo" / f"{stem}_recon.nii.gz")
    assert image.shape == (240, 240, 1)
    np.testing.assert_allclose(image.affine, source.affine @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 70], [0, 0, 0, 1]]), atol=1e-5)
    report = json.loads((tmp_path / "demo" / f"{stem}_report.json").read_text())
    assert report["input"]["params"]["acceleration"] == 4 and report["input"]["params"]["center_fraction"] == 0.08
    assert report["metrics"]["zero_filled"]["psnr"] > 0
    code, stdout, stderr = _run(capsys, "demo", "--out", tmp_path / "checked", "--model", model, "--slices", "70:71",
                                "--steps", "2")                 # default checks: the reference-free estimate is shown
    assert code == 0 and "withheld-line error" in stdout, stderr
    code, _, stderr = _run(capsys, "demo", "--out", tmp_path / "demo2", "--slices", "9:3")
    assert code == 2 and "--slices" in stderr


def test_torchrun_two_processes_shard_the_cases(tmp_path, model, corrupted):
    out = tmp_path / "out"
    done = run_torchrun(["reconstruct", str(corrupted["obs"]), "--out", str(out), "--model", str(model),
                         "--threads", "1", *FAST], outputs=[out])
    assert done.returncode == 0, rank_errors(done.stderr)
    stems = ["head0_t1", "head1_t1", "head2_t1"]
    for stem in stems:
        assert all(p.is_file() for p in _outputs(out, stem))
    rows = _summary(out)
    assert [r["stem"] for r in rows] == stems and {r["status"] for r in rows} == {"done"}
    assert done.stdout.count("3 done, 0 skipped, 0 failed") == 1  # rank 0 alone prints the summary


def test_volume_smaller_than_the_ssim_window_reconstructs_without_ssim(capsys, tmp_path, model):
    """A 5 x 6 x 3 volume (nibabel's ``standard.nii.gz`` is 4 x 5 x 7) has no 7x7 SSIM: the reconstruction
    and the other metrics are still written, SSIM is null in the report and the CSV, n/a on screen."""
    clean = phantom((5, 6, 3))
    nib.save(nib.Nifti1Image(clean, np.eye(4)), tmp_path / "tiny_t1.nii.gz")
    code, _, stderr = _run(capsys, "reconstruct", tmp_path / "tiny_t1.nii.gz", "--corruption", "kspace:2",
                           "--model", model, "--reference", tmp_path / "tiny_t1.nii.gz", "--out", tmp_path / "out",
                           *FAST)
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "tiny_t1_report.json").read_text())
    assert report["metrics"]["ssim"] is None and report["metrics"]["zero_filled"]["ssim"] is None
    assert math.isfinite(report["metrics"]["psnr"]) and all(v is None for v in report["metrics"]["per_slice"]["ssim"])
    assert _summary(tmp_path / "out")[0]["ssim"] == ""
    code, stdout, _ = _run(capsys, "evaluate", tmp_path / "out" / "tiny_t1_recon.nii.gz", tmp_path / "tiny_t1.nii.gz")
    assert code == 0 and "n/a" in stdout


def test_all_zero_volume_reconstructs_and_says_why_it_has_no_metrics(capsys, tmp_path, model):
    nib.save(nib.Nifti1Image(np.zeros((16, 12, 2), np.float32), np.eye(4)), tmp_path / "blank_t1.nii.gz")
    code, _, stderr = _run(capsys, "reconstruct", tmp_path / "blank_t1.nii.gz", "--corruption", "kspace:4",
                           "--model", model, "--out", tmp_path / "out", *FAST)
    assert code == 0, stderr
    recon = nib.load(tmp_path / "out" / "blank_t1_recon.nii.gz").get_fdata()
    assert not recon.any()                                          # nothing measured: zeros, no network call
    metrics = json.loads((tmp_path / "out" / "blank_t1_report.json").read_text())["metrics"]
    assert metrics["psnr"] is None and "no positive voxel" in metrics["reason"]
    code, _, stderr = _run(capsys, "evaluate", tmp_path / "out" / "blank_t1_recon.nii.gz", tmp_path / "blank_t1.nii.gz")
    assert code == 2 and "blank_t1.nii.gz" in stderr and "no positive voxel" in stderr and len(stderr.strip().splitlines()) == 1
