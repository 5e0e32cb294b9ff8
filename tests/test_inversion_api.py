"""`medinvert.invert` / `medinvert.generate`: bit-exact volume round trips and the model contract.

Real networks only: the built-in seeded random `LipschitzUNet` ("random") and small explicit ones.
Volumes are tiny (a few slices of ~24 x 20) so every test runs in about a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import medinvert
from medinvert.errors import MedinvertError
from medinvert.inversion import (
    RANDOM_MODEL,
    ResolvedNetwork,
    default_model,
    generate,
    invert,
    random_network,
    resolve_network,
    roundtrip,
)
from medinvert.models import LipschitzUNet, save_checkpoint, state_dict_sha256
from medinvert.operators import DESCRIPTOR_LENGTH


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def net() -> ResolvedNetwork:
    """The "random" model, resolved once (invert records it as "random:0", generate rebuilds it)."""
    return resolve_network(RANDOM_MODEL)


def bits(volume: torch.Tensor) -> np.ndarray:
    """float32 bit patterns of a volume (so -0.0 != 0.0 and every mantissa bit counts)."""
    return volume.detach().cpu().as_subclass(torch.Tensor).to(torch.float32).contiguous().view(torch.int32).numpy()


def assert_bit_identical(out: torch.Tensor, volume: torch.Tensor) -> None:
    assert tuple(out.shape) == tuple(volume.shape)
    np.testing.assert_array_equal(bits(out), bits(volume))


def off_grid_count(volume: torch.Tensor, scale: float, frac_bits: int) -> int:
    """Voxels a grid 2^-q cannot hold after division by ``scale`` -- computed independently in numpy:
    ``u = v / scale`` must be a float32 multiple of 2^-q (exact integer after scaling) and not -0.0."""
    v = volume.numpy().astype(np.float32)
    u = (v / np.float32(scale)).astype(np.float32)
    back = (u.astype(np.float64) * 2.0**frac_bits)
    on = (np.floor(back) == back) & ~((u == 0) & np.signbit(u)) & (u.astype(np.float64) * scale == v.astype(np.float64))
    return int((~on).sum())


# ---------------------------------------------------------------------- exact: bit identity
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), steps=st.integers(2, 6), batch=st.integers(1, 4),
       log_scale=st.floats(-8, 12), shape=st.sampled_from([(24, 20, 3), (17, 9, 2), (8, 8, 1)]))
def test_exact_round_trip_is_bit_identical_for_random_float32_volumes(net, seed, steps, batch, log_scale, shape):
    gen = torch.Generator().manual_seed(seed)
    volume = torch.randn(shape, generator=gen) * float(2.0**log_scale) + float(3.0**log_scale)
    latent = invert(volume, net, steps=steps, batch_size=batch)
    assert latent.stats["nfe_per_step"] == 1
    assert_bit_identical(generate(latent, net), volume)


@pytest.mark.parametrize("case", ["raw_0_4095", "negative", "odd_37x53x5", "constant", "zeros"])
def test_exact_round_trip_special_volumes(net, case):
    rng = np.random.default_rng(7)
    volume = {
        "raw_0_4095": torch.from_numpy(rng.integers(0, 4096, (24, 20, 3)).astype(np.float32)),
        "negative": torch.from_numpy((rng.standard_normal((24, 20, 3)) * 300 - 500).astype(np.float32)),
        "odd_37x53x5": torch.from_numpy(rng.uniform(-1, 1, (37, 53, 5)).astype(np.float32)),
        "constant": torch.full((9, 7, 2), 1234.5),
        "zeros": torch.zeros(9, 7, 2),
    }[case]
    latent = invert(volume, net, steps=4)
    assert latent.patch_size == off_grid_count(volume, latent.scale, latent.frac_bits)
    assert_bit_identical(generate(latent, net), volume)


def test_values_spanning_many_magnitudes_use_the_exception_patch(net):
    rng = np.random.default_rng(3)
    magnitudes = 10.0 ** rng.uniform(-30, 3, (24, 20, 3))
    data = (np.sign(rng.standard_normal((24, 20, 3))) * magnitudes).astype(np.float32)
    data[0, 0, 0] = -0.0
    data[1, 0, 0] = np.float32(1e-45)  # the smallest float32 subnormal
    volume = torch.from_numpy(data)
    latent = invert(volume, net, steps=3)
    expected = off_grid_count(volume, latent.scale, latent.frac_bits)
    assert latent.patch_size == expected > 0
    # the patch holds exactly the original values at its indices
    np.testing.assert_array_equal(latent.patch_values.view(np.int32), data.reshape(-1)[latent.patch_index].view(np.int32))
    assert_bit_identical(generate(latent, net), volume)


def test_2d_input_and_trailing_singleton_axes(net):
    image = torch.randn(16, 12) * 50
    latent = invert(image, net, steps=3)
    assert latent.shape == (16, 12, 1)
    assert_bit_identical(generate(latent, net), image[:, :, None])
    volume4d = torch.randn(10, 8, 3, 1)
    latent = invert(volume4d, net, steps=3)
    assert_bit_identical(generate(latent, net), volume4d[..., 0])


def test_metatensor_affine_and_meta_are_restored(net):
    from medinvert.io.nifti import make_meta_tensor

    affine = np.array([[0.9, 0.1, 0, -20], [0, 1.1, 0.2, 15], [0.05, 0, 2.5, 3], [0, 0, 0, 1]])
    data = np.random.default_rng(1).uniform(0, 900, (20, 14, 3)).astype(np.float32)
    volume = make_meta_tensor(data, affine, {"filename_or_obj": "/data/sub_T1w.nii.gz", "modality": "t1"})
    latent = invert(volume, net, steps=3)
    out = generate(latent, net)
    np.testing.assert_array_equal(out.affine.numpy(), affine)
    assert out.meta["filename_or_obj"] == "/data/sub_T1w.nii.gz"
    assert out.meta["modality"] == "t1"
    assert_bit_identical(out, torch.from_numpy(data))


def test_guided_exact_round_trip_with_a_condition_costs_two_nfe_per_step(net):
    volume = torch.randn(12, 10, 2) * 3
    descriptor = torch.linspace(-1, 1, DESCRIPTOR_LENGTH)
    latent = invert(volume, net, steps=4, guidance=2.5, condition=descriptor)
    assert latent.stats["nfe_per_step"] == 2
    np.testing.assert_array_equal(latent.cond_descriptor, descriptor.numpy())
    assert_bit_identical(generate(latent, net), volume)


def test_conditioning_image_of_an_observation_reaches_the_network():
    """A network with one conditioning channel sees A^H y / scale; the latent keeps it for generate."""
    from medinvert import corrupt
    from medinvert.io.nifti import make_meta_tensor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        cond_net = LipschitzUNet(n_cond_channels=1, descriptor_dim=DESCRIPTOR_LENGTH, channels=(4, 8),
                                 emb_dim=16, time_dim=8).eval()
    data = np.random.default_rng(2).uniform(0, 400, (16, 16, 2)).astype(np.float32)
    volume = make_meta_tensor(data, np.eye(4), {"filename_or_obj": "vol.nii.gz"})
    observation = corrupt(volume, "noise", sigma=20.0, seed=1)
    latent = invert(volume, cond_net, steps=3, condition=observation, guidance=1.5)
    np.testing.assert_array_equal(latent.cond_image, observation.adjoint.numpy())
    assert_bit_identical(generate(latent, cond_net), torch.from_numpy(data))
    # a different conditioning image changes the latent (the channel is really used)
    other = invert(volume, cond_net, steps=3, condition=corrupt(volume, "noise", sigma=20.0, seed=2), guidance=1.5)
    assert not torch.equal(other.state.z, latent.state.z)


# ---------------------------------------------------------------------- other methods
@pytest.mark.parametrize("method", ["edict", "bdia"])
def test_edict_and_bdia_round_trip_in_float64(net, method):
    volume = torch.from_numpy(np.random.default_rng(4).uniform(0, 1000, (16, 12, 2)).astype(np.float32))
    result = roundtrip(volume, net, method=method, steps=5, dtype="float64")
    assert result["relative_error"] < 1e-9
    assert result["nfe_per_step"] == {"edict": 2, "bdia": 1}[method]


def test_ddim_round_trip_error_is_reported(net):
    volume = torch.from_numpy(np.random.default_rng(5).uniform(0, 1000, (16, 12, 2)).astype(np.float32))
    result = roundtrip(volume, net, method="ddim", steps=4)
    assert result["max_abs_error"] > 0 and not result["bit_identical"]
    assert result["nfe"] == 8 and result["nfe_per_step"] == 1


def test_float_states_keep_the_requested_dtype(net):
    volume = torch.randn(8, 8, 2)
    assert invert(volume, net, method="ddim", steps=2, dtype="float64").state.dtype == torch.float64
    assert invert(volume, net, method="edict", steps=2, dtype="float32").state.x.dtype == torch.float64  # state_dtype
    assert invert(volume, net, method="edict", steps=2, dtype="float32", state_dtype="float32").state.x.dtype == torch.float32
    assert invert(volume, net, method="exact", steps=2, dtype="float64").state.z.dtype == torch.int64


# ---------------------------------------------------------------------- NFE and batching
class CountingNet(nn.Module):
    """Counts forward calls and the batch sizes the wrapped network receives."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []
        self.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        return self.inner(x, t, cond)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_network_evaluations_and_slice_batches_are_counted_independently(batch_size):
    counting = CountingNet(random_network(0))
    z, steps = 5, 4
    latent = invert(torch.randn(12, 10, z), counting, steps=steps, batch_size=batch_size)
    chunks = math.ceil(z / batch_size)
    assert len(counting.batches) == steps * chunks == latent.stats["forward_calls"]
    assert latent.stats["nfe"] == steps and latent.stats["nfe_per_step"] == 1
    expected = [min(batch_size, z - start) for start in range(0, z, batch_size)] * steps
    assert counting.batches == expected
    counting.batches.clear()
    generate(latent, counting)
    assert counting.batches == expected[: len(expected) - chunks]  # generation from a pair: steps - 1 evaluations


