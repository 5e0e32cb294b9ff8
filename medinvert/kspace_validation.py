"""Reference-free error estimate of a k-space reconstruction by withholding measured lines.

No reference image exists in practice, so the report's PSNR / SSIM are only available in
simulation.  Cross-validation in k-space (Ward 2009, "Compressed sensing with cross validation",
IEEE Trans. Inf. Theory 55(12), 5773-5782) gives an honest estimate from the measurement itself:

1. Withhold a seeded fraction ``f`` of the measured phase-encode lines *outside* the fully sampled
   centre (`withheld_lines`; for masks that are not made of whole lines, individual samples outside
   the largest fully sampled centred disc).  The centre is never withheld: every Cartesian
   protocol measures it, and without it no method is comparable.
2. Reconstruct from the remaining samples (same model, sampler and settings).
3. Compare the reconstruction's k-space ``F x'`` with the withheld samples ``y_V``:

       e = ||P_V F x' - y_V|| / ||y_V||        (relative prediction error on the withheld lines)

   The zero-filled image predicts zeros there, so ``e_zero_filled = 1`` exactly; ``e < 1`` means the
   reconstruction predicts missing k-space better than leaving it empty, ``e > 1`` worse.
4. Image-domain estimate.  Outside the centre a random (or equispaced) mask measures lines spread
   evenly over the outer band, so the withheld lines are a sample of the *unmeasured* ones: their
   mean energy per sample estimates that of the ``n_u`` unmeasured samples,
   ``E_u ~ n_u ||y_V||^2 / n_V``.  By Parseval (``F`` is unitary), the reconstruction's NMSE is the
   error energy of its unmeasured k-space over the total, hence

       NMSE_est = e^2 E_u / (||y||^2 + E_u),     NMSE_est(zero-filled) = E_u / (||y||^2 + E_u).

   The estimate describes a reconstruction from ``1 - f`` of the lines, so it is mildly pessimistic,
   and it is only as good as the assumption that withheld and unmeasured lines look alike (true for
   random / equispaced line masks; the benchmark compares it with the true NMSE, docs/benchmarks.md).
   Masks that are not made of whole lines (variable density) sample low frequencies more densely, so
   their withheld samples are not representative: for them only ``e`` is reported and the NMSE
   estimates are None (they came out 6-8x too high on the held-out slices).

Everything is computed on the report's check slices; tensors follow `medinvert.operators.Observation`
(``y`` complex ``(Z, X, Y)``, ``mask`` bool ``(X, Y, Z)``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medinvert.operators import Observation
from medinvert.operators.fft import fft2c

__all__ = ["WITHHELD_FRACTION", "MIN_CANDIDATES", "withheld_lines", "thinned_observation", "kspace_validation"]

#: fraction of the measured outer lines withheld (at least one line per slice)
WITHHELD_FRACTION = 0.2
#: fewest outer candidate groups (a line, or a sample for scattered masks, together with its measured
#: Hermitian mirror) a slice needs to be validated: with
#: three outer lines (nibabel's 41-line anatomical.nii at 8x) the one withheld line said 0.16 while the
#: true image error was worse than zero-filling (docs/benchmarks.md, "Reference-free error estimate")
MIN_CANDIDATES = 4


def _centre_run(measured: np.ndarray) -> tuple[int, int]:
    """``[lo, hi)`` of the contiguous run of measured entries containing index ``len // 2`` (empty if unmeasured)."""
    n = measured.shape[0]
    c = n // 2
    if not measured[c]:
        return c, c
    lo, hi = c, c + 1
    while lo > 0 and measured[lo - 1]:
        lo -= 1
    while hi < n and measured[hi]:
        hi += 1
    return lo, hi


def _centre_disc(mask: np.ndarray) -> np.ndarray:
    """The largest fully measured centred disc of a 2-D mask ``(H, W)``: bool, True inside it
    (distance from ``(H // 2, W // 2)`` below that of the nearest unmeasured sample)."""
    h, w = mask.shape
    rows, cols = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    distance = np.hypot(rows, cols)
    radius = float(distance[~mask].min()) if (~mask).any() else np.inf
    return distance < radius


