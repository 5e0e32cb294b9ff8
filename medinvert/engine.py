"""`reconstruct_volume`: deterministic, data-consistent diffusion reconstruction of a volume.

Algorithm (per batch of axial slices; no per-sample optimisation):

1. Normalise: ``s = robust_scale(A^H y)`` (`medinvert.intensity`); the network sees ``x / s`` and the
   measurement ``y / s`` (operators are linear, so this is consistent).
2. Condition: descriptor ``c`` of the corruption and the guess -- the adjoint image ``A^H y / s``, or
   for k-space and a model trained with ``guess = "cs_tv"`` the CS-TV reconstruction of ``y / s``
   (`medinvert.guess`) -- as an extra input channel (as in training, `medinvert.train.loop`); a 2.5D
   network also gets the guesses of its ``k`` neighbouring slices on each side (`medinvert.models.slab`).
   Wherever the steps below say ``A^H y / s``, read "the guess".
3. Grid (`default_grid`): for undersampled k-space with the adjoint guess at 20 steps or more a karras
   grid (Karras et al. 2022, eq. 5) from ``sigma_0 = 10`` (normalised units, `KSPACE_START_SIGMA`),
   which at 20 steps beats the trailing grid from ``sigma_max`` by 0.3-0.5 dB on training slices and
   0.2-0.6 dB on held-out and unseen volumes; below 20 steps, for the CS-TV guess, and for the other
   kinds, the trailing grid (at 10 steps the bit-exact integrator loses to DDIM on karras grids;
   docs/benchmarks.md).
   Deterministic start at the top of the grid ``sigma_0``, in DDIM-ODE coordinates (``start=``):
   ``"guess"`` (default): ``xbar_0 = A^H y / s`` -- the noise-free point of the guess.  The first
   prediction is then the network's estimate of ``E[x0 | A^H y]`` and the probability-flow ODE
   transports it, through data-consistent predictions, to the clean end; the output stays close to
   the posterior mean, the estimator that maximises PSNR (measured: docs/benchmarks.md, "Start of
   the sampler").  ``"noise"``: ``xbar_0 = A^H y / s + sigma_0 n`` with ``n ~ N(0, I)`` drawn, slice by
   slice, from a generator seeded by ``seed_from_name(source, seed)`` and the slice index -- a
   posterior *sample* (different seeds give different plausible images; lower PSNR).  Either way the
   same input and settings give the same start, whatever the batch size.
4. Integrate the probability-flow ODE with the chosen solver (`medinvert.solvers`), the denoiser
   wrapped in `DataConsistentDenoiser`: at every evaluation the predicted clean image
   ``x0 = xbar - sigma eps`` is replaced by ``DC(x0)`` (closed form for k-space and masks, conjugate
   gradients for blur, weighted average for noise; `medinvert.operators`; for noiseless k-space the
   projection onto real images, `final_projection`) and the eps handed to the
   solver is the one consistent with it, ``(xbar - DC(x0)) / sigma``.  The DC weight is noise-aware:
   ``lambda(sigma) = sigma^2 / (sigma^2 + sigma_y^2)`` with ``sigma_y`` the measurement noise std in
   normalised units (``lambda = 1`` for noiseless data) -- the posterior weight of two Gaussian
   estimates of ``x0`` with variances ``sigma^2`` (prediction) and ``sigma_y^2`` (measurement).
   Pure Gaussian (or Rician) noise, ``y = x + sigma_y n`` (identity operator), is different: in
   DDIM-ODE coordinates the noisy image *is* a point of the forward process at noise level
   ``sigma_y`` (``xbar = x0 + sigma eps``).  3'. The sampler therefore starts there -- ``xbar_0 = y / s``
   on a karras grid from ``sigma_0 = sigma_y / s`` (the truncated start of Chung et al. 2022, "Come-
   closer-diffuse-faster") -- and integrates without per-step data consistency: pulling the estimate
   back towards ``y`` at every step re-injects the noise (measured on held-out slices at noise
   0.05: 27.0 dB that way, 36.1 dB this way; docs/benchmarks.md).  ``start`` and ``spacing`` have no
   effect here (`sampling_grid`); a ``sigma_y`` beyond the schedule's ``sigma_max`` starts at
   ``sigma_max``.  Two approximations, justified by the measurement only: Rician noise is treated as
   Gaussian (its bias is small at the SNRs of MR images), and the state and the conditioning channel
   carry the *same* noise sample, where training drew them independently.
5. End: a final hard data-consistency projection for noiseless measurements, then ``x * s``.

Slices whose measurement is identically zero (air above and below the head) are returned as zeros
without evaluating the network.  A 3D network (`medinvert.models.volume`) integrates the selected
slices together, as one volume, in one batch.  With the ``exact`` method the whole map from start to output (before
the final projection) is a bijection on the fixed-point grid given ``y``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from medinvert.denoiser import Denoiser
from medinvert.errors import MedinvertError, NumericalError
from medinvert.guess import conditioning_volume, kspace_tv_guess, uses_tv
from medinvert.intensity import robust_scale
from medinvert.models.slab import slab_indices, slab_stack
from medinvert.models.volume import as_slice_network
from medinvert.operators import Observation
from medinvert.operators.base import LinearOperator
from medinvert.operators.blur import BlurOperator
from medinvert.operators.identity import IdentityOperator
from medinvert.operators.inpaint import InpaintOperator
from medinvert.operators.kspace import KspaceOperator
from medinvert.operators.layout import slices_to_volume, volume_to_slices
from medinvert.schedule import Schedule, make_schedule
from medinvert.solvers import get_solver
from medinvert.solvers.fixed_point import choose_frac_bits

__all__ = ["DataConsistentDenoiser", "SliceProblem", "ReconstructionRun", "run_reconstruction", "slice_problem",
           "dc_weight", "noise_std", "schedule_of", "default_model_name", "start_noise", "final_projection",
           "reconstruction_frac_bits", "denoising_start_sigma", "is_denoising",
           "sampling_grid", "default_grid", "default_steps", "KSPACE_START_SIGMA", "KSPACE_KARRAS_MIN_STEPS",
           "DEFAULT_STEPS", "TV_GUESS_STEPS"]


#: deterministic starts of the sampler (module docstring, step 3)
STARTS: tuple[str, ...] = ("guess", "noise")

#: top of the default k-space sampling grid (normalised units; `default_grid`).  Chosen on the *training*
#: slices of the sample data at 20 steps: karras from 5 / 10 / 20 / sigma_max(trailing) gave 33.41 /
#: 33.42 / 33.28 / 32.94 dB at 4x and 30.24 / 30.32 / 30.29 / 30.01 dB at 8x (docs/benchmarks.md)
KSPACE_START_SIGMA = 10.0
#: fewest steps that get the karras grid: at 10 steps the bit-exact integrator (BDIA) loses 0.6-0.9 dB
#: to DDIM on karras grids of any rho (2..7), and 0.1 dB to its own trailing-grid result (training slices)
KSPACE_KARRAS_MIN_STEPS = 20

#: default number of sampling steps (`default_steps`)
DEFAULT_STEPS = 20
#: default steps of a model refining the CS-TV guess on k-space data: fewer steps are better for it
#: (held-out 8 slices, exact: 10 / 20 / 50 steps give 37.68 / 37.37 / 37.01 dB at 4x and 31.71 / 31.65 /
#: 31.58 dB at 8x; docs/benchmarks.md, session 5), and twice as fast as 20
TV_GUESS_STEPS = 10

#: fixed-point grid of ``exact`` reconstructions: 2^-48 resolution, |x| < 2^13 range in normalised
#: units -- room for a poorly trained network's excursions far from the data range
RECONSTRUCTION_FRAC_BITS = 48


def reconstruction_frac_bits(sigma_max: float) -> int:
    """Grid exponent of an ``exact`` reconstruction whose sigma grid starts at ``sigma_max``.

    `RECONSTRUCTION_FRAC_BITS`, unless the schedule's top noise level needs more range: the grid must
    hold ``(1 + NOISE_BOUND) * sqrt(1 + sigma_max^2)`` in normalised units
    (`medinvert.solvers.fixed_point.choose_frac_bits`) -- the size of the predicted clean image
    ``xbar - sigma eps`` when eps does not track the start noise (an untrained network, e.g. the
    built-in ``random`` model with its cosine schedule, sigma_max ~ 2e4).  Such a network then gives a
    poor image instead of a fixed-point overflow.  For the linear schedule of the shipped models
    (sigma_max ~ 157) this is `RECONSTRUCTION_FRAC_BITS` itself.
    """
    return min(RECONSTRUCTION_FRAC_BITS, choose_frac_bits(1.0, math.sqrt(1.0 + float(sigma_max) ** 2)))


def noise_std(observation: Observation) -> float:
    """Measurement noise std of ``observation`` in its own intensity units (0 for noiseless)."""
    sigma = observation.params.get("sigma")
    return float(sigma) if sigma else 0.0


def is_denoising(observation: Observation) -> bool:
    """Whether ``observation`` is a noisy image (identity operator, noise > 0): module step 3'."""
    return observation.kind == "noise" and noise_std(observation) > 0.0


