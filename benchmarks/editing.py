"""Localized editing on the sample case: healthy-tissue inpainting scored against the healthy twin, and leakage.

Data: ``sample_data/BraTS2021_00001`` (T1 with a synthetic tumour; its segmentation gives the lesion)
and ``sample_data/healthy/`` (the same brain, same pose and bias fields, without the tumour: the truth
an inpainting should recover).  The inpainting mask is the lesion (``seg > 0``) dilated by
``--dilate`` voxels (3-D, 6-connected steps): the tumour's mass effect deforms the tissue around it,
and beyond 5 voxels the two volumes differ by at most 1 intensity unit.  ``--slices`` axial slices,
evenly spaced through the central 70 % of the mask's slice range, are inpainted (the mask restricted
to them); everything else is the input.

Methods (one row each):

* ``input`` -- the lesion left in place (what "no inpainting" scores);
* ``zero fill`` -- the masked voxels set to 0 (the challenge's voided image);
* ``biharmonic`` -- ``skimage.restoration.inpaint_biharmonic``, slice by slice;
* ``ddim edit`` -- DDIM-inversion editing: invert with DDIM, restart the masked latent, generate with
  DDIM, nothing held (``medinvert.edit(..., method="ddim")``); it changes the whole slice, and the
  leakage columns say by how much;
* ``exact edit`` -- ``medinvert.edit(..., "inpaint")``: the outside held on its exact trajectory.

Each diffusion row twice: the region restarted from the voided image (``start="guess"``, the
default) and from seeded noise (``start="noise"``).  Both methods use the same model, conditioning
(inpainting descriptor + voided image), grid, seed and starting noise.  A second table does a localized intensity edit (``shift:0.2`` on the same
mask) with both methods and reports the change inside and the leakage outside.

Metrics: the BraTS 2023 "local synthesis of healthy brain tissue" evaluation
(``BraTS-inpainting/inpainting``, ``challenge_metrics_2023.generate_metrics``), re-implemented here
without torchmetrics: prediction and truth are multiplied by the mask (infill region only), then both
are clipped to the [0.5, 99.5] percentiles of the *voided input* (the input with the whole mask zeroed;
all voxels of the volume, background zeros included, lower bound clamped at 0) and scaled to [0, 1].
MSE and PSNR (data range 1, the challenge's ``psnr_01``) over the masked voxels; SSIM with a Gaussian
window (sigma 1.5, as torchmetrics) averaged over the masked voxels -- computed per axial slice
(`medinvert.metrics.ssim_map`, ``mode="slice"``) where the challenge computes it in 3-D on the full
volume, because only a few slices are inpainted here.

Leakage columns: max |output - input| over the voxels outside the mask of the processed slices (input
units) and how many of them changed at all.

From the repository root (a few minutes on one core)::

    python benchmarks/editing.py --slices 6 --steps 10 20 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

CASE = "sample_data/BraTS2021_00001/BraTS2021_00001"
HEALTHY = "sample_data/healthy/BraTS2021_00001_t1.nii.gz"


def load(path: str) -> np.ndarray:
    from medinvert.io import load_volume

    return load_volume(path).as_tensor().numpy().astype(np.float32)


def lesion_mask(seg: np.ndarray, dilate: int, n_slices: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(full dilated mask, mask restricted to the chosen slices, chosen slices)."""
    from scipy import ndimage

    full = ndimage.binary_dilation(seg > 0, iterations=dilate) if dilate > 0 else seg > 0
    zs = np.nonzero(full.any(axis=(0, 1)))[0]
    lo, hi = zs.min(), zs.max()
    margin = 0.15 * (hi - lo)
    slices = sorted({int(round(v)) for v in np.linspace(lo + margin, hi - margin, n_slices)})
    chosen = np.zeros_like(full)
    chosen[:, :, slices] = full[:, :, slices]
    return full, chosen, slices


