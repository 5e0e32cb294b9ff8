"""Closed-form diffusion models: Gaussian and Gaussian-mixture data with their exact optimal eps.

For data ``x0`` and ``xbar = x0 + sigma n`` (``n ~ N(0, I)``, DDIM-ODE coordinates, see
`medinvert.schedule`) the optimal noise predictor is ``eps*(xbar, sigma) = E[n | xbar]``.

Gaussian data ``x0 ~ N(mu, s^2 I)`` (``mu`` and ``s`` may vary per pixel) gives

    eps*(xbar, sigma) = sigma (xbar - mu) / (s^2 + sigma^2)

and the probability-flow ODE ``d xbar / d sigma = eps*`` has the exact solution

    xbar(sigma1) = mu + (xbar(sigma0) - mu) sqrt(s^2 + sigma1^2) / sqrt(s^2 + sigma0^2)

(each pixel is a linear ODE ``y' = sigma y / (s^2 + sigma^2)``).  A mixture
``sum_k pi_k N(mu_k, s_k^2 I)`` gives ``eps* = sum_k r_k(xbar) sigma (xbar - mu_k) / (s_k^2 + sigma^2)``
with posterior responsibilities ``r_k`` -- non-linear, no closed-form flow (use `medinvert.solvers.ode`
at tight tolerance as the reference).

`AnalyticNet` wraps either model as a network ``net(x, t, cond)`` so it is driven through the
very same `medinvert.denoiser.Denoiser` path as a trained model.
"""

from __future__ import annotations

import torch
from torch import nn

from medinvert.errors import MedinvertError
from medinvert.schedule import Schedule

__all__ = ["GaussianData", "GaussianMixtureData", "AnalyticNet"]


