"""The canonical denoiser and the analytic models it is tested with."""

from __future__ import annotations

import math

import pytest
import torch

from _solver_helpers import CountingNet, TinyNet, single_thread  # noqa: F401 (autouse fixture)
from medinvert.analytic import AnalyticNet, GaussianData, GaussianMixtureData
from medinvert.denoiser import Denoiser
from medinvert.errors import MedinvertError
from medinvert.schedule import make_schedule

SCHEDULE = make_schedule("linear")


def _gaussian(shape=(1, 3, 3), seed=0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=gen, dtype=torch.float64)
    s = 0.2 + torch.rand(shape, generator=gen, dtype=torch.float64)
    return GaussianData(mu, s)


def test_gaussian_eps_is_scaled_score():
    """eps*(xbar, sigma) = -sigma * grad log p_sigma(xbar) with p_sigma = N(mu, (s^2 + sigma^2) I)."""
    data = _gaussian()
    xbar = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    for sigma in (0.05, 1.3, 40.0):
        var = data.s**2 + sigma**2
        logp = (-0.5 * (xbar - data.mu) ** 2 / var).sum()
        (grad,) = torch.autograd.grad(logp, xbar)
        torch.testing.assert_close(data.eps(xbar.detach(), sigma), -sigma * grad, rtol=1e-12, atol=1e-14)


def test_gaussian_flow_solves_the_ode():
    data = _gaussian()
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    # d/dsigma of the flow equals eps* at the flowed point (central difference)
    for sigma in (0.1, 2.0, 30.0):
        h = 1e-5 * max(1.0, sigma)
        deriv = (data.flow(x, 5.0, sigma + h) - data.flow(x, 5.0, sigma - h)) / (2 * h)
        torch.testing.assert_close(deriv, data.eps(data.flow(x, 5.0, sigma), sigma), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(data.flow(data.flow(x, 0.0, 9.0), 9.0, 0.0), x, rtol=1e-14, atol=1e-14)


def test_mixture_eps_is_scaled_score():
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64) * 2
    data = GaussianMixtureData(torch.tensor([0.2, 0.5, 0.3]), means, torch.tensor([0.3, 0.6, 1.0]))
    xbar = torch.randn(4, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    for sigma in (0.2, 1.5, 20.0):
        var = data.stds**2 + sigma**2
        diff = xbar.unsqueeze(1) - means.unsqueeze(0)
        logp = torch.logsumexp(data.log_weights - 0.5 * diff.flatten(2).pow(2).sum(-1) / var - 2 * torch.log(var), dim=1).sum()
        (grad,) = torch.autograd.grad(logp, xbar)
        torch.testing.assert_close(data.eps(xbar.detach(), sigma), -sigma * grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_prediction_conversions_agree(prediction):
    data = _gaussian()
    reference = Denoiser(AnalyticNet(data, SCHEDULE, "eps"), SCHEDULE)
    other = Denoiser(AnalyticNet(data, SCHEDULE, prediction), SCHEDULE, prediction=prediction)
    xbar = torch.randn(3, 1, 3, 3, dtype=torch.float64) * 4
    for sigma in (0.02, 0.7, 12.0, SCHEDULE.sigma_max):
        torch.testing.assert_close(other(xbar, sigma), reference(xbar, sigma), rtol=1e-9, atol=1e-10)
    # sigma = 0: v gives eps directly, x0 gives the smooth-density limit 0 without calling the net
    torch.testing.assert_close(other(xbar, 0.0), reference(xbar, 0.0), rtol=1e-12, atol=1e-12)
    assert float(reference(xbar, 0.0).abs().max()) == 0.0


def test_network_inputs_dtype_and_time():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, t, cond):
            seen.update(x=x.clone(), t=t.clone(), cond=cond)
            return torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=x.dtype)

    net = Probe().eval()
    extra = torch.randn(2, 3, 5, dtype=torch.float32)
    den = Denoiser(net, SCHEDULE, extra=extra, dtype=torch.float32)
    xbar = torch.randn(4, 1, 3, 5, dtype=torch.float64)
    sigma = 2.5
    eps = den(xbar, sigma)
    assert eps.dtype == torch.float64 and eps.shape == xbar.shape
    assert seen["x"].dtype == torch.float32 and seen["x"].shape == (4, 3, 3, 5)
    torch.testing.assert_close(seen["x"][:, :1], (xbar / math.sqrt(1 + sigma**2)).float())
    assert torch.equal(seen["x"][:, 1:], extra.expand(4, 2, 3, 5))
    assert torch.equal(seen["t"], SCHEDULE.t_of_sigma(sigma).float().expand(4))
    assert seen["cond"] is None


