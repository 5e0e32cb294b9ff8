"""`medinvert evaluate RECON REFERENCE [--mask M] [--json]`: PSNR, SSIM and NMSE of a reconstruction.

Metrics follow fastMRI (`medinvert.metrics`): data range = the reference *volume*'s maximum, SSIM
= mean of the 2-D slice SSIMs (7x7 window), NMSE = ``||x - ref||^2 / ||ref||^2``.  With ``--mask``
(a NIfTI / DICOM volume of the same shape, non-zero = inside) the masked variants are reported as
well: MSE and NMSE over the voxels inside, SSIM map averaged over them (same data range).

Output: a short table on stdout, or with ``--json`` one JSON object (strict JSON: ``inf`` written as
the string ``"inf"``) holding ``recon``, ``reference``, ``mask``, ``shape``, ``conventions``,
``volume`` (psnr / ssim / nmse), ``masked`` (same, or null) and ``per_slice`` (lists over slices).
Inputs of different shapes, or a mask of another shape, are a user error (exit 2).  Affines that
differ only trigger a warning on stderr (the arrays are compared voxel by voxel).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CONVENTIONS = ("fastMRI: data range = reference volume max (max - min for a signed reference); "
               "SSIM = mean of 2-D slice SSIMs (7x7 uniform window); NMSE = ||x - ref||^2 / ||ref||^2; "
               "masked: over the voxels inside the mask")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="PSNR / SSIM / NMSE of a reconstruction against a reference (fastMRI conventions)",
        description="Compare RECON with REFERENCE voxel by voxel: PSNR, SSIM, NMSE of the volume (fastMRI "
                    "conventions), optionally inside a mask, and per slice with --json.")
    parser.add_argument("recon", help="reconstructed volume (NIfTI file, DICOM series folder or file)")
    parser.add_argument("reference", help="reference volume of the same shape")
    parser.add_argument("--mask", default=None, metavar="M", help="region volume of the same shape (non-zero = inside)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (with per-slice values)")
    return parser


def evaluate_volumes(recon: Any, reference: Any, mask: Any = None) -> dict[str, Any]:
    """Metrics of ``recon`` against ``reference`` (``(X, Y, Z)`` arrays / tensors), optionally in ``mask``.

    Returns ``{"shape", "conventions", "volume": {psnr, ssim, nmse}, "masked": {...} | None,
    "per_slice": {psnr, ssim, nmse}}``; raises `MedinvertError` for mismatched shapes or an empty mask.
    """
    import numpy as np

    from medinvert.errors import MedinvertError
    from medinvert.metrics import nmse, per_slice_metrics, psnr, ssim, ssim_defined

    shape_a, shape_b = tuple(np.shape(recon)), tuple(np.shape(reference))
    if shape_a != shape_b:
        raise MedinvertError(f"reconstruction shape {shape_a} differs from the reference shape {shape_b}")
    if mask is not None and tuple(np.shape(mask)) != shape_b:
        raise MedinvertError(f"mask shape {tuple(np.shape(mask))} differs from the volume shape {shape_b}")
    has_ssim = ssim_defined(shape_b)  # slices smaller than the 7x7 window have no SSIM (None)
    result: dict[str, Any] = {
        "shape": list(shape_b), "conventions": CONVENTIONS,
        "volume": {"psnr": psnr(recon, reference), "ssim": ssim(recon, reference) if has_ssim else None,
                   "nmse": nmse(recon, reference)},
        "masked": None,
    }
    if mask is not None:
        result["masked"] = {"psnr": psnr(recon, reference, mask=mask),
                            "ssim": ssim(recon, reference, mask=mask) if has_ssim else None,
                            "nmse": nmse(recon, reference, mask=mask),
                            "voxels": int(np.count_nonzero(np.asarray(mask)))}
    result["per_slice"] = per_slice_metrics(recon, reference)
    return result


def _affines_differ(a: Any, b: Any) -> bool:
    import numpy as np

    fa, fb = getattr(a, "affine", None), getattr(b, "affine", None)
    if fa is None or fb is None:
        return False
    return not np.allclose(np.asarray(fa), np.asarray(fb), atol=1e-4)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from medinvert.errors import MedinvertError
    from medinvert.io import load_volume
    from medinvert.metrics import default_data_range
    from medinvert.report import json_safe, report_json_text

    recon = load_volume(args.recon)
    reference = load_volume(args.reference)
    mask = load_volume(args.mask) if args.mask is not None else None
    if not default_data_range(reference) > 0:
        raise MedinvertError("has no positive voxel (and, if signed, no spread), so its data range is undefined",
                             path=args.reference)
    if mask is not None and not bool(np.any(np.asarray(mask) != 0)):
        raise MedinvertError("mask is empty (no non-zero voxel): nothing to evaluate", path=args.mask)
    for other, path in ((reference, args.reference), (mask, args.mask)):
        if other is not None and tuple(other.shape) != tuple(recon.shape):
            raise MedinvertError(f"shape {tuple(other.shape)} differs from the reconstruction's {tuple(recon.shape)} "
                                 f"({args.recon})", path=path)
        if other is not None and _affines_differ(recon, other):
            print(f"medinvert evaluate: warning: {path} has a different affine than {args.recon} (compared voxel "
                  "by voxel)", file=sys.stderr)
    result = evaluate_volumes(recon, reference, mask)
    if args.json:
        full = {"recon": str(Path(args.recon)), "reference": str(Path(args.reference)),
                "mask": None if args.mask is None else str(Path(args.mask)), **result}
        sys.stdout.write(report_json_text(full))
        return 0
    safe = json_safe(result)
    lines = [f"{'':8s} {'PSNR (dB)':>10s} {'SSIM':>8s} {'NMSE':>11s}"]
    for label, key in (("volume", "volume"), ("masked", "masked")):
        row = safe.get(key)
        if row is None:
            continue
        psnr_text = row["psnr"] if isinstance(row["psnr"], str) else f"{row['psnr']:.3f}"
        ssim_text = "n/a" if row["ssim"] is None else f"{row['ssim']:.4f}"
        lines.append(f"{label:8s} {psnr_text:>10s} {ssim_text:>8s} {row['nmse']:11.4e}")
    print("\n".join(lines))
    print(f"({result['shape'][2]} slices; {CONVENTIONS})")
    return 0
