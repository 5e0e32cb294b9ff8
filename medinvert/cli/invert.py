"""`medinvert invert VOLUME --out LATENT.npz [--method exact] [--steps 20] [--model NAME|PATH] [--report F.json]`.

Inverts a volume (NIfTI file, DICOM series folder or file) to a latent file (format:
docs/latent-format.md) that `medinvert generate` maps back -- bit-identically for ``--method exact``.
Everything is validated (options, output names, the input volume, the model) before anything is
written; the latent and the report are written atomically; an existing output needs
``--overwrite``; an input is never overwritten.  A checkpoint trained on another modality than the
volume's (both known) is refused unless ``--allow-modality-mismatch``.

The report JSON (``--report``) holds ``method``, ``steps``, ``nfe``, ``nfe_per_step``, ``seconds``
(the solver loop), ``seconds_total`` (load + model + inversion), ``dtype``, ``batch_size``,
``threads``, ``guidance``, ``spacing``, ``options``, ``model`` (name, path, sha256), ``model_sha256``,
``shape``, ``patch_size``, ``frac_bits``, ``scale``, ``input``, ``latent``, ``medinvert_version``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: methods offered on the command line (kept equal to medinvert.solvers.SOLVERS by a test)
METHODS: tuple[str, ...] = ("exact", "edict", "bdia", "ddim", "ode", "nulltext", "negprompt")
#: timestep spacings (medinvert.schedule.SPACINGS)
SPACINGS: tuple[str, ...] = ("trailing", "leading", "linspace", "karras")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``invert`` and ``roundtrip``."""
    parser.add_argument("--method", default="exact", choices=METHODS,
                        help="exact (bit-exact, 1 NFE/step; default), edict, bdia, ddim, ode, or the guided peers nulltext and "
                             "negprompt (these need --condition)")
    parser.add_argument("--steps", type=int, default=20, help="number of steps (default 20)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="shipped model name (t1, t1ce, t2, flair), checkpoint path, or random[:SEED]; "
                             "default: the shipped model of the volume's modality, else random")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per network call (default 8)")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight (default 1)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="network / float-state precision (default float32)")
    parser.add_argument("--spacing", default="trailing", choices=SPACINGS, help="timestep spacing (default trailing)")
    parser.add_argument("--condition", default=None, metavar="OBSERVATION",
                        help="condition on an observation written by `medinvert corrupt` (its .json / .npz / stem)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method option, repeatable: p=0.93 and state_dtype=float64|float32 (edict), gamma=1 "
                             "(bdia), scheme=bdia|leapfrog|heun and frac_bits=N (exact), ode_method, rtol, atol (ode), "
                             "inner_steps, lr, lr_decay, tol, tol_growth (nulltext)")
    parser.add_argument("--ode-method", default=None, metavar="NAME",
                        help="torchdiffeq method of --method ode (dopri5 default, rk4, euler, ...); "
                             "same as --option ode_method=NAME")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default MEDINVERT_THREADS or 2); recorded in the latent")


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["p=0.9", "scheme=heun"]`` -> ``{"p": 0.9, "scheme": "heun"}`` (values read as JSON, else text)."""
    from medinvert.errors import MedinvertError

    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise MedinvertError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        options[key] = value
    return options


def validate_sampling_args(args: argparse.Namespace) -> None:
    """``--steps`` / ``--batch-size`` / ``--threads`` positive and ``--guidance`` finite (shared by the
    sampling commands; raises `MedinvertError`)."""
    import math

    from medinvert.errors import MedinvertError

    for name in ("steps", "batch_size"):  # None: the command's default (reconstruct's depends on the model)
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise MedinvertError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise MedinvertError(f"--threads must be a positive integer, got {args.threads}")
    if not math.isfinite(args.guidance):
        raise MedinvertError(f"--guidance must be finite, got {args.guidance}")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Validated keyword arguments for `medinvert.inversion.invert` (raises `MedinvertError`)."""
    from medinvert.errors import MedinvertError
    from medinvert.solvers import get_solver

    validate_sampling_args(args)
    options = parse_options(args.option)
    if "guidance" in options:  # the API's guidance argument is the one weight (also of nulltext / negprompt)
        raise MedinvertError("give the guidance weight with --guidance, not --option guidance=...")
    if args.ode_method is not None:
        if args.method != "ode":
            raise MedinvertError(f"--ode-method applies to --method ode only (got --method {args.method})")
        if options.get("ode_method", args.ode_method) != args.ode_method:
            raise MedinvertError("--ode-method and --option ode_method=... disagree; give one")
        options["ode_method"] = args.ode_method
    get_solver(args.method).options(**options)  # unknown option names fail here, before any work
    return {"method": args.method, "steps": args.steps, "batch_size": args.batch_size, "guidance": args.guidance,
            "dtype": args.dtype, "spacing": args.spacing, "threads": args.threads, **options}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "invert", help="invert a volume to a latent file (bit-exact with --method exact)",
        description="Invert VOLUME to a latent file that `medinvert generate` maps back to the volume "
                    "(bit-identical float32 voxels with --method exact).  Format: docs/latent-format.md.")
    parser.add_argument("volume", help="NIfTI file, DICOM series folder or DICOM file")
    parser.add_argument("--out", required=True, metavar="LATENT.npz", help="latent file to write (.npz)")
    parser.add_argument("--report", default=None, metavar="FILE.json", help="also write a JSON report")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--allow-modality-mismatch", action="store_true",
                        help="use a checkpoint trained on another modality than the volume's (refused by default)")
    add_engine_arguments(parser)
    return parser


