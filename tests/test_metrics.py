"""Metrics against independent formulas: hand-computed PSNR / NMSE, SSIM closed forms, skimage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medinvert.errors import MedinvertError
from medinvert.metrics import nmse, per_slice_metrics, psnr, ssim, ssim_defined, ssim_map


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A smooth-ish reference volume (16, 14, 5) with slice-dependent maxima and a noisy estimate."""
    rng = np.random.default_rng(0)
    grid = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 14), indexing="ij")
    ref = np.stack([(1 + k) * (np.sin(3 * grid[0]) + grid[1] + 0.2 * rng.random((16, 14))) for k in range(5)], axis=2)
    x = ref + 0.05 * rng.standard_normal(ref.shape)
    return x, ref


def test_psnr_from_mse_and_volume_max(pair) -> None:
    x, ref = pair
    mse = np.mean((x - ref) ** 2)
    assert psnr(x, ref) == pytest.approx(10 * math.log10(ref.max() ** 2 / mse), rel=1e-12)
    assert psnr(x, ref) == pytest.approx(peak_signal_noise_ratio(ref, x, data_range=ref.max()), rel=1e-12)
    assert psnr(x, ref, data_range=2.0) == pytest.approx(10 * math.log10(4.0 / mse), rel=1e-12)
    offset = 0.25
    assert psnr(ref + offset, ref) == pytest.approx(20 * math.log10(ref.max() / offset), rel=1e-12)
    assert psnr(ref, ref) == math.inf


def test_data_range_is_reference_max_not_estimate_max(pair) -> None:
    x, ref = pair
    brighter = x.copy()
    brighter[0, 0, 0] = 10 * ref.max()
    mse = np.mean((brighter - ref) ** 2)
    assert psnr(brighter, ref) == pytest.approx(10 * math.log10(ref.max() ** 2 / mse), rel=1e-12)


def test_masked_psnr_and_nmse(pair) -> None:
    x, ref = pair
    mask = np.zeros(ref.shape, dtype=bool)
    mask[4:10, 3:9, 1:4] = True
    mse_in = np.mean((x[mask] - ref[mask]) ** 2)
    assert psnr(x, ref, mask=mask) == pytest.approx(10 * math.log10(ref.max() ** 2 / mse_in), rel=1e-12)
    assert nmse(x, ref, mask=mask) == pytest.approx(np.sum((x[mask] - ref[mask]) ** 2) / np.sum(ref[mask] ** 2))
    outside_only = ref.copy()
    outside_only[~mask] += 1.0
    assert psnr(outside_only, ref, mask=mask) == math.inf
    assert nmse(outside_only, ref, mask=mask) == 0.0


def test_nmse_formula_and_scaling(pair) -> None:
    x, ref = pair
    assert nmse(x, ref) == pytest.approx(np.linalg.norm(x - ref) ** 2 / np.linalg.norm(ref) ** 2, rel=1e-12)
    assert nmse(0.7 * ref, ref) == pytest.approx(0.09, rel=1e-12)


def test_torch_inputs_give_python_floats(pair) -> None:
    x, ref = pair
    tx, tref = torch.from_numpy(x).float(), torch.from_numpy(ref).float()
    for fn in (psnr, ssim, nmse):
        value = fn(tx, tref)
        assert type(value) is float
        assert value == pytest.approx(fn(tx.double().numpy(), tref.double().numpy()), rel=1e-12)


def test_ssim_identity_is_one(pair) -> None:
    _, ref = pair
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert ssim(ref[:, :, :4], ref[:, :, :4], mode="3d", win_size=3) == pytest.approx(1.0, abs=1e-12)
    assert ssim(ref, ref, mask=ref > ref.mean()) == pytest.approx(1.0, abs=1e-12)
    assert ssim(ref, ref, gaussian=True) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_constant_offset_closed_form(pair) -> None:
    """x = ref + d leaves variances and covariance unchanged, so SSIM's contrast-structure term is 1 and
    the map is (2 mu (mu + d) + C1) / (mu^2 + (mu + d)^2 + C1), mu the 7x7 local mean of ref
    (half-sample symmetric padding) -- computed here with numpy windows, not scipy filters."""
    _, ref = pair
    d = 0.3
    peak = ref.max()
    c1 = (0.01 * peak) ** 2
    per_slice = []
    for k in range(ref.shape[2]):
        padded = np.pad(ref[:, :, k], 3, mode="symmetric")
        mu = sliding_window_view(padded, (7, 7)).mean(axis=(-1, -2))
        closed = (2 * mu * (mu + d) + c1) / (mu**2 + (mu + d) ** 2 + c1)
        per_slice.append(closed[3:-3, 3:-3].mean())
    assert ssim(ref + d, ref) == pytest.approx(np.mean(per_slice), rel=1e-9)
    m = 2.0  # constant image: closed form with no window at all
    const = np.full((9, 9, 2), m)
    expected = (2 * m * (m + d) + (0.01 * m) ** 2) / (m**2 + (m + d) ** 2 + (0.01 * m) ** 2)
    assert ssim(const + d, const) == pytest.approx(expected, rel=1e-12)


