"""CS-TV baseline for Cartesian k-space undersampling: the classical compressed-sensing reference.

The solver (Chambolle-Pock on ``0.5 ||M F x - y||^2 + lam TV(x)`` for real images) lives in the package,
`medinvert.cs_tv`, because the models trained with ``--guess cs_tv`` take its output as their
conditioning image (`medinvert.guess`).  This module adds what only the benchmark needs: the grid
search of the weight on training slices (`tune_lambda`) and the frozen result (`TUNED_LAMBDA`).  The
weight lives in the engine's normalised units (images divided by `medinvert.intensity.robust_scale` of
the adjoint ``A^T y``), so one value per acceleration transfers across volumes (see
``docs/benchmarks.md``, "Reconstruction").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from medinvert.cs_tv import (ITERATIONS, TAU, cs_tv, data_prox, data_term_normal, gradient,  # noqa: F401
                             gradient_adjoint, objective, symmetric_mask, total_variation)
from medinvert.guess import TUNED_LAMBDA

__all__ = ["TUNED_LAMBDA", "LAMBDA_GRID", "gradient", "gradient_adjoint", "total_variation", "symmetric_mask",
           "data_term_normal", "data_prox", "objective", "cs_tv", "TuningResult", "tune_lambda", "ITERATIONS", "TAU"]

#: the grid searched by `tune_lambda` (log-spaced, normalised units)
LAMBDA_GRID: tuple[float, ...] = (2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)


@dataclass(frozen=True)
class TuningResult:
    """Outcome of `tune_lambda`: the chosen weight and the mean PSNR (dB) of every grid value."""

    best: float
    psnr: dict[float, float]


def tune_lambda(y: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor, data_range: float,
                grid: Sequence[float] = LAMBDA_GRID, iterations: int = ITERATIONS) -> TuningResult:
    """Grid search of ``lam`` maximising the mean PSNR over a batch of (training) slices.

    Args:
        y, mask: as for `cs_tv` (normalised units).
        reference: clean real slices ``(B, H, W)`` in the same units.
        data_range: PSNR peak (the reference volume maximum, normalised units; fastMRI convention).
    """
    from medinvert.metrics import psnr

    scores: dict[float, float] = {}
    for lam in grid:
        x = cs_tv(y, mask, lam, iterations=iterations)
        per_slice = [psnr(x[i].numpy(), reference[i].numpy(), data_range=data_range) for i in range(x.shape[0])]
        scores[float(lam)] = float(sum(per_slice) / len(per_slice))
    best = max(scores, key=lambda k: scores[k])
    return TuningResult(best, scores)
