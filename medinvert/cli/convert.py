"""`medinvert convert INPUT OUTPUT.nii.gz [--series-uid UID] [--overwrite]`: any readable volume -> NIfTI.

INPUT is a DICOM series folder, a single DICOM file or a NIfTI file.  The affine (voxel -> RAS) is
kept exactly; a NIfTI input keeps its header and qform/sform codes.  Data are written as float32
(rescale slope / intercept applied), atomically.  An existing OUTPUT is only replaced with
``--overwrite``, and never when it is the input itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert", help="convert a DICOM series (or any readable volume) to NIfTI",
        description="Convert a DICOM series folder, DICOM file or NIfTI file to a float32 NIfTI file "
                    "(.nii or .nii.gz), keeping the voxel-to-RAS affine.")
    parser.add_argument("input", help="DICOM series folder, DICOM file or NIfTI file")
    parser.add_argument("output", help="output file name ending in .nii or .nii.gz")
    parser.add_argument("--series-uid", default=None, metavar="UID",
                        help="SeriesInstanceUID to convert when the folder holds several series")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def run(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np

    from medinvert.errors import MedinvertError
    from medinvert.io import ensure_not_input, load_volume, save_volume
    from medinvert.io.naming import is_nifti_name

    source, output = Path(args.input), Path(args.output)
    if not is_nifti_name(output):
        raise MedinvertError("output must end in .nii or .nii.gz", path=output)
    ensure_not_input(output, [source])
    if output.is_dir():
        raise MedinvertError("output is a folder, expected a file name", path=output)
    if output.exists() and not args.overwrite:
        raise MedinvertError("output exists; pass --overwrite to replace it", path=output)
    volume = load_volume(source, series_uid=args.series_uid)
    save_volume(volume, output)
    shape = "x".join(str(int(s)) for s in volume.shape)
    orientation = "".join(nib.aff2axcodes(np.asarray(volume.affine, dtype=np.float64)))
    print(f"wrote {output} ({shape}, {orientation}, {volume.meta['source_format']} -> nifti)")
    return 0
