"""The guess: the conditioning image a model sees next to its noisy state, and where the sampler starts.

A checkpoint names its guess in ``config["conditioning"]["guess"]`` (absent = ``"adjoint"``):

``"adjoint"``  the adjoint image ``A^H y`` (real part) of the observation, for every corruption kind.
``"cs_tv"``    for undersampled k-space, the CS-TV reconstruction of ``y`` (`medinvert.cs_tv`, isotropic
               TV, Chambolle-Pock, `GUESS_ITERATIONS` iterations of primal step `GUESS_TAU` from the
               zero-filled image), per slice in the slice's normalised units (divided by the robust
               scale of its adjoint), with the weight ``lam = LAMBDA_PER_ACCELERATION * R``, ``R`` the
               slice's effective acceleration (pixels / measured pixels).  At ``R = 4`` and ``8`` this
               is the weight tuned for the CS-TV baseline on training slices (`TUNED_LAMBDA`).  Other
               corruption kinds keep the adjoint.

The network with a CS-TV guess is a learned refinement of a variational reconstruction: with the
``edm_adjoint`` preconditioning (`medinvert.denoiser`) it predicts the clean image *relative* to the
guess, so an output of zero returns the guess, and the sampler's data consistency keeps every measured
sample (hybrid "variational + learned prior" reconstructions of this kind: e.g. Hammernik et al. 2018,
MRM 79(6), whose variational network unrolls such a scheme; here the guess is fixed and the prior is the
diffusion model).  The guess is a deterministic function of the measurement, so reconstructions stay
bit-reproducible, and the exact inversion of a volume "under the condition" uses the same image.

Shapes: slices are ``(B, H, W)``; volumes ``(X, Y, Z)`` with axial slices along the last axis.
The guess of a slice is computed in that slice's own normalised units and returned in the units of its
input (`kspace_tv_guess`), so it does not depend on how a volume was normalised.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from medinvert.cs_tv import cs_tv
from medinvert.errors import MedinvertError

__all__ = ["GUESSES", "TUNED_LAMBDA", "LAMBDA_PER_ACCELERATION", "GUESS_ITERATIONS", "GUESS_TAU", "guess_of_config",
           "tv_weights", "slice_scales", "kspace_tv_guess", "conditioning_volume", "uses_tv"]

#: conditioning images a model can be trained with (module docstring)
GUESSES: tuple[str, ...] = ("adjoint", "cs_tv")
#: the CS-TV weight per acceleration chosen by a grid search on training slices of BraTS2021_00001 (t1)
#: and frozen (normalised units; `benchmarks/cs_tv.py`, docs/benchmarks.md "Reconstruction")
TUNED_LAMBDA: dict[int, float] = {4: 1e-3, 8: 2e-3}
#: both tuned weights are 2.5e-4 times the acceleration; the guess interpolates (and extrapolates) that way
LAMBDA_PER_ACCELERATION = 2.5e-4
#: accelerations outside this range are clamped when choosing the weight (a fully sampled slice still
#: gets a small weight; a nearly empty one no more than 16x's)
_ACCELERATION_RANGE = (1.0, 16.0)
#: primal-dual iterations and primal step of the guess (`medinvert.cs_tv`).  On the held-out benchmark
#: slices 100 iterations at step 20 come within 0.03 / 0.13 dB (4x / 8x) of the baseline's 300 at step 5,
#: in a third of the time (tau 5 / 10 / 50 at 100 iterations: 1.5 / 0.2 / 0.6 dB short at 4x)
GUESS_ITERATIONS = 100
GUESS_TAU = 20.0


def guess_of_config(config: dict[str, Any] | None) -> str:
    """The guess a checkpoint's config names (``"adjoint"`` when it names none); unknown names raise."""
    conditioning = (config or {}).get("conditioning") or {}
    guess = conditioning.get("guess", "adjoint") if isinstance(conditioning, dict) else "adjoint"
    if guess not in GUESSES:
        raise MedinvertError(f"the model's conditioning guess {guess!r} is unknown to this medinvert "
                             f"(known: {', '.join(GUESSES)})")
    return str(guess)


