"""Function-preserving deepening: a checkpoint starts a UNet with more residual blocks per level
(`medinvert.train.loop.deepened_state`, ``medinvert train --init ... --blocks-per-level N``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _recon_helpers import train_tiny_from_cli
from medinvert.errors import MedinvertError
from medinvert.models import LipschitzUNet
from medinvert.models.checkpoint import read_checkpoint
from medinvert.operators import DESCRIPTOR_LENGTH
from medinvert.train.loop import initial_state

TINY = {"n_cond_channels": 1, "descriptor_dim": DESCRIPTOR_LENGTH, "channels": [8, 16, 32], "emb_dim": 32,
        "time_dim": 16, "spectral_norm": False}


def _net(seed: int, **extra) -> LipschitzUNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LipschitzUNet(**{**TINY, **extra}).eval()


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(3, 2, 21, 26, generator=generator), torch.tensor([0.05, 0.4, 0.95]),
            torch.randn(3, DESCRIPTOR_LENGTH, generator=generator))


def _trained_like(net: LipschitzUNet) -> LipschitzUNet:
    """``net`` with every parameter (the zero-initialised FiLMs included) perturbed: a source whose
    blocks all do something, as in a trained checkpoint."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return net


@pytest.mark.parametrize(("blocks", "mid", "block"), [(2, 1, "residual"), (1, 3, "residual"), (3, 2, "residual"),
                                                      (2, 2, "coupling")])
def test_a_deepened_network_computes_exactly_the_source_function(blocks: int, mid: int, block: str):
    source = _trained_like(_net(0, block=block))
    deep = _net(1, blocks_per_level=blocks, mid_blocks=mid, block=block)
    initial = {"config": {"architecture": source.config}, "ema_state": source.state_dict(), "state_dict": {}}
    deep.load_state_dict(initial_state(initial, deep, "source.pt"))
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(deep(x, t, cond), source(x, t, cond))
        assert torch.equal(deep(x, t, None), source(x, t, None))  # the null embedding is carried too
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in source.parameters())


def test_the_new_blocks_learn_from_the_first_step():
    """A zero ``conv2`` gets a non-zero gradient (its input, ``act(film(conv1 x))``, is not zero), so one
    optimiser step makes the new block act; the copied blocks start where the source was."""
    source = _trained_like(_net(0))
    deep = _net(1, blocks_per_level=2)
    deep.load_state_dict(initial_state({"config": {"architecture": source.config},
                                        "state_dict": source.state_dict()}, deep, "source.pt"))
    new_block = deep.enc[0][1]
    assert not new_block.conv2.weight.any()
    x, t, cond = _inputs(1)
    deep.train()
    loss = deep(x, t, cond).square().mean()
    loss.backward()
    assert new_block.conv2.weight.grad.abs().sum() > 0
    torch.optim.SGD(deep.parameters(), lr=0.1).step()
    deep.eval()
    with torch.no_grad():
        assert not torch.equal(deep(x, t, cond), source(x, t, cond))


@pytest.mark.parametrize("change", [
    {"blocks_per_level": 1, "mid_blocks": 1},        # shallower than the source
    {"blocks_per_level": 3, "channels": [8, 16, 64]},  # deeper, but wider too
    {"blocks_per_level": 2, "spectral_norm": True},   # power iterations would rescale the copied weights
])
def test_deepening_refuses_anything_but_more_blocks(change):
    source = _net(0, blocks_per_level=2, mid_blocks=2)
    target = _net(1, **{"blocks_per_level": 2, "mid_blocks": 2, **change})
    with pytest.raises(MedinvertError, match="different architecture"):
        initial_state({"config": {"architecture": source.config}, "state_dict": source.state_dict()}, target, "x.pt")


def test_the_cli_deepens_an_init_checkpoint(tmp_path: Path, make_nifti):
    shallow = train_tiny_from_cli(tmp_path / "a", make_nifti, (32, 32, 4), "--crop", "32", "--batch-size", "2")
    deep = train_tiny_from_cli(tmp_path / "b", make_nifti, (32, 32, 4), "--crop", "32", "--batch-size", "2",
                               "--init", str(shallow), "--blocks-per-level", "2", "--mid-blocks", "2")
    architecture = read_checkpoint(deep)["config"]["architecture"]
    assert architecture["blocks_per_level"] == 2 and architecture["mid_blocks"] == 2


def test_a_block_count_below_one_is_refused(tmp_path: Path):
    command = [sys.executable, "-m", "medinvert", "train", str(tmp_path), "--modality", "t1", "--blocks-per-level",
               "0", "--steps", "2", "--out", str(tmp_path / "x.pt")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--blocks-per-level must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.pt").exists()
