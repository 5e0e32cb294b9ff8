"""Numerical guards (issue #8, item 4): fixed-point overflow and NaN/Inf from the network stop the
volume with a message naming the file and the slice.

The faulty networks are tiny real ``nn.Module`` s that return NaN or a huge value for one batch row:
they are inputs of the code under test (the guards), not mocks of it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from _recon_helpers import phantom, write_tiny_model
from conftest import write_nifti
from medinvert.cli import main
from medinvert.errors import NumericalError


class Faulty(nn.Module):
    """``eps = 0.1 x`` except ``value`` times a fixed positive pattern on batch row ``row`` of every call
    (no conditioning channels).  The pattern is not constant: a constant image lives in the k-space
    centre, which data consistency would replace by the measurement."""

    def __init__(self, value: float, row: int) -> None:
        super().__init__()
        self.value, self.row = value, row
        self.config = {"n_cond_channels": 0}
        self.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = 0.1 * x[:, :1].clone()
        if out.shape[0] > self.row:
            pattern = 1.0 + (torch.arange(out[self.row].numel()) % 7).to(out.dtype)
            out[self.row] = self.value * pattern.reshape(out[self.row].shape)
        return out


@pytest.fixture
def volume(tmp_path) -> Path:
    """5 slices; slice 0 is empty (air), so a reconstruction evaluates slices 1-4 only."""
    data = phantom((20, 16, 5))
    data[:, :, 0] = 0.0
    return write_nifti(tmp_path / "head_t1.nii.gz", data, np.eye(4))


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("method", ["exact", "ddim", "edict"])
def test_nan_from_the_network_stops_inversion_naming_file_and_slice(volume, method, value):
    from medinvert import invert

    with pytest.raises(NumericalError, match=r"NaN/Inf.* slice 3 \(array axis 2\)") as caught:
        invert(volume, Faulty(value, 3), method=method, steps=3, batch_size=8)
    assert str(caught.value).startswith(str(volume))
    assert caught.value.slice_index == 3


def test_nan_from_the_network_stops_reconstruction_naming_the_slice(volume):
    """Slice 0 is air (skipped), so batch row 0 is slice 1: the message must say slice 1."""
    from medinvert import reconstruct_volume

    with pytest.raises(NumericalError, match=r"NaN/Inf.* slice 1 \(array axis 2\)") as caught:
        reconstruct_volume(volume, Faulty(math.nan, 0), corruption="kspace:4", steps=3, checks="none")
    assert str(volume) in str(caught.value)


@pytest.mark.parametrize("scheme", ["bdia", "leapfrog", "heun"])
def test_fixed_point_overflow_is_reported_with_the_slice(volume, scheme):
    from medinvert import invert

    with pytest.raises(NumericalError, match=r"fixed-point (range|overflow).* slice 2 \(array axis 2\)") as caught:
        invert(volume, Faulty(1e30, 2), method="exact", steps=3, scheme=scheme)
    assert str(caught.value).startswith(str(volume))


def test_fixed_point_overflow_in_a_reconstruction_names_the_slice(volume):
    from medinvert import reconstruct_volume

    with pytest.raises(NumericalError, match=r"fixed-point (range|overflow).* slice 3 \(array axis 2\)"):
        reconstruct_volume(volume, Faulty(1e30, 2), corruption="kspace:4", steps=3, checks="none")


def test_a_nan_checkpoint_fails_the_volume_in_one_line_and_writes_nothing(capsys, tmp_path, volume):
    """End to end: a checkpoint whose weights are NaN loads, then its first output trips the guard."""
    from medinvert.models import load_model
    from medinvert.models.checkpoint import save_checkpoint

    path = write_tiny_model(tmp_path / "tiny.pt")
    net, config = load_model(path)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.fill_(math.nan)
    save_checkpoint(tmp_path / "nan.pt", net, config)
    out = tmp_path / "out"
    code = main(["reconstruct", str(volume), "--corruption", "kspace:4", "--model", str(tmp_path / "nan.pt"),
                 "--out", str(out), "--steps", "3", "--checks", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "head_t1.nii.gz" in err and "NaN/Inf" in err and "slice 1" in err
    assert not out.exists()


def test_the_reconstruction_grid_holds_the_schedules_noise_range():
    """`reconstruction_frac_bits`: 2^-48 for the shipped linear schedule, a coarser grid when sigma_max
    is large (cosine schedule of the random model) so an untrained network cannot overflow it."""
    from medinvert.engine import RECONSTRUCTION_FRAC_BITS, reconstruction_frac_bits
    from medinvert.schedule import make_schedule
    from medinvert.solvers.fixed_point import NOISE_BOUND

    assert reconstruction_frac_bits(float(make_schedule(kind="linear").sigma_max)) == RECONSTRUCTION_FRAC_BITS
    for kind in ("linear", "cosine"):
        sigma_max = float(make_schedule(kind=kind).sigma_max)
        q = reconstruction_frac_bits(sigma_max)
        assert 2.0 ** (62 - q) > (1 + NOISE_BOUND) * sigma_max
    assert reconstruction_frac_bits(float(make_schedule(kind="cosine").sigma_max)) < RECONSTRUCTION_FRAC_BITS


def test_the_random_model_reconstructs_without_overflow(capsys, tmp_path, volume):
    out = tmp_path / "out"
    code = main(["reconstruct", str(volume), "--corruption", "kspace:4", "--model", "random", "--out", str(out),
                 "--steps", "20", "--checks", "none"])
    assert code == 0, capsys.readouterr().err
    assert (out / "head_t1_recon.nii.gz").is_file()
