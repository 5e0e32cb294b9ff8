"""Edits along sampling trajectories: held (exact, zero leakage) and unheld (DDIM baseline).

Everything here works on slice batches ``(B, 1, X, Y)`` of normalised intensities, on a sub-grid
``sigmas = [sigma_e, ..., 0]`` that starts at the edit level ``sigma_e`` (`medinvert.solvers.base`
conventions), with a per-voxel weight ``w`` in ``[0, 1]`` (`medinvert.editing.region`).

Held exact edit (`exact_edit`), on the int64 grid of the bit-exact solver (BDIA gamma = 1 in VP ``x``
coordinates, `medinvert.solvers.exact`):

1. Invert ``x0`` exactly down the grid and *record* the integer state of every level,
   ``Z_j``, ``j = 0 .. m`` (``Z_m = quantize(x0)``, ``(Z_0, Z_1)`` is the latent pair).
2. Edit the pair inside the region (`LatentEdit`), blending with ``w``::

       z_j' = Z_j + round(w (z_j^edit - Z_j))          (exactly Z_j where w = 0, z_j^edit where w = 1)

3. Generate with the exact solver's ``hold`` hook: after every step the level just computed is
   blended with its recorded integers the same way.  Where ``w = 0`` the state therefore *is*
   ``Z_j`` at every level -- the original trajectory -- and ends at ``Z_m = quantize(x0)``, which
   dequantises to the input's float32 values bit for bit (`fixed_point` grid rule; the few values the
   grid cannot hold are restored by the caller's exception patch).  Inside the region the network
   sees, at each noise level, the surroundings exactly as they were on the input's own trajectory.

For the inpainting operator this hold is data consistency made exact: the known voxels are not
projected back after the fact, they never leave their trajectory.  Re-imposing the known region at
every step is the idea of Blended Diffusion (Avrahami et al. 2022) and RePaint (Lugmayr et al. 2022),
which re-noise the known image with fresh noise each step; here the known region's states are those
of its own exact inversion, so it ends exactly where it started.  Memory: the ``m + 1`` recorded
levels take ``8 (m + 1)`` bytes per processed voxel.  When the edit is a no-op the
pair is unchanged, generation retraces the inversion bit for bit and the output is the input.

Unheld DDIM edit (`ddim_edit`, the baseline of the literature): DDIM-invert, edit the latent the same
way, DDIM-generate.  Nothing is held, so the whole slice changes: DDIM's inversion error plus the
edit spreading through the network's receptive field (the leakage `medinvert.edit` reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from medinvert.errors import MedinvertError
from medinvert.solvers import ddim, exact
from medinvert.solvers.base import EpsModel
from medinvert.solvers.exact import FixedPointState
from medinvert.solvers.fixed_point import quantize, round_to_grid

__all__ = ["LATENT_EDITS", "LatentEdit", "EditRun", "blend", "record_inversion", "exact_edit", "ddim_edit"]

#: the exact solver scheme editing runs on (the stable default, in VP ``x`` coordinates)
SCHEME = "bdia"
#: kinds of `LatentEdit`
LATENT_EDITS: tuple[str, ...] = ("add", "transplant", "restart")


@dataclass(frozen=True)
class LatentEdit:
    """What happens to the latent inside the region at the edit level.

    ``tensor`` is ``(B, 1, X, Y)`` float64, normalised units:

    * ``"add"``: ``xbar += tensor`` at the edit level (both states of the pair): the clean-image
      change ``d`` of a shift / scale, carried by the latent's signal part;
    * ``"transplant"``: ``tensor`` is another clean image, inverted along the same grid; its latent
      replaces the region's;
    * ``"restart"``: ``tensor`` is a clean guess and ``noise`` standard normal noise (same shape); the
      region restarts from ``xbar_j = guess + sigma_j noise`` (`_restart_pair`).
    """

    kind: str
    tensor: torch.Tensor
    noise: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in LATENT_EDITS:
            raise MedinvertError(f"unknown latent edit {self.kind!r}; valid: {', '.join(LATENT_EDITS)}")
        if (self.kind == "restart") != (self.noise is not None):
            raise MedinvertError("a restart latent edit needs noise (and only a restart has it)")


@dataclass
class EditRun:
    """What an edit along a trajectory produced.

    Attributes:
        image: float64 ``(B, 1, X, Y)`` generated clean image (normalised units).
        nfe_invert: network evaluations of the inversion(s) (the transplanted image's included).
        nfe_generate: network evaluations of the generation.
        frac_bits: the grid exponent (exact), else None.
    """

    image: torch.Tensor
    nfe_invert: int
    nfe_generate: int
    frac_bits: int | None = None


# ---------------------------------------------------------------------- helpers
def blend(held: torch.Tensor, new: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``held + round(w (new - held))`` on int64 grid values: exactly ``held`` where ``w == 0`` and
    exactly ``new`` where ``w == 1`` (any int64 magnitude), rounded half to even in between."""
    mixed = held + torch.round((new - held).to(torch.float64) * weight).to(torch.int64)
    return torch.where(weight >= 1, new, torch.where(weight <= 0, held, mixed))


def _to_state(xbar: torch.Tensor, sigma: float) -> torch.Tensor:
    """A float ``xbar``-coordinate quantity in the scheme's VP ``x`` coordinates."""
    return xbar.to(torch.float64) / math.sqrt(1.0 + sigma * sigma)


def record_inversion(denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, frac_bits: int) -> list[torch.Tensor]:
    """Exact inversion of ``x0`` along ``sigmas`` keeping every level: ``[Z_0, ..., Z_m]`` (int64).

    ``Z_j`` is the state at ``sigmas[j]``; ``(Z_0, Z_1)`` is the latent pair `exact.invert` returns and
    ``Z_m = quantize(x0)``.  Uses the solver's callback (state ``(z, partner)`` at levels
    ``(m - 1 - k, m - k)`` after step ``k``).
    """
    m = len(sigmas) - 1
    levels: list[torch.Tensor | None] = [None] * (m + 1)

    def keep(info: dict) -> None:
        state, k = info["state"], info["step"]
        if k == 0:
            levels[m] = state.partner
        levels[m - 1 - k] = state.z

    final = exact.invert(denoiser, x0, sigmas, scheme=SCHEME, frac_bits=frac_bits, callback=keep)
    if levels[0] is None or not torch.equal(levels[0], final.z) or not torch.equal(levels[1], final.partner):
        raise MedinvertError("internal: the recorded inversion trajectory does not end at the returned latent")
    return [level for level in levels if level is not None]


def _restart_pair(held: list[torch.Tensor], guess: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor,
                  sig: list[float], q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent pair restarting the region from ``guess`` and ``noise``: ``xbar_j = guess + sigma_j noise``
    at the first two levels, blended into the held pair by ``w``.

    This is the DDIM start step with ``eps = noise`` -- what a model predicts at the top of the schedule
    when its clean estimate is the guess (exactly so for ``v_adjoint`` networks, whose skip makes the
    conditioning image the estimate at high noise) -- and costs no network evaluation.  (A start step
    that evaluates the network would, with a poor network, leave the grid's range: in VP coordinates
    it multiplies the state by ``sqrt(1 + sigma_0^2) / sqrt(1 + sigma_1^2)``.)
    """
    pair = [blend(held[j], quantize(_to_state(guess + sig[j] * noise, sig[j]), q), weight) for j in (0, 1)]
    return pair[0], pair[1]

# ---------------------------------------------------------------------- held exact edit
def exact_edit(denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, weight: torch.Tensor, change: LatentEdit,
               frac_bits: int) -> EditRun:
    """Held edit on the bit-exact grid (module docstring).

    Args:
        denoiser: ``eps(xbar, sigma)`` with an ``nfe`` counter; bitwise deterministic.
        x0: ``(B, 1, X, Y)`` float clean image (normalised) whose trajectory is held.
        sigmas: the sub-grid from the edit level to 0 (at least 2 steps).
        weight: float64 ``(B, 1, X, Y)``, 1 = edited, 0 = held exactly.
        change: the `LatentEdit`.
        frac_bits: grid exponent ``q`` (it must hold the edited values too).
    """
    sig = [float(s) for s in sigmas]
    if len(sig) < 3:
        raise MedinvertError("an exact edit needs at least 2 steps below the edit level")
    q = frac_bits
    start_nfe = denoiser.nfe
    levels = record_inversion(denoiser, x0, sigmas, q)
    if change.kind == "add":
        pair = [levels[j] + round_to_grid(_to_state(change.tensor * weight, sig[j]), q, what="edit") for j in (0, 1)]
    elif change.kind == "transplant":
        other = exact.invert(denoiser, change.tensor, sigmas, scheme=SCHEME, frac_bits=q)
        pair = [blend(levels[0], other.z, weight), blend(levels[1], other.partner, weight)]
    nfe_invert = denoiser.nfe - start_nfe
    if change.kind == "restart":
        assert change.noise is not None
        pair = list(_restart_pair(levels, change.tensor, change.noise, weight, sig, q))
    m = len(sig) - 1

    def hold(state: FixedPointState) -> FixedPointState:
        level = m + 2 - len(state.sigmas)  # the partner's level: the one just computed
        return FixedPointState(state.scheme, state.frac_bits, state.z, blend(levels[level], state.partner, weight),
                               state.sigmas)

    start = FixedPointState(SCHEME, q, pair[0], pair[1], tuple(sig))
    before = denoiser.nfe
    image = exact.generate(denoiser, start, sigmas, hold=hold)
    return EditRun(image=image, nfe_invert=nfe_invert, nfe_generate=denoiser.nfe - before, frac_bits=q)


# ---------------------------------------------------------------------- unheld DDIM edit
def ddim_edit(denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, weight: torch.Tensor,
              change: LatentEdit) -> EditRun:
    """DDIM-inversion editing without holding (the baseline): invert, edit the latent by ``w``, generate.

    ``"add"`` adds ``w d`` to the latent; ``"transplant"`` blends in the DDIM latent of the other image;
    ``"restart"`` blends in ``guess + sigma_0 noise``.  Float64 state (the network computes in its own dtype).
    """
    start_nfe = denoiser.nfe
    sig0 = float(sigmas[0])
    latent = ddim.invert(denoiser, x0.to(torch.float64), sigmas)
    if change.kind == "add":
        latent = latent + weight * change.tensor
    elif change.kind == "transplant":
        latent = latent + weight * (ddim.invert(denoiser, change.tensor.to(torch.float64), sigmas) - latent)
    else:
        assert change.noise is not None
        latent = latent + weight * (change.tensor.to(torch.float64) + sig0 * change.noise - latent)
    nfe_invert = denoiser.nfe - start_nfe
    image = ddim.generate(denoiser, latent, sigmas)
    return EditRun(image=image, nfe_invert=nfe_invert, nfe_generate=denoiser.nfe - start_nfe - nfe_invert)