def check_output(path: Path, inputs: list[Any], overwrite: bool, *, suffix: str | None = None) -> None:
    """Refuse an output that is an input, a folder, exists without ``overwrite``, or lacks ``suffix``."""
    from medinvert.errors import MedinvertError
    from medinvert.io import ensure_not_input

    if suffix is not None and not path.name.lower().endswith(suffix):
        raise MedinvertError(f"output name must end with {suffix}", path=path)
    ensure_not_input(path, [p for p in inputs if p is not None])
    if path.is_dir():
        raise MedinvertError("output name is taken by a folder", path=path)
    if path.exists() and not overwrite:
        raise MedinvertError("output exists; pass --overwrite to replace it", path=path)


def run(args: argparse.Namespace) -> int:
    import time

    from medinvert import __version__
    from medinvert.errors import MedinvertError
    from medinvert.inversion import invert
    from medinvert.io import atomic_write_text

    start = time.perf_counter()
    kwargs = engine_kwargs(args)
    out = Path(args.out)
    report = None if args.report is None else Path(args.report)
    inputs = [args.volume, args.condition, args.model]
    check_output(out, inputs, args.overwrite, suffix=".npz")
    if report is not None:
        check_output(report, inputs, args.overwrite)
        if report.resolve() == out.resolve():
            raise MedinvertError("--report and --out name the same file", path=report)
    if not Path(args.volume).exists():
        raise MedinvertError("no such file or folder", path=args.volume)

    latent = invert(args.volume, args.model, condition=args.condition,
                    require_modality_match=not args.allow_modality_mismatch, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    latent.save(out)
    stats = latent.stats
    summary = {
        "method": latent.method, "steps": latent.steps, "nfe": stats["nfe"], "nfe_per_step": stats["nfe_per_step"],
        "seconds": stats["seconds"], "seconds_total": time.perf_counter() - start, "dtype": latent.dtype,
        "batch_size": latent.batch_size, "threads": latent.threads, "guidance": latent.guidance,
        "spacing": latent.spacing, "options": latent.options,
        "model": {k: latent.model.get(k) for k in ("kind", "name", "path", "sha256", "sha256_of")},
        "model_sha256": latent.model.get("sha256"), "shape": list(latent.shape), "patch_size": latent.patch_size,
        "frac_bits": latent.frac_bits, "scale": latent.scale, "input": str(args.volume), "latent": str(out),
        "medinvert_version": __version__,
    }
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(report, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} ({latent.method}, {latent.steps} steps, {stats['nfe']} NFE = {stats['nfe_per_step']:g}/step, "
          f"{stats['seconds']:.2f} s, model {latent.model.get('name') or 'in-memory'}, patch {latent.patch_size} voxels)")
    return 0
