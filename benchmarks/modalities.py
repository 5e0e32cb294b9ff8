"""Per-modality k-space benchmark: every shipped model on the held-out case's own contrast.

For each modality (t1 <- t1n, t1ce <- t1c, t2 <- t2w, flair <- t2f of ``BraTS-GLI-00002-000``, held out
by `sample_data/split.json`): random Cartesian masks (`medinvert.corrupt`, seed 0) at 4x (centre
fraction 0.08) and 8x (0.04) on ``--slices`` evaluation slices (`reconstruction.evaluation_slices`);
PSNR (dB, fastMRI: data range = reference volume max) of the tuned CS-TV baseline (`cs_tv.TUNED_LAMBDA`),
of the shipped model's guess alone (`medinvert.guess.conditioning_volume`), of the shipped model with the
engine's defaults (``exact``, `medinvert.engine.default_steps`, default grid) or at each of ``--steps``,
and of any further checkpoints named by ``--also PATTERN`` (``{m}`` = the modality; ``exact``, their own
default steps and grid: 20 steps for adjoint-guess models, 10 for CS-TV-guess ones).  Run from the repository root::

    python benchmarks/modalities.py
    python benchmarks/modalities.py --also 'runs/s3/{m}_2d_small2.pt'
    python benchmarks/modalities.py --steps 5 10 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reconstruction as recon_bench  # noqa: E402  (benchmark-local module)

from medinvert.determinism import deterministic  # noqa: E402
from medinvert.engine import default_steps, run_reconstruction  # noqa: E402
from medinvert.guess import conditioning_volume  # noqa: E402
from medinvert.inversion import ResolvedNetwork, resolve_network  # noqa: E402
from medinvert.io import load_volume  # noqa: E402
from medinvert.metrics import psnr  # noqa: E402
from medinvert.operators import Observation  # noqa: E402
from medinvert.transforms import corrupt  # noqa: E402

#: shipped model -> the held-out case's file suffix of that contrast (BraTS 2023 names)
CONTRASTS = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


def _ours(observation: Observation, resolved: ResolvedNetwork, slices: list[int], steps: int | None) -> torch.Tensor:
    chosen = default_steps(observation.kind, resolved.guess) if steps is None else steps
    return run_reconstruction(observation, resolved.net, resolved.schedule, steps=chosen,
                              prediction=resolved.prediction, slices=slices, guess=resolved.guess).volume


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--also", nargs="*", default=[], metavar="PATTERN",
                        help="further checkpoints per modality, '{m}' replaced by the modality (exact, default steps)")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="step counts of the shipped model (default: its default only)")
    parser.add_argument("--modalities", nargs="+", choices=tuple(CONTRASTS), default=tuple(CONTRASTS),
                        help="models to evaluate (default all four)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    recon_bench.check_split()
    slices = recon_bench.evaluation_slices(args.slices)
    print(f"held-out {recon_bench.HELDOUT_CASE}, slices {slices}, random Cartesian masks (seed 0), PSNR (dB)\n")
    step_counts: list[int | None] = list(args.steps) if args.steps else [None]
    shipped_columns = [f"shipped (exact, {'default' if n is None else n} steps)" for n in step_counts]
    extra = [f"{pattern} (exact, default steps)" for pattern in args.also]
    columns = ["zero-filled", "CS-TV", "guess alone", *shipped_columns, "first shipped vs CS-TV", *extra]
    print("| model (contrast) | accel. | " + " | ".join(columns) + " |")
    print("|---" * (2 + len(columns)) + "|")
    for model in args.modalities:
        suffix = CONTRASTS[model]
        path = recon_bench.SAMPLE / recon_bench.HELDOUT_CASE / f"{recon_bench.HELDOUT_CASE}-{suffix}.nii.gz"
        volume = load_volume(path)
        reference = torch.as_tensor(np.asarray(volume), dtype=torch.float32)[:, :, slices]
        peak = float(np.asarray(volume).max())
        shipped = resolve_network(model)
        others = [resolve_network(pattern.replace("{m}", model)) for pattern in args.also]
        for acceleration, centre in recon_bench.SETTINGS.items():
            observation = corrupt(volume, "kspace", seed=recon_bench.SEED, acceleration=acceleration,
                                  center_fraction=centre)
            zero_filled, _ = recon_bench.run_zero_filled(observation, slices, args.threads)
            tv, _ = recon_bench.run_cs_tv(observation, slices, recon_bench.cs_tv.TUNED_LAMBDA[acceleration],
                                          args.threads)
            with deterministic(args.threads):
                guess = conditioning_volume(observation, shipped.guess, slices=slices)[:, :, slices]
                ours = [_ours(observation, shipped, slices, n)[:, :, slices] for n in step_counts]
                rest = [_ours(observation, other, slices, None)[:, :, slices] for other in others]
            fixed = [psnr(image, reference, data_range=peak) for image in (zero_filled, tv, guess, *ours)]
            later = [psnr(image, reference, data_range=peak) for image in rest]
            cells = [f"{v:.2f}" for v in fixed] + [f"{fixed[3] - fixed[1]:+.2f}"] + [f"{v:.2f}" for v in later]
            print(f"| {model} ({suffix}) | {acceleration}x | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
