"""Withheld-line cross-validation (`medinvert.kspace_validation`): line selection, the error formula
against oracle / empty reconstructions, the Parseval NMSE estimate, and the report section."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _recon_helpers import phantom, write_tiny_model
from medinvert.kspace_validation import kspace_validation, thinned_observation, withheld_lines
from medinvert.operators import fft2c, ifft2c, volume_to_slices
from medinvert.transforms import corrupt
from medinvert.transforms.masks import random_line_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _column_mask(width: int = 64, height: int = 48) -> torch.Tensor:
    return random_line_mask((height, width), 4, 0.08, seed=3).to(torch.bool)


def _centre_columns(mask: torch.Tensor) -> set[int]:
    lines = mask.all(dim=0).numpy()
    c = lines.shape[0] // 2
    lo, hi = c, c + 1
    while lines[lo - 1]:
        lo -= 1
    while lines[hi]:
        hi += 1
    return set(range(lo, hi))


def test_whole_outer_columns_are_withheld_deterministically() -> None:
    mask = _column_mask()
    held = withheld_lines(mask, 0.2, seed=7)
    assert not bool((held & ~mask).any())                          # a subset of the measured samples
    columns = set(np.flatnonzero(held.any(dim=0).numpy()))
    assert bool(held[:, sorted(columns)].all())                     # whole columns
    assert not columns & _centre_columns(mask)                      # never the fully sampled centre
    measured = set(np.flatnonzero(mask.all(dim=0).numpy()))
    mirror = {c: (2 * (64 // 2) - c) % 64 for c in range(64)}
    assert all(mirror[c] in columns for c in columns if mirror[c] in measured)  # closed under f -> -f
    groups = {frozenset({c, mirror[c]} & measured) for c in measured - _centre_columns(mask)
              if not ({c, mirror[c]} & _centre_columns(mask))}
    assert sum(1 for g in groups if g <= columns) == max(1, round(0.2 * len(groups)))
    assert torch.equal(held, withheld_lines(mask, 0.2, seed=7))
    assert not torch.equal(held, withheld_lines(mask, 0.2, seed=8))


def test_row_masks_and_sample_masks() -> None:
    rows = withheld_lines(_column_mask().T.contiguous(), 0.2, seed=1)
    assert torch.equal(rows.T, withheld_lines(_column_mask(), 0.2, seed=1))
    rng = np.random.default_rng(0)
    scattered = torch.from_numpy(rng.random((40, 40)) < 0.3)
    scattered[17:24, 17:24] = True                                 # fully sampled centre square, half-width 4
    held = withheld_lines(scattered, 0.25, seed=0)
    distance = np.hypot(*np.meshgrid(np.arange(40) - 20, np.arange(40) - 20, indexing="ij"))
    disc = distance < distance[~scattered.numpy()].min()          # the fully sampled centred disc
    assert disc.sum() >= 29 and not bool((held & ~scattered).any()) and not held.numpy()[disc].any()
    rows, cols = np.nonzero(held.numpy())
    assert bool(held[(40 - rows) % 40, (40 - cols) % 40][scattered[(40 - rows) % 40, (40 - cols) % 40]].all())
    assert 0 < int(held.sum()) <= 2 * round(0.25 * (int(scattered.sum()) - int(disc.sum())))
    assert torch.equal(withheld_lines(scattered.T.contiguous().T, 0.25, seed=0), held)  # memory layout does not matter


def test_scattered_masks_report_the_error_but_no_nmse_estimate(observation) -> None:
    """Variable-density masks sample low frequencies densely, so withheld samples do not represent the
    unmeasured ones: the error is reported, the Parseval NMSE estimate is not."""
    _, volume = observation
    dense = corrupt(volume, "kspace", seed=0, acceleration=3, center_fraction=0.1, pattern="variable-density")
    result = kspace_validation(dense, lambda thin, slices: torch.zeros_like(volume), [0, 1, 2])
    assert result["applicable"] and result["relative_error_withheld"] == pytest.approx(1.0)
    assert result["nmse_estimate"] is None and "whole lines" in result["nmse_estimate_reason"]


def test_fewer_than_four_outer_lines_withhold_nothing() -> None:
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:, 7:10] = True
    mask[:, [1, 3, 12]] = True                                     # three outer lines: too few
    assert not bool(withheld_lines(mask).any())
    mask[:, 14] = True
    assert int(withheld_lines(mask).any(dim=0).sum()) == 1


@pytest.fixture(scope="module")
def observation():
    volume = torch.from_numpy(phantom((48, 40, 3), seed=2))
    return corrupt(volume, "kspace", seed=0, acceleration=4, center_fraction=0.08), volume


def test_thinned_observation_is_a_consistent_measurement(observation) -> None:
    obs, volume = observation
    withheld = torch.stack([withheld_lines(obs.mask[:, :, k], seed=k) for k in range(3)], dim=-1)
    thin = thinned_observation(obs, withheld)
    assert torch.equal(thin.mask, obs.mask & ~withheld) and bool(withheld.any())
    expected = fft2c(volume_to_slices(volume).to(torch.float64)) * volume_to_slices(thin.mask)
    assert torch.allclose(thin.y.to(torch.complex128), expected, atol=1e-3 * float(expected.abs().max()))
    adjoint = ifft2c(thin.y.to(torch.complex128)).real
    assert torch.allclose(volume_to_slices(thin.adjoint).to(torch.float64), adjoint, atol=1e-5 * float(adjoint.abs().max()))


def test_hermitian_mirror_cannot_leak_the_answer(observation) -> None:
    """The real part of the thinned zero-filled image has k-space ``(y'(f) + conj y'(-f)) / 2``: zero on
    the withheld lines only if their measured mirrors are withheld too -- then its error is exactly 1."""
    obs, volume = observation

    def real_zero_filled(thin, slices):
        return thin.adjoint

    result = kspace_validation(obs, real_zero_filled, [0, 1, 2])
    assert result["applicable"] and result["relative_error_withheld"] == pytest.approx(1.0, abs=1e-6)


def test_oracle_and_empty_reconstructions(observation) -> None:
    obs, volume = observation
    oracle = kspace_validation(obs, lambda thin, slices: volume, [0, 1, 2])
    assert oracle["applicable"] and oracle["relative_error_withheld"] < 1e-5 and oracle["nmse_estimate"] < 1e-10
    empty = kspace_validation(obs, lambda thin, slices: torch.zeros_like(volume), [0, 1, 2])
    assert empty["relative_error_withheld"] == pytest.approx(1.0)
    assert empty["nmse_estimate"] == pytest.approx(empty["nmse_estimate_zero_filled"])
    assert kspace_validation(corrupt(volume, "noise", seed=0, sigma=1.0), lambda t, s: volume, [0])["applicable"] is False


def test_nmse_estimate_matches_truth_for_a_flat_spectrum() -> None:
    """White noise has the same expected energy at every frequency, so withheld lines represent the
    unmeasured ones and the zero-filled NMSE estimate must match the true zero-filled NMSE."""
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn((128, 96, 4), generator=generator)
    obs = corrupt(volume, "kspace", seed=0, acceleration=4, center_fraction=0.08)
    truth = float(((obs.y.abs() == 0).to(torch.float64) * fft2c(volume_to_slices(volume).to(torch.float64)).abs() ** 2).sum()
                  / (volume.to(torch.float64) ** 2).sum())
    result = kspace_validation(obs, lambda thin, slices: torch.zeros_like(volume), [0, 1, 2, 3])
    assert result["nmse_estimate_zero_filled"] == pytest.approx(truth, rel=0.15)
    assert math.isclose(result["nmse_estimate"], result["nmse_estimate_zero_filled"], rel_tol=1e-9)


def test_report_has_a_validation_section(tmp_path) -> None:
    from medinvert.reconstruct import reconstruct_volume

    model = write_tiny_model(tmp_path / "tiny.pt")
    volume = torch.from_numpy(phantom((32, 28, 4)))
    result = reconstruct_volume(volume, str(model), corruption="kspace:4", steps=3, batch_size=4, checks="fast",
                                return_latent=False)
    section = result.report["validation"]
    assert section["applicable"] and section["slices"] and section["relative_error_withheld"] > 0
    assert 0 <= section["nmse_estimate_zero_filled"] < 1
    again = reconstruct_volume(volume, str(model), corruption="kspace:4", steps=3, batch_size=4, checks="fast",
                               return_latent=False)
    assert again.report["validation"] == section                    # deterministic
    off = reconstruct_volume(volume, str(model), corruption="kspace:4", steps=3, checks="none", return_latent=False)
    assert off.report["validation"]["applicable"] is False and "checks disabled" in off.report["validation"]["reason"]


def test_cli_line_warns_and_a_failed_rerun_is_reported_not_fatal(tmp_path, monkeypatch) -> None:
    """`medinvert reconstruct` warns when the withheld-line error is >= 1; a validation rerun that fails
    leaves the reconstruction standing with the reason in the report."""
    import medinvert.kspace_validation as validation
    from medinvert.cli.reconstruct import _describe
    from medinvert.errors import MedinvertError
    from medinvert.reconstruct import reconstruct_volume

    row = {"stem": "s", "status": "done", "psnr": None, "ssim": None, "seconds": None, "output": "", "withheld_error": 1.2}
    assert "warning: not better than zero-filling" in _describe(row)
    assert "warning" not in _describe({**row, "withheld_error": 0.7})

    def failing(*args, **kwargs):
        raise MedinvertError("reconstruction produced NaN/Inf values")

    monkeypatch.setattr(validation, "kspace_validation", failing)
    model = write_tiny_model(tmp_path / "tiny.pt")
    result = reconstruct_volume(torch.from_numpy(phantom((32, 28, 2))), str(model), corruption="kspace:4", steps=2,
                                checks="fast", return_latent=False)
    section = result.report["validation"]
    assert section["applicable"] is False and "NaN/Inf" in section["reason"]
