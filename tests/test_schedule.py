"""VP schedules: agreement with the discrete definitions, monotonicity, inverse, grids, coordinates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medinvert.errors import MedinvertError
from medinvert.schedule import (
    KINDS,
    SPACINGS,
    alpha_bar_of_sigma,
    ddim_coefficients,
    make_schedule,
    x_from_xbar,
    xbar_from_x,
)


def _discrete_alphas_cumprod(kind: str, n: int = 1000) -> np.ndarray:
    """alphas_cumprod at training timesteps 0..n-1, written from the papers' definitions."""
    if kind == "linear":
        betas = np.linspace(1e-4, 2e-2, n)
    elif kind == "scaled_linear":
        betas = np.linspace(8.5e-4**0.5, 1.2e-2**0.5, n) ** 2
    else:  # Nichol & Dhariwal: beta_i = 1 - f((i+1)/n) / f(i/n), clipped at 0.999
        f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        i = np.arange(n)
        betas = np.minimum(1 - f((i + 1) / n) / f(i / n), 0.999)
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("kind", KINDS)
def test_knots_match_discrete_schedule(kind):
    schedule = make_schedule(kind)
    n = schedule.num_train_timesteps
    t = torch.arange(1, n + 1, dtype=torch.float64) / n
    expected = _discrete_alphas_cumprod(kind, n)
    got = schedule.abar(t).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert float(schedule.abar(0.0)) == 1.0 and float(schedule.sigma_of_t(0.0)) == 0.0
    assert schedule.sigma_max == pytest.approx(math.sqrt((1 - expected[-1]) / expected[-1]), rel=1e-9)
    assert schedule.sigma_min == pytest.approx(math.sqrt((1 - expected[0]) / expected[0]), rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_monotone_and_inverse(kind):
    schedule = make_schedule(kind)
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    sigma = schedule.sigma_of_t(t)
    assert bool(torch.all(sigma[1:] > sigma[:-1]))
    # sigma = sqrt((1 - abar) / abar) by definition
    abar = schedule.abar(t)
    torch.testing.assert_close(sigma[1:], torch.sqrt((1 - abar[1:]) / abar[1:]), rtol=1e-7, atol=0)
    rand_t = torch.rand(5000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 3
    back = schedule.t_of_sigma(schedule.sigma_of_t(rand_t))
    assert float((back - rand_t).abs().max()) < 1e-13
    assert float(((back - rand_t).abs() / rand_t).max()) < 1e-10
    sig = torch.logspace(-4, math.log10(schedule.sigma_max), 3000, dtype=torch.float64)
    again = schedule.sigma_of_t(schedule.t_of_sigma(sig))
    assert float(((again - sig).abs() / sig).max()) < 1e-11


def test_cosine_closed_form_inside():
    schedule = make_schedule("cosine")
    t = torch.linspace(0, 0.999, 500, dtype=torch.float64)
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(schedule.abar(t), f / f0, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 7, 10, 50])
def test_sigma_grids(kind, spacing, steps):
    schedule = make_schedule(kind)
    sig = schedule.sigmas(steps, spacing)
    assert sig.dtype == torch.float64 and sig.shape == (steps + 1,)
    assert float(sig[-1]) == 0.0
    assert bool(torch.all(sig[1:] < sig[:-1]))
    assert float(sig[0]) <= schedule.sigma_max
    if spacing in ("trailing", "linspace", "karras"):
        assert float(sig[0]) == pytest.approx(schedule.sigma_max, rel=1e-12)


def test_leading_and_trailing_timesteps():
    schedule = make_schedule("linear")
    n, steps = 1000, 30
    # diffusers' definitions: leading (steps_offset=1) and trailing timesteps
    leading = (np.arange(0, steps) * (n // steps)).round()[::-1] + 1
    trailing = np.round(np.arange(n, 0, -n / steps)) - 1
    for spacing, ts, offset in (("leading", leading, 1), ("trailing", trailing, 0)):
        expected = schedule.sigma_of_t(torch.tensor((ts + 1) / n, dtype=torch.float64))
        got = schedule.sigmas(steps, spacing, steps_offset=offset)[:-1]
        torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
    # with steps dividing N, trailing equals continuous linspace
    torch.testing.assert_close(schedule.sigmas(20, "trailing"), schedule.sigmas(20, "linspace"), rtol=1e-14, atol=0)


def test_karras_rho_spacing():
    schedule = make_schedule("scaled_linear")
    sig = schedule.sigmas(12, "karras", rho=7.0)[:-1]
    roots = sig ** (1 / 7)
    steps = roots[:-1] - roots[1:]
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-9, atol=0)
    assert float(sig[-1]) == pytest.approx(schedule.sigma_min, rel=1e-12)


def test_config_round_trip():
    for kind in KINDS:
        schedule = make_schedule(kind)
        again = make_schedule(**schedule.config)
        assert again == schedule
        torch.testing.assert_close(again.sigmas(17), schedule.sigmas(17), rtol=0, atol=0)


def test_coordinates():
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    for sigma in (0.0, 0.3, 80.0):
        torch.testing.assert_close(x_from_xbar(xbar_from_x(x, sigma), sigma), x, rtol=1e-15, atol=0)
        assert float(alpha_bar_of_sigma(sigma)) == pytest.approx(1 / (1 + sigma**2))
    # DDIM in x coordinates is the Euler step in xbar coordinates (Song et al. 2021, eq. 12)
    eps = torch.randn_like(x)
    for sa, sb in ((50.0, 12.0), (0.7, 0.0), (0.0, 3.0)):
        a, b = ddim_coefficients(sa, sb)
        abar_a, abar_b = 1 / (1 + sa**2), 1 / (1 + sb**2)
        assert a == pytest.approx(math.sqrt(abar_b / abar_a))
        assert b == pytest.approx(math.sqrt(1 - abar_b) - math.sqrt(abar_b * (1 - abar_a) / abar_a), abs=1e-12)
        euler = x_from_xbar(xbar_from_x(x, sa) + (sb - sa) * eps, sb)
        torch.testing.assert_close(a * x + b * eps, euler, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_schedule("sigmoid"),
        lambda: make_schedule("linear", beta_start=0.1, beta_end=0.01),
        lambda: make_schedule("linear", num_train_timesteps=1),
        lambda: make_schedule("cosine", beta_start=1e-4),
        lambda: make_schedule().sigmas(0),
        lambda: make_schedule().sigmas(10, "uniform"),
        lambda: make_schedule().sigmas(1001, "trailing"),
        lambda: make_schedule().sigmas(10, "leading", steps_offset=200),
        lambda: make_schedule().abar(1.5),
        lambda: make_schedule().t_of_sigma(1e6),
        lambda: make_schedule().t_of_sigma(-0.1),
    ],
)
def test_errors(call):
    with pytest.raises(MedinvertError):
        call()
