"""Operators: exact adjoints, centred orthonormal FFT, data consistency, kernels, descriptor, Observation files."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch

from medinvert.errors import MedinvertError
from medinvert.operators import (
    DESCRIPTOR_LENGTH,
    DESCRIPTOR_SLOTS,
    BlurOperator,
    IdentityOperator,
    InpaintOperator,
    KspaceOperator,
    Observation,
    fft2c,
    gaussian_kernel,
    ifft2c,
    make_descriptor,
    motion_kernel,
    null_descriptor,
    observation_paths,
    slices_to_volume,
    volume_to_slices,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Complex Euclidean inner product <a, b> = sum(conj(a) b), accumulated in double precision."""
    a = a.to(torch.complex128) if a.is_complex() else a.double()
    b = b.to(torch.complex128) if b.is_complex() else b.double()
    return (a.conj() * b).sum() if a.is_complex() or b.is_complex() else (a * b).sum()


def _assert_adjoint(op, x: torch.Tensor, y: torch.Tensor, tol: float = 1e-5) -> None:
    lhs = _inner(op.forward(x), y)
    rhs = _inner(x, op.adjoint(y))
    scale = op.forward(x).abs().double().norm() * y.abs().double().norm()
    assert abs(complex(lhs) - complex(rhs)) <= tol * float(scale), (complex(lhs), complex(rhs))