def _sigma_view(sigma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """A scalar stays a float; a ``(B,)`` tensor is reshaped to broadcast against ``like``."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
        return sigma.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return float(sigma)


class GaussianData:
    """Gaussian data ``N(mu, s^2 I)``.

    Args:
        mu: mean, any tensor broadcastable to one sample ``(C, H, W)`` / ``(C, D, H, W)``.
        s: standard deviation, positive, broadcastable likewise.
    """

    def __init__(self, mu: torch.Tensor | float, s: torch.Tensor | float) -> None:
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.s = torch.as_tensor(s, dtype=torch.float64)
        if not bool(torch.all(self.s > 0)):
            raise MedinvertError("Gaussian data needs a positive standard deviation s")

    def eps(self, xbar: torch.Tensor, sigma: float | torch.Tensor, mean_shift: torch.Tensor | None = None) -> torch.Tensor:
        """Optimal ``eps*(xbar, sigma) = sigma (xbar - mu) / (s^2 + sigma^2)``; ``xbar`` is ``(B, ...)``,
        ``sigma`` a scalar or ``(B,)``, ``mean_shift`` an optional ``(B,)`` shift of the mean."""
        sig = _sigma_view(sigma, xbar)
        mu, s = self.mu.to(xbar.dtype), self.s.to(xbar.dtype)
        if mean_shift is not None:
            mu = mu + mean_shift.to(xbar.dtype).reshape(-1, *([1] * (xbar.ndim - 1)))
        return sig * (xbar - mu) / (s * s + sig * sig)

    def flow(self, xbar: torch.Tensor, sigma_from: float, sigma_to: float, mean_shift: float = 0.0) -> torch.Tensor:
        """Exact probability-flow map ``xbar(sigma_from) -> xbar(sigma_to)`` (either direction)."""
        mu, s = self.mu.to(xbar.dtype) + mean_shift, self.s.to(xbar.dtype)
        ratio = torch.sqrt(s * s + float(sigma_to) ** 2) / torch.sqrt(s * s + float(sigma_from) ** 2)
        return mu + (xbar - mu) * ratio

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """``shape[0]`` samples ``x0`` of sample shape ``shape[1:]`` (float64)."""
        return self.mu + self.s * torch.randn(shape, generator=generator, dtype=torch.float64)


class GaussianMixtureData:
    """Isotropic Gaussian mixture ``sum_k pi_k N(mu_k, s_k^2 I)`` over whole samples.

    Args:
        weights: ``(K,)`` positive mixture weights (normalised here).
        means: ``(K, *sample_shape)`` component means.
        stds: ``(K,)`` positive component standard deviations.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        k = weights.numel()
        if k < 1 or self.means.shape[0] != k or self.stds.shape != (k,):
            raise MedinvertError("mixture needs weights (K,), means (K, ...) and stds (K,) with the same K")
        if not bool(torch.all(weights > 0)) or not bool(torch.all(self.stds > 0)):
            raise MedinvertError("mixture weights and standard deviations must be positive")
        self.log_weights = torch.log(weights / weights.sum())

    def responsibilities(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        """Posterior component probabilities ``r_k(xbar)``, ``(B, K)``, for a scalar ``sigma``."""
        d = xbar[0].numel()
        var = self.stds.to(xbar.dtype) ** 2 + float(sigma) ** 2  # (K,)
        diff = xbar.unsqueeze(1) - self.means.to(xbar.dtype).unsqueeze(0)  # (B, K, ...)
        sq = diff.flatten(2).pow(2).sum(-1)  # (B, K)
        logp = self.log_weights.to(xbar.dtype) - 0.5 * sq / var - 0.5 * d * torch.log(var)
        return torch.softmax(logp, dim=1)

    def eps(self, xbar: torch.Tensor, sigma: float | torch.Tensor, mean_shift: torch.Tensor | None = None) -> torch.Tensor:
        """Optimal ``eps*`` (``(B, ...)``); ``sigma`` scalar or ``(B,)`` (one value per call is typical)."""
        if mean_shift is not None:
            raise MedinvertError("the mixture model takes no condition")
        if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
            return torch.cat([self.eps(xbar[i : i + 1], float(sigma[i])) for i in range(xbar.shape[0])])
        s = float(sigma)
        r = self.responsibilities(xbar, s)  # (B, K)
        var = self.stds.to(xbar.dtype) ** 2 + s * s
        diff = xbar.unsqueeze(1) - self.means.to(xbar.dtype).unsqueeze(0)
        w = (r * s / var).reshape(*r.shape, *([1] * (xbar.ndim - 1)))
        return (w * diff).sum(1)


class AnalyticNet(nn.Module):
    """An analytic model as a network ``net(x, t, cond) -> out`` (float64, no parameters).

    ``sigma = schedule.sigma_of_t(t)``, ``xbar = x sqrt(1 + sigma^2)``, ``eps = data.eps(xbar, sigma)``;
    the output is eps, or ``x0 = xbar - sigma eps`` (the posterior mean), or
    ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` according to ``prediction``.  A condition ``(B, K)``
    shifts a Gaussian's mean by ``cond.mean(1)``, so classifier-free guidance with weight ``w`` has the
    closed-form target ``N(mu + w * cond.mean(1), s^2)``; ``cond = None`` is the unshifted model.
    Only the first ``channels`` input channels are the state (the rest are extra conditioning
    channels, ignored).
    """

    dtype = torch.float64

    def __init__(
        self,
        data: GaussianData | GaussianMixtureData,
        schedule: Schedule,
        prediction: str = "eps",
        channels: int = 1,
    ) -> None:
        super().__init__()
        if prediction not in ("eps", "x0", "v"):
            raise MedinvertError(f"unknown prediction type {prediction!r}")
        self.data = data
        self.schedule = schedule
        self.prediction = prediction
        self.channels = channels
        self.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        x = x[:, : self.channels].to(torch.float64)
        sigma = self.schedule.sigma_of_t(t.to(torch.float64))  # (B,)
        view = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        scale = torch.sqrt(1.0 + view * view)
        xbar = x * scale
        shift = None if cond is None else cond.to(torch.float64).mean(1)
        if isinstance(self.data, GaussianMixtureData) and bool(torch.all(sigma == sigma[0])):
            eps = self.data.eps(xbar, float(sigma[0]), shift)
        else:
            eps = self.data.eps(xbar, sigma, shift)
        if self.prediction == "eps":
            return eps
        x0 = xbar - view * eps
        if self.prediction == "x0":
            return x0
        return (eps - view * x0) / scale  # sqrt(abar) = 1/scale, sqrt(1 - abar) = sigma/scale
