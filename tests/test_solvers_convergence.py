"""Each solver against the closed-form probability-flow ODE of Gaussian data: declared orders, equal-step
quality, guidance, and a non-linear (mixture) model against a tight torchdiffeq reference."""

from __future__ import annotations

import math

import pytest
import torch

from _solver_helpers import gaussian_setup, poly_grid, single_thread  # noqa: F401 (autouse fixture)
from medinvert.analytic import AnalyticNet, GaussianMixtureData
from medinvert.denoiser import Denoiser
from medinvert.schedule import KINDS, make_schedule
from medinvert.solvers import SOLVERS

STEPS = (40, 80, 160)


def _noise(sigma: float, shape=(3, 1, 4, 4), seed=5) -> torch.Tensor:
    return sigma * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _generation_errors(name, options, kind, steps=STEPS):
    data, schedule, den = gaussian_setup(kind)
    errors = []
    for n in steps:
        sig = poly_grid(schedule.sigma_max, n)
        z = _noise(float(sig[0]))
        out = SOLVERS[name].generate(den, z, sig, **options)
        errors.append(float((out - data.flow(z, float(sig[0]), 0.0)).abs().max()))
    return errors


def _slopes(errors):
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize(
    "name,options,order",
    [
        ("ddim", {}, 1),
        ("edict", {}, 1),
        ("bdia", {}, 2),
        ("exact", {}, 2),
        ("exact", {"scheme": "leapfrog"}, 2),
        ("exact", {"scheme": "heun"}, 2),
        ("ode", {"ode_method": "euler"}, 1),
        ("ode", {"ode_method": "rk4"}, 4),
    ],
)
def test_generation_converges_at_declared_order(name, options, order):
    errors = _generation_errors(name, options, "scaled_linear")
    slopes = _slopes(errors)
    assert errors[0] > errors[1] > errors[2], errors
    assert order - 0.2 < slopes[-1] < order + 0.4, (errors, slopes)
    if name != "ode":
        assert SOLVERS[name].order == order


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_exact_default_is_second_order_on_every_schedule(kind):
    errors = _generation_errors("exact", {}, kind, steps=(100, 200, 400))
    assert 1.8 < _slopes(errors)[-1] < 2.4, errors


@pytest.mark.parametrize("kind", KINDS)
def test_exact_matches_or_beats_ddim_at_equal_steps(kind):
    """On the default (trailing) grid, the default exact scheme is never worse than DDIM."""
    data, schedule, den = gaussian_setup(kind, s_range=(0.1, 1.0))
    for n in (10, 20, 50):
        sig = schedule.sigmas(n)
        z = _noise(float(sig[0]))
        target = data.flow(z, float(sig[0]), 0.0)
        err = {name: float((SOLVERS[name].generate(den, z, sig) - target).abs().max()) for name in ("ddim", "exact")}
        assert err["exact"] < err["ddim"], (n, err)


@pytest.mark.parametrize("name,order", [("ddim", 1), ("bdia", 2), ("exact", 2)])
def test_inversion_converges_to_the_ode_latent(name, order):
    data, schedule, den = gaussian_setup("scaled_linear")
    x0 = data.sample((3, 1, 4, 4), torch.Generator().manual_seed(9))
    errors = []
    for n in STEPS:
        sig = poly_grid(schedule.sigma_max, n)
        state = SOLVERS[name].invert(den, x0, sig)
        latent = state if isinstance(state, torch.Tensor) else state.xbar() if name == "exact" else state.x * math.sqrt(1 + float(sig[0]) ** 2)
        errors.append(float((latent - data.flow(x0, 0.0, float(sig[0]))).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert order - 0.2 < _slopes(errors)[-1] < order + 0.4, errors


def test_ode_reaches_tolerance_in_both_directions():
    data, schedule, den = gaussian_setup("linear")
    sig = schedule.sigmas(10)
    x0 = data.sample((2, 1, 4, 4), torch.Generator().manual_seed(4))
    latent = SOLVERS["ode"].invert(den, x0, sig)
    nfe_invert = den.nfe
    assert float((latent - data.flow(x0, 0.0, float(sig[0]))).abs().max()) < 1e-5 * float(sig[0])
    back = SOLVERS["ode"].generate(den, latent, sig)
    assert float((back - x0).abs().max()) < 1e-6
    assert nfe_invert > 20 and den.nfe > nfe_invert


@pytest.mark.parametrize("name", ["bdia", "exact"])
def test_guided_generation_targets_the_shifted_gaussian(name):
    data, schedule, _ = gaussian_setup("scaled_linear")
    cond = torch.tensor([0.4, 1.0], dtype=torch.float64)
    w = 2.5
    den = Denoiser(AnalyticNet(data, schedule), schedule, cond=cond, guidance=w)
    sig = poly_grid(schedule.sigma_max, 160)
    z = _noise(float(sig[0]))
    target = data.flow(z, float(sig[0]), 0.0, mean_shift=w * float(cond.mean()))
    out = SOLVERS[name].generate(den, z, sig)
    assert float((out - target).abs().max()) < 1e-3
    assert den.nfe == 2 * 160


def test_mixture_model_against_tight_ode_reference():
    gen = torch.Generator().manual_seed(2)
    means = 1.5 * torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64)
    data = GaussianMixtureData(torch.tensor([0.3, 0.3, 0.4]), means, torch.tensor([0.3, 0.5, 0.4]))
    schedule = make_schedule("scaled_linear")
    den = Denoiser(AnalyticNet(data, schedule), schedule)
    errors = {"ddim": [], "exact": []}
    z = _noise(schedule.sigma_max, shape=(4, 1, 3, 3))
    reference = SOLVERS["ode"].generate(den, z, poly_grid(schedule.sigma_max, 400), ode_method="rk4")
    for n in (40, 80):
        sig = poly_grid(schedule.sigma_max, n)
        for name in errors:
            errors[name].append(float((SOLVERS[name].generate(den, z, sig) - reference).abs().max()))
    assert 1.6 < math.log2(errors["exact"][0] / errors["exact"][1]) < 2.6, errors
    assert 0.7 < math.log2(errors["ddim"][0] / errors["ddim"][1]) < 1.4, errors
    assert errors["exact"][1] < errors["ddim"][1] / 10
