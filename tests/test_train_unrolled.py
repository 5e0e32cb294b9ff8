"""Sampler-in-the-loop training (`medinvert.train.unrolled`): the unrolled graph is the engine's DDIM
reconstruction, its loss is the log error ratio against the guess, gradients reach the network, and the
training samples carry measurements consistent with their clean image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medinvert.engine import run_reconstruction
from medinvert.errors import MedinvertError
from medinvert.guess import kspace_tv_guess
from medinvert.intensity import robust_scale
from medinvert.models.checkpoint import read_checkpoint
from medinvert.models.unet import LipschitzUNet
from medinvert.operators.fft import fft2c, ifft2c
from medinvert.operators.layout import volume_to_slices
from medinvert.schedule import make_schedule
from medinvert.train import DEFAULT_ARCHITECTURE, TrainConfig
from medinvert.train.data import SliceSamples
from medinvert.train.unrolled import unrolled_loss, unrolled_reconstruction
from medinvert.transforms import corrupt

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {**DEFAULT_ARCHITECTURE, "channels": [8, 16], "emb_dim": 32, "time_dim": 16}


def _head(shape: tuple[int, int, int] = (32, 28, 3)) -> torch.Tensor:
    """A bright ellipse with a darker off-centre blob per slice (raw intensities 0..900)."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    volume = np.zeros(shape, np.float32)
    for z in range(shape[2]):
        volume[:, :, z] = 900 * ((x / 0.8) ** 2 + (y / (0.6 + 0.05 * z)) ** 2 < 1)
        volume[:, :, z] -= 300 * np.exp(-((x - 0.1 * z) ** 2 + y ** 2) / 0.04)
    return torch.from_numpy(volume)


def _network(seed: int = 0) -> LipschitzUNet:
    """A small random network whose output is not negligible (so the test sees it act)."""
    torch.manual_seed(seed)
    net = LipschitzUNet(**SMALL)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(3.0)
    return net


@pytest.mark.parametrize("method", ["ddim", "bdia"])
def test_unrolled_graph_is_the_engine_reconstruction(method: str) -> None:
    """Same network, guess, grid, integrator and data consistency as `run_reconstruction`, which
    integrates in float64 around a float32 network: agreement to float32 rounding."""
    observation = corrupt(_head(), "kspace", seed=3, acceleration=4, center_fraction=0.08)
    net = _network().eval()
    schedule = make_schedule("linear")
    engine = run_reconstruction(observation, net, schedule, method=method, steps=6, batch_size=3,
                                prediction="edm_adjoint", guess="cs_tv")
    scale = robust_scale(observation.adjoint)
    y = observation.y / scale                                                     # (Z, X, Y)
    mask = volume_to_slices(observation.mask).to(torch.bool)
    guess = kspace_tv_guess(y, mask).to(torch.float32)[:, None]
    descriptor = observation.descriptor.to(torch.float32).expand(y.shape[0], -1)
    with torch.no_grad():
        unrolled = unrolled_reconstruction(net, guess, y[:, None].to(torch.complex64), mask[:, None], descriptor,
                                           schedule, steps=6, method=method)
    expected = volume_to_slices(engine.volume) / scale
    assert torch.allclose(unrolled[:, 0], expected, atol=2e-5 * float(expected.abs().max()))
    # and the network matters: the output is not the guess
    assert float((unrolled - guess).abs().max()) > 1e-2


def test_loss_is_the_log_error_ratio_and_reaches_every_parameter() -> None:
    observation = corrupt(_head(), "kspace", seed=4, acceleration=6, center_fraction=0.06)
    scale = robust_scale(observation.adjoint)
    clean = volume_to_slices(_head()) / scale
    y = (observation.y / scale).to(torch.complex64)[:, None]
    mask = volume_to_slices(observation.mask).to(torch.bool)[:, None]
    guess = kspace_tv_guess(observation.y / scale, mask[:, 0]).to(torch.float32)[:, None]
    batch = {"x0": clean[:, None], "adjoint": guess, "kspace": y, "kspace_mask": mask,
             "descriptor": observation.descriptor.to(torch.float32).expand(3, -1)}
    net = _network(1)
    schedule = make_schedule("linear")
    loss = unrolled_loss(net, batch, schedule, steps=3)
    with torch.no_grad():
        out = unrolled_reconstruction(net, guess, y, mask, batch["descriptor"], schedule, 3)
    ratios = [((out[i] - clean[i]).pow(2).mean() + 1e-6) / ((guess[i, 0] - clean[i]).pow(2).mean() + 1e-6)
              for i in range(3)]
    assert float(loss.detach()) == pytest.approx(float(sum(math.log(float(r)) for r in ratios) / 3), rel=1e-4)
    loss.backward()
    unused = {name for name, p in net.named_parameters() if p.grad is None}
    assert all("null" in name for name in unused), unused  # only the dropped-condition embedding
    assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None)
    assert float(net.stem.weight.grad.abs().sum()) > 0
    # samples of other kinds (all-false mask) are left out; a batch without k-space gives None
    batch["kspace_mask"] = torch.zeros_like(mask)
    assert unrolled_loss(net, batch, schedule, steps=3) is None