def _line_axis(mask: np.ndarray) -> int | None:
    """1 if the 2-D mask ``(X, Y)`` is made of whole columns, 0 if of whole rows, None otherwise."""
    for axis in (1, 0):  # column lines (the masks `medinvert corrupt` draws) first
        lines = mask.all(axis=1 - axis)
        if lines.any() and np.array_equal(mask.any(axis=1 - axis), lines):
            return axis
    return None


def _mirror(i: np.ndarray, n: int) -> np.ndarray:
    """Index of frequency ``-f`` for centred index ``i`` along an axis of length ``n`` (as `engine._mirror`)."""
    return (2 * (n // 2) - i) % n


def _draw_groups(groups: list[np.ndarray], fraction: float, rng: np.random.Generator) -> list[np.ndarray]:
    """``max(1, round(fraction * len(groups)))`` of ``groups`` (none below `MIN_CANDIDATES`)."""
    if len(groups) < MIN_CANDIDATES:
        return []
    chosen = rng.choice(len(groups), size=max(1, round(fraction * len(groups))), replace=False)
    return [groups[int(c)] for c in sorted(chosen)]


def withheld_lines(mask: torch.Tensor, fraction: float = WITHHELD_FRACTION, seed: int = 0) -> torch.Tensor:
    """Which measured samples of one slice to withhold (step 1): bool ``(X, Y)``, a subset of ``mask``.

    ``mask`` bool ``(X, Y)``.  If every column (axis 1) is measured entirely or not at all, whole
    columns are withheld, and likewise for rows; otherwise individual samples outside the fully
    sampled centred disc.  A real image has
    Hermitian k-space (``X(-f) = conj X(f)``), and the reconstruction enforces it, so a withheld line
    whose mirror stays measured would be "predicted" exactly from that mirror: lines (samples) are
    therefore withheld together with their measured mirror, as one group.  Groups touching the fully
    sampled centre are never withheld.  ``max(1, round(fraction * n))`` of the ``n`` groups are drawn
    with ``numpy.random.default_rng(seed)``; none when ``n < MIN_CANDIDATES`` (a handful of lines says
    nothing about the rest).
    """
    m = np.ascontiguousarray(mask.numpy(), dtype=bool)
    out = np.zeros(m.shape, dtype=bool)
    rng = np.random.default_rng(seed)
    axis = _line_axis(m)
    if axis is not None:
        lines = m.all(axis=1 - axis)
        n = lines.shape[0]
        lo, hi = _centre_run(lines)
        groups: dict[tuple[int, ...], np.ndarray] = {}
        for i in np.flatnonzero(lines):
            members = np.unique([i, _mirror(np.int64(i), n)])
            members = members[lines[members]]
            if not any(lo <= k < hi for k in members):
                groups[tuple(int(k) for k in members)] = members
        for members in _draw_groups(list(groups.values()), fraction, rng):
            if axis == 1:
                out[:, members] = True
            else:
                out[members, :] = True
        return torch.from_numpy(out)
    h, w = m.shape
    outer = m & ~_centre_disc(m)
    rows, cols = np.nonzero(outer)
    mirror_rows, mirror_cols = _mirror(rows, h), _mirror(cols, w)
    # one group per sample and its mirror (kept only when the mirror is unmeasured or also outer)
    usable = outer[mirror_rows, mirror_cols] | ~m[mirror_rows, mirror_cols]
    flat, mirror_flat = rows * w + cols, mirror_rows * w + mirror_cols
    keyed = {min(a, b): np.unique([a, b]) for a, b, ok in zip(flat.tolist(), mirror_flat.tolist(), usable) if ok}
    for members in _draw_groups([keyed[k] for k in sorted(keyed)], fraction, rng):
        out.reshape(-1)[members[m.reshape(-1)[members]]] = True
    return torch.from_numpy(out)


def thinned_observation(observation: Observation, withheld: torch.Tensor) -> Observation:
    """``observation`` without the ``withheld`` samples (bool ``(X, Y, Z)``): mask, ``y`` and adjoint updated.

    The descriptor is kept (the acceleration it states is off by the fraction ``f``; the network is
    conditioned on roughly the same sampling)."""
    from medinvert.operators import KspaceOperator, slices_to_volume, volume_to_slices

    mask = observation.mask & ~withheld
    keep = volume_to_slices(mask)                                # (Z, X, Y)
    y = observation.y * keep
    adjoint = slices_to_volume(KspaceOperator(keep).adjoint(y).real).contiguous()  # as `corrupt` makes it
    return replace(observation, y=y, mask=mask, adjoint=adjoint)


def kspace_validation(observation: Observation, reconstruct: Callable[[Observation, Sequence[int]], torch.Tensor],
                      slices: Sequence[int], *, fraction: float = WITHHELD_FRACTION, seed: int = 0) -> dict[str, Any]:
    """Steps 1-4 of the module docstring on ``slices`` of a k-space ``observation``.

    Args:
        observation: kind ``"kspace"``.
        reconstruct: ``reconstruct(thinned_observation, slices) -> (X, Y, Z)`` volume (input units) of
            which only ``slices`` are read -- the same sampler as the reconstruction being judged.
        slices: slice indices to validate on (the report's check slices).
        fraction, seed: withheld fraction and the seed of the withheld lines (slice ``k`` uses ``seed + k``).

    Returns:
        the report's ``validation`` section (``applicable`` False with a ``reason`` when it cannot run).
    """
    if observation.kind != "kspace":
        return {"applicable": False, "reason": f"needs k-space data (this is {observation.kind})"}
    withheld = torch.zeros_like(observation.mask)
    used = [k for k in slices if bool(observation.mask[:, :, k].any())]
    for k in used:
        withheld[:, :, k] = withheld_lines(observation.mask[:, :, k], fraction, seed + k)
    validated = [k for k in used if bool(withheld[:, :, k].any())]
    if not validated:
        return {"applicable": False, "reason": f"fewer than {MIN_CANDIDATES} measured lines outside the fully sampled "
                                               "centre of every check slice"}
    # every measured check slice is reconstructed (a 3D network needs them together); scored where lines were withheld
    volume = reconstruct(thinned_observation(observation, withheld), used)
    index = torch.tensor(validated)
    x = volume.permute(2, 0, 1).index_select(0, index).to(torch.float64)          # (n, X, Y)
    predicted = fft2c(x)
    held = withheld.permute(2, 0, 1).index_select(0, index)
    y = observation.y.index_select(0, index).to(torch.complex128)
    measured = observation.mask.permute(2, 0, 1).index_select(0, index)
    y_v = y[held]
    energy_v = float((y_v.abs() ** 2).sum())
    if energy_v == 0.0:
        return {"applicable": False, "reason": "the withheld samples are all zero"}
    error = math.sqrt(float(((predicted[held] - y_v).abs() ** 2).sum()) / energy_v)
    n_v, n_u = int(held.sum()), int((~measured).sum())
    unmeasured = n_u * energy_v / n_v
    total = float((y[measured].abs() ** 2).sum()) + unmeasured
    lines = all(_line_axis(observation.mask[:, :, k].numpy()) is not None for k in validated)
    return {
        "applicable": True,
        "slices": validated,
        "withheld_fraction": fraction,
        "withheld_samples": n_v,
        "relative_error_withheld": error,
        "relative_error_withheld_zero_filled": 1.0,
        "nmse_estimate": error * error * unmeasured / total if lines else None,
        "nmse_estimate_zero_filled": unmeasured / total if lines else None,
        "nmse_estimate_reason": None if lines else ("not estimated: the mask is not made of whole lines, so "
                                                    "withheld samples do not represent the unmeasured ones"),
        "what": "measured outer k-space lines withheld, reconstructed without them, and predicted "
                "(Ward 2009 cross-validation); e < 1 beats zero-filling; NMSE estimated from e by Parseval",
    }
