"""``edm_adjoint``: EDM preconditioning (Karras et al. 2022, Table 1) centred on the adjoint image.

Checked against independent formulas: the training target fed back through the denoiser recovers
the exact noise; an all-zero network output is the minimum-variance blend of state and guess; the
conditioning-dependent spread follows the guess; the truncated Karras grid starts where asked.
"""

from __future__ import annotations

import math

import pytest
import torch

from _solver_helpers import single_thread  # noqa: F401 (autouse fixture)
from medinvert.denoiser import SIGMA_DATA_GUESS, SIGMA_DATA_NULL, Denoiser, edm_coefficients, guess_spread
from medinvert.errors import MedinvertError
from medinvert.schedule import make_schedule
from medinvert.train.loop import _target

SCHEDULE = make_schedule("linear")


class ReplayNet(torch.nn.Module):
    """Returns a fixed output (whatever the input): the network a perfect fit would be."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.eval()

    def forward(self, x, t, cond):  # noqa: D401
        return self.out.to(x.dtype)


def _problem(seed: int = 0, batch: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 1, 8, 8, generator=gen, dtype=torch.float64)
    guess = x0 + 0.1 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    guess[-1] = 0.0  # a dropped condition: the guess channel is zero
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    return x0, guess, noise


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 40.0])
def test_training_target_recovers_the_noise(sigma):
    """A network that outputs the training target exactly gives eps == the noise that was added."""
    x0, guess, noise = _problem()
    abar = torch.full((x0.shape[0], 1, 1, 1), 1.0 / (1.0 + sigma * sigma), dtype=torch.float64)
    target = _target("edm_adjoint", x0, noise, abar, guess)
    xbar = x0 + sigma * noise
    den = Denoiser(ReplayNet(target), SCHEDULE, prediction="edm_adjoint", extra=guess, dtype=torch.float64)
    torch.testing.assert_close(den(xbar, sigma), noise, rtol=1e-9, atol=1e-9)


def test_untrained_output_is_the_minimum_variance_blend():
    """out = 0: x0 = (s_d^2 xbar + sigma^2 m) / (sigma^2 + s_d^2), the posterior mean of two Gaussian
    estimates (xbar with variance sigma^2, the guess with variance s_d^2)."""
    x0, guess, noise = _problem(seed=1)
    den = Denoiser(ReplayNet(torch.zeros_like(x0)), SCHEDULE, prediction="edm_adjoint", extra=guess, dtype=torch.float64)
    for sigma in (0.05, 0.5, 5.0):
        xbar = x0 + sigma * noise
        predicted = xbar - sigma * den(xbar, sigma)
        sd = torch.tensor([SIGMA_DATA_GUESS] * (x0.shape[0] - 1) + [SIGMA_DATA_NULL], dtype=torch.float64)
        sd2 = sd.view(-1, 1, 1, 1) ** 2
        expected = (sd2 * xbar + sigma**2 * guess) / (sigma**2 + sd2)
        torch.testing.assert_close(predicted, expected, rtol=1e-10, atol=1e-12)


def test_sigma_zero_is_the_identity_and_high_noise_returns_the_guess():
    x0, guess, _ = _problem(seed=2)
    out = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    den = Denoiser(ReplayNet(out), SCHEDULE, prediction="edm_adjoint", extra=guess, dtype=torch.float64)
    assert float(den(x0, 0.0).abs().max()) == 0.0
    sigma = SCHEDULE.sigma_max
    xbar = guess + sigma * torch.ones_like(guess)
    predicted = xbar - sigma * den(xbar, sigma)
    sd = guess_spread(guess)
    torch.testing.assert_close(predicted, guess + sd * out, rtol=0, atol=5e-3)  # c_skip * sigma <= 2e-3


def test_coefficients_match_table_1():
    for sigma, sd in ((0.1, 0.5), (3.0, 0.1)):
        c_skip, c_out = edm_coefficients(sigma, sd)
        assert c_skip == pytest.approx(sd**2 / (sigma**2 + sd**2))
        assert c_out == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2))
        # the target variance is one when x0 - m has spread sd: c_skip^2 sd^2 ... (EDM eq. 7's unit variance)
        assert (1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2 == pytest.approx(c_out**2)


def test_truncated_karras_grid():
    grid = SCHEDULE.sigmas(8, "karras", start=2.0)
    assert float(grid[0]) == 2.0 and float(grid[-1]) == 0.0 and len(grid) == 9
    assert bool(torch.all(grid[1:] < grid[:-1]))
    full = SCHEDULE.sigmas(8, "karras")
    assert float(full[0]) == pytest.approx(SCHEDULE.sigma_max)
    with pytest.raises(MedinvertError, match="karras"):
        SCHEDULE.sigmas(8, "trailing", start=2.0)
    with pytest.raises(MedinvertError, match="start sigma"):
        SCHEDULE.sigmas(8, "karras", start=1e9)