def _line_mask(h: int, w: int, seed: int) -> torch.Tensor:
    cols = torch.rand(w, generator=_gen(seed)) < 0.3
    cols[w // 2] = True
    return cols[None, :].expand(h, w).clone()


# ----------------------------------------------------------------------------- FFT


@pytest.mark.parametrize("shape", [(3, 8, 10), (2, 7, 9)])
def test_fft2c_is_numpy_centred_orthonormal_fft(shape):
    x = _randn(*shape, seed=1, dtype=torch.float64) + 1j * _randn(*shape, seed=2, dtype=torch.float64)
    expected = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(fft2c(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ifft2c(fft2c(x)).numpy(), x.numpy(), atol=1e-12)
    assert math.isclose(float(fft2c(x).abs().norm()), float(x.abs().norm()), rel_tol=1e-12)


def test_fft2c_zero_frequency_is_centred():
    ones = torch.ones(6, 7)
    k = fft2c(ones)
    assert torch.argmax(k.abs()).item() == 3 * 7 + 3  # (H // 2, W // 2)
    assert math.isclose(float(k[3, 3].real), math.sqrt(42), rel_tol=1e-6)


# ----------------------------------------------------------------------------- adjoint tests, every operator


@pytest.mark.parametrize("hw", [(16, 12), (15, 13)])
def test_kspace_adjoint_complex_and_real(hw):
    h, w = hw
    op = KspaceOperator(_line_mask(h, w, 0))
    x = torch.complex(_randn(4, h, w, seed=1), _randn(4, h, w, seed=2))
    y = torch.complex(_randn(4, h, w, seed=3), _randn(4, h, w, seed=4))
    _assert_adjoint(op, x, y)
    # real images: A maps R^n -> C^m with inner product Re<., .>; its adjoint is Re(A^H y)
    xr = _randn(4, h, w, seed=5)
    lhs = _inner(op.forward(xr), y).real
    rhs = _inner(xr, op.adjoint(y).real)
    assert abs(float(lhs - rhs)) <= 1e-5 * float(op.forward(xr).abs().norm() * y.abs().norm())


def test_kspace_adjoint_per_slice_masks():
    masks = torch.stack([_line_mask(10, 11, s) for s in range(3)])
    op = KspaceOperator(masks)
    x = torch.complex(_randn(2, 3, 10, 11, seed=7), _randn(2, 3, 10, 11, seed=8))
    y = torch.complex(_randn(2, 3, 10, 11, seed=9), _randn(2, 3, 10, 11, seed=10))
    _assert_adjoint(op, x, y)


def test_inpaint_and_identity_adjoint():
    mask = torch.rand(5, 9, 8, generator=_gen(3)) > 0.4
    x, y = _randn(5, 9, 8, seed=11), _randn(5, 9, 8, seed=12)
    _assert_adjoint(InpaintOperator(mask), x, y)
    _assert_adjoint(IdentityOperator(), x, y)


@pytest.mark.parametrize("kernel", [gaussian_kernel(1.3), motion_kernel(7, 30), motion_kernel(5, 0),
                                    torch.rand(3, 5, generator=_gen(4))])
def test_blur_adjoint(kernel):
    op = BlurOperator(kernel)
    x, y = _randn(2, 3, 13, 11, seed=13), _randn(2, 3, 13, 11, seed=14)
    _assert_adjoint(op, x, y)


def test_blur_forward_is_zero_padded_convolution():
    kernel = torch.rand(3, 5, generator=_gen(5))  # asymmetric: convolution and correlation differ
    x = _randn(2, 12, 10, seed=15, dtype=torch.float64)
    out = BlurOperator(kernel.double()).forward(x)
    for i in range(2):
        expected = scipy.ndimage.convolve(x[i].numpy(), kernel.double().numpy(), mode="constant", cval=0.0)
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-12)


def test_operators_broadcast_over_batch_dimensions():
    mask = _line_mask(8, 9, 1)
    x = _randn(2, 3, 8, 9, seed=16)
    for op in (KspaceOperator(mask), InpaintOperator(mask), IdentityOperator(), BlurOperator(gaussian_kernel(1.0))):
        batched = op.forward(x)
        single = torch.stack([torch.stack([op.forward(x[i, j]) for j in range(3)]) for i in range(2)])
        torch.testing.assert_close(batched, single)


# ----------------------------------------------------------------------------- data consistency


def test_kspace_data_consistency_replaces_measured_samples_only():
    h, w = 12, 11
    mask = _line_mask(h, w, 2)
    op = KspaceOperator(mask)
    x0 = torch.complex(_randn(3, h, w, seed=20), _randn(3, h, w, seed=21))
    truth = _randn(3, h, w, seed=22)
    y = op.forward(truth)
    out = op.data_consistency(x0, y)
    k_out, k_x0 = fft2c(out), fft2c(x0)
    m = mask.expand(3, h, w)
    assert (k_out[m] - y[m]).abs().norm() <= 1e-5 * y[m].abs().norm()
    assert (k_out[~m] - k_x0[~m]).abs().norm() <= 1e-5 * k_x0[~m].abs().norm()
    # soft weight: measured samples become (1 - lambda) F x0 + lambda y
    soft = fft2c(op.data_consistency(x0, y, weight=0.25))
    expected = 0.75 * k_x0[m] + 0.25 * y[m]
    assert (soft[m] - expected).abs().norm() <= 1e-5 * expected.abs().norm()
    # projection: applying it twice changes nothing; real input gives a real output
    torch.testing.assert_close(op.data_consistency(out, y), out, atol=1e-5, rtol=1e-5)
    real = op.data_consistency(truth + 0.1, y)
    assert real.dtype == torch.float32
    torch.testing.assert_close(op.data_consistency(truth, y), truth, atol=1e-5, rtol=1e-5)


def test_inpaint_and_identity_data_consistency():
    mask = torch.rand(2, 7, 6, generator=_gen(6)) > 0.5
    x0, y = _randn(2, 7, 6, seed=23), _randn(2, 7, 6, seed=24)
    op = InpaintOperator(mask)
    out = op.data_consistency(x0, op.forward(y))
    assert torch.equal(out[mask], y[mask]) and torch.equal(out[~mask], x0[~mask])
    half = op.data_consistency(x0, op.forward(y), weight=0.5)
    torch.testing.assert_close(half[mask], 0.5 * (x0[mask] + y[mask]))
    torch.testing.assert_close(IdentityOperator().data_consistency(x0, y, weight=0.3), x0 + 0.3 * (y - x0))
    per_image = torch.tensor([0.0, 1.0]).reshape(2, 1, 1)
    result = IdentityOperator().data_consistency(x0, y, weight=per_image)
    assert torch.equal(result[0], x0[0])
    torch.testing.assert_close(result[1], y[1])
    with pytest.raises(ValueError):
        IdentityOperator().data_consistency(x0, y, weight=1.5)


def test_blur_data_consistency_matches_dense_solve():
    h, w = 6, 7
    kernel = motion_kernel(3, 45).double()
    op = BlurOperator(kernel, mu=0.05, cg_iterations=h * w)
    x0 = _randn(2, h, w, seed=25, dtype=torch.float64)
    y = op.forward(_randn(2, h, w, seed=26, dtype=torch.float64))
    # dense A from the operator's columns
    eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, h, w)
    a = op.forward(eye).reshape(h * w, h * w).T
    for weight in (1.0, 0.4):
        out = op.data_consistency(x0, y, weight=weight)
        for i in range(2):
            lhs = weight * a.T @ a + 0.05 * torch.eye(h * w, dtype=torch.float64)
            rhs = weight * a.T @ y[i].reshape(-1) + 0.05 * x0[i].reshape(-1)
            expected = torch.linalg.solve(lhs, rhs).reshape(h, w)
            torch.testing.assert_close(out[i], expected, atol=1e-8, rtol=1e-8)
    assert torch.equal(op.data_consistency(x0, y, weight=0.0), x0)


