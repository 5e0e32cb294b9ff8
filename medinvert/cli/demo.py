"""`medinvert demo [--out DIR] [--steps N] [--slices central|all|A:B]`: the main job on the bundled sample.

Takes the held-out sample case ``sample_data/BraTS-GLI-00002-000`` (T1, ``-t1n``; never trained on,
see ``sample_data/split.json``), simulates 4x Cartesian k-space undersampling with a fully sampled
centre of 8% (``kspace:4``, random line mask, seeded by ``--seed`` and the file name), reconstructs it
with the shipped ``t1`` model (`medinvert.reconstruct_volume`) and writes into DIR (default
``out/demo``) what ``medinvert reconstruct`` writes: ``<stem>_recon.nii.gz``, ``<stem>_report.json``
and ``<stem>_report.html``.  It prints PSNR / SSIM of the zero-filled input and of the
reconstruction against the clean volume, and where the HTML report is.  The demo's own outputs are
replaced on every run.

``--slices`` chooses the slab (slices along array axis 2), for speed on a CPU:

* ``central`` (default): the 16 central slices of the brain (the middle of the slices holding any
  non-zero voxel); the output stem is ``<file>_slices<first>-<last>`` (both inclusive);
* ``all``: the whole 240 x 240 x 155 volume (about a minute on a 2-core CPU at the default 10 steps);
* ``A:B``: slices ``A`` to ``B - 1``.

The slab keeps the volume's geometry: its affine is the original shifted by ``A`` slices
(``affine @ translate(0, 0, A)``), so it overlays the full volume in any viewer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: the held-out sample case and its T1 image, relative to the repository root
SAMPLE_CASE = "BraTS-GLI-00002-000"
SAMPLE_FILE = f"{SAMPLE_CASE}-t1n.nii.gz"
#: corruption of the demo: 4x random Cartesian lines, centre fraction 0.08 (fastMRI's 4x setting)
DEMO_CORRUPTION = "kspace:4:0.08"
#: slab thickness of ``--slices central``
CENTRAL_SLICES = 16


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from medinvert.cli.invert import METHODS

    parser = subparsers.add_parser(
        "demo", help="reconstruct the bundled sample (4x k-space) end to end and print where the report is",
        description="Simulate 4x k-space undersampling (centre fraction 0.08) of the held-out sample "
                    f"{SAMPLE_CASE} (T1), reconstruct it with the shipped t1 model and write the "
                    "reconstruction and its JSON / HTML reports.")
    parser.add_argument("--out", default="out/demo", metavar="DIR", help="output folder (default out/demo)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: the model's, 10 for the shipped models on k-space)")
    parser.add_argument("--slices", default="central", metavar="central|all|A:B",
                        help=f"slab to reconstruct: the {CENTRAL_SLICES} central brain slices (default), all, or "
                             "A:B (B exclusive)")
    parser.add_argument("--model", default="t1", metavar="NAME|PATH", help="model (default: the shipped t1 model)")
    parser.add_argument("--method", default="exact", choices=METHODS, help="solver (default exact)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-space mask and start noise (default 0)")
    parser.add_argument("--checks", default="fast", choices=("fast", "full", "none"),
                        help="reproducibility / round-trip / sensitivity / withheld-line checks (default fast)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default MEDINVERT_THREADS or 2)")
    return parser


def sample_path() -> Path:
    """The bundled sample T1 file (``<repository>/sample_data/...``); `MedinvertError` when missing."""
    import medinvert
    from medinvert.errors import MedinvertError

    folder = Path(medinvert.__file__).resolve().parents[1] / "sample_data"
    path = folder / SAMPLE_CASE / SAMPLE_FILE
    if not path.is_file():
        raise MedinvertError("the bundled sample is missing (the demo needs the repository's sample_data folder; "
                             "install medinvert from a checkout with `pip install -e .`)", path=path)
    return path


def slab_range(volume: Any, spec: str) -> tuple[int, int]:
    """``(start, stop)`` slice range of ``--slices spec`` for ``volume`` ``(X, Y, Z)``."""
    import numpy as np

    from medinvert.errors import MedinvertError

    z = int(volume.shape[2])
    if spec == "all":
        return 0, z
    if spec == "central":
        occupied = np.nonzero(np.asarray(volume).reshape(-1, z).any(axis=0))[0]
        low, high = (int(occupied[0]), int(occupied[-1]) + 1) if occupied.size else (0, z)
        start = max(0, (low + high) // 2 - CENTRAL_SLICES // 2)
        return start, min(z, start + CENTRAL_SLICES)
    first, sep, last = spec.partition(":")
    try:
        start, stop = int(first), int(last)
    except ValueError:
        start, stop = -1, -1
    if not sep or not 0 <= start < stop <= z:
        raise MedinvertError(f"--slices must be central, all or A:B with 0 <= A < B <= {z}, got {spec!r}")
    return start, stop


def slab(volume: Any, start: int, stop: int) -> Any:
    """Slices ``start:stop`` of ``volume`` as a MetaTensor whose affine places them where they were."""
    import numpy as np

    from medinvert.io.nifti import make_meta_tensor

    affine = np.asarray(volume.affine, dtype=np.float64)
    shift = np.eye(4)
    shift[2, 3] = start
    meta = {k: v for k, v in volume.meta.items() if k in ("filename_or_obj", "modality", "source_format", "spacing")}
    data = np.ascontiguousarray(np.asarray(volume)[:, :, start:stop])
    return make_meta_tensor(data, affine @ shift, meta)


def _fmt(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    from medinvert.engine import default_steps
    from medinvert.errors import MedinvertError
    from medinvert.inversion import resolve_network
    from medinvert.io import load_volume, volume_stem
    from medinvert.reconstruct import reconstruct_volume
    from medinvert.report import output_paths, write_outputs

    if args.steps is not None and args.steps < 1:
        raise MedinvertError(f"--steps must be a positive integer, got {args.steps}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MedinvertError("--out exists and is not a folder", path=out)
    path = sample_path()
    volume = load_volume(path)
    start, stop = slab_range(volume, args.slices)
    whole = (start, stop) == (0, int(volume.shape[2]))
    stem = volume_stem(path) + ("" if whole else f"_slices{start}-{stop - 1}")
    model = resolve_network(args.model)  # a missing shipped model fails here, before any work
    steps = default_steps("kspace", model.guess) if args.steps is None else args.steps
    clean = volume if whole else slab(volume, start, stop)
    print(f"demo: {path.name} slices {start}-{stop - 1} ({stop - start} of {volume.shape[2]}), {DEMO_CORRUPTION} "
          f"(4x, centre fraction 0.08), model {args.model}, {args.method}, {steps} steps", flush=True)
    result = reconstruct_volume(clean, model, corruption=DEMO_CORRUPTION, method=args.method, steps=steps,
                                device=args.device, seed=args.seed, checks=args.checks, return_latent=False,
                                progress=sys.stderr.isatty(), threads=args.threads)
    result.report["input"]["slab"] = {"file": str(path), "start": start, "stop": stop}
    paths = output_paths(out, stem)
    write_outputs(result, paths, reference=clean, source_volume=volume,
                  title=f"medinvert demo: {path.name}, slices {start}-{stop - 1}, 4x k-space")
    metrics = result.report.get("metrics", {})
    zero = metrics.get("zero_filled", {})
    print(f"zero-filled     PSNR {_fmt(zero.get('psnr'), 2)} dB  SSIM {_fmt(zero.get('ssim'), 4)}")
    print(f"reconstruction  PSNR {_fmt(metrics.get('psnr'), 2)} dB  SSIM {_fmt(metrics.get('ssim'), 4)}")
    validation = result.report.get("validation") or {}
    if validation.get("applicable"):
        print(f"withheld-line error {_fmt(validation.get('relative_error_withheld'), 3)} (no reference needed; "
              f"zero-filling = 1), estimated NMSE {_fmt(validation.get('nmse_estimate'), 4)}")
    residual = result.report["data_consistency"]["relative_residual"]
    print(f"data-consistency residual {residual:.2e}; {result.report['timing']['seconds']:.1f} s")
    print(f"reconstruction: {paths.recon}")
    print(f"report: {paths.report_html.resolve()}")
    return 0
