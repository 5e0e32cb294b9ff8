"""2.5D networks end to end: slab indexing, training samples, widening a 2D checkpoint, reconstruction
and bit-exact inversion (`medinvert.models.slab`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _recon_helpers import phantom, train_tiny_from_cli
from medinvert.engine import run_reconstruction
from medinvert.errors import MedinvertError
from medinvert.models import LipschitzUNet
from medinvert.models.checkpoint import read_checkpoint, save_checkpoint
from medinvert.models.slab import slab_indices, slab_stack
from medinvert.operators import DESCRIPTOR_LENGTH
from medinvert.train.data import SliceSamples
from medinvert.train.loop import initial_state
from medinvert.transforms import corrupt

TINY = {"n_cond_channels": 1, "descriptor_dim": DESCRIPTOR_LENGTH, "channels": [8, 16], "emb_dim": 32,
        "time_dim": 16, "spectral_norm": False}


def _net(seed: int, **extra) -> LipschitzUNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LipschitzUNet(**{**TINY, **extra}).eval()


@pytest.mark.parametrize(("z", "k", "depth", "expected"), [
    (3, 2, 8, [3, 1, 2, 4, 5]),
    (0, 2, 8, [0, 0, 0, 1, 2]),       # clamped at the bottom: the edge slice repeats
    (7, 1, 8, [7, 6, 7]),
    (0, 3, 1, [0] * 7),               # a single-slice volume sees itself
    (4, 0, 8, [4]),
])
def test_slab_indices_centre_first_then_neighbours_clamped(z, k, depth, expected):
    assert slab_indices(z, k, depth) == expected


def test_slab_indices_refuses_a_slice_outside_the_volume():
    with pytest.raises(ValueError):
        slab_indices(8, 1, 8)


def test_slab_stack_gathers_the_named_slices():
    images = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3)
    stack = slab_stack(images, [0, 4], 1)
    assert stack.shape == (2, 3, 2, 3)
    for row, z in enumerate([0, 4]):
        for channel, source in enumerate(slab_indices(z, 1, 5)):
            assert torch.equal(stack[row, channel], images[source])


def test_training_samples_carry_the_neighbours_adjoints():
    volume = torch.from_numpy(phantom((40, 36, 7))) / 100.0
    flat = SliceSamples([volume], 4, seed=3, crop=32)
    slab = SliceSamples([volume], 4, seed=3, crop=32, neighbours=2)
    for i in range(4):
        a, b = flat[i], slab[i]
        assert a["adjoint"].shape == (1, 32, 32) and b["adjoint"].shape == (5, 32, 32)
        assert b["x0"].shape == (1, 32, 32)
        assert torch.equal(b["descriptor"][:8], a["descriptor"][:8])  # the same kind of corruption
        # the neighbours are different slices: their images differ from the centre's
        assert not torch.equal(b["adjoint"][1], b["adjoint"][0])
    again = SliceSamples([volume], 4, seed=3, crop=32, neighbours=2)[2]
    assert all(torch.equal(again[key], slab[2][key]) for key in again)


def test_a_widened_2d_checkpoint_starts_as_exactly_the_2d_network():
    flat = _net(0)
    wide = _net(1, dim="2.5d", neighbours=2)
    initial = {"config": {"architecture": flat.config}, "state_dict": flat.state_dict()}
    wide.load_state_dict(initial_state(initial, wide, "base.pt"))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 20, 24, generator=generator)
    neighbours = torch.randn(3, 4, 20, 24, generator=generator)
    t = torch.tensor([0.1, 0.5, 0.9])
    cond = torch.randn(3, DESCRIPTOR_LENGTH, generator=generator)
    with torch.no_grad():
        assert torch.equal(wide(torch.cat([x, neighbours], dim=1), t, cond), flat(x, t, cond))


def test_widening_refuses_other_architecture_changes():
    flat = _net(0, channels=[8, 32])
    wide = _net(1, dim="2.5d", neighbours=1)
    with pytest.raises(MedinvertError, match="different architecture"):
        initial_state({"config": {"architecture": flat.config}, "state_dict": flat.state_dict()}, wide, "x.pt")


@pytest.fixture(scope="module")
def observation():
    from monai.data import MetaTensor

    volume = MetaTensor(torch.from_numpy(phantom((24, 20, 5))))
    return corrupt(volume, "kspace", seed=0, acceleration=4, center_fraction=0.16)


def _reconstruct(net, observation, **kwargs):
    from medinvert.schedule import make_schedule

    torch.set_num_threads(1)
    return run_reconstruction(observation, net, make_schedule("linear"), method="exact", steps=3,
                              prediction="edm_adjoint", **kwargs).volume


def test_2p5d_reconstruction_uses_the_neighbouring_measurements(observation):
    wide, flat = _net(2, dim="2.5d", neighbours=1), _net(2)
    y = observation.y.clone()
    y[4] = y[4] * 1.5  # change the measurement of the last slice only (slice axis first in y)
    for net, slice_3_moves in ((wide, True), (flat, False)):
        # y_override keeps the normalisation of the original observation, so only the slab can move
        before, after = _reconstruct(net, observation), _reconstruct(net, observation, y_override=y)
        assert torch.equal(before[:, :, :3], after[:, :, :3])            # beyond the slab: untouched
        assert torch.equal(before[:, :, 3], after[:, :, 3]) is not slice_3_moves
    assert torch.equal(_reconstruct(wide, observation, batch_size=2), _reconstruct(wide, observation, batch_size=5))


def test_2p5d_checkpoint_inverts_bit_exactly_and_trains_from_the_cli(tmp_path: Path, make_nifti):
    from medinvert import generate, invert
    from medinvert.models import load_model

    path = save_checkpoint(tmp_path / "wide.pt", _net(3, dim="2.5d", neighbours=1),
                           {"schedule": {"kind": "linear"}, "prediction": "edm_adjoint", "modality": "t1"})
    volume = torch.from_numpy(phantom((24, 20, 4)))
    latent = invert(volume, str(path), method="exact", steps=4,
                    condition=corrupt(volume, "kspace", seed=1, acceleration=4, center_fraction=0.16))
    assert torch.equal(generate(latent, str(path)).as_tensor(), volume)

    out = train_tiny_from_cli(tmp_path, make_nifti, (40, 36, 6), "--dim", "2.5d", "--neighbours", "1",
                              "--batch-size", "2", "--crop", "32", "--extra-crops", "16")
    trained, _ = load_model(str(out))
    assert trained.config["dim"] == "2.5d" and trained.in_channels == 4
    assert read_checkpoint(out)["config"]["training"]["extra_crops"] == [16]   # the CLI flag reaches the run


def test_neighbours_without_2p5d_is_refused(tmp_path: Path):
    command = [sys.executable, "-m", "medinvert", "train", str(tmp_path), "--modality", "t1", "--neighbours", "2",
               "--steps", "2", "--out", str(tmp_path / "x.pt")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--neighbours" in result.stderr and "Traceback" not in result.stderr


def test_a_batch_of_some_slices_takes_its_neighbours_from_the_whole_volume(tmp_path: Path):
    from medinvert.inversion import _denoiser, resolve_network

    path = save_checkpoint(tmp_path / "wide.pt", _net(4, dim="2.5d", neighbours=1),
                           {"schedule": {"kind": "linear"}, "prediction": "edm_adjoint", "modality": "t1"})
    resolved = resolve_network(str(path))
    image = np.random.default_rng(0).random((6, 5, 7)).astype(np.float32)
    denoiser = _denoiser(resolved, torch.float32, 4, 1.0, None, image, (6, 5, 2), 2.0, image_slices=[3, 6])
    expected = torch.from_numpy(image[:, :, [3, 2, 4, 6, 5, 6]] / 2.0).permute(2, 0, 1).reshape(2, 3, 6, 5)
    assert torch.equal(denoiser.extra, expected)


def test_training_slabs_are_corrupted_in_spatial_order_then_stacked_centre_first(monkeypatch):
    import medinvert.transforms as transforms

    corrupt_for_real, seen = transforms.corrupt, []

    def spy(volume, kind, **kwargs):  # the real corruption; only remember what it was given and gave
        observation = corrupt_for_real(volume, kind, **kwargs)
        seen.append((volume.clone(), torch.as_tensor(observation.adjoint).clone()))
        return observation

    monkeypatch.setattr(transforms, "corrupt", spy)
    volume = torch.zeros(40, 36, 9)
    for z in range(9):
        volume[8:32, 8:28, z] = 1.0 + 0.5 * z  # brighter with z: the order survives the augmentation
    samples = SliceSamples([volume], 12, seed=1, crop=32, neighbours=2)
    for i in range(12):
        seen.clear()
        sample = samples[i]
        given, adjoint = seen[0]
        means = [float(given[:, :, j][given[:, :, j] > 0].mean()) for j in range(5)]
        assert means == sorted(means)  # a small volume in z order (a box mask spans true neighbours)
        ratio = float(adjoint[:, :, 2].abs().sum() / sample["adjoint"][0].abs().sum())
        for channel, position in enumerate([2, 0, 1, 3, 4]):  # centre first, then z-2, z-1, z+1, z+2
            torch.testing.assert_close(sample["adjoint"][channel] * ratio, adjoint[:, :, position])
