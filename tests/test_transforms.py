"""Corruption transforms, `corrupt`, and the corruption spec: physics checked against independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from monai.data import MetaTensor

import medinvert
from medinvert.errors import MedinvertError
from medinvert.operators import DESCRIPTOR_SLOTS, Observation, volume_to_slices
from medinvert.transforms import (
    RandBlur,
    RandBlurd,
    RandGaussianNoise,
    RandGaussianNoised,
    RandInpaintMask,
    RandInpaintMaskd,
    RandKspaceUndersample,
    RandKspaceUndersampled,
    RandRicianNoise,
    RandRicianNoised,
    foreground_mean,
    normalize_params,
    parse_corruption_spec,
)

SLOT = {name: i for i, name in enumerate(DESCRIPTOR_SLOTS)}


def _phantom(shape=(32, 28, 6), seed=0) -> torch.Tensor:
    """A bright ellipse on a dark background with a little texture: a foreground for SNR."""
    x, y, z = shape
    i = torch.arange(x, dtype=torch.float32)[:, None, None] - x / 2
    j = torch.arange(y, dtype=torch.float32)[None, :, None] - y / 2
    inside = (i / (0.4 * x)) ** 2 + (j / (0.35 * y)) ** 2 <= 1
    texture = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return (inside.float() * (2.0 + texture)).expand(shape).contiguous()


def _centred_fft(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _centred_ifft(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


# ----------------------------------------------------------------------------- k-space


@pytest.mark.parametrize("pattern", ["random", "equispaced", "variable-density"])
def test_kspace_measurements_match_numpy_fft(pattern):
    vol = _phantom()
    obs = RandKspaceUndersample(acceleration=4, pattern=pattern)(vol)
    assert isinstance(obs, Observation) and obs.kind == "kspace"
    assert obs.y.dtype == torch.complex64 and obs.y.shape == (6, 32, 28) and obs.mask.shape == (32, 28, 6)
    full = _centred_fft(vol.permute(2, 0, 1).double().numpy())
    mask = obs.mask.permute(2, 0, 1).numpy()
    np.testing.assert_allclose(obs.y.numpy()[mask], full[mask], rtol=1e-5, atol=1e-5)
    assert np.all(obs.y.numpy()[~mask] == 0)
    for k in range(1, 6):  # one mask shared by every slice
        assert np.array_equal(mask[k], mask[0])
    adjoint = _centred_ifft(obs.y.numpy().astype(np.complex128)).real
    np.testing.assert_allclose(obs.adjoint.permute(2, 0, 1).numpy(), adjoint, atol=1e-5)
    np.testing.assert_allclose(obs.image().permute(2, 0, 1).numpy(), np.abs(_centred_ifft(obs.y.numpy())), atol=1e-5)
    assert obs.params["pattern"] == pattern and obs.params["acceleration"] == 4.0
    assert abs(obs.params["measured_fraction"] - 0.25) <= 1.5 / 28  # within a line or so at W = 28
    assert obs.descriptor[SLOT["kind_kspace"]] == 1


def test_kspace_noise_level():
    vol = _phantom((48, 48, 8))
    sigma = 0.2
    obs = RandKspaceUndersample(acceleration=2, center_fraction=0.1, sigma=sigma)(vol)
    full = _centred_fft(vol.permute(2, 0, 1).double().numpy())
    mask = obs.mask.permute(2, 0, 1).numpy()
    noise = obs.y.numpy()[mask] - full[mask]
    assert abs(np.sqrt(np.mean(np.abs(noise) ** 2)) / sigma - 1) < 0.05  # E|n|^2 = sigma^2
    assert abs(np.std(noise.real) / (sigma / math.sqrt(2)) - 1) < 0.05
    assert obs.params["sigma"] == sigma and obs.params["noise_seed"] is not None


def test_transform_determinism_via_set_random_state():
    vol = _phantom()
    t = RandKspaceUndersample(acceleration=4)
    first = t.set_random_state(11)(vol)
    again = RandKspaceUndersample(acceleration=4).set_random_state(11)(vol)
    assert torch.equal(first.y, again.y) and torch.equal(first.mask, again.mask)
    other = t.set_random_state(12)(vol)
    assert not torch.equal(first.mask, other.mask)
    # consecutive calls draw new masks; randomize=False repeats the last draw
    t.set_random_state(11)
    a, b = t(vol), t(vol)
    c = t(vol, randomize=False)
    assert torch.equal(a.mask, first.mask) and not torch.equal(a.mask, b.mask) and torch.equal(b.mask, c.mask)
    # results are returned, never kept on the transform
    assert not any(isinstance(v, (Observation, torch.Tensor)) for v in vars(t).values())


# ----------------------------------------------------------------------------- noise


def test_gaussian_noise_sigma_and_snr():
    vol = _phantom((64, 64, 8))
    obs = RandGaussianNoise(sigma=0.3)(vol)
    diff = obs.adjoint - vol
    assert abs(float(diff.std()) / 0.3 - 1) < 0.05 and abs(float(diff.mean())) < 0.01
    torch.testing.assert_close(volume_to_slices(obs.adjoint), obs.y)
    assert obs.mask.all() and obs.descriptor[SLOT["kind_noise"]] == 1
    fg = foreground_mean(vol)
    by_snr = RandGaussianNoise(snr=10)(vol)
    assert math.isclose(by_snr.params["sigma"], fg / 10, rel_tol=1e-9)
    assert abs(float((by_snr.adjoint - vol).std()) / (fg / 10) - 1) < 0.05
    assert math.isclose(float(by_snr.descriptor[SLOT["noise_level"]]), 1.0, rel_tol=1e-5)


def test_foreground_mean_is_mean_of_bright_voxels():
    vol = torch.zeros(20, 20, 4)
    vol[5:15, 5:15] = 3.0
    assert math.isclose(foreground_mean(vol), 3.0)
    assert foreground_mean(torch.zeros(3, 3, 3)) == 0.0


def test_rician_noise_is_magnitude_of_complex_gaussian():
    sigma, amplitude = 0.5, 2.0
    vol = torch.zeros(64, 64, 8)
    vol[32:] = amplitude
    obs = RandRicianNoise(sigma=sigma)(vol)
    y = obs.adjoint
    assert (y >= 0).all()
    background, signal = y[:32].double(), y[32:].double()
    assert abs(float(background.mean()) / (sigma * math.sqrt(math.pi / 2)) - 1) < 0.03  # Rayleigh mean
    assert abs(float((background**2).mean()) / (2 * sigma**2) - 1) < 0.03
    assert abs(float((signal**2).mean()) / (amplitude**2 + 2 * sigma**2) - 1) < 0.03  # E y^2 = A^2 + 2 sigma^2
    assert obs.descriptor[SLOT["rician"]] == 1 and obs.params["noise_model"] == "rician"


# ----------------------------------------------------------------------------- blur


@pytest.mark.parametrize("spec", [{"blur": "gaussian", "blur_sigma": 1.2},
                                  {"blur": "motion", "motion_length": 7, "motion_angle": 30}])
def test_blur_matches_scipy_convolution(spec):
    vol = _phantom()
    obs = RandBlur(**spec)(vol)
    kernel = obs.kernel.double().numpy()
    assert math.isclose(kernel.sum(), 1.0, rel_tol=1e-6)
    for k in range(vol.shape[2]):
        expected = scipy.ndimage.convolve(vol[:, :, k].double().numpy(), kernel, mode="constant")
        np.testing.assert_allclose(obs.y[k].numpy(), expected, atol=1e-5)
        adjoint = scipy.ndimage.correlate(obs.y[k].double().numpy(), kernel, mode="constant")
        np.testing.assert_allclose(obs.adjoint[:, :, k].numpy(), adjoint, atol=1e-5)
    assert obs.descriptor[SLOT["kind_blur"]] == 1


# ----------------------------------------------------------------------------- masking


def test_inpaint_box_and_slices():
    vol = _phantom((20, 20, 10))
    obs = RandInpaintMask(mask_type="box", size_fraction=0.5)(vol)
    keep = obs.mask
    assert int((~keep).sum()) == 10 * 10 * 5
    assert torch.equal(obs.adjoint[keep], vol[keep]) and (obs.adjoint[~keep] == 0).all()
    assert math.isclose(obs.params["measured_fraction"], 1 - 500 / 4000)
    assert math.isclose(float(obs.descriptor[SLOT["missing_fraction"]]), 0.125, rel_tol=1e-5)
    dropped = RandInpaintMask(mask_type="slices", slice_fraction=0.2)(vol)
    assert sum(not bool(dropped.mask[:, :, k].any()) for k in range(10)) == 2
    assert dropped.descriptor[SLOT["slice_dropout"]] == 1


def test_inpaint_user_mask_array_and_file(tmp_path, make_nifti):
    vol = _phantom((12, 10, 4))
    keep = torch.ones(12, 10, 4, dtype=torch.bool)
    keep[3:7, 2:5, 1:3] = False
    from_array = medinvert.corrupt(vol, "mask", mask=keep.to(torch.uint8))
    assert torch.equal(from_array.mask, keep)
    path = make_nifti(tmp_path / "keep.nii.gz", keep.numpy().astype(np.uint8), np.eye(4))
    from_file = RandInpaintMask(mask_type="file", mask_file=path)(vol)
    assert torch.equal(from_file.mask, keep) and from_file.params["mask_file"] == str(path)
    wrong = make_nifti(tmp_path / "wrong.nii.gz", np.ones((5, 5, 4), np.uint8), np.eye(4))
    with pytest.raises(MedinvertError, match="does not match"):
        RandInpaintMask(mask_type="file", mask_file=wrong)(vol)
    with pytest.raises(MedinvertError, match="only 0"):
        medinvert.corrupt(vol, "mask", mask=keep.float() * 2)


# ----------------------------------------------------------------------------- dict wrappers


@pytest.mark.parametrize("array_cls,dict_cls,kwargs", [
    (RandKspaceUndersample, RandKspaceUndersampled, {"acceleration": 8}),
    (RandInpaintMask, RandInpaintMaskd, {"mask_type": "blobs"}),
    (RandGaussianNoise, RandGaussianNoised, {"sigma": 0.1}),
    (RandRicianNoise, RandRicianNoised, {"snr": 5}),
    (RandBlur, RandBlurd, {"blur": "motion"}),
])
def test_dict_wrappers_forward_random_state(array_cls, dict_cls, kwargs):
    vol = _phantom((16, 14, 3))
    wrapped = dict_cls(keys=["image"], **kwargs).set_random_state(21)
    out = wrapped({"image": vol, "label": 1})
    assert out["label"] == 1 and out["image"] is vol
    expected = array_cls(**kwargs).set_random_state(21)(vol)
    got = out["image_observation"]
    assert isinstance(got, Observation) and torch.equal(got.y, expected.y) and torch.equal(got.mask, expected.mask)


# ----------------------------------------------------------------------------- corrupt and validation


def test_corrupt_seeds_from_name_and_keeps_metadata():
    data = _phantom()
    affine = torch.diag(torch.tensor([1.0, 1.2, 3.0, 1.0], dtype=torch.float64))
    a = MetaTensor(data, affine=affine, meta={"filename_or_obj": "/x/case_a.nii.gz"})
    b = MetaTensor(data, affine=affine, meta={"filename_or_obj": "/y/case_b.nii.gz"})
    oa, oa2, ob = medinvert.corrupt(a, "kspace"), medinvert.corrupt(a, "kspace"), medinvert.corrupt(b, "kspace")
    assert torch.equal(oa.y, oa2.y) and not torch.equal(oa.mask, ob.mask)
    assert not torch.equal(oa.mask, medinvert.corrupt(a, "kspace", seed=1).mask)
    assert torch.equal(oa.affine, affine) and oa.source == "/x/case_a.nii.gz"
    assert oa.params["name"] == "case_a" and oa.params["seed"] == 0
    assert oa.params["random_seed"] == medinvert.transforms.seed_from_name("case_a", 0)
    plain = medinvert.corrupt(data.numpy(), "noise", sigma=0.1, seed=4)
    assert plain.params["random_seed"] == 4 and plain.source is None


@pytest.mark.parametrize("kind,params", [
    ("kspace", {"acceleration": 0.5}), ("kspace", {"center_fraction": 1.5}), ("kspace", {"center_fraction": 0}),
    ("kspace", {"pattern": "spiral"}), ("noise", {"sigma": -1}), ("noise", {}), ("noise", {"sigma": 1, "snr": 3}),
    ("noise", {"noise_model": "poisson", "sigma": 1}), ("blur", {"blur": "box"}), ("blur", {"blur_sigma": 0}),
    ("mask", {"mask_type": "lasso"}), ("mask", {"mask_type": "file"}), ("foo", {}), ("kspace", {"sigmaa": 1}),
])
def test_invalid_parameters_raise(kind, params):
    with pytest.raises(MedinvertError):
        medinvert.corrupt(_phantom((8, 8, 2)), kind, **params)


def test_invalid_volumes_raise():
    with pytest.raises(MedinvertError, match="shape"):
        medinvert.corrupt(torch.ones(8), "noise", sigma=1)
    with pytest.raises(MedinvertError, match="shape"):
        medinvert.corrupt(torch.ones(2, 8, 8, 2), "noise", sigma=1)  # two channels / frames
    assert medinvert.corrupt(torch.ones(8, 8), "noise", sigma=1).shape == (8, 8, 1)  # an image: one slice
    bad = _phantom((8, 8, 2))
    bad[0, 0, 0] = float("nan")
    with pytest.raises(MedinvertError, match="NaN"):
        medinvert.corrupt(bad, "noise", sigma=1)
    with pytest.raises(MedinvertError, match="SNR"):
        medinvert.corrupt(torch.zeros(8, 8, 2), "noise", snr=5)


def test_parse_corruption_spec():
    kind, p = parse_corruption_spec("kspace:4:0.08")
    assert kind == "kspace" and p["acceleration"] == 4 and p["center_fraction"] == 0.08 and p["pattern"] == "random"
    assert parse_corruption_spec("kspace:8")[1]["center_fraction"] == 0.04
    assert parse_corruption_spec("kspace:4:0.08:equispaced")[1]["pattern"] == "equispaced"
    assert parse_corruption_spec("mask:box")[1]["mask_type"] == "box"
    assert parse_corruption_spec("mask:blobs:n_blobs=3")[1]["n_blobs"] == 3
    assert parse_corruption_spec("mask:file:/tmp/a:b.nii.gz")[1]["mask_file"] == "/tmp/a:b.nii.gz"
    assert parse_corruption_spec("noise:0.05")[1]["sigma"] == 0.05
    assert parse_corruption_spec("noise:snr=20:noise-model=rician")[1] == normalize_params(
        "noise", {"snr": 20, "noise_model": "rician"})
    g = parse_corruption_spec("blur:gaussian:2.0")[1]
    assert g["blur"] == "gaussian" and g["blur_sigma"] == 2.0
    m = parse_corruption_spec("blur:motion:9:45")[1]
    assert m["blur"] == "motion" and m["motion_length"] == 9 and m["motion_angle"] == 45
    kind, params = parse_corruption_spec("kspace:8:pattern=variable-density")
    obs = medinvert.corrupt(_phantom(), kind, **params)
    assert obs.params["pattern"] == "variable-density"
    for bad in ("", "spiral:4", "kspace:four", "kspace:4:0.08:random:extra", "kspace::0.08", "noise",
                "kspace:acceleration=4:0.08", "noise:0.1:sigma=0.2", "kspace:0.5", "noise:-1"):
        with pytest.raises(MedinvertError):
            parse_corruption_spec(bad)