def default_steps(kind: str, guess: str = "adjoint") -> int:
    """Sampling steps when none are given, for an observation of ``kind``: `TV_GUESS_STEPS` for k-space
    data under the CS-TV guess (`medinvert.guess`), `DEFAULT_STEPS` otherwise."""
    return TV_GUESS_STEPS if uses_tv(guess, kind) else DEFAULT_STEPS


def default_grid(observation: Observation, schedule: Schedule, steps: int,
                 guess: str = "adjoint") -> tuple[str, float | None]:
    """``(spacing, start_sigma)`` of the default sampling grid for ``observation`` (module step 3).

    Undersampled k-space with at least `KSPACE_KARRAS_MIN_STEPS` steps and the adjoint guess: a karras
    grid (rho 7) from `KSPACE_START_SIGMA` (clamped into the schedule), which spends the steps where the
    prediction still changes the image; otherwise trailing.  A model refining the CS-TV guess
    (`medinvert.guess`) does best on the trailing grid (training slices, 20 steps: +0.11 / +0.04 dB at
    4x / 8x over karras from 10; docs/models.md, session 5).
    """
    if (observation.kind == "kspace" and steps >= KSPACE_KARRAS_MIN_STEPS and not uses_tv(guess, observation.kind)
            and schedule.sigma_min < KSPACE_START_SIGMA):
        return "karras", min(KSPACE_START_SIGMA, schedule.sigma_max)
    return "trailing", None


