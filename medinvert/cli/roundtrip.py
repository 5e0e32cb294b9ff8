"""`medinvert roundtrip VOLUME [--method exact] [--steps 20] [--model NAME|PATH] [--json]`.

Inverts a volume and generates it back in memory (nothing is written) and prints the round-trip
error and cost: ``max_abs_error``, ``relative_error`` (max abs error / max |volume|),
``bit_identical`` (every float32 voxel), ``nfe`` (inversion + generation), ``nfe_per_step`` (of the
inversion), ``seconds`` (inversion + generation solver loops, also given separately), the exception
patch size and the model.  ``--json`` prints one JSON object instead of text.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from medinvert.cli.invert import add_engine_arguments

    parser = subparsers.add_parser(
        "roundtrip", help="invert and regenerate a volume in memory; print error, NFE and time",
        description="generate(invert(VOLUME)) in memory: prints max abs error, relative error, bit-identical flag, "
                    "NFE and seconds.  Nothing is written.")
    parser.add_argument("volume", help="NIfTI file, DICOM series folder or DICOM file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_engine_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medinvert.cli.invert import engine_kwargs
    from medinvert.errors import MedinvertError
    from medinvert.inversion import roundtrip

    kwargs = engine_kwargs(args)
    if not Path(args.volume).exists():
        raise MedinvertError("no such file or folder", path=args.volume)
    result = roundtrip(args.volume, args.model, condition=args.condition, **kwargs)
    result["input"] = str(args.volume)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"{args.volume}: {result['method']} {result['steps']} steps, {result['dtype']}, "
          f"{'x'.join(map(str, result['shape']))}, model {result['model']}")
    print(f"  max abs error   {result['max_abs_error']:.6g}")
    print(f"  relative error  {result['relative_error']:.6g}")
    print(f"  bit identical   {'yes' if result['bit_identical'] else 'no'}")
    print(f"  NFE             {result['nfe']} (invert {result['nfe_invert']}, generate {result['nfe_generate']}; "
          f"{result['nfe_per_step']:g} per step)")
    print(f"  seconds         {result['seconds']:.3f} (invert {result['seconds_invert']:.3f}, "
          f"generate {result['seconds_generate']:.3f})")
    print(f"  patch           {result['patch_size']} voxels")
    return 0
