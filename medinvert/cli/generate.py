"""`medinvert generate LATENT --out VOLUME.nii.gz [--model NAME|PATH] [--overwrite]`.

Maps a latent written by `medinvert invert` back to a volume.  The model is re-resolved from the
latent's record and its SHA-256 checked (a different checkpoint is refused) unless ``--model`` names
one explicitly.  The output keeps the source's affine and NIfTI header (qform / sform codes,
units, description) and is float32, so an ``exact`` latent gives back the input's voxels
bit-for-bit.  The latent is read and checked before anything is written; the output is written
atomically, never over the latent or the source volume, and an existing output needs ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate", help="map a latent file back to a volume",
        description="Generate the volume of LATENT (written by `medinvert invert`) and save it as NIfTI with the "
                    "source's affine and header.")
    parser.add_argument("latent", help="latent file (.npz) written by `medinvert invert`")
    parser.add_argument("--out", required=True, metavar="VOLUME.nii.gz", help="output NIfTI file (.nii or .nii.gz)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="use this model instead of the latent's (skips the SHA-256 check)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from medinvert.cli.invert import check_output
    from medinvert.inversion import generate
    from medinvert.io import save_volume
    from medinvert.io.naming import is_nifti_name
    from medinvert.errors import MedinvertError
    from medinvert.latent import Latent

    out = Path(args.out)
    if not is_nifti_name(out):
        raise MedinvertError("output must be a NIfTI file name ending in .nii or .nii.gz", path=out)
    check_output(out, [args.latent, args.model], args.overwrite)
    latent = Latent.load(args.latent)
    if latent.source is not None:
        check_output(out, [latent.source], overwrite=True)
    volume = generate(latent, args.model)
    save_volume(volume, out, dtype=np.float32)
    info = volume.meta["medinvert_generate"]
    shape = "x".join(str(s) for s in latent.shape)
    print(f"wrote {out} ({shape}, {latent.method}, {latent.steps} steps, {info['nfe']} NFE, {info['seconds']:.2f} s)")
    return 0
