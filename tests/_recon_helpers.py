"""Helpers of the reconstruction tests: a tiny real checkpoint and a small phantom volume.

The checkpoint is a genuine `LipschitzUNet` (random weights, adjoint conditioning channel, linear
schedule) written with `save_checkpoint`, so the code under test loads it exactly like a shipped
model -- the tests never depend on the shipped weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """Save a tiny conditional `LipschitzUNet` checkpoint (eps prediction, linear schedule) to ``path``."""
    import torch

    from medinvert.models import LipschitzUNet
    from medinvert.models.checkpoint import save_checkpoint
    from medinvert.operators import DESCRIPTOR_LENGTH

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LipschitzUNet(n_cond_channels=1, descriptor_dim=DESCRIPTOR_LENGTH, channels=[8, 16], emb_dim=32,
                            time_dim=16)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, net, {"schedule": {"kind": "linear"}, "prediction": "eps", "modality": "t1"})


def phantom(shape: tuple[int, int, int] = (32, 28, 4), seed: int = 0) -> np.ndarray:
    """A float32 head-like phantom ``(X, Y, Z)``: an ellipse with texture on a dark background."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.7) ** 2 < 1
    out = np.zeros(shape, np.float32)
    for k in range(shape[2]):
        texture = 20 * np.sin(6 * x + k) * np.cos(4 * y) + 5 * rng.standard_normal(x.shape)
        out[:, :, k] = inside * (100.0 + 10 * k + texture)
    return out


def train_tiny_from_cli(root: Path, make_nifti, shape: tuple[int, int, int], *options: str) -> Path:
    """Run ``medinvert train`` (2 steps, tiny network) on two phantom t1 cases written under ``root``;
    ``options`` add to the command (e.g. ``--dim 3d``).  Returns the checkpoint; fails the test on error."""
    import subprocess
    import sys

    data = root / "data"
    for i in range(2):
        make_nifti(data / f"BraTS2021_0000{i}_t1.nii.gz", phantom(shape, seed=i), np.eye(4))
    out = root / "trained.pt"
    command = [sys.executable, "-m", "medinvert", "train", str(data), "--modality", "t1", "--steps", "2",
               "--channels", "8,16", "--threads", "1", "--no-progress", "--out", str(out), *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return out
