"""Lipschitz bounds: analytic >= empirical, conv-norm bounds vs the operator itself, SN targets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medinvert.models import (
    LipschitzUNet,
    conv_norm_bound,
    conv_norm_fourier,
    conv_norm_power,
    freeze_spectral_norm,
    jacobian_norm_at,
    layer_spectral_norms,
    lipschitz_empirical,
    lipschitz_upper_bound,
)
from medinvert.models.layers import FiLM

SMALL = {"channels": (4, 8, 16), "emb_dim": 16, "time_dim": 8}


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_film(model: nn.Module, seed: int, std: float = 1.0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FiLM):
                module.proj.weight.copy_(torch.randn(module.proj.weight.shape, generator=gen) * std)
                module.proj.bias.copy_(torch.randn(module.proj.bias.shape, generator=gen) * std)
    return model


CONFIGS = [
    ({"dim": "2d", "n_cond_channels": 1}, (1, 2, 16, 16)),
    ({"dim": "2d", "spectral_norm": False}, (1, 1, 16, 12)),
    ({"dim": "2d", "activation": "leaky_relu", "sn_target": 1.5, "film_scale_max": 2.0}, (1, 1, 12, 12)),
    ({"dim": "2d", "block": "coupling", "patch": 1}, (1, 1, 12, 12)),
    ({"dim": "2.5d", "neighbours": 1}, (1, 3, 12, 12)),
    ({"dim": "3d", "channels": (4, 8)}, (1, 1, 8, 8, 8)),
]


@pytest.mark.parametrize(("kwargs", "shape"), CONFIGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_analytic_bound_dominates_empirical_estimate(kwargs: dict, shape: tuple[int, ...], seed: int) -> None:
    torch.manual_seed(seed)
    model = _random_film(LipschitzUNet(**{**SMALL, **kwargs}), seed)
    cond = torch.randn(8)
    for t in (0.05, 0.7):
        empirical = lipschitz_empirical(model, shape, t=t, cond=cond, n_iter=12, n_probes=2, seed=seed)
        at_t = lipschitz_upper_bound(model, t=t, cond=cond)
        fourier = lipschitz_upper_bound(model, t=t, cond=cond, input_shape=shape)
        uniform = lipschitz_upper_bound(model)
        assert 0 < empirical <= fourier * (1 + 1e-9)
        assert fourier <= at_t * (1 + 1e-9)
        assert at_t <= uniform * (1 + 1e-9)


def test_bound_is_tight_for_a_single_linear_convolution_chain() -> None:
    """With one conv and no activation the Fourier bound equals the operator norm (circular case)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular", bias=False)
    size = 10
    # circular convolution on a 10x10 grid: exact norm = max over the DFT grid of ||W_hat(w)||
    exact = conv_norm_power(conv, (size, size), n_iter=300)
    fourier = conv_norm_fourier(conv, (size - 2, size - 2))  # grid N = S + k - 1 = 10
    assert exact == pytest.approx(fourier, rel=1e-4)


@pytest.mark.parametrize(
    ("make", "spatial"),
    [
        (lambda: nn.Conv2d(3, 6, 3, padding=1), (9, 11)),
        (lambda: nn.Conv2d(6, 4, 5, padding=2), (8, 8)),
        (lambda: nn.Conv2d(4, 8, 2, stride=2), (10, 6)),
        (lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1), (9, 9)),
        (lambda: nn.Conv2d(5, 7, 1), (6, 6)),
        (lambda: nn.Conv3d(2, 3, 3, padding=1), (5, 6, 4)),
    ],
)
def test_conv_operator_bounds_dominate_power_iteration(make, spatial) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    conv = make()
    with torch.no_grad():  # a smooth kernel component makes the sqrt(overlap) bound nearly tight
        conv.weight.add_(0.3 * conv.weight.mean(dim=tuple(range(2, conv.weight.dim())), keepdim=True))
    estimate = conv_norm_power(conv, spatial, n_iter=200)
    assert estimate > 0
    assert conv_norm_bound(conv) >= estimate * (1 - 1e-9)
    assert conv_norm_fourier(conv, spatial) >= estimate * (1 - 1e-9)