def brats_normalise(image: np.ndarray, mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image * mask`` clipped to the [0.5, 99.5] percentiles of ``reference`` (lower bound >= 0), scaled to [0, 1]."""
    low, high = np.percentile(reference, [0.5, 99.5])
    low = max(float(low), 0.0)
    return (np.clip(image * mask, low, high) - low) / (high - low)


def inpainting_scores(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, voided: np.ndarray,
                      slices: list[int]) -> dict[str, float]:
    """SSIM / PSNR (data range 1) / MSE inside ``mask`` after the challenge's normalisation (module docstring)."""
    from medinvert.metrics import ssim_map

    pred = brats_normalise(prediction.astype(np.float64), mask, voided)
    ref = brats_normalise(truth.astype(np.float64), mask, voided)
    inside = mask[:, :, slices]
    ssim = ssim_map(pred[:, :, slices], ref[:, :, slices], data_range=1.0, mode="slice", gaussian=True)
    mse = float(np.mean((pred[mask] - ref[mask]) ** 2))
    return {"ssim": float(ssim[inside].mean()), "mse": mse, "psnr": 10.0 * np.log10(1.0 / mse) if mse > 0 else float("inf")}


def leakage(output: np.ndarray, volume: np.ndarray, mask: np.ndarray, slices: list[int]) -> tuple[float, int]:
    """(max abs difference, number of changed voxels) outside ``mask`` in ``slices``."""
    outside = ~mask[:, :, slices]
    diff = np.abs(output[:, :, slices].astype(np.float64) - volume[:, :, slices])[outside]
    changed = output[:, :, slices].view(np.int32)[outside] != volume[:, :, slices].view(np.int32)[outside]
    return float(diff.max()), int(changed.sum())


def biharmonic(volume: np.ndarray, mask: np.ndarray, slices: list[int]) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    out = volume.copy()
    for k in slices:
        hole = np.ascontiguousarray(mask[:, :, k])
        out[:, :, k] = inpaint_biharmonic(np.ascontiguousarray(np.where(hole, 0.0, volume[:, :, k])), hole)
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", default="t1", help="modality of the case (default t1)")
    parser.add_argument("--model", default=None, help="model (default: the shipped model of the modality)")
    parser.add_argument("--slices", type=int, default=6, help="axial slices to inpaint (default 6)")
    parser.add_argument("--dilate", type=int, default=5, help="lesion mask dilation in voxels (default 5)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="step counts (default 10 20)")
    parser.add_argument("--seed", type=int, default=0, help="inpainting noise seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per network call (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    args = parser.parse_args(argv)

    from medinvert import edit

    torch.set_num_threads(args.threads)
    model = args.model or args.modality
    volume = load(f"{CASE}_{args.modality}.nii.gz")
    truth = load(HEALTHY.replace("_t1.nii.gz", f"_{args.modality}.nii.gz"))
    full, mask, slices = lesion_mask(load(f"{CASE}_seg.nii.gz"), args.dilate, args.slices)
    voided = np.where(full, 0.0, volume)
    print(f"case {CASE}_{args.modality}, truth {HEALTHY.replace('_t1', '_' + args.modality)}; mask: seg > 0 dilated "
          f"{args.dilate} voxels, slices {slices} ({int(mask.sum())} voxels); model {model}; seed {args.seed}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)")
    outside_truth = np.abs(volume.astype(np.float64) - truth)[:, :, slices][~mask[:, :, slices]].max()
    print(f"truth vs input outside the mask (processed slices): max abs {outside_truth:g}\n")
    sys.stdout.flush()

    rows: list[tuple[str, str, Any, dict[str, float], tuple[float, int], float]] = []

    def add(label: str, steps: str, nfe: Any, output: np.ndarray, seconds: float) -> None:
        scores = inpainting_scores(output, truth, mask, voided, slices)
        rows.append((label, steps, nfe, scores, leakage(output, volume, mask, slices), seconds))

    add("input (lesion left in)", "-", "-", volume, 0.0)
    add("zero fill", "-", "-", np.where(mask, 0.0, volume).astype(np.float32), 0.0)
    out, sec = timed(lambda: biharmonic(volume, mask, slices))
    add("biharmonic (skimage)", "-", "-", out, sec)
    shifts = []
    for steps in args.steps:
        for method, label in (("ddim", "ddim edit (unheld)"), ("exact", "exact edit (held)")):
            for start in ("guess", "noise"):
                result = edit(volume, mask, "inpaint", model, method=method, steps=steps, seed=args.seed,
                              start=start, batch_size=args.batch_size, threads=args.threads)
                add(f"{label}, start {start}", str(steps), result.report["nfe"]["total"],
                    result.volume.as_tensor().numpy(), result.report["seconds"])
            shifted = edit(volume, mask, "shift:0.2", model, method=method, steps=steps,
                           batch_size=args.batch_size, threads=args.threads)
            shifts.append((label, steps, shifted.report))
        print(f"(steps {steps} done)")
        sys.stdout.flush()

    print("\n**Healthy-tissue inpainting** (inside the mask, BraTS 2023 normalisation)\n")
    print("| method | steps | NFE | SSIM | PSNR (dB) | MSE | leakage: max abs outside | voxels changed outside | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, steps, nfe, s, (leak, changed), sec in rows:
        print(f"| {label} | {steps} | {nfe} | {s['ssim']:.4f} | {s['psnr']:.2f} | {s['mse']:.5f} | {leak:.4g} | "
              f"{changed} | {sec:.1f} |")
    print("\n**Localized intensity edit `shift:0.2`** (t_edit 0.3; 0.2 normalised units = "
          f"{0.2 * shifts[0][2]['scale']:g} input units)\n")
    print("| method | steps | NFE | mean change inside | leakage: max abs outside | bit-identical outside | s |")
    print("|---|---|---|---|---|---|---|")
    for label, steps, rep in shifts:
        print(f"| {label} | {steps} | {rep['nfe']['total']} | {rep['change_inside']['mean']:.1f} | "
              f"{rep['leakage']['max_abs']:.4g} | {'yes' if rep['leakage']['bit_identical'] else 'no'} | "
              f"{rep['seconds']:.1f} |")


if __name__ == "__main__":
    main()