def test_blur_data_consistency_few_iterations_reduce_residual():
    op = BlurOperator(gaussian_kernel(1.5), cg_iterations=5)
    truth = _randn(3, 24, 20, seed=27)
    y = op.forward(truth)
    x0 = truth + 0.5 * _randn(3, 24, 20, seed=28)
    out = op.data_consistency(x0, y)
    assert (op.forward(out) - y).norm() < 0.5 * (op.forward(x0) - y).norm()


# ----------------------------------------------------------------------------- kernels


def test_kernels_sum_to_one_are_odd_and_centrosymmetric():
    for kernel in (gaussian_kernel(0.7), gaussian_kernel(2.5), motion_kernel(1, 0), motion_kernel(9, 0),
                   motion_kernel(9, 90), motion_kernel(12.5, 37)):
        assert kernel.dtype == torch.float32
        assert kernel.shape[0] % 2 == 1 and kernel.shape[1] % 2 == 1
        assert math.isclose(float(kernel.double().sum()), 1.0, rel_tol=1e-6)
        assert (kernel >= 0).all()
        torch.testing.assert_close(kernel, torch.flip(kernel, (0, 1)))


def test_gaussian_kernel_variance_and_motion_direction():
    k = gaussian_kernel(2.0).double()
    r = k.shape[0] // 2
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    variance = float((k.sum(dim=1) * offsets**2).sum())
    assert math.isclose(variance, 4.0, rel_tol=0.02)
    along0 = motion_kernel(7, 0)
    assert along0.shape[1] == 1 and along0.shape[0] == 7  # blur along array axis 0 only
    along1 = motion_kernel(7, 90)
    assert along1.shape == (1, 7)
    diagonal = motion_kernel(7, 45)
    assert float(diagonal.diagonal().sum()) > 0.5  # mass on the main diagonal (+axis0, +axis1)
    with pytest.raises(ValueError):
        gaussian_kernel(0.0)
    with pytest.raises(ValueError):
        motion_kernel(0.5, 0)


# ----------------------------------------------------------------------------- layout and descriptor


def test_volume_slice_layout_round_trip():
    vol = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    slices = volume_to_slices(vol)
    assert slices.shape == (4, 2, 3) and torch.equal(slices[1], vol[:, :, 1])
    assert torch.equal(slices_to_volume(slices), vol)