def sampling_grid(observation: Observation, schedule: Schedule, steps: int, spacing: str | None = None,
                  start_sigma: float | None = None, guess: str = "adjoint") -> torch.Tensor:
    """The grid `run_reconstruction` integrates ``observation`` on: ``schedule.sigmas(steps, spacing,
    start=start_sigma)`` (`default_grid` when ``spacing`` is None), or for a noisy image (step 3') a
    karras grid from its own noise level."""
    if is_denoising(observation):
        sigma_y = noise_std(observation) / robust_scale(observation.adjoint)
        return schedule.sigmas(steps, "karras", start=denoising_start_sigma(schedule, sigma_y))
    if spacing is None:
        spacing, start_sigma = default_grid(observation, schedule, steps, guess)
    return schedule.sigmas(steps, spacing, start=start_sigma)


def denoising_start_sigma(schedule: Schedule, sigma_y: float) -> float:
    """Where the sampler of a noisy image starts (module step 3'): ``sigma_y`` kept inside the schedule."""
    return min(max(float(sigma_y), 1.001 * schedule.sigma_min), schedule.sigma_max)


def dc_weight(sigma: float, sigma_y: float) -> float:
    """Noise-aware data-consistency weight ``sigma^2 / (sigma^2 + sigma_y^2)`` (1 when ``sigma_y = 0``)."""
    if sigma_y <= 0.0:
        return 1.0
    return sigma * sigma / (sigma * sigma + sigma_y * sigma_y)


