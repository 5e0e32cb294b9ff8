#!/usr/bin/env python
"""Evaluate a folder of reconstructions against the clean volumes they came from.

    python recipes/evaluate_folder.py RECON_DIR REFERENCE_ROOT [--brain-mask] [--out metrics.csv]

Every ``<stem>_recon.nii.gz`` in RECON_DIR (as written by ``medinvert reconstruct``) is matched with
the volume of the same stem under REFERENCE_ROOT (found as ``medinvert reconstruct`` names them: the
file name for BraTS files, the case id otherwise; a DICOM series folder works too).  Metrics follow
fastMRI (`medinvert.cli.evaluate.evaluate_volumes`); ``--brain-mask`` adds the masked metrics inside
``reference > 0`` (skull-stripped data such as BraTS).  Writes one CSV row per volume (atomically)
and prints the mean and standard deviation of each column.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from pathlib import Path

from medinvert.cli.evaluate import evaluate_volumes
from medinvert.cli.reconstruct import volume_jobs
from medinvert.io import atomic_write_text, load_volume

COLUMNS = ("stem", "psnr", "ssim", "nmse", "masked_psnr", "masked_ssim", "masked_nmse")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recon_dir", type=Path)
    parser.add_argument("reference_root", type=Path)
    parser.add_argument("--brain-mask", action="store_true", help="also evaluate inside reference > 0")
    parser.add_argument("--out", type=Path, default=None, help="CSV file (default RECON_DIR/metrics.csv)")
    args = parser.parse_args()
    references = {job.stem: job for job in volume_jobs(args.reference_root, exclude=args.recon_dir)}
    rows = []
    for recon_path in sorted(args.recon_dir.glob("*_recon.nii.gz")):
        stem = recon_path.name[: -len("_recon.nii.gz")]
        job = references.get(stem)
        if job is None:
            print(f"{stem}: no reference under {args.reference_root}, skipped", file=sys.stderr)
            continue
        reference = load_volume(job.source, series_uid=job.series_uid)
        mask = (reference.as_tensor() > 0) if args.brain_mask else None
        result = evaluate_volumes(load_volume(recon_path), reference, mask)
        masked = result["masked"] or {}
        rows.append({"stem": stem, **result["volume"], **{f"masked_{k}": masked.get(k) for k in ("psnr", "ssim", "nmse")}})
        ssim_value = result["volume"]["ssim"]  # None for slices under the 7x7 window
        ssim_text = "n/a" if ssim_value is None else f"{ssim_value:.4f}"
        print(f"{stem}: PSNR {result['volume']['psnr']:.2f} dB, SSIM {ssim_text}", flush=True)
    if not rows:
        print(f"no *_recon.nii.gz with a matching reference in {args.recon_dir}", file=sys.stderr)
        return 2
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row[k] is None else row[k]) for k in COLUMNS} for row in rows)
    out = atomic_write_text(args.out or args.recon_dir / "metrics.csv", buffer.getvalue())
    for column in COLUMNS[1:]:
        values = [row[column] for row in rows if row[column] is not None and math.isfinite(row[column])]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{column:12s} mean {statistics.fmean(values):.4f}  sd {spread:.4f}  (n={len(values)})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
