"""Training loop: the loss falls, resume repeats the uninterrupted run, torchrun DDP keeps replicas equal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _torchrun import rank_errors, run_torchrun
from medinvert.errors import MedinvertError
from medinvert.models.checkpoint import load_checkpoint, read_checkpoint
from medinvert.schedule import make_schedule
from medinvert.train import DEFAULT_ARCHITECTURE, TrainConfig, train
from medinvert.train.data import SliceSamples, load_training_volumes
from medinvert.train.distributed import DistContext
from medinvert.train.loop import diffusion_loss

SMALL = {**DEFAULT_ARCHITECTURE, "channels": [8, 16], "emb_dim": 32, "time_dim": 16}
SINGLE = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), active=False)


def _blob_volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A smooth 'head': bright ellipse with two darker inner blobs, random per seed."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    volume = np.zeros(shape, np.float32)
    for z in range(shape[2]):
        a, b = rng.uniform(0.6, 0.9, 2)
        head = ((x / a) ** 2 + (y / b) ** 2 < 1).astype(np.float32) * 800
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        head -= 300 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.05)
        volume[:, :, z] = head
    return volume


@pytest.fixture
def tiny_data(tmp_path: Path, make_nifti) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    for i in range(2):
        make_nifti(root / f"BraTS2021_0000{i}_t1.nii.gz", _blob_volume((40, 36, 6), i), np.eye(4))
    return root


def _config(data: Path, out: Path, steps: int, **extra) -> TrainConfig:
    settings = {"batch_size": 4, "crop": 32, "lr": 3e-3, "warmup": 2, "checkpoint_every": 1000,
                "architecture": dict(SMALL), **extra}
    return TrainConfig(data=str(data), modality="t1", out=str(out), steps=steps, **settings)


def _fixed_batch_loss(model: torch.nn.Module, data: Path) -> float:
    volumes, _ = load_training_volumes(data, "t1")
    samples = SliceSamples(volumes, 8, seed=123, crop=32)
    batch = {k: torch.stack([samples[i][k] for i in range(8)]) for k in ("x0", "adjoint", "descriptor")}
    with torch.no_grad():
        return float(diffusion_loss(model, batch, make_schedule("linear"), torch.Generator().manual_seed(7),
                                    prediction="v_adjoint", cond_dropout=0.0))


def test_loss_decreases_on_tiny_set(tiny_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    from medinvert.models.unet import LipschitzUNet

    initial = LipschitzUNet(**SMALL).eval()
    before = _fixed_batch_loss(initial, tiny_data)
    # the loop's mechanics on the quickest-learning target (edm_adjoint's is checked in test_edm_preconditioning)
    path = train(_config(tiny_data, tmp_path / "m.pt", 40, prediction="v_adjoint"), SINGLE, progress=False)
    trained, config = load_checkpoint(path, use_ema=False)
    after = _fixed_batch_loss(trained, tiny_data)
    assert after < 0.92 * before, (before, after)
    assert config["modality"] == "t1" and config["training"]["completed_steps"] == 40
    log = [json.loads(line) for line in path.with_suffix(".log.jsonl").read_text().splitlines()]
    assert log[-1]["replica_digests"] and all(np.isfinite(r["loss"]) for r in log if "loss" in r)


def test_resume_continues_the_same_trajectory(tiny_data: Path, tmp_path: Path) -> None:
    straight = train(_config(tiny_data, tmp_path / "a.pt", 6), SINGLE, progress=False)
    first = train(_config(tiny_data, tmp_path / "b.pt", 3), SINGLE, progress=False)
    with pytest.raises(MedinvertError, match="--resume"):
        train(_config(tiny_data, first, 6), SINGLE, progress=False)
    resumed = train(_config(tiny_data, first, 6), SINGLE, resume=True, progress=False)
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["step"] == b["step"] == 6
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        assert torch.equal(a["ema_state"][key], b["ema_state"][key]), key


def test_heldout_cases_are_not_trained_on(tiny_data: Path) -> None:
    (tiny_data / "split.json").write_text(json.dumps({"heldout": ["BraTS2021_00000"]}))
    _, ids = load_training_volumes(tiny_data, "t1")
    assert ids == ["BraTS2021_00001"]
    (tiny_data / "split.json").write_text(json.dumps({"heldout": ["BraTS2021_00000", "BraTS2021_00001"]}))
    with pytest.raises(MedinvertError, match="no training volumes"):
        load_training_volumes(tiny_data, "t1")


def test_torchrun_two_processes_on_cpu(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    result = run_torchrun(["train", str(tiny_data), "--modality", "t1", "--steps", "2", "--out", str(out),
                           "--batch-size", "2", "--crop", "32", "--channels", "8,16", "--threads", "1",
                           "--no-progress"], outputs=[out, out.with_suffix(".log.jsonl")])
    assert result.returncode == 0, rank_errors(result.stderr)
    model, config = load_checkpoint(out)
    assert config["training"]["completed_steps"] == 2
    record = json.loads(out.with_suffix(".log.jsonl").read_text().splitlines()[-1])
    assert len(record["replica_digests"]) == 2 and len(set(record["replica_digests"])) == 1


def test_export_records_the_whole_training_lineage(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    from medinvert.cli.models import describe_models
    from medinvert.train.export import export_for_inference

    monkeypatch.chdir(tmp_path)  # runs record their --init paths as given (relative here)
    train(_config(tiny_data, Path("base.pt"), 3), SINGLE, progress=False)
    train(_config(tiny_data, Path("tuned.pt"), 2, init="base.pt"), SINGLE, progress=False)
    (tmp_path / "weights").mkdir()
    exported = export_for_inference("tuned.pt", "weights/t1.pt")
    lineage = read_checkpoint(exported)["config"]["lineage"]
    assert [run["checkpoint"] for run in lineage] == ["tuned.pt", "base.pt"]
    assert [run["completed_steps"] for run in lineage] == [2, 3]
    assert lineage[0]["init"] == "base.pt" and lineage[1]["init"] is None and lineage[0]["world_size"] == 1
    monkeypatch.setattr("medinvert.models.registry.WEIGHTS_DIR", tmp_path / "weights")
    rows = describe_models()
    assert [(r["name"], r["training_steps"], r["training_steps_total"]) for r in rows] == [("t1", 2, 5)]


def test_lineage_stops_at_a_loop_and_at_an_unreadable_init(tmp_path: Path, monkeypatch) -> None:
    from medinvert.models import LipschitzUNet
    from medinvert.models.checkpoint import save_checkpoint
    from medinvert.train.export import training_lineage

    monkeypatch.chdir(tmp_path)
    net = LipschitzUNet(**SMALL)
    save_checkpoint("a.pt", net, {"training": {"completed_steps": 3, "init": "b.pt"}})
    save_checkpoint("b.pt", net, {"training": {"completed_steps": 2, "init": "a.pt"}})  # a <-> b
    assert [run["checkpoint"] for run in training_lineage("a.pt")] == ["a.pt", "b.pt"]
    Path("broken.pt").write_bytes(b"not a checkpoint")
    save_checkpoint("c.pt", net, {"training": {"completed_steps": 1, "init": "broken.pt"}})
    assert [run["checkpoint"] for run in training_lineage("c.pt")] == ["c.pt"]


def test_extra_crops_cycle_per_step_and_resume_exactly(tiny_data: Path, tmp_path: Path) -> None:
    """Sizes cycle step by step (every sample of a step shares one, whatever its position), the samples
    of one size equal those of a single-size stream at the same index, and a resumed mixed-size run
    repeats the uninterrupted one."""
    volumes, _ = load_training_volumes(tiny_data, "t1")
    mixed = SliceSamples(volumes, 12, seed=5, crop=32, extra_crops=(16,), samples_per_step=4)
    sizes = [tuple(mixed[i]["x0"].shape[-2:]) for i in range(12)]
    assert sizes == [(32, 32)] * 4 + [(16, 16)] * 4 + [(32, 32)] * 4
    plain = SliceSamples(volumes, 12, seed=5, crop=32)
    assert torch.equal(mixed[9]["x0"], plain[9]["x0"])
    later = SliceSamples(volumes, 4, seed=5, crop=32, extra_crops=(16,), samples_per_step=4, first_index=4)
    assert torch.equal(later[0]["x0"], mixed[4]["x0"])
    straight = train(_config(tiny_data, tmp_path / "a.pt", 4, extra_crops=(16,)), SINGLE, progress=False)
    train(_config(tiny_data, tmp_path / "b.pt", 3, extra_crops=(16,)), SINGLE, progress=False)
    resumed = train(_config(tiny_data, tmp_path / "b.pt", 4, extra_crops=(16,)), SINGLE, resume=True, progress=False)
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["config"]["training"]["extra_crops"] == [16]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    with pytest.raises(MedinvertError, match="--extra-crops / --guess / --unrolled-\* differ"):
        train(_config(tiny_data, tmp_path / "b.pt", 6), SINGLE, resume=True, progress=False)
    with pytest.raises(ValueError, match="samples_per_step"):
        SliceSamples(volumes, 4, seed=5, crop=32, extra_crops=(16,))
    with pytest.raises(MedinvertError, match="crops >= 16"):
        _config(tiny_data, tmp_path / "c.pt", 2, extra_crops=(8,)).validate()
    with pytest.raises(MedinvertError, match="extra-crops"):
        _config(tiny_data, tmp_path / "c.pt", 2, extra_crops=(16,), dim="3d").validate()


def test_cs_tv_guess_samples_and_checkpoint(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """``--guess cs_tv``: k-space samples take the CS-TV guess (closer to the clean image than the
    adjoint), every other sample and every clean image is unchanged, and the checkpoint records it."""
    from medinvert.inversion import resolve_network

    volumes, _ = load_training_volumes(tiny_data, "t1")
    plain = SliceSamples(volumes, 24, seed=5, crop=32)
    tv = SliceSamples(volumes, 24, seed=5, crop=32, guess="cs_tv")
    kspace_errors = []
    for i in range(24):
        a, b = plain[i], tv[i]
        assert torch.equal(a["x0"], b["x0"]) and torch.equal(a["descriptor"], b["descriptor"])
        is_kspace = bool(a["descriptor"][0] == 1.0)  # the descriptor's one-hot kind, k-space first
        if not is_kspace:
            assert torch.equal(a["adjoint"], b["adjoint"])
            continue
        assert not torch.equal(a["adjoint"], b["adjoint"])
        kspace_errors.append((float((b["adjoint"] - b["x0"]).norm()), float((a["adjoint"] - a["x0"]).norm())))
    assert len(kspace_errors) >= 5
    assert sum(e[0] for e in kspace_errors) < 0.8 * sum(e[1] for e in kspace_errors)

    out = tmp_path / "tv.pt"
    train(_config(tiny_data, out, 2, guess="cs_tv"), SINGLE, progress=False)
    assert read_checkpoint(out)["config"]["conditioning"]["guess"] == "cs_tv"
    assert resolve_network(str(out)).guess == "cs_tv"
    capsys.readouterr()
    train(_config(tiny_data, tmp_path / "back.pt", 1, init=str(out)), SINGLE, progress=False)
    assert "trained with the cs_tv guess; this run uses --guess adjoint" in capsys.readouterr().err
    with pytest.raises(MedinvertError, match="--guess"):
        train(_config(tiny_data, out, 4), SINGLE, resume=True, progress=False)
    with pytest.raises(MedinvertError, match="unknown --guess"):
        _config(tiny_data, tmp_path / "x.pt", 2, guess="wavelet").validate()
