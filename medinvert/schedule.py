"""VP noise schedules, timestep spacings and the DDIM-ODE coordinates.

A variance-preserving (VP) schedule is a decreasing function ``abar(t)`` (alpha-bar, the cumulative
product of ``1 - beta``) on continuous time ``t in [0, 1]`` with ``abar(0) = 1`` (clean data).  The
engine works in the DDIM-ODE coordinates of Song et al. (2021, "Denoising diffusion implicit
models", eq. 14):

    xbar  = x / sqrt(abar),        sigma = sqrt((1 - abar) / abar),        x = xbar / sqrt(1 + sigma^2)

in which the probability-flow ODE reads ``d xbar / d sigma = eps(x, t)`` and a DDIM step is plain
Euler.  Everything outside this module speaks ``sigma``; nobody else touches ``beta`` or ``abar``
arrays.

Continuous time.  The discrete schedules (``linear``, ``scaled_linear``) define ``abar`` at the
training timesteps ``n = 0 .. N-1`` (``N = num_train_timesteps``), which sit at ``t = (n + 1) / N``;
``t = 0`` is the clean point ``abar = 1``.  Between these knots ``log abar`` is interpolated
linearly in ``t``, so ``sigma(t)`` is continuous and strictly increasing and its inverse
``t_of_sigma`` has a closed form on every interval (exact to float64 rounding).  ``cosine`` (Nichol &
Dhariwal 2021, eq. 17, offset ``s = 0.008``) uses its closed form
``abar(t) = cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s))`` up to the last training timestep and, on
the last interval ``[1 - 1/N, 1]``, interpolates ``log abar`` to the value of the discrete schedule
whose last beta is clipped at 0.999 (the closed form itself reaches ``abar = 0``, i.e. infinite
sigma, at ``t = 1``).  At the knots all three agree with the usual discrete ``alphas_cumprod``.

All functions accept Python floats or float tensors and return float64 tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from medinvert.errors import MedinvertError

__all__ = [
    "KINDS",
    "SPACINGS",
    "Schedule",
    "make_schedule",
    "alpha_bar_of_sigma",
    "x_from_xbar",
    "xbar_from_x",
    "ddim_coefficients",
]

#: Schedule kinds accepted by `make_schedule`.
KINDS: tuple[str, ...] = ("linear", "scaled_linear", "cosine")
#: Timestep spacings accepted by `Schedule.sigmas`.
SPACINGS: tuple[str, ...] = ("trailing", "leading", "linspace", "karras")

_DEFAULT_BETAS: dict[str, tuple[float, float]] = {
    "linear": (1e-4, 2e-2),  # Ho et al. 2020
    "scaled_linear": (8.5e-4, 1.2e-2),  # latent diffusion (Rombach et al. 2022)
}
_COSINE_S = 0.008
_COSINE_MAX_BETA = 0.999
# sigmas a little above sigma_max (float32 rounding of a float64 grid point) are clamped, not refused
_SIGMA_SLACK = 1e-5


def _as_float64(value: float | torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


@dataclass(frozen=True)
class Schedule:
    """A VP noise schedule on continuous time ``t in [0, 1]``; build it with `make_schedule`.

    Attributes:
        kind: ``"linear"``, ``"scaled_linear"`` or ``"cosine"``.
        num_train_timesteps: ``N``, the number of discrete training timesteps.
        beta_start, beta_end: the beta range of the discrete kinds (``None`` for cosine).
    """

    kind: str
    num_train_timesteps: int
    beta_start: float | None
    beta_end: float | None
    # log abar at t = n / N, n = 0..N (float64, (N + 1,)); first entry 0.0 (the clean point)
    _log_abar: torch.Tensor = field(repr=False, compare=False)

    # ------------------------------------------------------------------ continuous time
    def log_abar(self, t: float | torch.Tensor) -> torch.Tensor:
        """``log abar(t)`` for ``t in [0, 1]`` (any shape; float64)."""
        t = self._check_t(t)
        n = self.num_train_timesteps
        if self.kind == "cosine":
            t_c = 1.0 - 1.0 / n
            inner = _cosine_log_abar(torch.clamp(t, max=t_c))
            slope = (self._log_abar[-1] - self._log_abar[-2]) * n
            return torch.where(t <= t_c, inner, self._log_abar[-2] + (t - t_c) * slope)
        pos = t * n
        idx = torch.clamp(torch.floor(pos), 0, n - 1).to(torch.long)
        frac = pos - idx.to(torch.float64)
        lo, hi = self._log_abar[idx], self._log_abar[idx + 1]
        return lo + frac * (hi - lo)

    def abar(self, t: float | torch.Tensor) -> torch.Tensor:
        """``abar(t)`` (alpha-bar) for ``t in [0, 1]``; ``abar(0) = 1``, strictly decreasing."""
        return torch.exp(self.log_abar(t))

    def sigma_of_t(self, t: float | torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sqrt((1 - abar) / abar)``, strictly increasing from ``sigma(0) = 0``."""
        t = self._check_t(t)
        if self.kind == "cosine":
            # cancellation-free form of sqrt(cos^2(th0)/cos^2(th) - 1) on the closed-form part
            t_c = 1.0 - 1.0 / self.num_train_timesteps
            th0 = 0.5 * math.pi * _COSINE_S / (1 + _COSINE_S)
            d = 0.5 * math.pi * torch.clamp(t, max=t_c) / (1 + _COSINE_S)  # th - th0
            inner = torch.sqrt(torch.sin(d) * torch.sin(d + 2 * th0)) / torch.cos(d + th0)
            outer = torch.sqrt(torch.expm1(-self.log_abar(t)))
            return torch.where(t <= t_c, inner, outer)
        return torch.sqrt(torch.expm1(-self.log_abar(t)))

    def t_of_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Inverse of `sigma_of_t`: the time ``t in [0, 1]`` with ``sigma(t) = sigma`` (float64).

        Closed form on every interpolation interval (``acos``-type closed form for the cosine part),
        so ``t_of_sigma(sigma_of_t(t)) == t`` to float64 rounding.  Sigmas up to a relative
        ``1e-5`` above `sigma_max` (float32 rounding) are clamped; anything else outside
        ``[0, sigma_max]`` raises `MedinvertError`.
        """
        sigma = self._check_sigma(sigma)
        n = self.num_train_timesteps
        la = -torch.log1p(sigma * sigma)
        if self.kind == "cosine":
            t_c = 1.0 - 1.0 / n
            th0 = 0.5 * math.pi * _COSINE_S / (1 + _COSINE_S)
            # cos^2(th) = cos^2(th0) / (1 + sigma^2)  <=>  tan(th) = a = sqrt(sigma^2 + sin^2 th0) / cos th0;
            # th - th0 = atan((a - b) / (1 + a b)) with b = tan th0, a - b written without cancellation
            s0, c0 = math.sin(th0), math.cos(th0)
            root = torch.sqrt(sigma * sigma + s0 * s0)
            a = root / c0
            diff = sigma * sigma / ((root + s0) * c0)
            inner = torch.atan(diff / (1.0 + a * (s0 / c0))) * (2.0 / math.pi) * (1 + _COSINE_S)
            lo, hi = self._log_abar[-2], self._log_abar[-1]
            outer = t_c + (la - lo) / (hi - lo) * (1.0 - t_c)
            return torch.clamp(torch.where(la >= lo, inner, outer), 0.0, 1.0)
        # log abar knots are strictly decreasing: search in the negated (increasing) array
        neg = -self._log_abar
        idx = torch.clamp(torch.searchsorted(neg, -la, right=True) - 1, 0, n - 1)
        lo, hi = self._log_abar[idx], self._log_abar[idx + 1]
        t = (idx.to(torch.float64) + (la - lo) / (hi - lo)) / n
        return torch.clamp(t, 0.0, 1.0)

    @cached_property
    def sigma_max(self) -> float:
        """The largest sigma of the schedule, ``sigma(1)`` (the last training timestep)."""
        return float(self.sigma_of_t(1.0))

    @cached_property
    def sigma_min(self) -> float:
        """The smallest positive trained sigma, ``sigma(1 / N)`` (the first training timestep)."""
        return float(self.sigma_of_t(1.0 / self.num_train_timesteps))

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this schedule: ``make_schedule(**schedule.config)``."""
        return {
            "kind": self.kind,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    # ------------------------------------------------------------------ sampling grids
    def sigmas(self, steps: int, spacing: str = "trailing", *, steps_offset: int = 0, rho: float = 7.0,
               start: float | None = None) -> torch.Tensor:
        """The sampling grid: a strictly decreasing float64 tensor of length ``steps + 1``.

        The last entry is exactly ``0.0`` (the clean point, ``abar = 1``).  Spacings:

        - ``"trailing"`` (default; Lin et al. 2024, Table 2): training timesteps
          ``round(N - i N / steps) - 1``, ``i = 0 .. steps-1``; starts at ``sigma_max``.
        - ``"leading"`` (DDIM / diffusers): timesteps ``(steps-1-i) * (N // steps) + steps_offset``.
        - ``"linspace"``: continuous ``t_i = 1 - i / steps`` (equals trailing when ``steps`` divides ``N``).
        - ``"karras"`` (Karras et al. 2022, eq. 5): ``rho``-spaced between `sigma_max` (or ``start``)
          and `sigma_min`, then ``0``.

        ``start`` (karras only): begin at this noise level instead of `sigma_max` -- a truncated grid
        for samplers that start from a partly noised guess (SDEdit, Meng et al. 2022; "come closer
        diffuse faster", Chung et al. 2022).
        """
        if start is not None and spacing != "karras":
            raise MedinvertError(f"a start noise level needs the 'karras' spacing, got {spacing!r}")
        if start is not None and not (self.sigma_min < float(start) <= self.sigma_max):
            raise MedinvertError(f"start sigma must lie in ({self.sigma_min:.4g}, {self.sigma_max:.6g}], got {start}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise MedinvertError(f"steps must be a positive integer, got {steps!r}")
        n = self.num_train_timesteps
        if spacing in ("trailing", "leading") and steps > n:
            raise MedinvertError(f"spacing {spacing!r} allows at most num_train_timesteps={n} steps, got {steps}")
        i = torch.arange(steps, dtype=torch.float64)
        if spacing == "trailing":
            t = torch.round(n - i * (n / steps)) / n
        elif spacing == "leading":
            timesteps = (steps - 1 - i) * (n // steps) + steps_offset
            if int(timesteps.max()) > n - 1 or steps_offset < 0:
                raise MedinvertError(f"steps_offset={steps_offset} puts a leading timestep outside 0..{n - 1}")
            t = (timesteps + 1) / n
        elif spacing == "linspace":
            t = 1.0 - i / steps
        elif spacing == "karras":
            if not rho > 0:
                raise MedinvertError(f"karras rho must be positive, got {rho}")
            top = self.sigma_max if start is None else float(start)
            hi, lo = top ** (1 / rho), self.sigma_min ** (1 / rho)
            ramp = i / (steps - 1) if steps > 1 else torch.zeros(1, dtype=torch.float64)
            sig = (hi + ramp * (lo - hi)) ** rho
            sig[0] = top
            return _finish_grid(sig, spacing)
        else:
            raise MedinvertError(f"unknown timestep spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
        return _finish_grid(self.sigma_of_t(t), spacing)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_t(t: float | torch.Tensor) -> torch.Tensor:
        t = _as_float64(t)
        if not bool(torch.all((t >= 0) & (t <= 1))):
            raise MedinvertError(f"diffusion time t must lie in [0, 1], got range [{float(t.min())}, {float(t.max())}]")
        return t

    def _check_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma = _as_float64(sigma)
        smax = self.sigma_max
        if not bool(torch.all((sigma >= 0) & (sigma <= smax * (1 + _SIGMA_SLACK)))):
            raise MedinvertError(
                f"sigma must lie in [0, sigma_max={smax:.6g}], got range [{float(sigma.min())}, {float(sigma.max())}]"
            )
        return torch.clamp(sigma, max=smax)


def _finish_grid(sig: torch.Tensor, spacing: str) -> torch.Tensor:
    out = torch.cat([sig.to(torch.float64), torch.zeros(1, dtype=torch.float64)])
    if not bool(torch.all(out[1:] < out[:-1])):
        raise MedinvertError(f"spacing {spacing!r} gives repeated timesteps for this step count; use fewer steps")
    return out


def _cosine_log_abar(t: torch.Tensor) -> torch.Tensor:
    """``log(f(t) / f(0))`` with ``f(t) = cos^2(pi/2 (t+s)/(1+s))`` (Nichol & Dhariwal 2021, eq. 17)."""
    th0 = 0.5 * math.pi * _COSINE_S / (1 + _COSINE_S)
    th = 0.5 * math.pi * (t + _COSINE_S) / (1 + _COSINE_S)
    return 2.0 * (torch.log(torch.cos(th)) - math.log(math.cos(th0)))


def make_schedule(
    kind: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> Schedule:
    """Build a `Schedule`.

    Args:
        kind: ``"linear"`` (Ho et al. 2020; default betas 1e-4 .. 2e-2), ``"scaled_linear"``
            (betas linear in sqrt; default 8.5e-4 .. 1.2e-2) or ``"cosine"`` (Nichol & Dhariwal
            2021; takes no betas).
        num_train_timesteps: number of discrete training timesteps ``N >= 2``.
        beta_start, beta_end: beta range of the discrete kinds, ``0 < beta_start <= beta_end < 1``.

    Raises:
        MedinvertError: unknown kind or out-of-range parameters.
    """
    if kind not in KINDS:
        raise MedinvertError(f"unknown schedule kind {kind!r}; valid: {', '.join(KINDS)}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise MedinvertError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
    n = num_train_timesteps
    if kind == "cosine":
        if beta_start is not None or beta_end is not None:
            raise MedinvertError("the cosine schedule takes no beta_start / beta_end")
        t = torch.arange(n + 1, dtype=torch.float64) / n
        log_abar = _cosine_log_abar(torch.clamp(t, max=1 - 1 / n))
        log_abar[-1] = log_abar[-2] + math.log1p(-_COSINE_MAX_BETA)
        log_abar[0] = 0.0
        return Schedule(kind, n, None, None, log_abar)
    b0, b1 = _DEFAULT_BETAS[kind]
    beta_start = b0 if beta_start is None else float(beta_start)
    beta_end = b1 if beta_end is None else float(beta_end)
    if not 0 < beta_start <= beta_end < 1:
        raise MedinvertError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    else:
        betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n, dtype=torch.float64) ** 2
    log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
    return Schedule(kind, n, beta_start, beta_end, log_abar)


# ---------------------------------------------------------------------- coordinates
def alpha_bar_of_sigma(sigma: float | torch.Tensor) -> torch.Tensor:
    """``abar = 1 / (1 + sigma^2)`` (float64)."""
    sigma = _as_float64(sigma)
    return 1.0 / (1.0 + sigma * sigma)


def x_from_xbar(xbar: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x = xbar / sqrt(1 + sigma^2)`` (same dtype as ``xbar``; ``sigma`` a scalar)."""
    return xbar / math.sqrt(1.0 + float(sigma) ** 2)


def xbar_from_x(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``xbar = x * sqrt(1 + sigma^2)`` (same dtype as ``x``; ``sigma`` a scalar)."""
    return x * math.sqrt(1.0 + float(sigma) ** 2)


def ddim_coefficients(sigma_a: float, sigma_b: float) -> tuple[float, float]:
    """DDIM step ``a -> b`` in the original ``x`` coordinates: ``x_b = A x_a + B eps(x_a)``.

    ``A = sqrt(abar_b / abar_a)`` and ``B = sqrt(1 - abar_b) - sqrt(abar_b (1 - abar_a) / abar_a)``
    (Song et al. 2021, eq. 12 with eta = 0), written in sigmas as
    ``A = sqrt((1 + sigma_a^2) / (1 + sigma_b^2))``, ``B = (sigma_b - sigma_a) / sqrt(1 + sigma_b^2)``;
    this is the Euler step ``xbar_b = xbar_a + (sigma_b - sigma_a) eps`` seen in ``x``.
    """
    sa, sb = float(sigma_a), float(sigma_b)
    scale = math.sqrt(1.0 + sb * sb)
    return math.sqrt(1.0 + sa * sa) / scale, (sb - sa) / scale
