"""Small real networks and analytic set-ups shared by the schedule / denoiser / solver tests.

Test modules import `single_thread` (an autouse fixture) to run on one intra-op thread.
`TinyNet` is a genuine (randomly initialised) conditional conv net with the network protocol
``net(x, t, cond) -> eps``; `CountingNet` wraps any network and counts its calls independently of
the denoiser's own counter.
"""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from torch import nn

from medinvert.analytic import AnalyticNet, GaussianData
from medinvert.denoiser import Denoiser
from medinvert.schedule import Schedule, make_schedule


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster and immune to a busy shared machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """Conv -> (+ time and condition embedding) -> tanh -> conv; weights scaled by ``scale``.

    2D (``dims=2``) or 3D (``dims=3``); ``channels`` state channels in and out, ``extra`` extra input
    channels, ``cond_dim`` condition length (``cond=None`` uses a learned null embedding).
    """

    def __init__(self, *, channels: int = 1, extra: int = 0, cond_dim: int = 3, hidden: int = 6,
                 scale: float = 0.3, seed: int = 0, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        gen = torch.Generator().manual_seed(seed)
        self.dims = dims
        self.inp = conv(channels + extra, hidden, 3, padding=1)
        self.out = conv(hidden, channels, 3, padding=1)
        self.time = nn.Linear(1, hidden)
        self.cond = nn.Linear(cond_dim, hidden)
        self.null = nn.Parameter(torch.zeros(hidden))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * scale / max(1, p[0].numel()) ** 0.5)
        self.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        emb = self.time(t[:, None].to(x.dtype) * 4.0)
        emb = emb + (self.null.expand_as(emb) if cond is None else self.cond(cond))
        h = self.inp(x) + emb.reshape(*emb.shape, *([1] * self.dims))
        return self.out(torch.tanh(h)) + 0.5 * x[:, : self.out.out_channels]


class CountingNet(nn.Module):
    """Wraps a network; records every call's batch size and whether a condition was passed."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[int, bool]] = []
        self.eval()

    @property
    def dtype(self) -> torch.dtype:  # the wrapped network's dtype
        from medinvert.denoiser import network_dtype

        return network_dtype(self.net)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        self.calls.append((x.shape[0], cond is not None))
        return self.net(x, t, cond)


def gaussian_setup(kind: str = "linear", shape: tuple[int, ...] = (1, 4, 4), seed: int = 0,
                   s_range: tuple[float, float] = (0.4, 1.0)) -> tuple[GaussianData, Schedule, Denoiser]:
    """Per-pixel Gaussian data, a schedule and the analytic denoiser (float64 end to end)."""
    gen = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    lo, hi = s_range
    s = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
    data = GaussianData(mu, s)
    schedule = make_schedule(kind)
    return data, schedule, Denoiser(AnalyticNet(data, schedule, channels=shape[0]), schedule)


def poly_grid(sigma_max: float, steps: int, rho: float = 3.0) -> torch.Tensor:
    """A smooth grid ``sigma_max (1 - i/n)^rho`` ending exactly at 0 (for convergence orders)."""
    i = torch.arange(steps + 1, dtype=torch.float64)
    grid = sigma_max * (1 - i / steps) ** rho
    grid[-1] = 0.0
    return grid