def test_matrix_bound_is_attained_by_constant_kernels() -> None:
    """All taps equal: a constant image sees sum of 9 taps, so ||conv|| -> 3 ||W_mat|| (tight)."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    bound = conv_norm_bound(conv)
    assert bound == pytest.approx(9.0, rel=1e-6)  # sqrt(9) * ||ones(1, 9)|| = 3 * 3
    estimate = conv_norm_power(conv, (64, 64), n_iter=300)
    assert 8.9 < estimate <= bound


def test_spectrally_normalised_layers_reach_their_targets() -> None:
    torch.manual_seed(0)
    model = LipschitzUNet(**SMALL, n_cond_channels=1, sn_target=1.0).train()
    x = torch.randn(2, 2, 16, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):  # the raw weights move; each training forward does one power iteration
        loss = model(x, torch.rand(2)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for _ in range(5):
            model(x, torch.rand(2))
    table = layer_spectral_norms(model)
    for name, row in table.items():
        assert row["target"] is not None, name
        assert row["matrix_norm"] <= row["target"] + 1e-3, name
        assert row["operator_bound"] <= 1.0 + 2e-3, name


def test_unnormalised_model_reports_no_target() -> None:
    model = LipschitzUNet(**SMALL, spectral_norm=False)
    assert all(row["target"] is None for row in layer_spectral_norms(model).values())


def test_power_iteration_matches_exact_jacobian_norm() -> None:
    """`jacobian_norm_at` converges to the top singular value of the full Jacobian (tiny input)."""
    torch.manual_seed(0)
    model = _random_film(LipschitzUNet(**SMALL, patch=1), 3)
    x = torch.randn(1, 1, 6, 5, dtype=torch.float64)
    estimate = jacobian_norm_at(model, x, t=0.3, n_iter=200)
    net = freeze_spectral_norm(copy.deepcopy(model)).double().eval()
    t = torch.full((1,), 0.3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: net(z, t), x).reshape(30, 30)
    exact = float(torch.linalg.matrix_norm(jac, ord=2))
    assert estimate <= exact * (1 + 1e-9)
    assert estimate == pytest.approx(exact, rel=1e-3)


def test_empirical_estimate_restricted_to_noisy_channel_is_smaller() -> None:
    torch.manual_seed(1)
    model = _random_film(LipschitzUNet(**SMALL, n_cond_channels=2), 1)
    shape = (1, 3, 12, 12)
    full = lipschitz_empirical(model, shape, n_iter=15, n_probes=1, seed=4)
    slice_only = lipschitz_empirical(model, shape, n_iter=15, n_probes=1, seed=4, channels=[0])
    assert 0 < slice_only <= full * (1 + 1e-6)


def test_estimates_do_not_modify_the_model() -> None:
    torch.manual_seed(2)
    model = LipschitzUNet(**SMALL).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lipschitz_empirical(model, (1, 1, 8, 8), n_iter=2, n_probes=1)
    lipschitz_upper_bound(model, t=0.5, input_shape=(1, 1, 8, 8))
    layer_spectral_norms(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    assert all(hasattr(m, "parametrizations") for m in model.x_path_convs())


def test_uniform_bound_matches_hand_computed_product() -> None:
    """Single level, no blocks: stem -> (act) -> head, so the bound is ||stem|| * 1.1 * ||head||."""
    model = LipschitzUNet(channels=(4,), blocks_per_level=0, mid_blocks=0, emb_dim=8, time_dim=4)
    expected = conv_norm_bound(model.stem) * 1.1 * conv_norm_bound(model.head)
    assert lipschitz_upper_bound(model) == pytest.approx(expected, rel=1e-12)
    model = LipschitzUNet(channels=(4,), blocks_per_level=0, mid_blocks=1, emb_dim=8, time_dim=4,
                          film_scale_max=0.5)
    blk = model.mid[0]
    block_bound = 1 + conv_norm_bound(blk.conv1) * 1.5 * 1.1 * conv_norm_bound(blk.conv2)
    expected = conv_norm_bound(model.stem) * block_bound * 1.1 * conv_norm_bound(model.head)
    assert lipschitz_upper_bound(model) == pytest.approx(expected, rel=1e-12)


def test_time_outside_unit_interval_is_rejected() -> None:
    from medinvert.errors import MedinvertError

    with pytest.raises(MedinvertError, match=r"\[0, 1\]"):
        lipschitz_upper_bound(LipschitzUNet(**SMALL), t=1.5)
