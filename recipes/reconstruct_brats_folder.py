#!/usr/bin/env python
"""Reconstruct every volume of a BraTS folder from simulated undersampled k-space.

    python recipes/reconstruct_brats_folder.py BRATS_ROOT --out recon [--acceleration 4]
        [--center-fraction 0.08] [--modalities t1,flair] [--steps 20] [--model NAME|PATH] [--device cpu]

BRATS_ROOT is one BraTS case folder or a folder of them (2021 or 2023 names).  Each modality
(segmentations excluded) is corrupted with a random Cartesian line mask (``kspace:ACC:CF``, seeded by
the file name) and reconstructed with the shipped model of its modality; the clean volume is the
reference, so every report has PSNR / SSIM / NMSE.  Results: ``<stem>_recon.nii.gz``,
``<stem>_report.json``, ``<stem>_report.html`` and ``summary.csv`` in OUT.  Rerunning skips finished
volumes.  On several processes or GPUs, launch the same command under torchrun:

    torchrun --nproc_per_node=4 recipes/reconstruct_brats_folder.py BRATS_ROOT --out recon --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medinvert.cli import main as medinvert


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="BraTS case folder or folder of cases")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--acceleration", type=float, default=4.0)
    parser.add_argument("--center-fraction", type=float, default=None, help="default 0.32 / acceleration")
    parser.add_argument("--modalities", default=None, help="comma-separated subset of t1,t1ce,t2,flair")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default=None, help="default: the shipped model of each modality")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checks", default="fast", choices=("fast", "full", "none"))
    args = parser.parse_args()
    spec = f"kspace:{args.acceleration:g}" + (f":{args.center_fraction:g}" if args.center_fraction else "")
    argv = ["reconstruct", str(args.root), "--corruption", spec, "--out", str(args.out), "--steps", str(args.steps),
            "--device", args.device, "--checks", args.checks]
    if args.model:
        argv += ["--model", args.model]
    if args.modalities:
        argv += ["--modalities", args.modalities]
    print("medinvert", " ".join(argv), flush=True)
    return medinvert(argv)


if __name__ == "__main__":
    sys.exit(main())