def test_descriptor_slots():
    assert DESCRIPTOR_LENGTH == len(DESCRIPTOR_SLOTS)
    assert torch.equal(null_descriptor(), torch.zeros(DESCRIPTOR_LENGTH))
    k4 = make_descriptor("kspace", {"acceleration": 4, "center_fraction": 0.08, "pattern": "random"})
    k8 = make_descriptor("kspace", {"acceleration": 8, "center_fraction": 0.04, "pattern": "equispaced"})
    slot = {name: i for i, name in enumerate(DESCRIPTOR_SLOTS)}
    assert k4[slot["kind_kspace"]] == 1 and k4[:4].sum() == 1
    assert math.isclose(float(k4[slot["log2_acceleration"]]), 0.5) and math.isclose(float(k8[4]), 0.75)
    assert math.isclose(float(k4[slot["center_fraction"]]), 0.8, rel_tol=1e-6)
    assert k8[slot["pattern_equispaced"]] == 1
    noise = make_descriptor("noise", {"noise_model": "rician", "sigma_rel": 0.05})
    assert noise[slot["kind_noise"]] == 1 and noise[slot["rician"]] == 1
    assert math.isclose(float(noise[slot["noise_level"]]), 0.5, rel_tol=1e-6)
    motion = make_descriptor("blur", {"blur": "motion", "blur_sigma": 1.5, "motion_length": 9, "motion_angle": 90})
    assert math.isclose(float(motion[slot["blur_width"]]), 0.9, rel_tol=1e-6)
    assert math.isclose(float(motion[slot["motion_cos2"]]), -1.0, abs_tol=1e-6)
    for d in (k4, k8, noise, motion):
        assert d.shape == (DESCRIPTOR_LENGTH,) and d.dtype == torch.float32 and d.abs().sum() > 0


# ----------------------------------------------------------------------------- Observation file format


def _observations() -> list[Observation]:
    from monai.data import MetaTensor

    from medinvert import corrupt

    data = torch.rand(12, 10, 3, generator=_gen(30)) + 0.5
    affine = torch.tensor([[0.9, 0.1, 0, -5], [0, 1.1, 0, 3], [0, 0, 2.5, 7], [0, 0, 0, 1]], dtype=torch.float64)
    vol = MetaTensor(data, affine=affine, meta={"filename_or_obj": "/data/sub-01_T1w.nii.gz"})
    return [corrupt(vol, "kspace", seed=1, sigma=0.01), corrupt(vol, "mask", mask_type="blobs"),
            corrupt(vol, "noise", snr=10, noise_model="rician"),
            corrupt(vol, "blur", blur="motion", motion_length=5, motion_angle=20)]


@pytest.fixture(scope="module")
def observations() -> list[Observation]:
    return _observations()