# ---------------------------------------------------------------------- models
def test_checkpoint_sha256_is_checked_on_generate(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, random_network(1), {"schedule": {"kind": "linear"}, "prediction": "eps"})
    volume = torch.randn(10, 8, 2) * 10
    latent = invert(volume, str(path), steps=3)
    assert latent.model["kind"] == "checkpoint" and latent.model["sha256_of"] == "file"
    assert latent.schedule["kind"] == "linear"
    assert_bit_identical(generate(latent), volume)  # re-resolved from the recorded path, hash matches

    save_checkpoint(path, random_network(2), {"schedule": {"kind": "linear"}})  # same name, other weights
    with pytest.raises(MedinvertError, match="SHA-256"):
        generate(latent)
    out = generate(latent, str(path))  # an explicit model overrides the check
    assert out.shape == volume.shape
    path.unlink()
    with pytest.raises(MedinvertError, match="cannot be found"):
        generate(latent)


def test_in_memory_module_needs_the_model_on_generate():
    module = random_network(4)
    latent = invert(torch.randn(8, 8, 2), module, steps=3)
    assert latent.model == {**latent.model, "kind": "module", "sha256": state_dict_sha256(module.state_dict())}
    with pytest.raises(MedinvertError, match="in-memory model"):
        generate(latent)
    assert generate(latent, module).shape == (8, 8, 2)


