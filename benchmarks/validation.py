"""How good is the report's reference-free error estimate?  (`medinvert.kspace_validation`)

For each volume and acceleration: corrupt (random Cartesian lines, seed 0), reconstruct the evaluation
slices with the engine's defaults (``exact``, ``--steps``), then run the report's withheld-line
validation (`kspace_validation`, same sampler) on those slices -- all of them, where the report uses
its check batch -- and print side by side

- the relative error on the withheld lines (zero-filled = 1),
- the estimated and the true NMSE of the reconstruction (true: against the clean volume),
- the estimated and the true NMSE of the *complex* zero-filled image (the quantity the estimate
  models: the energy of the unmeasured k-space over the total).

Volumes: held-out slices of the sample case (`reconstruction.evaluation_slices`), and nibabel's
``anatomical.nii`` and EPI frame (every slice; `zero_shot.nibabel_volumes`).  Run from the root::

    python benchmarks/validation.py --model t1          # the engine's default steps for the model
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
from medinvert.kspace_validation import kspace_validation  # noqa: E402
from medinvert.operators import ifft2c  # noqa: E402
from medinvert.transforms import corrupt, seed_from_name  # noqa: E402


def true_nmse(image: torch.Tensor, reference: torch.Tensor) -> float:
    """``||x - ref||^2 / ||ref||^2`` of ``(X, Y, n)`` tensors (complex allowed), float64."""
    ref = reference.to(torch.float64)
    return float(((image.to(torch.complex128) - ref).abs() ** 2).sum() / (ref ** 2).sum())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="t1")
    parser.add_argument("--steps", type=int, default=None, help="default: the engine's for the model (`default_steps`)")
    parser.add_argument("--slices", type=int, default=8, help="evaluation slices of the held-out case")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medinvert-validation-") as work:
        return _run(args, Path(work))


def _run(args: argparse.Namespace, work: Path) -> int:
    resolved = resolve_network(args.model)
    volumes = {"held-out t1n": (recon_bench.HELDOUT_FILE, recon_bench.evaluation_slices(args.slices))}
    for label, path in zero_shot.nibabel_volumes(work).items():
        volumes[label] = (path, None)
    print(f"model {args.model}, exact, {args.steps or 'default'} steps; NMSE estimated (est) vs against the clean volume (true)\n")
    print("| volume | accel. | withheld-line error | NMSE est | NMSE true | zero-filled NMSE est | zero-filled NMSE true |")
    print("|---|---|---|---|---|---|---|")
    for label, (path, slices) in volumes.items():
        volume = load_volume(path)
        clean = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
        chosen = list(range(clean.shape[2])) if slices is None else slices
        base_seed = seed_from_name(Path(path).name, 0)
        for acceleration, centre in recon_bench.SETTINGS.items():
            observation = corrupt(volume, "kspace", seed=0, acceleration=acceleration, center_fraction=centre)
            with deterministic(args.threads):
                steps = default_steps(observation.kind, resolved.guess) if args.steps is None else args.steps

                def reconstruct(obs, which):  # the report's sampler, defaults of `reconstruct_volume`
                    return run_reconstruction(obs, resolved.net, resolved.schedule, steps=steps,
                                              prediction=resolved.prediction, base_seed=base_seed,
                                              slices=list(which), guess=resolved.guess).volume

                full = reconstruct(observation, chosen)
                result = kspace_validation(observation, reconstruct, chosen, seed=base_seed)
            if not result["applicable"]:
                print(f"| {label} | {acceleration}x | n/a ({result['reason']}) | | | | |")
                continue
            used = result["slices"]
            reference = clean[:, :, used]
            zero_filled = ifft2c(observation.y[used].to(torch.complex128)).permute(1, 2, 0)
            print(f"| {label} | {acceleration}x | {result['relative_error_withheld']:.3f} | "
                  f"{result['nmse_estimate']:.4f} | {true_nmse(full[:, :, used], reference):.4f} | "
                  f"{result['nmse_estimate_zero_filled']:.4f} | {true_nmse(zero_filled, reference):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
