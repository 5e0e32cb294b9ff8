"""3D patch networks end to end (`medinvert.models.volume`): training on patches, reconstruction and
bit-exact inversion over the whole volume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _recon_helpers import phantom, train_tiny_from_cli
from medinvert.errors import MedinvertError
from medinvert.models import LipschitzUNet
from medinvert.models.checkpoint import save_checkpoint
from medinvert.models.volume import VolumeAsSlices, as_slice_network
from medinvert.operators import DESCRIPTOR_LENGTH
from medinvert.train.data import PatchSamples

TINY_3D = {"dim": "3d", "n_cond_channels": 1, "descriptor_dim": DESCRIPTOR_LENGTH, "channels": [8, 16],
           "emb_dim": 32, "time_dim": 16, "spectral_norm": False}


def _net3d(seed: int = 0) -> LipschitzUNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LipschitzUNet(**TINY_3D).eval()


def test_the_adapter_is_the_3d_network_on_the_stacked_slices():
    net = _net3d()
    wrapped = as_slice_network(net)
    assert isinstance(wrapped, VolumeAsSlices) and as_slice_network(wrapped) is wrapped
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn(1, 2, 20, 18, 6, generator=generator)
    cond = torch.randn(1, DESCRIPTOR_LENGTH, generator=generator)
    with torch.no_grad():
        direct = net(volume, torch.tensor([0.3]), cond)                        # (1, 1, X, Y, Z)
        slices = wrapped(volume[0].permute(3, 0, 1, 2), torch.full((6,), 0.3), cond.expand(6, -1))
    assert torch.equal(slices, direct[0].permute(3, 0, 1, 2))
    with pytest.raises(MedinvertError, match="one diffusion time"):
        wrapped(volume[0].permute(3, 0, 1, 2), torch.linspace(0.1, 0.6, 6), None)


def test_sliding_windows_cover_a_volume_larger_than_one_patch():
    wrapped = VolumeAsSlices(_net3d(), patch_size=(16, 16, 4))
    x = torch.randn(10, 2, 30, 24)
    with torch.no_grad():
        out = wrapped(x, torch.full((10,), 0.5), None)
        again = wrapped(x, torch.full((10,), 0.5), None)
    assert out.shape == (10, 1, 30, 24) and torch.isfinite(out).all() and torch.equal(out, again)


def test_patch_samples_are_seeded_volumes():
    volume = torch.from_numpy(phantom((50, 44, 9))) / 100.0
    a = PatchSamples([volume], 3, seed=2, crop=32, depth=8)
    b = PatchSamples([volume], 3, seed=2, crop=32, depth=8)
    for i in range(3):
        assert a[i]["x0"].shape == a[i]["adjoint"].shape == (1, 32, 32, 8)
        assert all(torch.equal(a[i][k], b[i][k]) for k in ("x0", "adjoint", "descriptor"))


def test_3d_model_trains_reconstructs_deterministically_and_inverts_exactly(tmp_path: Path, make_nifti):
    from medinvert import generate, invert
    from medinvert.engine import run_reconstruction
    from medinvert.inversion import resolve_network
    from medinvert.transforms import corrupt

    out = train_tiny_from_cli(tmp_path, make_nifti, (40, 36, 8), "--dim", "3d", "--depth", "4", "--batch-size", "1",
                              "--crop", "16")

    resolved = resolve_network(str(out))
    assert isinstance(resolved.net, VolumeAsSlices)
    volume = torch.from_numpy(phantom((24, 20, 5)))
    observation = corrupt(volume, "kspace", seed=0, acceleration=4, center_fraction=0.16)
    torch.set_num_threads(1)
    runs = [run_reconstruction(observation, resolved.net, resolved.schedule, method="exact", steps=3,
                               prediction=resolved.prediction) for _ in range(2)]
    assert torch.equal(runs[0].volume, runs[1].volume) and runs[0].nfe == 3  # one call per step: the volume
    latent = invert(volume, str(out), method="exact", steps=3, condition=observation)
    assert torch.equal(generate(latent, str(out)).as_tensor(), volume)


def test_3d_training_checks_the_depth(tmp_path: Path):
    command = [sys.executable, "-m", "medinvert", "train", str(tmp_path), "--modality", "t1", "--dim", "3d",
               "--depth", "2", "--steps", "2", "--out", str(tmp_path / "x.pt")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--depth" in result.stderr and "Traceback" not in result.stderr


def test_the_report_reproduces_a_3d_reconstruction_from_the_whole_volume(tmp_path: Path):
    from medinvert import reconstruct_volume

    path = save_checkpoint(tmp_path / "patch.pt", _net3d(1),
                           {"schedule": {"kind": "linear"}, "prediction": "edm_adjoint", "modality": "t1"})
    volume = torch.from_numpy(phantom((24, 20, 6)))
    result = reconstruct_volume(volume, str(path), corruption="kspace:4", steps=2, checks="fast",
                                return_latent=False, threads=1)
    reproducibility = result.report["reproducibility"]
    assert reproducibility["identical"] and reproducibility["check_slices"] == list(range(6))
    assert reproducibility["roundtrip"]["bit_identical"]


def test_editing_refuses_a_3d_network(tmp_path: Path):
    from medinvert import edit

    path = save_checkpoint(tmp_path / "patch.pt", _net3d(), {"schedule": {"kind": "linear"}, "prediction": "eps"})
    volume = phantom((16, 16, 3))
    mask = np.zeros(volume.shape, bool)
    mask[4:8, 4:8, 1] = True
    with pytest.raises(MedinvertError, match="2D or 2.5D network"):
        edit(volume, mask, "shift:0.1", str(path), steps=3)


class _PointwiseCore(torch.nn.Module):
    """A "3D network" that is 3 x its first input channel: whatever the windows, the blend must give
    exactly 3 x the volume (windows cover every voxel, blending weights sum to one: the convex
    combination behind `VolumeAsSlices.lipschitz_factor`)."""

    config = {"dim": "3d"}
    in_channels = 2

    def forward(self, x, t, cond=None, cond_drop=None):
        assert x.ndim == 5 and t.shape == (x.shape[0],)
        return 3.0 * x[:, :1]


def test_the_window_blend_is_a_convex_combination_covering_every_voxel():
    wrapped = as_slice_network(_PointwiseCore())
    wrapped.patch_size = (16, 16, 4)  # many overlapping windows on a 30 x 22 x 9 volume
    x = torch.randn(9, 2, 30, 22, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(wrapped(x, torch.full((9,), 0.4)), 3.0 * x[:, :1], rtol=1e-5, atol=1e-5)
    assert wrapped.lipschitz_factor == pytest.approx(8 ** 0.5)
