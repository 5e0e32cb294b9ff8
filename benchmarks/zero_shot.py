"""Zero-shot reconstruction on real scans that are not derived from the sample data's template.

The volumes ship inside the nibabel wheel (its test data: real acquisitions from other scanners,
resolutions and intensity ranges), so this runs offline:

- ``anatomical.nii`` -- a small, odd-sized T1 volume (33 x 41 x 25, int16 scanner units);
- ``example4d.nii.gz`` frame 0 -- an EPI volume (128 x 96 x 24); the frame is written to a 3-D file
  first (the 4-D file has two frames, which `medinvert` refuses as ambiguous);
- both again z-scored (``(x - mean) / std``, float32): signed intensities, as many pipelines store them.

Per volume, through the command line exactly as a user runs it::

    medinvert corrupt VOL --kind kspace --acceleration A --center-fraction CF --out WORK/corrupt
    medinvert reconstruct WORK/corrupt --model M --method exact [--steps S] --reference VOL --out WORK/recon

then CS-TV (`cs_tv.py`, lambda frozen in `cs_tv.TUNED_LAMBDA` from training slices) on the *same*
observation file, and the zero-filled magnitude.  PSNR / SSIM / NMSE with fastMRI conventions over
all slices (data range = reference volume maximum; max - min for the z-scored copies).  Run from the repository root::

    python benchmarks/zero_shot.py --model t1            # the CLI's default steps (10 for the shipped models)
    python benchmarks/zero_shot.py --model t1 --volumes my_t1.nii.gz   # your own 3-D volumes instead
    python benchmarks/zero_shot.py --model t1 --seeds 0 1 2 3 4 5 6 7  # eight masks per case, and their spread
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cs_tv  # noqa: E402  (benchmark-local module)

from medinvert.determinism import deterministic  # noqa: E402
from medinvert.intensity import robust_scale  # noqa: E402
from medinvert.io import load_volume  # noqa: E402
from medinvert.metrics import default_data_range, nmse, psnr, ssim  # noqa: E402
from medinvert.operators import Observation, volume_to_slices  # noqa: E402
from medinvert.signed import corrupted_image  # noqa: E402

SETTINGS = {4: 0.08, 8: 0.04}


def nibabel_volumes(work: Path) -> dict[str, Path]:
    """``name -> 3-D NIfTI path`` of the real test volumes shipped in the nibabel wheel."""
    data = Path(nib.__file__).parent / "tests" / "data"
    frame = nib.load(data / "example4d.nii.gz")
    epi = work / "example4d_frame0.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(frame.dataobj)[..., 0].astype(np.float32), frame.affine), epi)
    volumes = {"anatomical.nii (T1, 33x41x25)": data / "anatomical.nii", "example4d frame 0 (EPI, 128x96x24)": epi}
    for name, path in list(volumes.items()):  # z-scored copies: signed intensities (`medinvert.signed`)
        image = nib.load(path)
        values = np.asarray(image.dataobj, dtype=np.float64)
        zscored = work / f"zscored_{path.name.split('.')[0]}.nii.gz"
        nib.save(nib.Nifti1Image(((values - values.mean()) / values.std()).astype(np.float32), image.affine), zscored)
        volumes[f"{name}, z-scored"] = zscored
    return volumes


def medinvert_cli(*args: str) -> None:
    command = [sys.executable, "-m", "medinvert", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")


def scores(image: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float]:
    data_range = default_data_range(reference)  # the maximum; max - min for the z-scored copies
    return (psnr(image, reference, data_range=data_range), ssim(image, reference, data_range=data_range),
            nmse(image, reference))


def cs_tv_volume(observation: Observation, lam: float) -> torch.Tensor:
    """CS-TV of every measured slice, ``(X, Y, Z)`` in input units."""
    scale = robust_scale(observation.adjoint)
    y = observation.y.to(torch.complex128) / scale
    mask = volume_to_slices(observation.mask)
    x = cs_tv.cs_tv(y, mask, lam) * scale
    return x.permute(1, 2, 0).to(torch.float32)


def evaluate_case(path: Path, acceleration: int, seed: int, case: Path, args: argparse.Namespace,
                  reference: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], bool]:
    """Scores (PSNR, SSIM, NMSE) of zero-filled, CS-TV and ours on one mask, and whether ours came out
    identical twice."""
    medinvert_cli("corrupt", str(path), "--kind", "kspace", "--acceleration", str(acceleration),
                  "--center-fraction", str(SETTINGS[acceleration]), "--seed", str(seed), "--out", str(case / "corrupt"))
    (observation_file,) = sorted((case / "corrupt").glob("*_observation.json"))
    observation = Observation.load(observation_file)
    hashes = []
    for run in ("recon", "recon_again"):
        steps = [] if args.steps is None else ["--steps", str(args.steps)]
        medinvert_cli("reconstruct", str(case / "corrupt"), "--model", args.model, "--method", args.method,
                      *steps, "--reference", str(path), "--checks", "none",
                      "--allow-modality-mismatch", "--out", str(case / run))
        (recon_file,) = sorted((case / run).glob("*_recon.nii.gz"))
        hashes.append(np.asarray(nib.load(recon_file).dataobj).tobytes())
    ours = torch.as_tensor(np.asarray(load_volume(recon_file)), dtype=torch.float32)
    with deterministic(1):
        tv = cs_tv_volume(observation, cs_tv.TUNED_LAMBDA[acceleration])
    zero_filled = corrupted_image(observation)  # zero-filled magnitude (of the shifted image, for signed volumes)
    return scores(zero_filled, reference), scores(tv, reference), scores(ours, reference), hashes[0] == hashes[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="t1")
    parser.add_argument("--steps", type=int, default=None, help="default: the CLI's (the model's) default")
    parser.add_argument("--method", default="exact")
    parser.add_argument("--accelerations", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="`corrupt --seed` values: one mask per seed (a summary of ours - CS-TV over masks follows)")
    parser.add_argument("--volumes", type=Path, nargs="+", default=None,
                        help="3-D NIfTI files to run instead of nibabel's test volumes")
    args = parser.parse_args(argv)
    print("| volume | accel. | seed | zero-filled PSNR / SSIM | CS-TV PSNR / SSIM | ours PSNR / SSIM | ours - CS-TV (dB) | "
          "identical twice |")
    print("|---|---|---|---|---|---|---|---|")
    gains: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        volumes = nibabel_volumes(work) if args.volumes is None else {str(path): path for path in args.volumes}
        for index, (name, path) in enumerate(volumes.items()):
            reference = torch.as_tensor(np.asarray(load_volume(path)), dtype=torch.float32)
            for acceleration in args.accelerations:
                for seed in args.seeds:
                    case = work / f"{index}_{path.name.split('.')[0]}_{acceleration}x_seed{seed}"
                    z, c, o, identical = evaluate_case(path, acceleration, seed, case, args, reference)
                    gains.setdefault((name, acceleration), []).append(o[0] - c[0])
                    print(f"| {name} | {acceleration}x | {seed} | {z[0]:.2f} / {z[1]:.3f} | {c[0]:.2f} / {c[1]:.3f} | "
                          f"{o[0]:.2f} / {o[1]:.3f} | {o[0] - c[0]:+.2f} | {identical} |", flush=True)
    if len(args.seeds) > 1:
        print("\n| volume | accel. | masks | ours - CS-TV (dB): mean | std | min | max |\n|---|---|---|---|---|---|---|")
        for (name, acceleration), values in gains.items():
            v = np.asarray(values)
            print(f"| {name} | {acceleration}x | {v.size} | {v.mean():+.2f} | {v.std(ddof=1):.2f} | {v.min():+.2f} | "
                  f"{v.max():+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