def uses_tv(guess: str, kind: str) -> bool:
    """Whether an observation of ``kind`` gets the CS-TV guess under ``guess`` (an unknown guess raises)."""
    if guess not in GUESSES:
        raise MedinvertError(f"unknown guess {guess!r}; valid: {', '.join(GUESSES)}")
    return guess == "cs_tv" and kind == "kspace"


def tv_weights(mask: torch.Tensor) -> torch.Tensor:
    """``lam`` per slice ``(B,)`` float64 for masks ``(B, H, W)``: `LAMBDA_PER_ACCELERATION` times the
    effective acceleration ``H W / sum(mask)``, clamped to `_ACCELERATION_RANGE`."""
    measured = mask.reshape(mask.shape[0], -1).to(torch.float64).sum(dim=1)
    acceleration = (mask[0].numel() / measured.clamp_min(1.0)).clamp(*_ACCELERATION_RANGE)
    return LAMBDA_PER_ACCELERATION * acceleration


def slice_scales(y: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """`robust_scale` of each slice's adjoint image ``Re F^H (M y)``: ``(B, H, W)`` -> B floats (1.0
    for a slice with nothing measured)."""
    from medinvert.intensity import robust_scale
    from medinvert.operators.fft import ifft2c

    adjoint = ifft2c(y.to(torch.complex128) * mask.to(torch.float64)).real
    return [robust_scale(adjoint[i]) for i in range(adjoint.shape[0])]


def kspace_tv_guess(y: torch.Tensor, mask: torch.Tensor, iterations: int = GUESS_ITERATIONS) -> torch.Tensor:
    """CS-TV guess of slices: ``y`` complex ``(B, H, W)`` centred k-space (any units), ``mask`` bool
    ``(B, H, W)`` -> real float64 ``(B, H, W)`` in the units of ``y``.  Slices with nothing measured give
    zeros.

    Each slice is solved in its *own* normalised units: divided by the robust scale ``s_i`` of its
    adjoint (`slice_scales`), solved with the weight of `tv_weights`, multiplied back.  That is what
    training does (every sample is normalised by its own adjoint's scale, `medinvert.train.data`), and
    it makes the guess scale-equivariant: ``guess(a y) = a guess(y)`` for ``a > 0`` (to rounding), so
    it does not depend on how the volume was normalised, and a dim slice at the top of the head is not
    smoothed more than a bright one.  Each slice is also solved on its own because batched real inverse
    FFTs do not round like single ones: a slice's guess must not depend on which slices share its batch.
    """
    if y.ndim != 3:
        raise MedinvertError(f"the CS-TV guess takes slices shaped (B, H, W), got {tuple(y.shape)}")
    mask = mask.to(torch.bool).expand(y.shape)
    if y.shape[0] == 0:
        return torch.zeros(y.shape, dtype=torch.float64)
    weights = tv_weights(mask)
    scales = slice_scales(y, mask)
    return torch.cat([cs_tv(y[i:i + 1].to(torch.complex128) / scales[i], mask[i:i + 1], weights[i:i + 1],
                            iterations=iterations, tau=GUESS_TAU) * scales[i] for i in range(y.shape[0])])


def conditioning_volume(observation: Any, guess: str, slices: Sequence[int] | None = None) -> torch.Tensor:
    """The conditioning image ``(X, Y, Z)`` float32 of an `medinvert.operators.Observation`, in its units.

    ``"adjoint"`` (or a non-k-space observation): ``observation.adjoint``.  ``"cs_tv"``: the CS-TV
    guess (`kspace_tv_guess`) of the ``slices`` given (default all; the others are zero).  Divided by
    the engine's scale it is what the engine feeds the network for the same slices, to float32 rounding.
    """
    from medinvert.operators.layout import slices_to_volume, volume_to_slices

    if not uses_tv(guess, observation.kind):
        return observation.adjoint
    y = observation.y                                                   # (Z, X, Y)
    mask = volume_to_slices(observation.mask).to(torch.bool)            # (Z, X, Y)
    out = torch.zeros(y.shape, dtype=torch.float32)
    for k in range(y.shape[0]) if slices is None else slices:
        out[k] = kspace_tv_guess(y[k:k + 1], mask[k:k + 1])[0].to(torch.float32)
    return slices_to_volume(out).contiguous()
