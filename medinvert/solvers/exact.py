"""Bit-exact inversion: reversible 1-NFE updates on a fixed-point int64 grid.

Every update adds to one integer tensor an increment that depends only on the *other* tensor of the
state pair, rounded to the grid (``R``, `medinvert.solvers.fixed_point`).  The inverse subtracts the
very same integers -- the increment is recomputed from bits that are identical in both directions
(same integers -> same float64 -> same network input -> same eps bits, given a deterministic network
and fixed batch composition) -- so ``generate(invert(x0))`` returns ``x0`` bit-for-bit, whatever
the model, the step count or the guidance.  Three schemes (``scheme=``):

``"bdia"`` (default) -- BDIA with gamma = 1 (Zhang et al. 2023) in the original VP ``x`` coordinates.
    Grid levels ``i = 0 .. n`` (``sigma_0 = sigma_max``, ``sigma_n = 0``), state ``(z_{i-1}, z_i)``::

        z_{i+1} = z_{i-1} + R( D(i -> i+1 | z_i) - D(i -> i-1 | z_i) )        (one eps at z_i, sigma_i)
        z_{i-1} = z_{i+1} - R( same )                                          (inverse)

    with the DDIM increment ``D(i -> j | x) = (a_ij - 1) x + b_ij eps`` of `medinvert.solvers.bdia`.
``"leapfrog"`` -- the same two-level update in ``xbar`` coordinates, where ``D(i -> j) = (sigma_j -
    sigma_i) eps`` and it becomes ``z_{i+1} = z_{i-1} + R((sigma_{i+1} - sigma_{i-1}) eps(z_i))``.
``"heun"`` -- reversible Heun (Kidger et al. 2021, "Efficient and accurate gradients for neural
    SDEs", sec. 3) in ``xbar`` coordinates, state ``(y, yhat)`` at one level, ``f = eps(yhat)``,
    ``d = sigma_{k+1} - sigma_k``, written as three integer-invertible maps::

        p = y + R(d/2 f(yhat_k));  yhat_{k+1} = 2 p - yhat_k;  y_{k+1} = p + R(d/2 f(yhat_{k+1}))

    (algebraically Kidger's ``yhat' = 2y - yhat + d f(yhat)``, ``y' = y + d/2 (f(yhat) + f(yhat'))``).

Starting and ending.  The two-level schemes start generation from a single tensor with one DDIM step
(eps at ``sigma_0``) and inversion from the clean image with one DDIM-inversion step (eps of the
image at ``sigma_{n-1}``) that creates the partner; neither is ever undone, because the partner
created at one end is reproduced exactly by the other direction.  Heun starts with ``yhat = y``.

NFE (``steps = n``): ``bdia``/``leapfrog`` generation ``n - 1`` from an inverted pair (``n`` from a
tensor), inversion ``n``; ``heun`` ``n + 1`` in both directions (it also evaluates eps at sigma = 0).

Parasitic mode.  Each scheme is volume preserving (|det| = 1 per step), so when the true flow
contracts -- generation: the data distribution is narrower than the noise -- the spurious mode of the
two-step recursion expands by the inverse factor.  How much depends on the coordinates: in ``xbar``
the flow contracts by about ``sigma_max / s`` (data std ``s``), in VP ``x`` only by about ``1 / s``.
Measured on the analytic Gaussian model (docs/methods.md): ``bdia`` beats DDIM at equal steps on every
schedule and grid tried and converges at second order on smooth grids; ``leapfrog`` and ``heun``
diverge on the cosine schedule (``sigma_max = 2e4``), hence the default.

The grid: ``frac_bits = q`` (default: the finest grid holding the data plus noise with 2 bits of
headroom, `fixed_point.choose_frac_bits`; 56 for normalised data in ``x`` coordinates).  Float32
values with ``|v| >= 2^(23-q)`` are on the grid exactly; smaller ones are rounded by `quantize`
(`fixed_point.on_grid` tells which), so a caller that needs bit-identical voxels keeps a patch of
those few values.  Range overflow and non-finite eps raise `medinvert.errors.NumericalError` naming the
batch element and step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from medinvert.errors import MedinvertError, NumericalError
from medinvert.schedule import ddim_coefficients
from medinvert.solvers.base import Callback, EpsModel, SolverSpec, check_grid, check_sigmas, check_state_tensor, emit
from medinvert.solvers.fixed_point import (
    checked_add,
    checked_linear,
    choose_frac_bits,
    dequantize,
    quantize,
    round_to_grid,
)

__all__ = ["SCHEMES", "FixedPointState", "Hold", "generate", "invert", "SPEC"]

#: scheme -> coordinates its integers live in
SCHEMES: dict[str, str] = {"bdia": "x", "leapfrog": "xbar", "heun": "xbar"}
#: ``hold(state) -> state``: hook of `generate` that may replace the state after every step
Hold = Callable[["FixedPointState"], "FixedPointState"]
DEFAULT_SCHEME = "bdia"


@dataclass(frozen=True)
class FixedPointState:
    """The exact solver's state: two int64 tensors ``(B, C, ...)`` on the grid ``2^-frac_bits``.

    ``sigmas`` is the rest of the generation grid (down to 0) the state belongs to.
    ``bdia``/``leapfrog``: ``z`` at ``sigmas[0]`` and ``partner`` at ``sigmas[1]``.  ``heun``:
    ``z = y`` and ``partner = yhat``, both at ``sigmas[0]``.  Integers are in VP ``x`` coordinates
    for ``bdia`` and in ``xbar`` coordinates otherwise (`coords`).
    """

    scheme: str
    frac_bits: int
    z: torch.Tensor
    partner: torch.Tensor
    sigmas: tuple[float, ...]

    @property
    def sigma(self) -> float:
        """The noise level of ``z``."""
        return self.sigmas[0]

    @property
    def coords(self) -> str:
        """``"x"`` or ``"xbar"``."""
        return SCHEMES[self.scheme]

    def xbar(self) -> torch.Tensor:
        """The main component as a float64 ``xbar`` tensor (for inspection and editing)."""
        v = dequantize(self.z, self.frac_bits)
        return v * math.sqrt(1.0 + self.sigma**2) if self.coords == "x" else v


# ---------------------------------------------------------------------- helpers
def _eps(denoiser: EpsModel, z: torch.Tensor, q: int, sigma: float, coords: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantised state ``v`` (float64, in ``coords``) and eps at ``sigma`` (float64)."""
    v = dequantize(z, q)
    xbar = v * math.sqrt(1.0 + sigma * sigma) if coords == "x" else v
    try:
        e = denoiser(xbar, sigma).to(torch.float64)
    except NumericalError as exc:  # the denoiser's NaN/Inf guard (`medinvert.denoiser`): add the step
        if exc.batch_index is None:
            raise
        raise NumericalError(f"the network returned NaN/Inf eps at step {step} (sigma={sigma:.6g}) in batch element "
                             f"{exc.batch_index}", batch_index=exc.batch_index) from None
    bad = ~torch.isfinite(e)
    if bool(bad.any()):
        index = int(torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1))[0, 0])
        raise NumericalError(f"the network returned NaN/Inf eps at step {step} (sigma={sigma:.6g}) in batch element "
                             f"{index}", batch_index=index)
    return v, e