def test_random_models_are_seeded_and_identified_by_their_weights():
    a, b, c = resolve_network("random"), resolve_network("random:0"), resolve_network("random:1")
    assert a.reference["name"] == b.reference["name"] == "random:0"
    assert a.reference["sha256"] == b.reference["sha256"] != c.reference["sha256"]
    assert a.reference["sha256"] == state_dict_sha256(random_network(0).state_dict())
    with pytest.raises(MedinvertError, match="seed"):
        resolve_network("random:x")


def test_default_model_is_the_modalitys_shipped_model_or_random():
    from medinvert.models.registry import available_models

    assert default_model(None) == RANDOM_MODEL
    for modality in ("t1", "t2w", "flair"):
        name = default_model(modality)
        assert name == RANDOM_MODEL or name in available_models()


def test_3d_network_modules_invert_the_whole_volume_exactly():
    with torch.random.fork_rng(devices=[]):
        net3d = LipschitzUNet(dim="3d", channels=(4,), emb_dim=8, time_dim=4, patch=1, descriptor_dim=4).eval()
    volume = torch.randn(8, 8, 3)
    latent = invert(volume, net3d, steps=2)
    assert latent.stats["forward_calls"] == 2  # one network call per step: the whole volume at once
    assert torch.equal(generate(latent, net3d).as_tensor(), volume)


def test_caller_module_is_not_modified_by_a_float64_run():
    module = random_network(0)
    before = state_dict_sha256(module.state_dict())
    invert(torch.randn(8, 8, 2), module, steps=2, method="bdia", dtype="float64")
    assert next(module.parameters()).dtype == torch.float32
    assert state_dict_sha256(module.state_dict()) == before


# ---------------------------------------------------------------------- determinism and errors
def test_torch_settings_are_restored_after_a_call(net):
    threads = torch.get_num_threads()
    flag = torch.are_deterministic_algorithms_enabled()
    invert(torch.randn(8, 8, 2), net, steps=2, threads=1)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == flag


def test_same_input_gives_the_same_latent(net):
    volume = torch.randn(12, 10, 3) * 7
    first, second = invert(volume, net, steps=3), invert(volume.clone(), net, steps=3)
    assert torch.equal(first.state.z, second.state.z) and torch.equal(first.state.partner, second.state.partner)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps"),
    ({"method": "magic"}, "unknown method"),
    ({"method": "exact", "p": 0.9}, "no option"),
    ({"dtype": "float16"}, "dtype"),
    ({"batch_size": 0}, "batch_size"),
    ({"guidance": 2.0}, "needs a condition"),
    ({"spacing": "odd"}, "spacing"),
    ({"condition": [1.0, 2.0]}, "descriptor has length"),
])
def test_bad_arguments_raise_medinvert_error(net, kwargs, message):
    with pytest.raises(MedinvertError, match=message):
        invert(torch.randn(8, 8, 2), net, **kwargs)


def test_bad_volumes_raise_medinvert_error(net, tmp_path):
    bad = torch.randn(8, 8, 2)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(MedinvertError, match="NaN"):
        invert(bad, net, steps=2)
    with pytest.raises(MedinvertError, match=r"\(X, Y, Z\)"):
        invert(torch.randn(4, 4, 2, 3), net, steps=2)
    with pytest.raises(MedinvertError, match="no such file"):
        invert(tmp_path / "missing.nii.gz", net, steps=2)


def test_public_exports():
    assert medinvert.invert is invert and medinvert.generate is generate
    from medinvert.latent import Latent

    assert medinvert.Latent is Latent
