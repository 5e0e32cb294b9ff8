"""The guess: the conditioning image a model sees next to its noisy state, and where the sampler starts.

A checkpoint names its guess in ``config["conditioning"]["guess"]`` (absent = ``"adjoint"``):

``"adjoint"``  the adjoint image ``A^H y`` (real part) of the observation, for every corruption kind.
``"cs_tv"``    for undersampled k-space, the CS-TV reconstruction of ``y`` (`medinvert.cs_tv`, isotropic
               TV, Chambolle-Pock, `GUESS_ITERATIONS` iterations of primal step `GUESS_TAU` from the
               zero-filled image) with the
               weight ``lam = LAMBDA_PER_ACCELERATION * R`` in normalised units, ``R`` the slice's
               effective acceleration (pixels / measured pixels).  At ``R = 4`` and ``8`` this is the
               weight tuned for the CS-TV baseline on training slices (`TUNED_LAMBDA`).  Other
               corruption kinds keep the adjoint.

The network with a CS-TV guess is a learned refinement of a variational reconstruction: with the
``edm_adjoint`` preconditioning (`medinvert.denoiser`) it predicts the clean image *relative* to the
guess, so an output of zero returns the guess, and the sampler's data consistency keeps every measured
sample (hybrid "variational + learned prior" reconstructions of this kind: e.g. Hammernik et al. 2018,
MRM 79(6), whose variational network unrolls such a scheme; here the guess is fixed and the prior is the
diffusion model).  The guess is a deterministic function of the measurement, so reconstructions stay
bit-reproducible, and the exact inversion of a volume "under the condition" uses the same image.

Shapes: slices are ``(B, H, W)``; volumes ``(X, Y, Z)`` with axial slices along the last axis.
Everything here is in normalised units (images divided by `medinvert.intensity.robust_scale` of the
adjoint), except `conditioning_volume`, which returns the observation's units.
"""

from __future__ import annotations

from typing import Any

import torch

from medinvert.cs_tv import cs_tv
from medinvert.errors import MedinvertError

__all__ = ["GUESSES", "TUNED_LAMBDA", "LAMBDA_PER_ACCELERATION", "GUESS_ITERATIONS", "GUESS_TAU", "guess_of_config",
           "tv_weights", "kspace_tv_guess", "guess_slices", "conditioning_volume", "uses_tv"]

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
#: slices per CS-TV batch in `conditioning_volume` (bounds memory: ~12 float64 images per slice)
_VOLUME_BATCH = 16


def guess_of_config(config: dict[str, Any] | None) -> str:
    """The guess a checkpoint's config names (``"adjoint"`` when it names none); unknown names raise."""
    conditioning = (config or {}).get("conditioning") or {}
    guess = conditioning.get("guess", "adjoint") if isinstance(conditioning, dict) else "adjoint"
    if guess not in GUESSES:
        raise MedinvertError(f"the model's conditioning guess {guess!r} is unknown to this medinvert "
                             f"(known: {', '.join(GUESSES)})")
    return str(guess)


def uses_tv(guess: str, kind: str) -> bool:
    """Whether an observation of ``kind`` gets the CS-TV guess under ``guess``."""
    return guess == "cs_tv" and kind == "kspace"


def tv_weights(mask: torch.Tensor) -> torch.Tensor:
    """``lam`` per slice ``(B,)`` float64 for masks ``(B, H, W)``: `LAMBDA_PER_ACCELERATION` times the
    effective acceleration ``H W / sum(mask)``, clamped to `_ACCELERATION_RANGE`."""
    measured = mask.reshape(mask.shape[0], -1).to(torch.float64).sum(dim=1)
    acceleration = (mask[0].numel() / measured.clamp_min(1.0)).clamp(*_ACCELERATION_RANGE)
    return LAMBDA_PER_ACCELERATION * acceleration


def kspace_tv_guess(y: torch.Tensor, mask: torch.Tensor, iterations: int = GUESS_ITERATIONS) -> torch.Tensor:
    """CS-TV guess of slices: ``y`` complex ``(B, H, W)`` normalised centred k-space, ``mask`` bool
    ``(B, H, W)`` -> real float64 ``(B, H, W)``.  Slices with no measured sample give zeros.

    Each slice is solved on its own: batched real inverse FFTs do not round like single ones, and a
    slice's guess must not depend on which slices share its batch (bit-reproducible reconstructions
    whatever the batch size).
    """
    mask = mask.to(torch.bool).expand(y.shape)
    weights = tv_weights(mask)
    return torch.cat([cs_tv(y[i:i + 1], mask[i:i + 1], weights[i:i + 1], iterations=iterations, tau=GUESS_TAU)
                      for i in range(y.shape[0])]) if y.shape[0] else torch.zeros(y.shape, dtype=torch.float64)


def guess_slices(guess: str, kind: str, adjoint: torch.Tensor, y: torch.Tensor | None,
                 mask: torch.Tensor | None) -> torch.Tensor:
    """The conditioning image of normalised slices: ``adjoint`` ``(B, H, W)`` (returned as is unless
    `uses_tv`), else the CS-TV guess of ``y`` / ``mask`` (``(B, H, W)``), in ``adjoint``'s dtype."""
    if not uses_tv(guess, kind):
        return adjoint
    if y is None or mask is None:
        raise MedinvertError("the CS-TV guess needs the measured k-space and its mask")
    return kspace_tv_guess(y, mask).to(adjoint.dtype)


def conditioning_volume(observation: Any, guess: str) -> torch.Tensor:
    """The conditioning image ``(X, Y, Z)`` float32 of an `medinvert.operators.Observation`, in its units.

    ``"adjoint"`` (or a non-k-space observation): ``observation.adjoint``.  ``"cs_tv"``: the CS-TV
    guess of every slice, computed in normalised units (scale = `robust_scale` of the adjoint, as the
    engine normalises) and scaled back -- so ``conditioning_volume(o, g) / s`` is exactly what the
    engine feeds the network for the same slices.
    """
    from medinvert.intensity import robust_scale
    from medinvert.operators.layout import slices_to_volume, volume_to_slices

    if not uses_tv(guess, observation.kind):
        return observation.adjoint
    scale = robust_scale(observation.adjoint)
    y = observation.y.to(torch.complex128) / scale                      # (Z, X, Y)
    mask = volume_to_slices(observation.mask).to(torch.bool)            # (Z, X, Y)
    out = torch.zeros(y.shape, dtype=torch.float32)
    for start in range(0, y.shape[0], _VOLUME_BATCH):
        stop = min(start + _VOLUME_BATCH, y.shape[0])
        out[start:stop] = (kspace_tv_guess(y[start:stop], mask[start:stop]) * scale).to(torch.float32)
    return slices_to_volume(out).contiguous()