def test_observation_save_load_round_trip_is_exact(observations, tmp_path):
    for obs in observations:
        npz, sidecar = obs.save(tmp_path / obs.kind)
        assert (npz, sidecar) == observation_paths(tmp_path / obs.kind)
        for spelling in (tmp_path / obs.kind, npz, sidecar):
            back = Observation.load(spelling)
            assert back.kind == obs.kind and back.params == obs.params and back.source == obs.source
            for name in ("y", "mask", "adjoint", "descriptor", "affine"):
                a, b = getattr(obs, name), getattr(back, name)
                assert a.dtype == b.dtype and torch.equal(a, b), name
            assert (obs.kernel is None and back.kernel is None) or torch.equal(obs.kernel, back.kernel)
        header = json.loads(sidecar.read_text())
        assert header["npz_sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
        with np.load(npz, allow_pickle=False) as archive:  # an open format: plain numpy reads it
            assert archive["mask"].dtype == np.uint8 and archive["mask"].shape == obs.shape


def test_observation_save_is_byte_deterministic(observations, tmp_path):
    obs = observations[0]
    first = [p.read_bytes() for p in obs.save(tmp_path / "a")]
    second = [p.read_bytes() for p in obs.save(tmp_path / "b")]
    assert first[0] == second[0]
    assert json.loads(first[1])["npz_sha256"] == json.loads(second[1])["npz_sha256"]


def test_observation_operator_reproduces_measurements(observations):
    kspace, mask, _, blur = observations
    truth = torch.rand(12, 10, 3, generator=_gen(30)) + 0.5
    torch.testing.assert_close(blur.operator().forward(volume_to_slices(truth)), blur.y)
    torch.testing.assert_close(mask.operator().forward(volume_to_slices(truth)), mask.y)
    measured = kspace.operator().forward(volume_to_slices(truth))
    noise = (kspace.y - measured)[volume_to_slices(kspace.mask)]
    assert float(noise.abs().pow(2).mean().sqrt()) < 0.05  # only the added sigma=0.01 noise remains
    assert torch.equal(kspace.y[~volume_to_slices(kspace.mask)], torch.zeros_like(kspace.y[~volume_to_slices(kspace.mask)]))


def _rewrite(npz: Path, sidecar: Path, contents: dict[str, np.ndarray], **header_changes) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **contents)
    npz.write_bytes(buffer.getvalue())
    header = json.loads(sidecar.read_text())
    header["npz_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    header.update(header_changes)
    sidecar.write_text(json.dumps(header))


def test_observation_load_rejects_damaged_files(observations, tmp_path):
    obs = observations[3]  # blur: has a kernel
    npz, sidecar = obs.save(tmp_path / "obs")
    good_npz, good_json = npz.read_bytes(), sidecar.read_text()
    with np.load(npz) as archive:
        arrays = {k: archive[k] for k in archive.files}

    def expect(fragment: str, name: Path) -> None:
        with pytest.raises(MedinvertError) as info:
            Observation.load(sidecar)
        message = str(info.value)
        assert str(name) in message and fragment in message and "\n" not in message
        npz.write_bytes(good_npz)
        sidecar.write_text(good_json)

    damaged = bytearray(good_npz)
    damaged[len(damaged) // 2] ^= 0xFF
    npz.write_bytes(bytes(damaged))
    expect("checksum", npz)
    sidecar.write_text(good_json[:-10])
    expect("not valid JSON", sidecar)
    assert '"format_version": 2' in good_json
    sidecar.write_text(good_json.replace('"format_version": 2', '"format_version": 99'))
    expect("format_version", sidecar)
    npz.unlink()
    expect("not found", npz)
    _rewrite(npz, sidecar, {k: v for k, v in arrays.items() if k != "kernel"})
    expect("missing arrays ['kernel']", npz)
    _rewrite(npz, sidecar, {**arrays, "adjoint": arrays["adjoint"].astype(np.float64)})
    expect("adjoint", npz)
    _rewrite(npz, sidecar, {**arrays, "y": arrays["y"][:, :-1]},
             arrays={**json.loads(good_json)["arrays"], "y": {"shape": list(arrays["y"][:, :-1].shape),
                                                               "dtype": "float32"}})
    expect("inconsistent observation", npz)
    _rewrite(npz, sidecar, {**arrays, "y": np.array([object()], dtype=object)})
    expect("cannot be read", npz)
    sidecar.unlink()
    with pytest.raises(MedinvertError, match="sidecar not found"):
        Observation.load(npz)


def test_a_version_1_observation_without_header_or_modality_still_loads(tmp_path):
    """Files written before format 2 have no ``nifti_header`` array and no ``modality``."""
    from medinvert import corrupt

    volume = torch.rand(12, 10, 2) * 100
    observation = corrupt(volume, "kspace", seed=3, acceleration=4)
    npz, sidecar = observation.save(tmp_path / "old")
    header = json.loads(sidecar.read_text())
    header["format_version"] = 1
    del header["modality"]
    sidecar.write_text(json.dumps(header))
    loaded = Observation.load(sidecar)
    assert loaded.nifti_header is None and loaded.modality is None and torch.equal(loaded.y, observation.y)