class DataConsistentDenoiser:
    """``eps(xbar, sigma)`` whose implied clean image satisfies the measurement (module step 4).

    Args:
        denoiser: the plain conditional `Denoiser` (its ``nfe`` counter is forwarded).
        operator: forward operator acting on ``(B, 1, H, W)``.
        y: normalised measurement for these slices, shaped like ``operator.forward`` output.
        sigma_y: measurement noise std in normalised units.
    """

    def __init__(self, denoiser: Denoiser, operator: LinearOperator, y: torch.Tensor, sigma_y: float) -> None:
        self.denoiser = denoiser
        self.operator = operator
        self.y = y
        self.sigma_y = float(sigma_y)

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    def __call__(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        eps = self.denoiser(xbar, sigma)
        s = float(sigma)
        if s <= 0.0:
            return eps
        x0 = xbar - s * eps
        y = self.y.to(device=x0.device)
        weight = dc_weight(s, self.sigma_y)
        # noiseless data: the projection onto *real* images consistent with y (`final_projection`;
        # +0.15 dB over the real part of the complex projection, docs/benchmarks.md)
        x0_dc = final_projection(self.operator, x0, y) if weight == 1.0 else self.operator.data_consistency(x0, y, weight)
        return (xbar - x0_dc) / s


@dataclass
class SliceProblem:
    """The normalised reconstruction problem of slices ``start:stop`` (tensors ``(B, 1, X, Y)``)."""

    start: int
    stop: int
    operator: LinearOperator
    y: torch.Tensor
    adjoint: torch.Tensor


def slice_problem(observation: Observation, scale: float, start: int, stop: int,
                  dtype: torch.dtype = torch.float64) -> SliceProblem:
    """Operator, measurement and adjoint of slices ``start:stop``, normalised by ``scale``."""
    mask = volume_to_slices(observation.mask)[start:stop, None]
    y = observation.y[start:stop, None]
    y = (y.to(torch.complex128) if y.is_complex() else y.to(dtype)) / scale
    adjoint = volume_to_slices(observation.adjoint)[start:stop, None].to(dtype) / scale
    operator: LinearOperator
    if observation.kind == "kspace":
        operator = KspaceOperator(mask)
    elif observation.kind == "mask":
        operator = InpaintOperator(mask)
    elif observation.kind == "noise":
        operator = IdentityOperator()
    else:
        assert observation.kernel is not None
        operator = BlurOperator(observation.kernel.to(dtype))
    return SliceProblem(start, stop, operator, y, adjoint)


def start_noise(base_seed: int, slice_indices: range, shape: tuple[int, int]) -> torch.Tensor:
    """Standard normal ``(B, 1, X, Y)`` float64; slice ``k`` drawn from a generator seeded by ``(base_seed, k)``."""
    rows = []
    for k in slice_indices:
        generator = torch.Generator().manual_seed((base_seed * 1_000_003 + k) % (2**63))
        rows.append(torch.randn((1, *shape), generator=generator, dtype=torch.float64))
    return torch.stack(rows)


@dataclass
class ReconstructionRun:
    """What one pass of the algorithm produced (before any reporting)."""

    volume: torch.Tensor                 # (X, Y, Z) float32, input intensity units
    scale: float
    nfe: int                             # network evaluations of the whole run (per batch, summed)
    seconds: float
    evaluated_slices: list[int]
    sigmas: list[float] = field(default_factory=list)  # the sampling grid used (steps + 1 levels)
    extra: dict[str, Any] = field(default_factory=dict)


def run_reconstruction(
    observation: Observation,
    net: torch.nn.Module,
    schedule: Schedule,
    *,
    method: str = "exact",
    steps: int = 20,
    guidance: float = 1.0,
    batch_size: int = 8,
    prediction: str = "eps",
    base_seed: int = 0,
    slices: range | None = None,
    y_override: torch.Tensor | None = None,
    method_options: dict[str, Any] | None = None,
    spacing: str | None = None,
    start_sigma: float | None = None,
    start: str = "guess",
    guess: str = "adjoint",
    progress: Callable[[int], None] | None = None,
) -> ReconstructionRun:
    """The algorithm of the module docstring on ``observation`` (optionally only ``slices``).

    ``y_override`` (shaped like ``observation.y``) replaces the measurement (used to measure the
    sensitivity to a perturbed observation).  ``progress(n)`` is called after each batch with the
    number of slices done.  ``spacing`` / ``start_sigma``: the sampling grid (`Schedule.sigmas`;
    ``start_sigma`` truncates a karras grid; ``spacing=None``: `default_grid`).  ``start``: ``"guess"`` or ``"noise"`` (module step 3).
    ``guess``: the network's conditioning image, ``"adjoint"`` or ``"cs_tv"`` (`medinvert.guess`; the
    checkpoint's ``config["conditioning"]["guess"]``) -- also the image the sampler starts from.
    """
    if steps < 1:
        raise MedinvertError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise MedinvertError(f"batch size must be >= 1, got {batch_size}")
    if start not in STARTS:
        raise MedinvertError(f"unknown start {start!r}; valid: {', '.join(STARTS)}")
    tv_guess = uses_tv(guess, observation.kind)  # also refuses an unknown guess
    solver = get_solver(method)
    obs = observation if y_override is None else observation.with_measurement(y_override)
    scale = robust_scale(observation.adjoint)
    sigma_y = noise_std(observation) / scale
    denoising = is_denoising(observation)
    sigmas = sampling_grid(observation, schedule, steps, spacing, start_sigma, guess)
    given = dict(method_options or {})
    if method == "exact":
        given.setdefault("frac_bits", reconstruction_frac_bits(float(sigmas[0])))
    options = solver.options(**given)
    x_size, y_size, z_size = obs.shape
    selected = range(z_size) if slices is None else slices
    output = torch.zeros((z_size, x_size, y_size), dtype=torch.float32)
    cond = obs.descriptor.to(torch.float32)
    net = as_slice_network(net)
    whole_volume = bool(getattr(net, "whole_volume", False))  # a 3D network: every slice, one batch
    measured = obs.y.reshape(z_size, -1).abs().amax(dim=1) > 0
    todo = list(selected) if whole_volume else [k for k in selected if bool(measured[k])]
    if whole_volume:
        batch_size = max(len(todo), 1)
    takes_adjoint = _n_cond_channels(net) > 0
    neighbours = _slab_neighbours(net)
    if neighbours and _n_cond_channels(net) != 1:
        raise MedinvertError("2.5D networks need exactly one conditioning image (the adjoint) per slice")
    adjoint_slices = None
    if neighbours:  # 2.5D: the guesses of every slice the batches need (theirs and their neighbours')
        needed = sorted({j for k in todo for j in slab_indices(k, neighbours, z_size)})
        adjoint_slices = volume_to_slices(conditioning_volume(obs, guess, needed)).to(torch.float64) / scale
    started = time.perf_counter()
    nfe = 0
    for b0 in range(0, len(todo), batch_size):
        chunk = todo[b0:b0 + batch_size]
        problems = [slice_problem(obs, scale, k, k + 1) for k in chunk]
        adjoint = torch.cat([p.adjoint for p in problems])
        y = torch.cat([p.y for p in problems])
        operator = _stack_operator(obs, problems)
        if tv_guess:  # the CS-TV reconstruction of these slices replaces A^H y as conditioning and start
            adjoint = (adjoint_slices[chunk][:, None] if adjoint_slices is not None  # 2.5D: computed above
                       else kspace_tv_guess(y[:, 0], operator.mask[:, 0])[:, None])  # type: ignore[attr-defined]
        extra = adjoint.to(torch.float32) if takes_adjoint else None
        if adjoint_slices is not None:  # 2.5D: the adjoints of the neighbouring slices as well
            extra = slab_stack(adjoint_slices, chunk, neighbours).to(torch.float32)
        denoiser = Denoiser(net, schedule, prediction=prediction, cond=cond, extra=extra, guidance=guidance)
        if denoising:  # the data enter through the start; no per-step pull back towards the noisy image
            dc: Denoiser | DataConsistentDenoiser = denoiser
            state = adjoint
        else:
            dc = DataConsistentDenoiser(denoiser, operator, y, sigma_y)
            state = adjoint if start == "guess" else adjoint + sigmas[0].item() * start_noise(base_seed, chunk, (x_size, y_size))
        try:
            x0 = solver.generate(dc, state, sigmas, **options).to(torch.float64)
        except NumericalError as exc:  # overflow / NaN: name the file and the slice, stop this volume
            if exc.batch_index is not None and 0 <= exc.batch_index < len(chunk):
                raise exc.at_slice(chunk[exc.batch_index], observation.source) from None
            raise NumericalError(f"{exc.reason} (slices {chunk[0]}-{chunk[-1]})", observation.source) from None
        if sigma_y == 0.0:
            x0 = final_projection(operator, x0, y)
        nfe += denoiser.nfe
        for row, k in enumerate(chunk):
            output[k] = (x0[row, 0] * scale).to(torch.float32)
        if progress is not None:
            progress(len(chunk))
    if not bool(torch.isfinite(output).all()):
        raise MedinvertError("reconstruction produced NaN/Inf values", observation.source)
    return ReconstructionRun(slices_to_volume(output).contiguous(), scale, nfe,
                             time.perf_counter() - started, todo, [float(v) for v in sigmas])


def _mirror(k: torch.Tensor) -> torch.Tensor:
    """``conj(k(-f))`` of centred k-space ``(..., H, W)`` (zero frequency at ``(H // 2, W // 2)``):
    the k-space of the conjugate image.  Index ``i`` maps to ``(2 (H // 2) - i) mod H``."""
    h, w = k.shape[-2:]
    return torch.roll(torch.flip(k, dims=(-2, -1)), shifts=(1 - h % 2, 1 - w % 2), dims=(-2, -1)).conj()


def final_projection(operator: LinearOperator, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hard data consistency of the real image ``x0`` ``(B, 1, X, Y)`` (noiseless measurements).

    For k-space the orthogonal projection onto the *real* images with ``M F x = y`` is not the real
    part of the complex projection (that leaks the unmeasured mirror samples ``conj(X(-f))`` into
    measured ones whenever the mask is not point-symmetric).  A real image has Hermitian k-space, so
    measuring ``f`` also fixes ``-f``: the projection replaces the samples on ``M`` by ``y`` and those on
    the mirrored mask by ``conj(y(-f))``, keeping the rest.  Other operators use their own projection.
    """
    if not isinstance(operator, KspaceOperator):
        return operator.data_consistency(x0, y, 1.0)
    from medinvert.operators.fft import fft2c, ifft2c

    k = fft2c(x0)
    mask = operator.mask.to(device=k.device).expand(k.shape)
    mirrored = _mirror(mask.to(k.dtype)).real > 0.5
    y = y.to(k.dtype)
    k = torch.where(mask, y, torch.where(mirrored, _mirror(y), k))
    return ifft2c(k).real.to(x0.dtype)


def _n_cond_channels(net: torch.nn.Module) -> int:
    """Extra conditioning image channels ``net`` expects (its config's ``n_cond_channels``; else
    ``in_channels - 1``; 1 for a module that says neither).  The adjoint ``A^H y`` is passed only to
    networks that take it (the built-in ``random`` model does not)."""
    config = getattr(net, "config", None)
    if isinstance(config, dict) and "n_cond_channels" in config:
        return int(config["n_cond_channels"])
    return int(getattr(net, "in_channels", 2)) - 1


def _slab_neighbours(net: torch.nn.Module) -> int:
    """``k`` neighbouring slices on each side whose conditioning a 2.5D network sees (0 for 2D)."""
    config = getattr(net, "config", None)
    return int(config.get("neighbours", 0)) if isinstance(config, dict) else 0


def _stack_operator(observation: Observation, problems: list[SliceProblem]) -> LinearOperator:
    """One operator for a batch of single-slice problems (masks stacked along the batch axis)."""
    first = problems[0].operator
    if isinstance(first, KspaceOperator):
        return KspaceOperator(torch.cat([p.operator.mask for p in problems]))  # type: ignore[attr-defined]
    if isinstance(first, InpaintOperator):
        return InpaintOperator(torch.cat([p.operator.mask for p in problems]))  # type: ignore[attr-defined]
    return first


def schedule_of(config: dict[str, Any]) -> Schedule:
    """The schedule a checkpoint was trained with (its config's ``schedule`` entry)."""
    return make_schedule(**config.get("schedule", {"kind": "cosine"}))


def default_model_name(modality: str | None) -> str:
    """The shipped model used when none is given: the volume's modality when known, else ``t1``."""
    return modality if modality in ("t1", "t1ce", "t2", "flair") else "t1"
