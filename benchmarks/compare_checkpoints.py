"""Quick side-by-side of training checkpoints on k-space reconstruction: one row per checkpoint.

For each checkpoint: `medinvert.engine.run_reconstruction` (``exact``, ``--steps`` or the engine's
default steps for the model, the engine's default grid) on the held-out evaluation slices of the sample
case (`reconstruction.evaluation_slices`) and on every slice of nibabel's ``anatomical.nii`` and EPI
frame (`zero_shot.nibabel_volumes`), random Cartesian masks (seed 0) at 4x / 8x; PSNR (dB, fastMRI: data range = reference volume max).  Used for
the model-card tables of training experiments (docs/models.md).  The name ``cs-tv`` gives a row of the
tuned CS-TV baseline (`zero_shot.cs_tv_volume`, `cs_tv.TUNED_LAMBDA`) on the same masks.  Run from the
repository root::

    python benchmarks/compare_checkpoints.py cs-tv t1 runs/s4/t1_control96.pt runs/s3/t1_2d_small.pt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reconstruction as recon_bench  # noqa: E402  (benchmark-local module)
import zero_shot  # noqa: E402

from medinvert.determinism import deterministic  # noqa: E402
from medinvert.engine import default_steps, run_reconstruction  # noqa: E402
from medinvert.inversion import resolve_network  # noqa: E402
from medinvert.io import load_volume  # noqa: E402
from medinvert.metrics import psnr  # noqa: E402
from medinvert.transforms import corrupt  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="shipped model names or checkpoint paths")
    parser.add_argument("--steps", type=int, default=None, help="default: the engine's for each model (`default_steps`)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medinvert-compare-") as work:
        return _run(args, Path(work))


def _run(args: argparse.Namespace, work: Path) -> int:
    volumes = {"held-out": (recon_bench.HELDOUT_FILE, recon_bench.evaluation_slices(8))}
    volumes.update({label.split(" ")[0]: (path, None) for label, path in zero_shot.nibabel_volumes(work).items()})
    header = [f"{name} {a}x" for name in volumes for a in recon_bench.SETTINGS]
    print("| model | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for model in args.models:
        resolved = None if model == "cs-tv" else resolve_network(model)
        cells = []
        for path, slices in volumes.values():
            volume = load_volume(path)
            reference = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
            chosen = list(range(reference.shape[2])) if slices is None else slices
            for acceleration, centre in recon_bench.SETTINGS.items():
                observation = corrupt(volume, "kspace", seed=0, acceleration=acceleration, center_fraction=centre)
                with deterministic(args.threads):
                    if resolved is None:
                        image = zero_shot.cs_tv_volume(observation, recon_bench.cs_tv.TUNED_LAMBDA[acceleration])
                    else:
                        steps = default_steps(observation.kind, resolved.guess) if args.steps is None else args.steps
                        image = run_reconstruction(observation, resolved.net, resolved.schedule, steps=steps,
                                                   prediction=resolved.prediction, base_seed=1, slices=chosen,
                                                   guess=resolved.guess).volume
                cells.append(f"{psnr(image[:, :, chosen], reference[:, :, chosen], data_range=float(reference.max())):.2f}")
        print(f"| {model} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
