"""Sampling and inpainting masks: determinism, fractions, fully sampled centre, fastMRI/MONAI conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medinvert.errors import MedinvertError
from medinvert.transforms import (
    blob_mask,
    box_mask,
    center_columns,
    equispaced_line_mask,
    random_line_mask,
    seed_from_name,
    slice_dropout_mask,
    variable_density_mask,
)

SETTINGS = [(4, 0.08), (8, 0.04)]
WIDTHS = [240, 177, 321]  # fastMRI-like, and odd widths


def _columns(mask: torch.Tensor) -> np.ndarray:
    """The sampled-column vector of a line mask, after checking every row is the same."""
    assert mask.dtype == torch.bool
    assert torch.equal(mask, mask[:1].expand_as(mask)), "a line mask samples whole columns"
    return mask[0].numpy()


@pytest.mark.parametrize("make", [random_line_mask, equispaced_line_mask])
@pytest.mark.parametrize("acceleration,center_fraction", SETTINGS)
@pytest.mark.parametrize("width", WIDTHS)
def test_line_mask_fraction_and_centre(make, acceleration, center_fraction, width):
    for seed in range(10):
        cols = _columns(make((6, width), acceleration, center_fraction, seed))
        fraction = cols.mean()
        assert abs(fraction - 1 / acceleration) <= 0.1 / acceleration, (seed, fraction)
        start, count = center_columns(width, center_fraction)
        assert count == round(width * center_fraction)
        assert cols[start:start + count].all()
        assert start <= width // 2 < start + count  # the zero frequency is in the fully sampled band


@pytest.mark.parametrize("make", [random_line_mask, equispaced_line_mask, variable_density_mask])
def test_same_seed_same_mask_different_seed_different_mask(make):
    a = make((40, 96), 4, 0.08, 7)
    assert torch.equal(a, make((40, 96), 4, 0.08, 7))
    others = [make((40, 96), 4, 0.08, s) for s in range(8)]
    assert any(not torch.equal(a, b) for b in others)
    if make is not equispaced_line_mask:  # equispaced masks differ only by their offset (few choices)
        assert not torch.equal(make((40, 96), 4, 0.08, 1), make((40, 96), 4, 0.08, 2))


@pytest.mark.parametrize("width", WIDTHS)
def test_equispaced_spacing(width):
    acceleration, center_fraction = 4, 0.08
    start, count = center_columns(width, center_fraction)
    spacing = acceleration * (count - width) / (count * acceleration - width)
    for seed in range(6):
        cols = _columns(equispaced_line_mask((4, width), acceleration, center_fraction, seed))
        for side in (np.flatnonzero(cols[:start]), start + count + np.flatnonzero(cols[start + count:])):
            gaps = np.diff(side)
            assert set(gaps.tolist()) <= {math.floor(spacing), math.ceil(spacing)}, gaps


def test_random_line_probability_matches_fastmri():
    """Each non-centre line is sampled with p = (W/acc - n_c) / (W - n_c), in both modes."""
    width, acceleration, center_fraction = 120, 4, 0.08
    start, count = center_columns(width, center_fraction)
    p = (width / acceleration - count) / (width - count)
    outside = np.ones(width, dtype=bool)
    outside[start:start + count] = False
    for fixed in (True, False):
        hits = np.zeros(width)
        n = 400
        for seed in range(n):
            hits += _columns(random_line_mask((1, width), acceleration, center_fraction, seed, fixed_count=fixed))
        rate = hits[outside] / n
        assert abs(rate.mean() - p) < 0.01
        assert np.all(np.abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n))  # no column favoured


@pytest.mark.parametrize("width", [240, 177])
@pytest.mark.parametrize("acceleration,center_fraction", SETTINGS)
def test_matches_monai_reference_masks(width, acceleration, center_fraction):
    """Bernoulli random and equispaced masks equal MONAI's RandomKspaceMask / EquispacedKspaceMask draws
    (MONAI first draws which (acceleration, centre) pair to use, so the same stream is advanced once)."""
    from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask, RandomKspaceMask

    kspace = torch.zeros(1, 4, width, 2)
    for seed in (0, 3):
        for reference_class, ours in ((RandomKspaceMask, "random"), (EquispacedKspaceMask, "equispaced")):
            reference = reference_class(center_fractions=[center_fraction], accelerations=[acceleration],
                                        spatial_dims=2, is_complex=True)
            reference.set_random_state(seed)
            reference(kspace)
            expected = reference.mask.reshape(-1).numpy() > 0
            rng = np.random.RandomState(seed)
            rng.randint(0, 1)
            if ours == "random":
                mask = random_line_mask((4, width), acceleration, center_fraction, rng, fixed_count=False)
            else:
                mask = equispaced_line_mask((4, width), acceleration, center_fraction, rng)
            assert np.array_equal(_columns(mask), expected)


@pytest.mark.parametrize("shape", [(96, 80), (97, 81)])
@pytest.mark.parametrize("acceleration,center_fraction", SETTINGS)
def test_variable_density_fraction_centre_and_density(shape, acceleration, center_fraction):
    h, w = shape
    mask = variable_density_mask(shape, acceleration, center_fraction, 5).numpy()
    assert mask.shape == shape
    assert abs(mask.mean() - 1 / acceleration) <= 0.02 / acceleration
    di = np.arange(h)[:, None] - h // 2
    dj = np.arange(w)[None, :] - w // 2
    radius = np.sqrt(di**2 + dj**2)
    assert mask[radius <= center_fraction * min(h, w) / 2].all()
    inner = mask[(radius > 8) & (radius <= 16)].mean()
    outer = mask[radius > 30].mean()
    assert inner > 2 * outer  # density falls off with |k|


@pytest.mark.parametrize("acceleration,center_fraction", [(0.5, 0.08), (4, 0.0), (4, 1.0), (4, -0.1), (4, 0.3),
                                                          (float("nan"), 0.08)])
def test_invalid_settings_raise(acceleration, center_fraction):
    for make in (random_line_mask, equispaced_line_mask):
        with pytest.raises(MedinvertError):
            make((8, 100), acceleration, center_fraction, 0)
    with pytest.raises(MedinvertError):
        random_line_mask((8, 100), 4, 0.08, -1)


def test_box_blob_and_slice_masks():
    shape = (20, 16, 10)
    box = box_mask(shape, 0.3, 3)
    assert box.shape == shape and box.dtype == torch.bool
    assert int((~box).sum()) == 6 * 5 * 3  # round(0.3 * n) per axis
    assert torch.equal(box, box_mask(shape, 0.3, 3))
    assert any(not torch.equal(box, box_mask(shape, 0.3, s)) for s in range(4, 10))
    blobs = blob_mask(shape, 4, (0.1, 0.2), 1)
    assert 0 < int((~blobs).sum()) < blobs.numel()
    assert torch.equal(blobs, blob_mask(shape, 4, (0.1, 0.2), 1))
    slices = slice_dropout_mask(shape, 0.3, 2)
    missing = [k for k in range(10) if not slices[:, :, k].any()]
    assert len(missing) == 3
    assert all(slices[:, :, k].all() for k in range(10) if k not in missing)
    with pytest.raises(MedinvertError):
        slice_dropout_mask((4, 4, 1), 0.5, 0)
    with pytest.raises(MedinvertError):
        box_mask(shape, 1.5, 0)


def test_seed_from_name_is_stable_and_name_dependent():
    a = seed_from_name("/data/x/BraTS2021_00001_t1.nii.gz", 0)
    assert 0 <= a < 2**32
    assert a == seed_from_name("elsewhere/BraTS2021_00001_t1.nii", 0)  # folder and .nii/.nii.gz do not matter
    assert a != seed_from_name("BraTS2021_00001_t1.nii.gz", 1)
    assert a != seed_from_name("BraTS2021_00001_t2.nii.gz", 0)
    with pytest.raises(MedinvertError):
        seed_from_name("x.nii.gz", -1)


@pytest.mark.parametrize("make", [random_line_mask, equispaced_line_mask])
@pytest.mark.parametrize("acceleration,center_fraction,width",
                         [(4, 0.08, w) for w in (2, 3, 5, 6)] + [(8, 0.04, w) for w in (2, 3, 9, 12)])
def test_tiny_matrices_still_sample_the_zero_frequency(make, acceleration, center_fraction, width):
    """Where ``round(W * center_fraction)`` is 0 (fastMRI / MONAI then sample no centre) the zero-frequency
    column is sampled anyway, and no more than the line budget (at least that one line) is measured."""
    assert round(width * center_fraction) == 0
    for seed in range(5):
        cols = _columns(make((4, width), acceleration, center_fraction, seed))
        assert cols[width // 2], (seed, cols)
        assert center_columns(width, center_fraction) == (width // 2, 1)
        # the budget, at least the one line; equispaced may add one line (fastMRI's offset rule, as on wide matrices)
        assert cols.sum() <= max(1, round(width / acceleration)) + (make is equispaced_line_mask)
