"""A real noisy scan as the measurement (`medinvert.transforms.measured`, ``reconstruct --measured``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _recon_helpers import phantom, write_tiny_model
from medinvert.engine import noise_std
from medinvert.errors import MedinvertError
from medinvert.transforms import estimate_noise_sigma, measured_noise, parse_measured_spec
from medinvert.transforms.measured import haar_diagonal_detail


@pytest.mark.parametrize(("text", "expected"), [
    ("noise", {"sigma": None, "noise_model": "gaussian"}),
    ("noise:auto", {"sigma": None, "noise_model": "gaussian"}),
    ("noise:12.5", {"sigma": 12.5, "noise_model": "gaussian"}),
    ("NOISE:3:rician", {"sigma": 3.0, "noise_model": "rician"}),
    ("noise:auto:rician", {"sigma": None, "noise_model": "rician"}),
])
def test_measured_spec_grammar(text, expected):
    assert parse_measured_spec(text) == expected


@pytest.mark.parametrize("text", ["blur", "noise:-1", "noise:nan", "noise:x", "noise:1:poisson", "noise:1:2:3"])
def test_bad_measured_specs_are_refused(text):
    with pytest.raises(MedinvertError, match="--measured"):
        parse_measured_spec(text)


def test_haar_detail_is_orthonormal_and_blind_to_smooth_images():
    image = np.random.default_rng(0).standard_normal((64, 48))
    detail = haar_diagonal_detail(image)
    # each coefficient is (a - b - c + d) / 2 of four i.i.d. unit normals: unit variance again
    assert detail.shape == (32, 24) and abs(float(detail.std()) - 1.0) < 0.06
    x, y = np.meshgrid(np.arange(40.0), np.arange(30.0), indexing="ij")
    assert np.allclose(haar_diagonal_detail(3 * x - 2 * y + 7), 0.0)  # a plane has no diagonal detail


@pytest.mark.parametrize("sigma", [0.5, 2.0, 8.0])
def test_noise_level_is_recovered_from_pure_noise_on_a_smooth_volume(sigma):
    x, y, z = np.meshgrid(np.linspace(0, 1, 96), np.linspace(0, 1, 80), np.arange(3), indexing="ij")
    smooth = 100 + 40 * x - 30 * y + 5 * z
    noisy = smooth + sigma * np.random.default_rng(1).standard_normal(smooth.shape)
    assert estimate_noise_sigma(torch.from_numpy(noisy)) == pytest.approx(sigma, rel=0.08)


def test_measured_observation_is_the_volume_itself():
    volume = torch.from_numpy(phantom((24, 20, 3)))
    observation = measured_noise(volume, sigma=4.0)
    assert observation.kind == "noise" and noise_std(observation) == 4.0
    assert torch.equal(observation.adjoint, volume) and torch.equal(observation.y, volume.permute(2, 0, 1))
    assert observation.params["measured"] is True and observation.params["sigma_estimated"] is False
    assert measured_noise(volume).params["sigma_estimated"] is True


def test_a_volume_without_noise_is_refused():
    with pytest.raises(MedinvertError, match="no noise measurable"):
        measured_noise(torch.zeros(16, 16, 2))


def test_reconstruct_denoises_a_measured_volume(tmp_path: Path, make_nifti):
    model = write_tiny_model(tmp_path / "tiny.pt")
    clean = phantom((24, 20, 3))
    noisy = clean + 6.0 * np.random.default_rng(2).standard_normal(clean.shape).astype(np.float32)
    path = make_nifti(tmp_path / "noisy_t1.nii.gz", noisy, np.diag([1.5, 1.5, 3.0, 1.0]))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "medinvert", "reconstruct", str(path), "--measured", "noise:6", "--model",
               str(model), "--out", str(out), "--steps", "3", "--checks", "none", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "noisy_t1_report.json").read_text())
    assert report["input"]["kind"] == "noise" and report["input"]["params"]["sigma"] == 6.0
    assert "metrics" not in report  # the noisy input is not a reference
    assert report["settings"]["sigma_start"] == pytest.approx(6.0 / report["settings"]["intensity_scale"])
    import nibabel as nib

    recon = nib.load(str(out / "noisy_t1_recon.nii.gz"))
    assert np.allclose(recon.affine, np.diag([1.5, 1.5, 3.0, 1.0])) and recon.shape == noisy.shape

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # same settings: skipped
    assert again.returncode == 0 and "0 done, 1 skipped" in again.stdout, again.stderr[-2000:]
    other = [*command[:command.index("--measured") + 1], "noise:9", *command[command.index("--measured") + 2:]]
    changed = subprocess.run(other, capture_output=True, text=True, timeout=300)  # another sigma: refused
    assert changed.returncode == 2 and "sigma: 6.0 -> 9.0" in changed.stderr, changed.stderr[-2000:]

    both = subprocess.run([*command[:-8], "--corruption", "kspace:4", "--out", str(tmp_path / "o2")],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "not both" in both.stderr and "Traceback" not in both.stderr
    assert not (tmp_path / "o2").exists()
