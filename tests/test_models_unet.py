"""LipschitzUNet: shapes for any input size, conditioning / null embedding, determinism, variants."""

from __future__ import annotations

import copy

import pytest
import torch

from medinvert.errors import MedinvertError
from medinvert.models import AdditiveCouplingBlock, LipschitzUNet, freeze_spectral_norm, refresh_spectral_vectors
from medinvert.models.layers import ACTIVATION_LIPSCHITZ, FiLM, depth_to_space, space_to_depth
from medinvert.models.lipschitz import layer_spectral_norms

SMALL = {"channels": (8, 16, 32), "emb_dim": 32, "time_dim": 16}


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_film(model: torch.nn.Module, seed: int = 0) -> None:
    """Give the (zero-initialised) FiLM projections random weights so conditioning matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FiLM):
                module.proj.weight.copy_(torch.randn(module.proj.weight.shape, generator=gen))
                module.proj.bias.copy_(torch.randn(module.proj.bias.shape, generator=gen))
        model.null_cond.copy_(torch.randn(model.null_cond.shape, generator=gen))


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"dim": "2d", "n_cond_channels": 1}, (37, 53)),
        ({"dim": "2d"}, (1, 1)),
        ({"dim": "2d", "patch": 1}, (16, 9)),
        ({"dim": "2.5d", "neighbours": 2, "n_cond_channels": 1}, (29, 31)),
        ({"dim": "3d", "n_cond_channels": 1}, (5, 13, 11)),
        ({"dim": "2d", "block": "coupling"}, (21, 40)),
    ],
)
def test_any_input_size_returns_same_spatial_shape(kwargs: dict, shape: tuple[int, ...]) -> None:
    model = LipschitzUNet(**SMALL, **kwargs).eval()
    x = torch.randn(2, model.in_channels, *shape)
    with torch.no_grad():
        out = model(x, torch.tensor([0.1, 0.9]), torch.randn(2, 8))
    assert out.shape == (2, 1, *shape)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_in_channels_per_variant() -> None:
    assert LipschitzUNet(**SMALL).in_channels == 1
    assert LipschitzUNet(**SMALL, n_cond_channels=2).in_channels == 3
    assert LipschitzUNet(**SMALL, dim="2.5d", neighbours=3, n_cond_channels=1).in_channels == 8
    assert LipschitzUNet(**SMALL, dim="3d", n_cond_channels=1).in_channels == 2


def test_fully_convolutional_translation_equivariance_in_interior() -> None:
    """Shifting the input by the padding multiple shifts the output (away from the borders)."""
    torch.manual_seed(0)
    model = LipschitzUNet(**SMALL, spectral_norm=False).eval()
    big = torch.randn(1, 1, 32, 192)  # receptive-field radius ~50 px: compare far from the wrap
    step = model.multiple
    with torch.no_grad():
        a = model(big, 0.5)
        b = model(torch.roll(big, shifts=step, dims=3), 0.5)
    inner = slice(80, 104)
    torch.testing.assert_close(a[..., inner], b[..., inner.start + step : inner.stop + step], rtol=1e-4, atol=1e-5)


def test_cond_none_is_null_embedding_and_cond_drop_selects_rows() -> None:
    torch.manual_seed(1)
    model = LipschitzUNet(**SMALL).eval()
    _randomise_film(model)
    x = torch.randn(3, 1, 24, 24)
    t = torch.tensor([0.2, 0.5, 0.8])
    cond = torch.randn(3, 8)
    with torch.no_grad():
        null = model(x, t, None)
        all_dropped = model(x, t, cond, cond_drop=torch.ones(3, dtype=torch.bool))
        conditioned = model(x, t, cond)
        mixed = model(x, t, cond, cond_drop=torch.tensor([True, False, True]))
        zeros = model(x, t, torch.zeros(3, 8))
    assert torch.equal(null, all_dropped)
    assert not torch.allclose(null, conditioned)
    # the all-zero descriptor is a condition like any other, not the null embedding
    assert not torch.allclose(null, zeros)
    torch.testing.assert_close(mixed[[0, 2]], null[[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], conditioned[1], rtol=0, atol=1e-6)


def test_time_changes_output_and_scalar_time_broadcasts() -> None:
    torch.manual_seed(2)
    model = LipschitzUNet(**SMALL).eval()
    _randomise_film(model)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a = model(x, torch.full((2,), 0.3))
        b = model(x, 0.3)
        c = model(x, torch.full((2,), 0.7))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_repeat_calls_are_bitwise_identical_and_batch_rows_agree() -> None:
    """Same input -> same bytes.  Batch composition: rows agree to float tolerance.

    oneDNN picks kernels by tensor shape, so a slice evaluated alone and inside a batch can differ
    in the last bits (observed on this CPU: ~3e-8 at 37x37); bit-exact pipelines must keep the
    batch composition fixed (docs/lipschitz.md, "Determinism").
    """
    torch.manual_seed(3)
    model = LipschitzUNet(**SMALL, n_cond_channels=1).eval()
    _randomise_film(model)
    x = torch.randn(4, 2, 37, 37)
    t = torch.rand(4)
    cond = torch.randn(4, 8)
    with torch.no_grad():
        first = model(x, t, cond)
        second = model(x, t, cond)
        single = model(x[2:3], t[2:3], cond[2:3])
    assert torch.equal(first, second)
    torch.testing.assert_close(single, first[2:3], rtol=1e-5, atol=1e-6)


def test_frozen_model_gives_identical_bytes_and_leaves_original_intact() -> None:
    torch.manual_seed(4)
    model = LipschitzUNet(**SMALL).eval()
    _randomise_film(model)
    frozen = freeze_spectral_norm(copy.deepcopy(model))
    assert not any(hasattr(m, "parametrizations") for m in frozen.modules())
    x = torch.randn(2, 1, 20, 28)
    with torch.no_grad():
        assert torch.equal(model(x, 0.4), frozen(x, 0.4))
    # the original still has its (shared-class) parametrized weights
    assert all(hasattr(m, "parametrizations") for m in model.x_path_convs())
    assert model.stem.weight.shape == frozen.stem.weight.shape


def test_spectral_norm_targets_follow_overlap_factor() -> None:
    model = LipschitzUNet(**SMALL, sn_target=0.8)
    refresh_spectral_vectors(model)
    table = layer_spectral_norms(model)
    assert len(table) == len(model.x_path_convs())
    for row in table.values():
        assert row["target"] == pytest.approx(0.8 / row["overlap"] ** 0.5)
        assert row["matrix_norm"] == pytest.approx(row["target"], rel=1e-5)
        assert row["operator_bound"] == pytest.approx(0.8, rel=1e-5)


def test_coupling_block_is_exactly_invertible() -> None:
    torch.manual_seed(5)
    for parity in (0, 1):
        block = AdditiveCouplingBlock(5, 12, 2, "silu", 1.0, parity=parity).double()
        with torch.no_grad():
            block.film.proj.weight.normal_()
        x = torch.randn(2, 5, 9, 7, dtype=torch.float64)
        emb = torch.randn(2, 12, dtype=torch.float64)
        with torch.no_grad():
            y = block(x, emb)
            back = block.inverse(y, emb)
        torch.testing.assert_close(back, x, rtol=0, atol=1e-12)
        # the kept half passes through untouched
        keep = slice(0, block.c_keep) if parity == 0 else slice(block.c_move, 5)
        assert torch.equal(y[:, keep], x[:, keep])


def test_space_to_depth_is_a_permutation_in_3d() -> None:
    x = torch.arange(2 * 3 * 4 * 6 * 8, dtype=torch.float64).reshape(2, 3, 4, 6, 8)
    folded = space_to_depth(x, 2)
    assert folded.shape == (2, 24, 2, 3, 4)
    assert torch.equal(torch.sort(folded.flatten()).values, torch.sort(x.flatten()).values)
    assert torch.equal(depth_to_space(folded, 2), x)


def test_activation_constants_bound_the_derivative() -> None:
    z = torch.linspace(-20, 20, 400001, dtype=torch.float64, requires_grad=True)
    for name, lip in ACTIVATION_LIPSCHITZ.items():
        from medinvert.models.layers import make_activation

        (grad,) = torch.autograd.grad(make_activation(name)(z).sum(), z)
        assert float(grad.abs().max()) <= lip
    # SiLU's true constant is 1.0998..., so 1.1 is tight to 2e-4
    (grad,) = torch.autograd.grad(torch.nn.functional.silu(z).sum(), z)
    assert float(grad.max()) > 1.0995


def test_film_gain_bounded_for_extreme_embeddings() -> None:
    film = FiLM(6, 4, scale_max=0.5)
    with torch.no_grad():
        film.proj.weight.normal_(std=100.0)
    with torch.no_grad():
        gain, _ = film.gain_and_shift(torch.randn(50, 4) * 100)
    assert float(gain.abs().max()) <= 1.5
    assert float(gain.min()) >= 0.5


def test_default_model_is_lean() -> None:
    model = LipschitzUNet(n_cond_channels=1)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 <= n_params <= 2e6
    # float32 weights + spectral-norm vectors, well under the 10 MiB checkpoint budget
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert n_bytes <= 10 * 2**20 / 2  # room for an EMA copy in the same file


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": "4d"}, "unknown network dim"),
        ({"dim": "2.5d"}, "neighbours >= 1"),
        ({"dim": "2d", "neighbours": 1}, "only applies"),
        ({"activation": "relu6"}, "unknown activation"),
        ({"block": "dense"}, "unknown block"),
        ({"sn_target": 0.0}, "sn_target"),
        ({"time_dim": 7}, "time_dim"),
    ],
)
def test_bad_configuration_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(MedinvertError, match=message):
        LipschitzUNet(**kwargs)


def test_bad_inputs_raise_one_line_errors() -> None:
    model = LipschitzUNet(**SMALL, n_cond_channels=1)
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(MedinvertError, match="input channels"):
        model(torch.randn(2, 1, 8, 8), torch.rand(2))
    with pytest.raises(MedinvertError, match="must have 4 dims"):
        model(torch.randn(2, 2, 8), torch.rand(2))
    with pytest.raises(MedinvertError, match="time t"):
        model(x, torch.rand(3))
    with pytest.raises(MedinvertError, match=r"\[0, 1\]"):
        model(x, torch.tensor([0.5, float("nan")]))
    with pytest.raises(MedinvertError, match="condition must have shape"):
        model(x, torch.rand(2), torch.randn(2, 5))
    with pytest.raises(MedinvertError, match="cond_drop"):
        model(x, torch.rand(2), torch.randn(2, 8), cond_drop=torch.ones(2))


def test_from_config_round_trip_and_unknown_key() -> None:
    model = LipschitzUNet(**SMALL, dim="2.5d", neighbours=1, block="coupling")
    again = LipschitzUNet.from_config(model.config)
    assert again.config == model.config
    assert again.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(MedinvertError, match="unknown architecture option"):
        LipschitzUNet.from_config({**model.config, "depth": 3})


def test_single_3d_patch_matches_batched_evaluation_and_gradient() -> None:
    """Batch-1 3D inputs are evaluated as a pair of copies (speed); values and gradients unchanged."""
    torch.manual_seed(6)
    model = LipschitzUNet(dim="3d", channels=(4, 8), emb_dim=16, time_dim=8).double()
    x = torch.randn(2, 1, 5, 6, 7, dtype=torch.float64)
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    single = x[:1].clone().requires_grad_(True)
    out = model(single, t[:1])
    (grad,) = torch.autograd.grad(out.square().sum(), single)
    batched = x.clone().requires_grad_(True)
    out_b = model(batched, t)
    (grad_b,) = torch.autograd.grad(out_b[:1].square().sum(), batched)
    torch.testing.assert_close(out, out_b[:1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_b[:1], rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(grad_b[1:]) == 0