def test_ssim_matches_skimage_per_slice_and_3d(pair) -> None:
    x, ref = pair
    peak = ref.max()
    expected = np.mean([structural_similarity(ref[:, :, k], x[:, :, k], data_range=peak) for k in range(5)])
    assert ssim(x, ref) == pytest.approx(expected, abs=1e-12)
    expected_gauss = np.mean([structural_similarity(ref[:, :, k], x[:, :, k], data_range=peak, gaussian_weights=True,
                                                    sigma=1.5, use_sample_covariance=False) for k in range(5)])
    assert ssim(x, ref, gaussian=True) == pytest.approx(expected_gauss, abs=1e-12)
    rng = np.random.default_rng(1)
    ref3 = rng.random((10, 9, 8))
    x3 = ref3 + 0.1 * rng.standard_normal(ref3.shape)
    assert ssim(x3, ref3, mode="3d") == pytest.approx(structural_similarity(ref3, x3, data_range=ref3.max()), abs=1e-12)


def test_masked_ssim_is_mean_of_map_inside_mask(pair) -> None:
    x, ref = pair
    maps = np.stack([structural_similarity(ref[:, :, k], x[:, :, k], data_range=ref.max(), full=True)[1]
                     for k in range(5)], axis=2)
    assert np.allclose(ssim_map(x, ref), maps, atol=1e-12)
    mask = np.zeros(ref.shape, dtype=bool)
    mask[2:9, 5:12, [0, 3]] = True
    assert ssim(x, ref, mask=mask) == pytest.approx(maps[mask].mean(), abs=1e-12)
    assert ssim(x, ref, mask=torch.from_numpy(mask)) == pytest.approx(maps[mask].mean(), abs=1e-12)


def test_ssim_decreases_with_noise(pair) -> None:
    _, ref = pair
    rng = np.random.default_rng(2)
    noise = rng.standard_normal(ref.shape)
    values = [ssim(ref + s * noise, ref) for s in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2]


def test_per_slice_metrics(pair) -> None:
    x, ref = pair
    out = per_slice_metrics(x, ref)
    assert set(out) == {"psnr", "ssim", "nmse"} and all(len(v) == 5 for v in out.values())
    peak = ref.max()
    for k in range(5):
        xs, rs = x[:, :, k], ref[:, :, k]
        assert out["psnr"][k] == pytest.approx(peak_signal_noise_ratio(rs, xs, data_range=peak), rel=1e-12)
        assert out["ssim"][k] == pytest.approx(structural_similarity(rs, xs, data_range=peak), abs=1e-12)
        assert out["nmse"][k] == pytest.approx(np.sum((xs - rs) ** 2) / np.sum(rs**2), rel=1e-12)
    assert np.mean(out["ssim"]) == pytest.approx(ssim(x, ref), abs=1e-12)
    own = per_slice_metrics(x, ref, per_slice_range=True)
    assert own["psnr"][0] == pytest.approx(peak_signal_noise_ratio(ref[:, :, 0], x[:, :, 0],
                                                                   data_range=ref[:, :, 0].max()), rel=1e-12)
    zero = ref.copy()
    zero[:, :, 2] = 0.0
    values = per_slice_metrics(x, zero)
    assert math.isnan(values["nmse"][2]) and math.isfinite(values["psnr"][2])


def test_bad_inputs(pair) -> None:
    x, ref = pair
    with pytest.raises(MedinvertError, match="different shapes"):
        psnr(x[:, :, :2], ref)
    with pytest.raises(MedinvertError, match="mask is empty"):
        ssim(x, ref, mask=np.zeros(ref.shape, dtype=bool))
    with pytest.raises(MedinvertError, match="mask shape"):
        nmse(x, ref, mask=np.ones((2, 2, 2)))
    with pytest.raises(MedinvertError, match="data range"):
        psnr(x, np.zeros_like(ref))
    with pytest.raises(MedinvertError, match="NMSE is undefined"):
        nmse(x, np.zeros_like(ref))
    with pytest.raises(MedinvertError, match="unknown SSIM mode"):
        ssim(x, ref, mode="volume")
    with pytest.raises(MedinvertError, match="smaller than"):
        ssim(x, ref, mode="3d")  # only 5 slices < 7
    with pytest.raises(MedinvertError, match="NaN"):
        psnr(np.full(ref.shape, np.nan), ref)


def test_ssim_defined_matches_where_ssim_raises(pair) -> None:
    x, ref = pair
    assert ssim_defined(ref.shape) and not ssim_defined(ref.shape, mode="3d")  # 5 slices < 7
    small = (6, 40, 3)
    assert not ssim_defined(small)
    with pytest.raises(MedinvertError, match="smaller than"):
        ssim(np.ones(small), np.ones(small))
    values = per_slice_metrics(x[:6, :, :], ref[:6, :, :])
    assert all(math.isnan(v) for v in values["ssim"]) and all(math.isfinite(v) for v in values["psnr"])
