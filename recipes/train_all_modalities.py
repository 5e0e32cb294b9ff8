#!/usr/bin/env python
"""Train the four shipped models (t1, t1ce, t2, flair) from the bundled sample data.

Recipe (the one that produced medinvert/models/weights/*.pt; wall times in docs/models.md):

1. a multi-contrast base model on the training cases of all four modalities (held-out cases listed
   in sample_data/split.json are skipped), with strong augmentation (medinvert.train.data), on
   64x64 crops (edm_adjoint prediction, no spectral normalisation: the `medinvert train` defaults);
2. the base continued on 96x96 crops (more context for the global aliasing of k-space masks), as a
   data-parallel run over ``--nproc`` processes (``torchrun --nproc_per_node=N -m medinvert train``,
   gloo on CPU; per-process batch 8);
3. ``--context-steps`` more at the dimensionality of the shipped models (``--dim``): for ``2.5d`` the 2D
   base is widened (`medinvert.train.loop.initial_state`: the neighbours' input columns start at
   zero, so the 2.5D network starts as the 2D one) and learns to use the neighbouring slices'
   adjoints; for ``2d`` the same steps simply continue the base (the control of the comparison in
   docs/models.md);
4. a short fine-tune of that model for each modality;
5. ``--small-steps`` more per modality with the crop size alternating between 96 and 48 pixels
   (``--extra-crops 48``): small matrices have only a few fully sampled k-space lines, and without
   this stage the models fall below zero-filling on small scans (docs/models.md, session 4);
   then ``--small-more-steps`` of the same, data-parallel over ``--nproc`` processes (per-process batch 6,
   so the global batch stays 12);
6. ``--tv-steps`` more per modality with the CS-TV guess (``--guess cs_tv``, `medinvert.guess`): k-space
   samples are conditioned on the CS-TV reconstruction of their measurement instead of the adjoint, so
   the model learns to refine CS-TV (docs/models.md, session 5); data-parallel as step 5;
7. ``--unrolled-steps`` more per modality with the sampler-in-the-loop loss added (``--unrolled-weight 1``,
   `medinvert.train.unrolled`): the k-space samples are reconstructed by the 10-step data-consistent
   sampler inside the training graph and the final image's error is back-propagated through every step
   (docs/models.md, session 7): first ``--unrolled-steps`` through DDIM, then ``--bdia-steps`` through BDIA,
   the integrator that the default ``exact`` method runs on its fixed-point grid (a DDIM-trained network
   loses 0.5-4 dB under ``exact``); one process per modality (per-process batch 6);
8. ``--multistep-steps`` more through BDIA with the unrolled step count drawn from 5, 10 and 20 at every
   optimisation step (``--unrolled-steps 5 10 20``): trained through 10 steps only, the models lost
   1.5-3 dB at 20 (docs/models.md, session 8);
   then ``--small3-steps`` more with 40 added to the counts and 32x32 crops added to the crop cycle
   (small matrices such as nibabel's 33x41 ``anatomical.nii``);
9. for the modalities in ``--deepen`` (t1 since session 10): the network deepened to two residual blocks
   per level (``--blocks-per-level 2``; `medinvert.train.loop.deepened_state` starts it as exactly the
   same function), then ``--deep-steps`` and ``--deep-more-steps`` more as in step 8 (docs/models.md,
   session 10);
10. export: EMA weights, Lipschitz numbers recorded, optimizer state dropped.

    python recipes/train_all_modalities.py [--data sample_data] [--work runs] [--base-steps 1500]
        [--long-steps 10000] [--context-steps 1500] [--dim 2d] [--nproc 2] [--finetune-steps 300]
        [--small-steps 800] [--small-more-steps 1600] [--tv-steps 3000] [--unrolled-steps 3000]
        [--bdia-steps 800] [--multistep-steps 1500] [--small3-steps 2000] [--deepen t1]
        [--deep-steps 3000] [--deep-more-steps 2400] [--install]
        # --install copies into the package
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from medinvert.cli import main as medinvert
from medinvert.models.registry import WEIGHTS_DIR
from medinvert.train.export import export_for_inference

MODALITIES = ("t1", "t1ce", "t2", "flair")
COMMON = ["--batch-size", "12", "--crop", "64", "--checkpoint-every", "250", "--threads", "1", "--no-progress"]


def run(args: list[str]) -> None:
    print("medinvert", " ".join(args), flush=True)
    code = medinvert(args)
    if code != 0:
        sys.exit(code)


def run_parallel(args: list[str], nproc: int) -> None:
    """``medinvert ARGS`` data-parallel under torchrun over ``nproc`` processes (in-process when 1)."""
    if nproc <= 1:
        run(args)
        return
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "medinvert", *args]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample_data")
    parser.add_argument("--work", default="runs")
    parser.add_argument("--base-steps", type=int, default=1500)
    parser.add_argument("--long-steps", type=int, default=10000)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the long stage (torchrun; 1 = in-process)")
    parser.add_argument("--context-steps", type=int, default=1500)
    parser.add_argument("--dim", default="2d", choices=["2d", "2.5d"],
                        help="dimensionality of the models (2d shipped: 2.5d brought nothing, docs/models.md)")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--small-steps", type=int, default=800,
                        help="steps of the small-matrix stage (crops 96 and 48 alternating; 0 skips it)")
    parser.add_argument("--small-more-steps", type=int, default=1600,
                        help="further small-matrix steps, data-parallel over --nproc processes (0 skips them)")
    parser.add_argument("--tv-steps", type=int, default=3000,
                        help="steps with the CS-TV guess (--guess cs_tv), data-parallel over --nproc (0 skips them)")
    parser.add_argument("--unrolled-steps", type=int, default=3000,
                        help="steps with the sampler-in-the-loop loss (--unrolled-weight 1), one process (0 skips them)")
    parser.add_argument("--bdia-steps", type=int, default=800,
                        help="then steps with the loss unrolled through BDIA (--unrolled-method bdia; 0 skips them)")
    parser.add_argument("--multistep-steps", type=int, default=1500,
                        help="then steps with the loss unrolled through BDIA at 5, 10 or 20 sampling steps (0 skips them)")
    parser.add_argument("--small3-steps", type=int, default=2000,
                        help="then steps through BDIA at 5, 10, 20 or 40 sampling steps with crops 96 / 48 / 32 (0 skips them)")
    parser.add_argument("--deepen", nargs="*", default=["t1"], choices=MODALITIES,
                        help="modalities whose network is then deepened to 2 blocks per level (step 9)")
    parser.add_argument("--deep-steps", type=int, default=3000, help="first deepened stage (lr 8e-5)")
    parser.add_argument("--deep-more-steps", type=int, default=2400, help="second deepened stage (lr 4e-5)")
    parser.add_argument("--install", action="store_true", help="copy the exported models into the package")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base.pt"
    if not base.exists():
        run(["train", args.data, "--modality", "all", "--steps", str(args.base_steps), "--lr", "8e-4",
             "--out", str(base), *COMMON])
    long = work / "base_long.pt"
    if not long.exists():
        run_parallel(["train", args.data, "--modality", "all", "--steps", str(args.long_steps), "--lr", "4e-4",
                      "--warmup", "50", "--init", str(base), "--out", str(long), *COMMON, "--crop", "96",
                      "--batch-size", "8"], args.nproc)
    shape = ["--dim", args.dim] + (["--neighbours", "2"] if args.dim == "2.5d" else [])
    context = work / f"base_{args.dim}.pt"
    if not context.exists():
        run_parallel(["train", args.data, "--modality", "all", "--steps", str(args.context_steps), "--lr", "2e-4",
                      "--warmup", "50", "--seed", "5", "--init", str(long), "--out", str(context), *shape, *COMMON,
                      "--crop", "96", "--batch-size", "8"], args.nproc)
    for modality in MODALITIES:
        tuned = work / f"{modality}_{args.dim}.pt"
        if not tuned.exists():
            run(["train", args.data, "--modality", modality, "--init", str(context), "--steps", str(args.finetune_steps),
                 "--lr", "1e-4", "--warmup", "20", "--seed", str(1 + MODALITIES.index(modality)),
                 "--out", str(tuned), *shape, *COMMON, "--crop", "96"])
        if args.small_steps > 0:
            small = work / f"{modality}_{args.dim}_small.pt"
            if not small.exists():
                run(["train", args.data, "--modality", modality, "--init", str(tuned), "--steps", str(args.small_steps),
                     "--lr", "1e-4", "--warmup", "20", "--seed", str(11 + MODALITIES.index(modality)),
                     "--out", str(small), *shape, *COMMON, "--crop", "96", "--extra-crops", "48"])
            tuned = small
            if args.small_more_steps > 0:
                more = work / f"{modality}_{args.dim}_small2.pt"
                if not more.exists():
                    run_parallel(["train", args.data, "--modality", modality, "--init", str(small), "--steps",
                                  str(args.small_more_steps), "--lr", "1e-4", "--warmup", "20",
                                  "--seed", str(21 + MODALITIES.index(modality)), "--out", str(more), *shape, *COMMON,
                                  "--crop", "96", "--extra-crops", "48", "--batch-size", "6",
                                  "--checkpoint-every", "400"], args.nproc)
                tuned = more
        if args.tv_steps > 0:
            refined = work / f"{modality}_{args.dim}_tv.pt"
            if not refined.exists():
                run_parallel(["train", args.data, "--modality", modality, "--init", str(tuned), "--guess", "cs_tv",
                              "--steps", str(args.tv_steps), "--lr", "1e-4", "--warmup", "20",
                              "--seed", str(31 + MODALITIES.index(modality)), "--out", str(refined), *shape, *COMMON,
                              "--crop", "96", "--extra-crops", "48", "--batch-size", "6",
                              "--checkpoint-every", "500"], args.nproc)
            tuned = refined
            if args.unrolled_steps > 0 and args.dim == "2d":  # stages 7 and 8: DDIM, BDIA, BDIA at several counts
                for name, method, counts, extra_crops, steps, lr, seed, every in (
                        ("unrolled", "ddim", ("10",), ("48",), args.unrolled_steps, "1e-4", 51, "500"),
                        ("bdia", "bdia", ("10",), ("48",), args.bdia_steps, "5e-5", 61, "200"),
                        ("multistep", "bdia", ("5", "10", "20"), ("48",), args.multistep_steps, "5e-5", 71, "250"),
                        ("small3", "bdia", ("5", "10", "20", "40"), ("48", "32"), args.small3_steps, "5e-5", 81,
                         "250")):
                    if steps <= 0:
                        continue
                    unrolled = work / f"{modality}_{args.dim}_{name}.pt"
                    if not unrolled.exists():
                        run(["train", args.data, "--modality", modality, "--init", str(tuned), "--guess", "cs_tv",
                             "--unrolled-weight", "1", "--unrolled-method", method, "--unrolled-steps", *counts,
                             "--steps", str(steps), "--lr", lr, "--warmup", "20",
                             "--seed", str(seed + MODALITIES.index(modality)), "--out", str(unrolled), *shape, *COMMON,
                             "--crop", "96", "--extra-crops", *extra_crops, "--batch-size", "6",
                             "--checkpoint-every", every])
                    tuned = unrolled
                if modality in args.deepen:  # step 9: two residual blocks per level, grown from identities
                    for name, steps, lr, seed, every in (("deep", args.deep_steps, "8e-5", 91, "250"),
                                                         ("deep2", args.deep_more_steps, "4e-5", 92, "200")):
                        deep = work / f"{modality}_{args.dim}_{name}.pt"
                        if steps > 0 and not deep.exists():
                            run(["train", args.data, "--modality", modality, "--init", str(tuned),
                                 "--blocks-per-level", "2", "--guess", "cs_tv", "--unrolled-weight", "1",
                                 "--unrolled-method", "bdia", "--unrolled-steps", "5", "10", "20", "40",
                                 "--steps", str(steps), "--lr", lr, "--warmup", "20",
                                 "--seed", str(seed + MODALITIES.index(modality)), "--out", str(deep), *shape,
                                 *COMMON, "--crop", "96", "--extra-crops", "48", "32", "--batch-size", "6",
                                 "--checkpoint-every", every])
                        tuned = deep if deep.exists() else tuned
        exported = export_for_inference(tuned, work / f"{modality}_{args.dim}_export.pt")
        print(f"exported {exported} ({exported.stat().st_size / 2**20:.1f} MiB)", flush=True)
        if args.install:
            WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(exported, WEIGHTS_DIR / f"{modality}.pt")


if __name__ == "__main__":
    main()