def test_samples_carry_their_measurement(tmp_path: Path) -> None:
    volumes = [_head((48, 44, 6)) / 900.0]
    samples = SliceSamples(volumes, 40, seed=5, crop=32, guess="adjoint", measurements=True)
    kinds = {"kspace": 0, "other": 0}
    for i in range(40):
        sample = samples[i]
        mask = sample["kspace_mask"][0]
        if not bool(mask.any()):
            assert not bool(sample["kspace"].abs().any())
            kinds["other"] += 1
            continue
        kinds["kspace"] += 1
        # measured samples are the clean image's k-space, and their adjoint is the conditioning image
        assert torch.allclose(sample["kspace"][0][mask], fft2c(sample["x0"][0].double())[mask].to(torch.complex64),
                              atol=1e-4)
        assert torch.allclose(ifft2c(sample["kspace"][0].to(torch.complex128)).real.float(), sample["adjoint"][0],
                              atol=1e-5)
    assert kinds["kspace"] > 5 and kinds["other"] > 5
    assert set(SliceSamples(volumes, 1, seed=5, crop=32)[0]) == {"x0", "adjoint", "descriptor"}


def test_config_refuses_unrolling_what_it_cannot() -> None:
    with pytest.raises(MedinvertError, match="unrolled"):
        TrainConfig(data="d", modality="t1", out="o.pt", unrolled_weight=1.0).validate()  # adjoint guess
    with pytest.raises(MedinvertError, match="unrolled"):
        TrainConfig(data="d", modality="t1", out="o.pt", unrolled_weight=-1.0, guess="cs_tv").validate()
    with pytest.raises(MedinvertError, match="unrolled-method"):
        TrainConfig(data="d", modality="t1", out="o.pt", unrolled_weight=1.0, guess="cs_tv",
                    unrolled_method="euler").validate()
    TrainConfig(data="d", modality="t1", out="o.pt", unrolled_weight=1.0, guess="cs_tv").validate()


def test_step_counts_are_drawn_reproducibly_and_cover_every_count() -> None:
    from medinvert.train.unrolled import step_counts, unrolled_step_count

    assert step_counts(10) == (10,) and step_counts([20, 5, 10, 5]) == (5, 10, 20)
    assert TrainConfig(data="d", modality="t1", out="o.pt", unrolled_steps=7).unrolled_steps == (7,)
    counts = (5, 10, 20)
    draws = [unrolled_step_count(counts, 3, step) for step in range(600)]
    assert draws == [unrolled_step_count(counts, 3, step) for step in range(600)]  # a function of (seed, step)
    assert draws != [unrolled_step_count(counts, 4, step) for step in range(600)]
    for count in counts:
        assert 150 <= draws.count(count) <= 250  # uniform: 200 expected, sd 11.5
    # not locked to the crop cycle (96, 48 alternate with the step's parity): every pairing occurs
    assert {(step % 2, n) for step, n in enumerate(draws)} == {(p, n) for p in (0, 1) for n in counts}


def test_training_with_the_unrolled_loss_runs_and_resume_checks_it(tmp_path: Path, make_nifti) -> None:
    from test_train import SINGLE, _blob_volume

    from medinvert.train import train

    root = tmp_path / "data"
    root.mkdir()
    for i in range(2):
        make_nifti(root / f"BraTS2021_0000{i}_t1.nii.gz", _blob_volume((40, 36, 6), i), np.eye(4))
    settings = {"data": str(root), "modality": "t1", "batch_size": 4, "crop": 32, "lr": 1e-3, "warmup": 1,
                "architecture": dict(SMALL), "guess": "cs_tv", "unrolled_steps": (2, 3)}
    out = tmp_path / "u.pt"
    train(TrainConfig(out=str(out), steps=2, unrolled_weight=1.0, **settings), SINGLE, progress=False)
    plain = train(TrainConfig(out=str(tmp_path / "p.pt"), steps=2, **settings), SINGLE, progress=False)
    weights = [torch.load(p, weights_only=False)["state_dict"] for p in (out, plain)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the loss took part
    with pytest.raises(MedinvertError, match="unrolled"):
        train(TrainConfig(out=str(out), steps=4, unrolled_weight=0.5, **settings), SINGLE, resume=True, progress=False)
    with pytest.raises(MedinvertError, match="unrolled"):
        train(TrainConfig(out=str(out), steps=4, unrolled_weight=1.0, **{**settings, "unrolled_steps": 3}), SINGLE,
              resume=True, progress=False)
    train(TrainConfig(out=str(out), steps=3, unrolled_weight=1.0, **settings), SINGLE, resume=True, progress=False)
    assert read_checkpoint(out)["config"]["training"]["unrolled_steps"] == [2, 3]  # stored as JSON


def test_resume_of_a_run_without_the_unrolled_loss_ignores_its_settings(tmp_path: Path, make_nifti) -> None:
    """A checkpoint written before the unrolled settings existed (no such keys) resumes with the defaults."""
    from test_train import SINGLE, _blob_volume

    from medinvert.models.checkpoint import save_checkpoint
    from medinvert.train import train

    root = tmp_path / "data"
    root.mkdir()
    make_nifti(root / "BraTS2021_00000_t1.nii.gz", _blob_volume((40, 36, 6), 0), np.eye(4))
    settings = {"data": str(root), "modality": "t1", "batch_size": 2, "crop": 32, "architecture": dict(SMALL)}
    out = tmp_path / "old.pt"
    train(TrainConfig(out=str(out), steps=1, **settings), SINGLE, progress=False)
    payload = read_checkpoint(out)
    for key in ("unrolled_weight", "unrolled_steps", "unrolled_method"):
        payload["config"]["training"].pop(key)
    net = LipschitzUNet(**SMALL)
    net.load_state_dict(payload["state_dict"])
    out.unlink()
    save_checkpoint(out, net, payload["config"], ema_state=payload["ema_state"],
                    optimizer_state=payload["optimizer_state"], step=payload["step"])
    train(TrainConfig(out=str(out), steps=2, **settings), SINGLE, resume=True, progress=False)
    assert read_checkpoint(out)["step"] == 2
