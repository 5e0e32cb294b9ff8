"""`medinvert corrupt INPUT --kind KIND [options] --seed N --out DIR [--overwrite]`.

INPUT is a NIfTI / DICOM file, a DICOM series folder, a BraTS case folder or a folder of cases
(`medinvert.io.find_cases`; segmentations -- key ``seg`` -- are not corrupted).  For every volume it
writes into DIR:

* ``<stem>_corrupted.nii.gz`` -- the corrupted image (zero-filled magnitude ``|F^H y|`` for kspace),
  float32, with the input's affine and header;
* ``<stem>_mask.nii.gz`` -- uint8, same shape as the volume, 1 = measured / kept (for kspace: voxel
  ``(i, j, k)`` = 1 when k-space sample ``(i, j)`` of slice ``k`` was measured, centred order);
* ``<stem>_observation.npz`` + ``<stem>_observation.json`` -- the `Observation` (format documented in
  `medinvert.operators.observation`), which later commands read.

``<stem>`` is the file name without ``.nii`` / ``.nii.gz`` (BraTS files), else the case id.  The
seed of each volume is ``seed_from_name(<volume name>, --seed)``: volumes differ, slices of one
volume share one mask, reruns give identical bytes.  Parameters and output names are checked for
all volumes first; then each volume is loaded, validated and corrupted completely before DIR is
created or any of its files is written (so a bad input leaves nothing of its own behind); every
file is written atomically.  Existing outputs are an error unless ``--overwrite``.

Batches keep going: with several volumes, one that cannot be read or corrupted is reported in one
line on stderr (``medinvert corrupt: failed STEM: ...``) and skipped, the others are written, and
the run ends with ``wrote N corrupted volume(s) to DIR, K failed`` and exit code 2 (1 if a failure
was an internal error).  With a single volume the line is the usual ``medinvert corrupt: error:``.
Hidden temporary files a killed earlier run left for these outputs are deleted before writing;
outputs are deterministic, so rerunning a killed batch with ``--overwrite`` gives the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: CLI option dest -> (parameter name, kinds it applies to)
_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "acceleration": ("acceleration", ("kspace",)),
    "center_fraction": ("center_fraction", ("kspace",)),
    "pattern": ("pattern", ("kspace",)),
    "mask_type": ("mask_type", ("mask",)),
    "mask_file": ("mask_file", ("mask",)),
    "size_fraction": ("size_fraction", ("mask",)),
    "n_blobs": ("n_blobs", ("mask",)),
    "slice_fraction": ("slice_fraction", ("mask",)),
    "sigma": ("sigma", ("kspace", "mask", "noise", "blur")),
    "snr": ("snr", ("kspace", "mask", "noise", "blur")),
    "noise_model": ("noise_model", ("noise",)),
    "blur": ("blur", ("blur",)),
    "blur_sigma": ("blur_sigma", ("blur",)),
    "motion_length": ("motion_length", ("blur",)),
    "motion_angle": ("motion_angle", ("blur",)),
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "corrupt", help="corrupt volumes (k-space undersampling, masking, noise, blur) and save observations",
        description="Corrupt every volume of INPUT and write <stem>_corrupted.nii.gz, <stem>_mask.nii.gz and "
                    "<stem>_observation.npz/.json into --out.  Segmentations are skipped.")
    parser.add_argument("input", help="NIfTI / DICOM file, DICOM series folder, BraTS case folder or folder of cases")
    parser.add_argument("--kind", required=True, choices=("kspace", "mask", "noise", "blur"),
                        help="corruption kind")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="user seed (default 0); combined with each volume's name")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    kspace = parser.add_argument_group("k-space (--kind kspace)")
    kspace.add_argument("--acceleration", type=float, default=None, help="undersampling factor (default 4)")
    kspace.add_argument("--center-fraction", type=float, default=None,
                        help="fully sampled centre fraction (default 0.32/acceleration: 0.08 at 4x, 0.04 at 8x)")
    kspace.add_argument("--pattern", default=None, choices=("random", "equispaced", "variable-density"),
                        help="line mask (random, equispaced) or 2-D variable density (default random)")
    mask = parser.add_argument_group("masking (--kind mask)")
    mask.add_argument("--mask-type", default=None, choices=("box", "blobs", "slices", "file"),
                      help="missing region: one box, random blobs, dropped slices, or a user mask (default box)")
    mask.add_argument("--mask-file", default=None, metavar="F", help="mask volume for --mask-type file (1 = kept)")
    mask.add_argument("--size-fraction", type=float, default=None, help="box side per axis (default 0.3)")
    mask.add_argument("--n-blobs", type=int, default=None, help="number of blobs (default 5)")
    mask.add_argument("--slice-fraction", type=float, default=None, help="fraction of slices dropped (default 0.2)")
    noise = parser.add_argument_group("noise (--kind noise; --sigma / --snr also add measurement noise to the others)")
    noise.add_argument("--sigma", type=float, default=None, help="absolute noise standard deviation")
    noise.add_argument("--snr", type=float, default=None, help="mean foreground intensity / noise std")
    noise.add_argument("--noise-model", default=None, choices=("gaussian", "rician"), help="default gaussian")
    blur = parser.add_argument_group("blur (--kind blur)")
    blur.add_argument("--blur", default=None, choices=("gaussian", "motion"), help="default gaussian")
    blur.add_argument("--blur-sigma", type=float, default=None, help="Gaussian kernel std in pixels (default 1.5)")
    blur.add_argument("--motion-length", type=float, default=None, help="motion length in pixels (default 9)")
    blur.add_argument("--motion-angle", type=float, default=None,
                      help="motion angle in degrees from array axis 0 towards axis 1 (default 0)")
    return parser


def _params(args: argparse.Namespace) -> dict[str, Any]:
    """Kind parameters from the options that were given; options of another kind are an error."""
    from medinvert.errors import MedinvertError

    params: dict[str, Any] = {}
    for dest, (name, kinds) in _OPTIONS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if args.kind not in kinds:
            raise MedinvertError(f"--{dest.replace('_', '-')} does not apply to --kind {args.kind}")
        params[name] = value
    return params


def _summary(observation: Any) -> str:
    p = observation.params
    if observation.kind == "kspace":
        text = (f"kspace {p['acceleration']:g}x {p['pattern']} cf {p['center_fraction']:g} "
                f"(measured {100 * p['measured_fraction']:.1f}%)")
    elif observation.kind == "mask":
        text = f"mask {p['mask_type']} (kept {100 * p['measured_fraction']:.1f}%)"
    elif observation.kind == "noise":
        text = f"noise {p['noise_model']} sigma {p['sigma']:.4g}"
    else:
        width = f"length {p['motion_length']:g} angle {p['motion_angle']:g}" if p["blur"] == "motion" \
            else f"sigma {p['blur_sigma']:g}"
        text = f"blur {p['blur']} {width}"
    if observation.kind != "noise" and p.get("sigma"):
        text += f" + noise sigma {p['sigma']:.4g}"
    return text


def _inside(path: Path, folder: Path) -> bool:
    from medinvert.io.load import is_inside  # lazy: keeps `medinvert --help` free of torch imports

    return is_inside(path, folder)
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from medinvert.errors import MedinvertError, as_user_error
    from medinvert.io import ensure_not_input, find_cases, load_volume, save_volume, volume_stem
    from medinvert.io.load import inputs_inside_out
    from medinvert.io.atomic import remove_stale_temporaries, require_writable_folder
    from medinvert.io.naming import parse_brats_name
    from medinvert.operators.observation import observation_paths
    from medinvert.signed import corrupted_image
    from medinvert.transforms.corrupt import apply_transform, make_transform

    if args.seed < 0 or args.seed >= 2**32:
        raise MedinvertError(f"--seed must be in [0, 2**32), got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MedinvertError("--out exists and is not a folder", path=out)
    transform = make_transform(args.kind, **_params(args))  # validates parameters, reads a mask file
    cases = find_cases(Path(args.input))

    plan = []  # per case: [(key, path, stem, outputs)]
    stems: dict[str, Path] = {}
    for case in cases:
        case_jobs = []
        for key, path in case.paths.items():
            if key == "seg" or _inside(path, out):  # segmentations; earlier outputs below the input
                continue
            stem = volume_stem(path) if parse_brats_name(path) is not None else case.case_id
            if stem in stems:
                raise MedinvertError(f"two inputs map to the output name {stem!r}: {stems[stem]} and {path}")
            stems[stem] = path
            npz, sidecar = observation_paths(out / stem)
            case_jobs.append((key, path, stem, [out / f"{stem}_corrupted.nii.gz", out / f"{stem}_mask.nii.gz",
                                                npz, sidecar]))
        if case_jobs:
            plan.append((case, case_jobs))
    jobs = [job for _, case_jobs in plan for job in case_jobs]
    if not jobs and any(_inside(path, out) for case in cases for key, path in case.paths.items() if key != "seg"):
        raise inputs_inside_out(out, args.input)
    if not jobs:
        raise MedinvertError("nothing to corrupt: only segmentations found", path=args.input)
    inputs = [job[1] for job in jobs]
    if transform.params.get("mask_file") is not None:
        inputs.append(Path(transform.params["mask_file"]))
    for *_, outputs in jobs:
        for target in outputs:
            ensure_not_input(target, inputs)
            if target.is_dir():
                raise MedinvertError("output name is taken by a folder", path=target)
            if target.exists() and not args.overwrite:
                raise MedinvertError("output exists; pass --overwrite to replace it", path=target)
    require_writable_folder(out)

    written, failed, internal = 0, 0, False
    for case, case_jobs in tqdm(plan, desc="corrupt", unit="case", file=sys.stderr, disable=None):
        for _, path, stem, outputs in case_jobs:
            try:
                volume = load_volume(path, series_uid=case.series_uid)
                observation = apply_transform(transform, volume, seed=args.seed, name=stem)
                corrupted, mask_path, _, _ = outputs
                out.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(outputs)
                observation.save(out / stem)
                save_volume(observation.mask.numpy().astype(np.uint8), mask_path, reference=volume, dtype=np.uint8)
                save_volume(corrupted_image(observation), corrupted, reference=volume)
            except Exception as failure:  # noqa: BLE001 - a bad volume must not stop the others
                if len(jobs) == 1:
                    raise
                exc = as_user_error(failure)  # a full disk or a permission is the user's to fix
                failed += 1
                internal = internal or not isinstance(exc, MedinvertError)
                kind = "" if isinstance(exc, MedinvertError) else f"internal error: {type(exc).__name__}: "
                tqdm.write(f"medinvert corrupt: failed {stem}: {kind}{' '.join(str(exc).split())}", file=sys.stderr)
                continue
            written += 1
            tqdm.write(f"{stem}: {_summary(observation)} -> {corrupted}", file=sys.stdout)
    print(f"wrote {written} corrupted volume(s) to {out}" + (f", {failed} failed" if failed else ""))
    return (1 if internal else 2) if failed else 0
