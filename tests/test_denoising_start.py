"""Reconstruction from pure noise ``y = x + sigma_y n`` (`medinvert.engine`, step 3'): the sampler starts
at the noisy image, on a grid from ``sigma_y``, and follows the probability-flow ODE -- checked against
the closed-form flow of Gaussian data (`medinvert.analytic`)."""

from __future__ import annotations

import pytest
import torch

from _recon_helpers import phantom
from medinvert.analytic import AnalyticNet, GaussianData
from medinvert.engine import denoising_start_sigma, noise_std, run_reconstruction
from medinvert.intensity import robust_scale
from medinvert.schedule import make_schedule
from medinvert.transforms import corrupt

MU, SPREAD = 1.0, 0.4  # the Gaussian data model, in normalised units


@pytest.fixture(scope="module")
def noisy():
    from monai.data import MetaTensor

    return corrupt(MetaTensor(torch.from_numpy(phantom((20, 16, 2)))), "noise", seed=0, sigma=15.0)


def _expected(observation, schedule) -> torch.Tensor:
    """The exact flow of ``y / s`` from ``sigma_y / s`` to 0 under N(MU + shift, SPREAD^2), times ``s``."""
    scale = robust_scale(observation.adjoint)
    start = denoising_start_sigma(schedule, noise_std(observation) / scale)
    shift = float(observation.descriptor.to(torch.float64).mean())
    data = GaussianData(MU, SPREAD)
    return data.flow(observation.adjoint.to(torch.float64) / scale, start, 0.0, shift) * scale


@pytest.mark.parametrize("method", ["ddim", "exact"])
def test_noisy_images_are_integrated_from_their_own_noise_level(noisy, method):
    schedule = make_schedule("linear")
    net = AnalyticNet(GaussianData(MU, SPREAD), schedule)
    expected = _expected(noisy, schedule)
    errors = []
    for steps in (5, 40):
        run = run_reconstruction(noisy, net, schedule, method=method, steps=steps, prediction="eps")
        assert run.sigmas[0] == pytest.approx(noise_std(noisy) / run.scale) and run.sigmas[-1] == 0.0
        assert len(run.sigmas) == steps + 1
        errors.append(float((run.volume - expected).abs().max() / expected.abs().max()))
    assert errors[1] < 4e-3 and errors[1] < errors[0] / 4  # converges to the exact flow (first order)
    # the old per-step pull towards y would have stayed close to the noisy input
    assert float((run.volume - noisy.adjoint).abs().mean()) > 0.3 * float((expected - noisy.adjoint).abs().mean())


def test_start_sigma_stays_inside_the_schedule():
    schedule = make_schedule("linear")
    assert denoising_start_sigma(schedule, 1e9) == schedule.sigma_max
    assert schedule.sigma_min < denoising_start_sigma(schedule, 0.0) < 1.01 * schedule.sigma_min
    assert denoising_start_sigma(schedule, 0.3) == 0.3
