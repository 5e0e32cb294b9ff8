"""Test-time self-ensembling of the denoiser over image flips and transposes (an experiment, not a feature).

Each network call is replaced by the mean over a group ``G`` of image symmetries of
``g^-1 net(g x, t, c)`` (the geometric self-ensemble of Lim et al. 2017, EDSR sec. 4.4, applied to
every denoiser evaluation so that the sampler's ODE stays deterministic and data consistent).  The
groups: ``1`` (the plain network), ``2`` (+ the left-right flip), ``4`` (both flips) and ``8`` (the
flips with and without a transpose: the dihedral group of the square).  Cost: ``|G|`` network passes
per step.

Printed (markdown): PSNR / SSIM on the held-out slices of `reconstruction.py` (4x and 8x, exact), then
the mean and spread over ``--seeds`` masks of the PSNR gain over CS-TV on the nibabel volumes of
`zero_shot.py`.  Run from the repository root::

    python benchmarks/self_ensemble.py --model t1 --slices 8 --steps 10 --seeds 4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cs_tv  # noqa: E402  (benchmark-local modules)
import reconstruction as bench  # noqa: E402
from zero_shot import SETTINGS, cs_tv_volume, nibabel_volumes, scores  # noqa: E402

from medinvert.determinism import deterministic  # noqa: E402
from medinvert.engine import run_reconstruction  # noqa: E402
from medinvert.inversion import ResolvedNetwork, resolve_network  # noqa: E402
from medinvert.io import load_volume  # noqa: E402
from medinvert.transforms import corrupt  # noqa: E402

#: group name -> its elements as (transpose the last two axes first?, axes to flip)
GROUPS: dict[str, list[tuple[bool, tuple[int, ...]]]] = {
    "1": [(False, ())],
    "2": [(False, ()), (False, (-1,))],
    "4": [(False, ()), (False, (-1,)), (False, (-2,)), (False, (-2, -1))],
    "8": [(transpose, flip) for transpose in (False, True) for flip in ((), (-1,), (-2,), (-2, -1))],
}


class SymmetrisedNetwork(nn.Module):
    """``net(x (B, C, H, W), t (B,), cond) -> (B, 1, H, W)`` averaged over a group of flips / transposes."""

    def __init__(self, net: nn.Module, group: Sequence[tuple[bool, tuple[int, ...]]]) -> None:
        super().__init__()
        self.inner = net
        self.group = list(group)
        self.config = getattr(net, "config", None)  # the engine reads the conditioning layout from it

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        outputs = []
        for transpose, flip in self.group:
            z = x.transpose(-1, -2) if transpose else x
            out = self.inner(torch.flip(z, flip) if flip else z, t, cond)
            out = torch.flip(out, flip) if flip else out
            outputs.append(out.transpose(-1, -2) if transpose else out)
        return torch.stack(outputs).mean(dim=0)


def symmetrised(resolved: ResolvedNetwork, group: str) -> ResolvedNetwork:
    """``resolved`` with its network averaged over the group named ``group`` (`GROUPS`)."""
    return dataclasses.replace(resolved, net=SymmetrisedNetwork(resolved.net, GROUPS[group]).eval())


def held_out(resolved: ResolvedNetwork, groups: Sequence[str], n_slices: int, steps: int) -> None:
    slices = bench.evaluation_slices(n_slices)
    volume = load_volume(bench.HELDOUT_FILE)
    reference = torch.as_tensor(np.asarray(volume))[:, :, slices].to(torch.float32)
    print(f"\nHeld-out t1n, {n_slices} slices, exact, {steps} steps\n")
    print("| acceleration | group | PSNR (dB) | SSIM | s / slice |\n|---|---|---|---|---|")
    for acceleration, centre in bench.SETTINGS.items():
        observation = corrupt(volume, "kspace", seed=bench.SEED, acceleration=acceleration, center_fraction=centre)
        for group in groups:
            image, seconds, _ = bench.run_ours(observation, symmetrised(resolved, group), "exact", steps, slices, 1, 8)
            metrics = bench.score(image, reference, float(volume.max()))
            print(f"| {acceleration}x | {group} | {metrics['psnr']:.2f} | {metrics['ssim']:.4f} | {seconds:.2f} |",
                  flush=True)


def zero_shot(resolved: ResolvedNetwork, groups: Sequence[str], seeds: int, steps: int, work: Path) -> None:
    print(f"\nnibabel volumes, PSNR gain over CS-TV (dB), mean +- std over {seeds} masks\n")
    print("| volume | acceleration | CS-TV | " + " | ".join(f"group {g}" for g in groups) + " |")
    print("|---|---|---|" + "---|" * len(groups))
    for name, path in nibabel_volumes(work).items():
        if "z-scored" in name:
            continue
        volume = load_volume(path)
        reference = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
        for acceleration, centre in SETTINGS.items():
            baseline, gains = [], {g: [] for g in groups}
            for seed in range(seeds):
                observation = corrupt(volume, "kspace", seed=seed, acceleration=acceleration, center_fraction=centre)
                with deterministic(1):
                    tv = scores(cs_tv_volume(observation, cs_tv.TUNED_LAMBDA[acceleration]), reference)[0]
                    baseline.append(tv)
                    for group in groups:
                        net = symmetrised(resolved, group)
                        run = run_reconstruction(observation, net.net, net.schedule, method="exact", steps=steps,
                                                 prediction=net.prediction, guess=net.guess)
                        gains[group].append(scores(run.volume, reference)[0] - tv)
            cells = " | ".join(f"{np.mean(gains[g]):+.2f} +- {np.std(gains[g]):.2f}" for g in groups)
            print(f"| {name} | {acceleration}x | {np.mean(baseline):.2f} | {cells} |", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="t1")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=4, help="masks per nibabel volume")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medinvert_self_ensemble"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    resolved = resolve_network(args.model)
    held_out(resolved, args.groups, args.slices, args.steps)
    zero_shot(resolved, args.groups, args.seeds, args.steps, args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