def _ddim_increment(v: torch.Tensor, e: torch.Tensor, s_from: float, s_to: float, coords: str) -> torch.Tensor:
    """Float64 DDIM increment ``D(from -> to | v)`` in ``coords``."""
    if coords == "xbar":
        return (s_to - s_from) * e
    a, b = ddim_coefficients(s_from, s_to)
    return (a - 1.0) * v + b * e


def _two_level_increment(v: torch.Tensor, e: torch.Tensor, s_prev: float, s_cur: float, s_next: float, coords: str) -> torch.Tensor:
    """Float64 ``D(cur -> next | v) - D(cur -> prev | v)``, the same expression in both directions."""
    if coords == "xbar":
        return (s_next - s_prev) * e
    a_next, b_next = ddim_coefficients(s_cur, s_next)
    a_prev, b_prev = ddim_coefficients(s_cur, s_prev)
    return (a_next - a_prev) * v + (b_next - b_prev) * e


def _resolve(scheme: str | None, frac_bits: int | None, state: object) -> tuple[str, int | None]:
    if isinstance(state, FixedPointState):
        if scheme is not None and scheme != state.scheme:
            raise MedinvertError(f"the latent was made with scheme {state.scheme!r}, not {scheme!r}")
        if frac_bits is not None and frac_bits != state.frac_bits:
            raise MedinvertError(f"the latent uses frac_bits={state.frac_bits}, not {frac_bits}")
        return state.scheme, state.frac_bits
    scheme = DEFAULT_SCHEME if scheme is None else scheme
    if scheme not in SCHEMES:
        raise MedinvertError(f"unknown exact scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    return scheme, frac_bits


def _auto_frac_bits(values: torch.Tensor, coords: str, sigma_max: float) -> int:
    max_abs = float(values.abs().max()) if values.numel() else 0.0
    if not math.isfinite(max_abs):
        raise NumericalError("the input contains NaN or Inf")
    scale = 1.0 if coords == "x" else math.sqrt(1.0 + sigma_max**2)
    return choose_frac_bits(max_abs, scale)


# ---------------------------------------------------------------------- generate
def generate(
    denoiser: EpsModel,
    state: torch.Tensor | FixedPointState,
    sigmas: torch.Tensor,
    *,
    scheme: str | None = None,
    frac_bits: int | None = None,
    callback: Callback | None = None,
    hold: Hold | None = None,
) -> torch.Tensor:
    """Bit-exact-invertible sampling.

    Args:
        state: ``xbar`` at ``sigmas[0]`` (float, ``(B, C, ...)``), or the `FixedPointState` returned by
            `invert` (then ``scheme`` / ``frac_bits`` default to the state's and must match it).
        scheme: ``"bdia"`` (default), ``"leapfrog"`` or ``"heun"``.
        frac_bits: grid exponent ``q`` for a tensor input (default: `choose_frac_bits` from its range).
        hold: optional ``hold(state) -> state``, two-level schemes (``bdia``, ``leapfrog``) only:
            called after every step with the new `FixedPointState` -- the pair at
            ``state.sigmas[0:2]``, whose ``partner`` is the level just computed -- and the
            integration continues from the state it returns (int64 tensors of the same shapes).
            Localized editing uses it to re-impose recorded integers outside a mask
            (`medinvert.editing`).  None (default): plain generation.

    Returns:
        the clean image as float64 ``(B, C, ...)``: the dequantised final integers (exactly the input
        voxels after a round trip of on-grid values).
    """
    sig = check_sigmas(sigmas)
    scheme, q = _resolve(scheme, frac_bits, state)
    coords = SCHEMES[scheme]
    if isinstance(state, FixedPointState):
        check_grid(state.sigmas, sig, "exact latent")
        start: FixedPointState | None = state
        q = state.frac_bits
    else:
        xbar = check_state_tensor(state)
        values = xbar.to(torch.float64) / math.sqrt(1.0 + sig[0] ** 2) if coords == "x" else xbar.to(torch.float64)
        q = _auto_frac_bits(values, coords, sig[0]) if q is None else q
        start = None
        z0 = quantize(values, q)
    if scheme == "heun":
        if hold is not None:
            raise MedinvertError("the hold hook needs a two-level scheme (bdia or leapfrog), not heun")
        if start is not None:
            y, yhat = start.z, start.partner
        else:
            y, yhat = z0, z0
        return _heun_generate(denoiser, y, yhat, sig, q, callback)
    if start is not None:
        prev, cur = start.z, start.partner
    else:
        v0, e0 = _eps(denoiser, z0, q, sig[0], coords, 0)
        inc = round_to_grid(_ddim_increment(v0, e0, sig[0], sig[1], coords), q, what="increment", step=0)
        prev, cur = _apply_hold(hold, FixedPointState(scheme, q, z0, checked_add(z0, inc, step=0), tuple(sig)))
        emit(callback, method="exact", direction="generate", step=0, steps=len(sig) - 1, sigma=sig[1],
             state=FixedPointState(scheme, q, prev, cur, tuple(sig)), nfe=denoiser.nfe)
    steps = len(sig) - 1
    for i in range(1, steps):
        v, e = _eps(denoiser, cur, q, sig[i], coords, i)
        inc = round_to_grid(_two_level_increment(v, e, sig[i - 1], sig[i], sig[i + 1], coords), q, what="increment", step=i)
        prev, cur = cur, checked_add(prev, inc, step=i)
        if hold is not None:
            prev, cur = _apply_hold(hold, FixedPointState(scheme, q, prev, cur, tuple(sig[i:])))
        emit(callback, method="exact", direction="generate", step=i, steps=steps, sigma=sig[i + 1],
             state=FixedPointState(scheme, q, prev, cur, tuple(sig[i:])), nfe=denoiser.nfe)
    return dequantize(cur, q)


def _half_step(d: float, f: torch.Tensor) -> torch.Tensor:
    """Float64 ``d/2 * f`` -- one expression shared by both directions of the Heun scheme."""
    return (0.5 * d) * f


def _apply_hold(hold: Hold | None, state: FixedPointState) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, partner)`` of ``hold(state)`` (of ``state`` when there is no hook), checked to fit the state."""
    if hold is None:
        return state.z, state.partner
    held = hold(state)
    for name in ("z", "partner"):
        got, want = getattr(held, name, None), getattr(state, name)
        if not isinstance(got, torch.Tensor) or got.dtype != torch.int64 or got.shape != want.shape:
            raise MedinvertError(f"the hold hook must return a FixedPointState with int64 {name} of shape {tuple(want.shape)}")
    return held.z, held.partner


def _heun_generate(denoiser: EpsModel, y: torch.Tensor, yhat: torch.Tensor, sig: list[float], q: int, callback: Callback | None) -> torch.Tensor:
    steps = len(sig) - 1
    _, f = _eps(denoiser, yhat, q, sig[0], "xbar", 0)
    for k in range(steps):
        d = sig[k + 1] - sig[k]
        p = checked_add(y, round_to_grid(_half_step(d, f), q, what="increment", step=k), step=k)
        yhat = checked_linear([(2, p), (-1, yhat)], step=k)
        _, f = _eps(denoiser, yhat, q, sig[k + 1], "xbar", k)
        y = checked_add(p, round_to_grid(_half_step(d, f), q, what="increment", step=k), step=k)
        emit(callback, method="exact", direction="generate", step=k, steps=steps, sigma=sig[k + 1],
             state=FixedPointState("heun", q, y, yhat, tuple(sig[k + 1 :])), nfe=denoiser.nfe)
    return dequantize(y, q)


# ---------------------------------------------------------------------- invert
def invert(
    denoiser: EpsModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    scheme: str | None = None,
    frac_bits: int | None = None,
    callback: Callback | None = None,
) -> FixedPointState:
    """Bit-exact inversion of the clean image ``x0`` (float ``(B, C, ...)``).

    ``x0`` is quantised to the grid (`fixed_point.quantize`; exact for float32 values
    ``|v| >= 2^(23 - frac_bits)``).  Returns the `FixedPointState` at ``sigmas[0]`` that `generate`
    maps back to exactly those integers.
    """
    sig = check_sigmas(sigmas)
    scheme, q = _resolve(scheme, frac_bits, None)
    coords = SCHEMES[scheme]
    x0 = check_state_tensor(x0, "x0")
    q = _auto_frac_bits(x0, coords, sig[0]) if q is None else q
    z = quantize(x0, q)  # at sigma = 0, x = xbar
    if scheme == "heun":
        return _heun_invert(denoiser, z, sig, q, callback)
    steps = n = len(sig) - 1
    if steps < 2:
        raise MedinvertError("exact inversion with a two-level scheme needs a grid of at least 2 steps")
    # DDIM-inversion start: the image's eps at the next level creates its partner
    v, e = _eps(denoiser, z, q, sig[n - 1], coords, 0)
    inc = round_to_grid(_ddim_increment(v, e, sig[n], sig[n - 1], coords), q, what="increment", step=0)
    nxt, cur = z, checked_add(z, inc, step=0)
    emit(callback, method="exact", direction="invert", step=0, steps=steps, sigma=sig[n - 1],
         state=FixedPointState(scheme, q, cur, nxt, tuple(sig[n - 1 :])), nfe=denoiser.nfe)
    for k, i in enumerate(range(n - 1, 0, -1), start=1):
        v, e = _eps(denoiser, cur, q, sig[i], coords, k)
        inc = round_to_grid(_two_level_increment(v, e, sig[i - 1], sig[i], sig[i + 1], coords), q, what="increment", step=k)
        nxt, cur = cur, checked_add(nxt, inc, step=k, sign=-1)
        emit(callback, method="exact", direction="invert", step=k, steps=steps, sigma=sig[i - 1],
             state=FixedPointState(scheme, q, cur, nxt, tuple(sig[i - 1 :])), nfe=denoiser.nfe)
    return FixedPointState(scheme, q, cur, nxt, tuple(sig))


def _heun_invert(denoiser: EpsModel, z: torch.Tensor, sig: list[float], q: int, callback: Callback | None) -> FixedPointState:
    steps = len(sig) - 1
    y, yhat = z, z
    _, f = _eps(denoiser, yhat, q, sig[steps], "xbar", 0)
    for k_step, k in enumerate(range(steps - 1, -1, -1)):
        d = sig[k + 1] - sig[k]
        p = checked_add(y, round_to_grid(_half_step(d, f), q, what="increment", step=k_step), step=k_step, sign=-1)
        yhat = checked_linear([(2, p), (-1, yhat)], step=k_step)
        _, f = _eps(denoiser, yhat, q, sig[k], "xbar", k_step)
        y = checked_add(p, round_to_grid(_half_step(d, f), q, what="increment", step=k_step), step=k_step, sign=-1)
        emit(callback, method="exact", direction="invert", step=k_step, steps=steps, sigma=sig[k],
             state=FixedPointState("heun", q, y, yhat, tuple(sig[k:])), nfe=denoiser.nfe)
    return FixedPointState("heun", q, y, yhat, tuple(sig))


SPEC = SolverSpec(
    name="exact",
    summary="bit-exact: reversible 1-NFE update (BDIA gamma=1 in x coordinates) on an int64 fixed-point grid",
    nfe_per_step=1,
    exact_in="floating_point",
    order=2,
    defaults={"scheme": None, "frac_bits": None},
    _generate=generate,
    _invert=invert,
)