def test_guidance_combination_and_counts():
    net = CountingNet(TinyNet(extra=1, seed=2))
    cond = torch.tensor([0.5, -1.0, 2.0])
    extra = torch.randn(2, 1, 4, 4)
    xbar = torch.randn(2, 1, 4, 4, dtype=torch.float64) * 3
    sigma = 1.7
    x = (xbar / math.sqrt(1 + sigma**2)).float()
    t = SCHEDULE.t_of_sigma(sigma).float().expand(2)
    with torch.no_grad():
        eps_c = net.net(torch.cat([x, extra], 1), t, cond.expand(2, 3)).double()
        eps_u = net.net(torch.cat([x, torch.zeros_like(extra)], 1), t, None).double()
    for w, calls in ((1.0, 1), (0.0, 1), (3.5, 2), (-0.5, 2)):
        net.calls.clear()
        den = Denoiser(net, SCHEDULE, cond=cond, guidance=w, extra=extra)
        eps = den(xbar, sigma)
        torch.testing.assert_close(eps, eps_u + w * (eps_c - eps_u), rtol=1e-6, atol=1e-6)
        assert den.nfe == calls == len(net.calls) and den.calls == 1
    # null_extra="same" keeps the conditioning images in the unconditional branch
    den = Denoiser(net, SCHEDULE, cond=cond, guidance=0.0, extra=extra, null_extra="same")
    with torch.no_grad():
        expected = net.net(torch.cat([x, extra], 1), t, None).double()
    torch.testing.assert_close(den(xbar, sigma), expected)


def test_guidance_with_analytic_model_shifts_the_mean():
    data = _gaussian()
    cond = torch.tensor([[0.3, 0.9], [-0.4, 0.0]], dtype=torch.float64)
    xbar = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    for w in (0.0, 1.0, 2.5):
        den = Denoiser(AnalyticNet(data, SCHEDULE), SCHEDULE, cond=cond, guidance=w)
        shifted = GaussianData(data.mu, data.s).eps(xbar, 0.8, mean_shift=w * cond.mean(1))
        torch.testing.assert_close(den(xbar, 0.8), shifted, rtol=1e-10, atol=1e-12)


def test_slice_batching_is_fixed_and_exact():
    net = CountingNet(TinyNet(seed=4))
    xbar = torch.randn(8, 1, 5, 5, dtype=torch.float64)
    den = Denoiser(net, SCHEDULE, cond=torch.ones(8, 3), guidance=2.0, batch_size=3)
    eps = den(xbar, 0.9)
    assert [b for b, _ in net.calls] == [3, 3, 2, 3, 3, 2]
    assert den.nfe == 2 and den.forward_calls == 6 and den.calls == 1
    # the same chunks computed by hand give the same bits
    x = (xbar / math.sqrt(1 + 0.81)).float()
    t = SCHEDULE.t_of_sigma(0.9).float()
    with torch.no_grad():
        parts = []
        for cond in (None, torch.ones(8, 3)):
            chunks = [net.net(x[a:b], t.expand(b - a), None if cond is None else cond[a:b]) for a, b in ((0, 3), (3, 6), (6, 8))]
            parts.append(torch.cat(chunks).double())
    assert torch.equal(eps, parts[0] + 2.0 * (parts[1] - parts[0]))
    # 3D states batch the same way
    net3 = CountingNet(TinyNet(seed=5, dims=3))
    den3 = Denoiser(net3, SCHEDULE, batch_size=2)
    out = den3(torch.randn(3, 1, 4, 4, 4, dtype=torch.float64), 0.5)
    assert out.shape == (3, 1, 4, 4, 4) and [b for b, _ in net3.calls] == [2, 1]


def test_replace_and_counters():
    den = Denoiser(TinyNet(), SCHEDULE, cond=torch.zeros(3))
    den(torch.zeros(1, 1, 4, 4), 1.0)
    other = den.replace(guidance=2.0)
    assert other.guidance == 2.0 and other.cond is den.cond and other.nfe == 0 and den.nfe == 1
    den.reset_counters()
    assert den.nfe == den.calls == den.forward_calls == 0
    with pytest.raises(MedinvertError):
        den.replace(temperature=1.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Denoiser(TinyNet().train(), SCHEDULE),
        lambda: Denoiser(TinyNet(), SCHEDULE, prediction="score"),
        lambda: Denoiser(TinyNet(), SCHEDULE, guidance=2.0),
        lambda: Denoiser(TinyNet(), SCHEDULE, batch_size=0),
        lambda: Denoiser(TinyNet(), SCHEDULE, null_extra="noise"),
        lambda: Denoiser(TinyNet(), SCHEDULE, cond=torch.zeros(1, 1, 3)),
    ],
)
def test_constructor_errors(make):
    with pytest.raises(MedinvertError):
        make()


def test_call_errors():
    den = Denoiser(TinyNet(), SCHEDULE)
    with pytest.raises(MedinvertError):
        den(torch.zeros(1, 4, 4), 1.0)  # no batch / channel axes
    with pytest.raises(MedinvertError):
        den(torch.zeros(2, 1, 4, 4), torch.tensor([1.0, 2.0]))  # one sigma per call
    with pytest.raises(MedinvertError):
        den(torch.zeros(2, 1, 4, 4), 2 * SCHEDULE.sigma_max)

    class Wrong(torch.nn.Module):
        def forward(self, x, t, cond):
            return x[:, :, :2]

    with pytest.raises(MedinvertError):
        Denoiser(Wrong().eval(), SCHEDULE)(torch.zeros(1, 1, 4, 4), 1.0)
