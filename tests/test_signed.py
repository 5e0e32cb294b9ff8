"""Signed volumes (`medinvert.signed`): the intensity map moves into the measurement exactly, is
estimated from the measurement alone, and reconstruction commutes with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinvert import reconstruct_volume
from medinvert.io.nifti import make_meta_tensor
from medinvert.intensity import negative_fraction
from medinvert.signed import IntensityMap, estimate_intensity_map, map_observation
from medinvert.transforms import corrupt

from _recon_helpers import phantom, write_tiny_model

CORRUPTIONS = {
    "kspace": {"acceleration": 4, "center_fraction": 0.08},
    "mask": {"mask_type": "box", "size_fraction": 0.3},
    "noise": {"sigma": 0.05},
    "blur": {"blur": "gaussian", "blur_sigma": 1.2},
}


def _volume(data: np.ndarray) -> torch.Tensor:
    return make_meta_tensor(data.astype(np.float32), np.eye(4), {"filename_or_obj": "phantom_t1.nii.gz"})


def _zscored(data: np.ndarray) -> np.ndarray:
    return ((data - data.mean()) / data.std()).astype(np.float32)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("intensity_map", [IntensityMap(-0.75, 1), IntensityMap(12.5, -1)])
def test_mapped_measurement_is_the_measurement_of_the_mapped_image(kind, intensity_map):
    """``s (y - c A 1)`` equals the measurement of ``s (x - c)`` under the same mask, kernel and noise."""
    data = phantom((24, 20, 3)) / 50.0
    mapped_image = intensity_map.sign * (data - intensity_map.offset)
    direct = corrupt(_volume(mapped_image), kind, seed=3, **CORRUPTIONS[kind])
    observation = corrupt(_volume(data), kind, seed=3, **CORRUPTIONS[kind])
    moved = map_observation(observation, intensity_map)
    if kind == "noise" and intensity_map.sign < 0:  # the noise sample changes sign with the image
        expected = torch.as_tensor(mapped_image).permute(2, 0, 1) - (direct.y - torch.as_tensor(mapped_image).permute(2, 0, 1))
    else:
        expected = direct.y
    scale = float(expected.abs().max())
    assert float((moved.y - expected).abs().max()) <= 1e-5 * scale
    assert float((moved.adjoint - direct.adjoint).abs().max()) <= 1e-4 * float(direct.adjoint.abs().max()) \
        or kind == "noise"
    assert moved.kind == observation.kind and torch.equal(moved.mask, observation.mask)


@pytest.mark.parametrize("acceleration", [4, 8, 16])
def test_magnitude_volumes_are_left_alone(acceleration):
    """Aliasing makes a zero-filled magnitude image slightly negative; that is no reason to shift it."""
    observation = corrupt(_volume(phantom()), "kspace", seed=0, acceleration=acceleration,
                          center_fraction=0.32 / acceleration)
    assert negative_fraction(observation.adjoint.numpy()) < 0.1
    assert estimate_intensity_map(observation).identity


@pytest.mark.parametrize("kind,params", [
    ("noise", {"snr": 2.0}), ("noise", {"snr": 10.0}), ("noise", {"sigma": 0.05}),
    ("kspace", {"acceleration": 4, "center_fraction": 0.08, "snr": 3.0}),
    ("blur", {"blur": "gaussian", "blur_sigma": 1.2, "snr": 5.0}),
])
@pytest.mark.parametrize("air_fraction", [0.0, 0.75, 1.0])
def test_noisy_magnitude_volumes_are_left_alone(kind, params, air_fraction):
    """The Gaussian noise of a magnitude image's air is not a sign, even when the volume is mostly
    (or only) air: the noise-free part decides."""
    data = phantom((40, 36, 3))
    if air_fraction:
        data = np.pad(data, ((40, 40), (36, 36), (0, 0))) if air_fraction < 1 else np.zeros_like(data)
    if not data.any() and "snr" in params:
        params = {"sigma": 0.05}
    observation = corrupt(_volume(data), kind, seed=2, **params)
    assert estimate_intensity_map(observation).identity


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("noise_sigma", [0.0, 0.1, 0.3])
def test_zscored_air_maps_to_zero(kind, noise_sigma):
    """A z-scored volume with air, noiseless or noisy (sigma in z units): the offset is the air level
    (to 1.5 % of the image's span), found at the border -- for blur too, whose zero-padded adjoint
    reads the border air at about half its level."""
    data = phantom()
    zscored = _zscored(data)
    air = float(zscored[0, 0, 0])
    params = dict(CORRUPTIONS[kind])
    if noise_sigma and kind != "noise":
        params["sigma"] = noise_sigma
    elif noise_sigma:
        params = {"sigma": noise_sigma}
    found = estimate_intensity_map(corrupt(_volume(zscored), kind, seed=1, **params))
    assert found.sign == 1 and "air at the border" in found.rule, found
    assert abs(found.offset - air) <= 0.015 * float(zscored.max() - zscored.min())


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_negated_volume_flips_sign(kind):
    """A negated image (negative slope): air stays at zero and the sign flips -- for blur too, whose
    gain-corrected border is what finds the air (the 0.5th percentile would invert the contrast)."""
    params = {"sigma": 5.0} if kind == "noise" else CORRUPTIONS[kind]
    found = estimate_intensity_map(corrupt(_volume(-phantom()), kind, seed=1, **params))
    assert found.sign == -1 and "negated" in found.rule, found
    assert abs(found.offset) <= 0.01 * float(phantom().max())


def test_signed_volume_without_air_maps_its_darkest_tissue_to_zero():
    """A z-scored crop that is all tissue: the 0.5th percentile of the measured image maps to zero."""
    tissue = phantom((48, 40, 3))[14:-14, 12:-12]
    assert tissue.min() > 0  # inside the phantom's ellipse: no air anywhere
    tissue = _zscored(tissue)
    observation = corrupt(_volume(tissue), "kspace", seed=1, acceleration=4, center_fraction=0.08)
    found = estimate_intensity_map(observation)
    assert found.sign == 1 and "without air" in found.rule
    span = float(np.ptp(tissue))
    assert float(tissue.min()) - 0.1 * span <= found.offset <= float(np.percentile(tissue, 10))
    assert negative_fraction(map_observation(observation, found).adjoint) < 0.05


def test_masked_pixels_do_not_count_as_air():
    """For inpainting the holes (zeros in ``A^H y``) are left out of the statistics."""
    zscored = _zscored(phantom())
    observation = corrupt(_volume(zscored), "mask", seed=1, mask_type="box", size_fraction=0.6)
    found = estimate_intensity_map(observation)
    assert abs(found.offset - float(zscored[0, 0, 0])) <= 1e-6


def test_reconstruction_commutes_with_zscoring(tmp_path):
    """Reconstructing a z-scored volume gives the z-scored reconstruction of the original (the
    network sees the same normalised image), keeps its measured k-space, and is reported."""
    model = write_tiny_model(tmp_path / "tiny.pt")
    data = phantom((32, 28, 3))
    mean, std = float(data.mean()), float(data.std())
    settings = {"model": str(model), "corruption": "kspace:4", "steps": 3, "checks": "none", "seed": 0}
    plain = reconstruct_volume(_volume(data), **settings)
    signed = reconstruct_volume(_volume(_zscored(data)), **settings)
    expected = (plain.volume.as_tensor() - mean) / std
    span = float(expected.max() - expected.min())
    assert float((signed.volume.as_tensor() - expected).abs().max()) <= 2e-3 * span
    assert signed.report["data_consistency"]["relative_residual"] <= 1e-3
    assert signed.report["settings"]["intensity_map"]["offset"] == pytest.approx(-mean / std, abs=0.01 * span)
    assert plain.report["settings"]["intensity_map"]["offset"] == 0.0


def test_corrupted_image_keeps_the_air_of_a_zscored_volume():
    """The zero-filled image of a z-scored volume keeps its air at the air level (the plain magnitude
    folds it up to ``|air|``); for a magnitude volume it is `Observation.image` itself."""
    from medinvert.signed import corrupted_image

    data = phantom()
    plain = corrupt(_volume(data), "kspace", seed=0, acceleration=4, center_fraction=0.08)
    assert torch.equal(corrupted_image(plain), plain.image())
    zscored = _zscored(data)
    observation = corrupt(_volume(zscored), "kspace", seed=0, acceleration=4, center_fraction=0.08)
    image = corrupted_image(observation)
    air = float(zscored[0, 0, 0])
    assert abs(float(image[0, 0, 0]) - air) < 0.05 * abs(air)
    assert float(observation.image()[0, 0, 0]) > 0 > air


def test_signed_references_use_their_full_range():
    """fastMRI's data range (the maximum) for magnitude references; ``max - min`` for signed ones, so a
    negated reference has a PSNR and z-scoring does not change it."""
    from medinvert.metrics import default_data_range, psnr

    data = phantom()
    noisy = data + np.random.default_rng(0).normal(0, 2.0, data.shape).astype(np.float32)
    assert default_data_range(data) == float(data.max())
    assert default_data_range(-data) == float(data.max())
    assert psnr(-noisy, -data) == pytest.approx(psnr(noisy, data))
    mean, std = float(data.mean()), float(data.std())
    assert psnr((noisy - mean) / std, (data - mean) / std) == pytest.approx(psnr(noisy, data), abs=1e-6)


def test_html_report_says_when_the_map_was_applied(tmp_path):
    """The HTML summary names the intensity map of a signed volume, and only then."""
    from medinvert.report.html import render_html_report

    model = write_tiny_model(tmp_path / "tiny.pt")
    settings = {"model": str(model), "corruption": "kspace:4", "steps": 2, "checks": "none"}
    for data, expected in ((phantom(), False), (_zscored(phantom()), True)):
        result = reconstruct_volume(_volume(data), **settings)
        page = render_html_report(result.report, observation=result.observation, reconstruction=result.volume)
        assert ("signed intensities" in page) == expected


def test_latent_of_a_signed_volume_is_that_of_the_mapped_image(tmp_path):
    """``result.latent`` of a z-scored volume is the exact inversion of the image the network made,
    ``s (x - c)``: `generate` returns it, and the recorded map takes it to the output."""
    from medinvert.inversion import generate

    model = write_tiny_model(tmp_path / "tiny.pt")
    result = reconstruct_volume(_volume(_zscored(phantom())), model=str(model), corruption="kspace:4", steps=2,
                                checks="none", return_latent=True)
    recorded = result.report["settings"]["intensity_map"]
    assert recorded["offset"] != 0.0
    intensity_map = IntensityMap.from_report(recorded)
    network_image = generate(result.latent, str(model)).as_tensor()
    assert not torch.allclose(network_image, result.volume.as_tensor())  # the mapped image, not the output
    assert torch.equal(intensity_map.restore(network_image), result.volume.as_tensor())


@pytest.mark.parametrize("sign", [1, -1])
def test_air_on_only_part_of_the_border_is_found(sign):
    """A head that runs off three edges of the field of view: the border is mostly tissue (a third of it
    air), and the air is its darkest cluster (a plain border median would read tissue)."""
    data = phantom((40, 36, 3))[8:, 10:-10]
    zscored = sign * _zscored(data)
    border = np.concatenate([zscored[0].ravel(), zscored[-1].ravel(), zscored[:, 0].ravel(), zscored[:, -1].ravel()])
    air = float(_zscored(data)[-1, 0, 0]) * sign
    assert 0.2 < float(np.mean(border == air)) < 0.5
    found = estimate_intensity_map(corrupt(_volume(zscored), "kspace", seed=1, acceleration=4, center_fraction=0.08))
    assert found.sign == sign and "at the border" in found.rule, found
    assert abs(found.offset - air) <= 0.01 * float(np.ptp(zscored))
