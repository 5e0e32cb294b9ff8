"""`medinvert edit VOLUME --mask MASK --op OP --out OUT.nii.gz [--model NAME|PATH] [--report R.json] ...`.

Edits the masked region of a volume along the model's trajectories and regenerates it, holding
everything else on its original trajectory (`medinvert.editing`): with ``--method exact`` (default)
every voxel outside the mask -- outside the mask dilated by ``--feather`` voxels when feathering --
is bit-identical to the input.  Operations: ``shift:DELTA`` (normalised intensity units: 1 is about a
bright foreground voxel), ``scale:FACTOR``, ``inpaint`` (healthy-tissue inpainting), and
``transplant:OTHER.nii.gz`` (a co-registered volume's latent carried into the mask).

Everything is validated (output names, the volume, the mask's shape and geometry, the op) before
anything is written; the output (float32 NIfTI with the input's affine and header) and the report
are written atomically; an existing output needs ``--overwrite``; inputs are never overwritten.
The report JSON (``--report``) is `medinvert.edit`'s report plus ``input``, ``mask``, ``output``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "edit", help="edit a masked region along the model's trajectories (zero leakage outside with exact)",
        description="Edit the region MASK of VOLUME (shift:DELTA, scale:FACTOR, inpaint, transplant:OTHER) and "
                    "regenerate it while the rest is held on its original trajectory: with --method exact every "
                    "voxel outside the mask is bit-identical to the input.")
    parser.add_argument("volume", help="NIfTI file, DICOM series folder or DICOM file")
    parser.add_argument("--mask", required=True, metavar="MASK",
                        help="mask volume of the same grid (non-zero = edit), e.g. a segmentation")
    parser.add_argument("--op", required=True, metavar="OP",
                        help="shift:DELTA (normalised units), scale:FACTOR, inpaint, transplant:OTHER.nii.gz")
    parser.add_argument("--out", required=True, metavar="OUT.nii.gz", help="output NIfTI file (.nii or .nii.gz)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="shipped model name (t1, t1ce, t2, flair), checkpoint path, or random[:SEED]; "
                             "default: the shipped model of the volume's modality, else random")
    parser.add_argument("--report", default=None, metavar="FILE.json", help="also write a JSON report")
    parser.add_argument("--method", default="exact", choices=("exact", "ddim"),
                        help="exact (held trajectory, zero leakage; default) or ddim (unheld baseline, leaks)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the full sampling grid (default 20)")
    parser.add_argument("--t-edit", type=float, default=None, metavar="T",
                        help="diffusion time in (0, 1] where the edit enters (default: 0.3 for shift/scale, "
                             "1 for inpaint/transplant)")
    parser.add_argument("--feather", type=float, default=0.0, metavar="VOXELS",
                        help="blend band width in voxels (default 0); bit-identity then holds outside the band")
    parser.add_argument("--start", default="guess", choices=("guess", "noise"),
                        help="inpaint: restart the region from the voided image (guess, default) or from seeded noise")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inpainting noise with --start noise (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per network call (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default MEDINVERT_THREADS or 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--allow-modality-mismatch", action="store_true",
                        help="use a model trained on another modality than the volume's")
    return parser


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from medinvert.cli.invert import check_output
    from medinvert.editing import edit, parse_op
    from medinvert.errors import MedinvertError
    from medinvert.io import atomic_write_text, save_volume
    from medinvert.io.naming import is_nifti_name

    out = Path(args.out)
    report = None if args.report is None else Path(args.report)
    if not is_nifti_name(out):
        raise MedinvertError("output must be a NIfTI file name ending in .nii or .nii.gz", path=out)
    op = parse_op(args.op)
    inputs = [args.volume, args.mask, args.model, op.path]
    check_output(out, inputs, args.overwrite)
    if report is not None:
        check_output(report, inputs, args.overwrite)
        if report.resolve() == out.resolve():
            raise MedinvertError("--report and --out name the same file", path=report)
    for path in (args.volume, args.mask):
        if not Path(path).exists():
            raise MedinvertError("no such file or folder", path=path)

    result = edit(args.volume, args.mask, op, args.model, method=args.method, steps=args.steps, t_edit=args.t_edit,
                  feather=args.feather, seed=args.seed, start=args.start, batch_size=args.batch_size, threads=args.threads,
                  require_modality_match=not args.allow_modality_mismatch)
    save_volume(result.volume, out, dtype=np.float32)
    info = {**result.report, "input": str(args.volume), "mask": str(args.mask), "output": str(out)}
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(report, json.dumps(info, indent=2, sort_keys=True) + "\n")
    leak, inside = info["leakage"], info["change_inside"]
    held = "bit-identical" if leak["bit_identical"] else f"max abs {leak['max_abs']:.6g}"
    print(f"wrote {out} ({info['op']}, {info['method']}, {info['mask_voxels']} voxels in the mask, "
          f"{len(info['slices'])} slices; {leak['region']}: {held}; change inside mean {inside['mean_abs']:.4g} "
          f"max {inside['max_abs']:.4g}; {info['nfe']['total']} NFE, {info['seconds']:.2f} s)")
    return 0
