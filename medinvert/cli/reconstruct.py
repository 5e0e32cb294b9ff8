"""`medinvert reconstruct INPUT --out DIR [--model NAME|PATH] [--corruption SPEC] [options]`.

INPUT is one of

* a folder written by `medinvert corrupt` (every ``<stem>_observation.json`` in it is reconstructed)
  or a single ``<stem>_observation.json`` / ``.npz`` file -- measured data;
* with ``--corruption kspace:ACC[:CF] | mask:... | noise:SIGMA | blur:...`` (grammar:
  `medinvert.transforms.parse_corruption_spec`): a clean NIfTI file, DICOM series folder, BraTS case
  folder or folder of cases (`medinvert.io.find_cases`; segmentations are skipped) -- the corruption
  is simulated (seeded by ``--seed`` and the volume's name) and the clean volume is the reference;
* with ``--measured noise[:auto|SIGMA][:MODEL]`` (`medinvert.transforms.measured`): the same kinds of
  volume, each taken as noisy measured data and denoised (sigma estimated unless given); there is no
  reference unless ``--reference`` names one.

For every volume DIR receives ``<stem>_recon.nii.gz`` (float32, the input's affine),
``<stem>_report.json``, ``<stem>_report.html`` and with ``--save-latent`` ``<stem>_latent.npz``
(`medinvert.report.outputs`), plus one ``summary.csv`` for the run (one row per volume: case, stem,
status, psnr, ssim, nmse, withheld_error (reference-free, `medinvert.kspace_validation`), seconds,
nfe, output, message).

Behaviour:

* Everything that can be checked without reconstructing (options, corruption spec, input discovery,
  output names, the reference, the models) is checked before anything is written.
* Resumable: a volume whose output files all exist is skipped (said on stderr) unless
  ``--overwrite``.  Before skipping, its reconstruction and JSON report must read back whole (else it
  is redone) and the report must name this run's settings (else that volume fails:
  `medinvert.cli.resume`).  A volume with only some of its files (an interrupted run) is redone, and
  the hidden temporary files a killed run may have left for its outputs are deleted first
  (`medinvert.io.atomic.remove_stale_temporaries`).  A killed and restarted run ends with the same
  bytes as an uninterrupted one.
* Batch semantics: a volume that fails is reported in one line on stderr and skipped, the others
  finish; the run ends with ``N done, M skipped, K failed`` on stdout and exit code 0 when none
  failed, 2 when any failed with an input / numerical error, 1 when any failed with an internal
  error.  With a single volume the line is the usual ``medinvert reconstruct: error: ...``.
* Nothing is left behind by a run that produced nothing: when no volume was done or skipped,
  ``summary.csv`` is not written and an output folder this run created is removed again.
* ``--model`` defaults to the shipped model of the volume's modality (``t1`` when unknown,
  `medinvert.engine.default_model_name`).  A checkpoint trained on another modality than the
  volume's (both known) fails that volume unless ``--allow-modality-mismatch``
  (`medinvert.inversion.check_model_modality`).
* Under ``torchrun --nproc_per_node=N -m medinvert reconstruct ...`` volume ``i`` goes to rank
  ``i % N`` (gloo on the CPU, nccl on CUDA: `medinvert.train.distributed`); each rank writes its own
  volumes' files, rank 0 gathers the rows (``all_gather_object``) and writes ``summary.csv``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: columns of summary.csv
SUMMARY_COLUMNS: tuple[str, ...] = ("case", "stem", "status", "psnr", "ssim", "nmse", "withheld_error", "seconds",
                                    "nfe", "output", "message")
_OBSERVATION_SUFFIXES = ("_observation.json", "_observation.npz")


@dataclass(frozen=True)
class Job:
    """One volume to reconstruct.

    ``kind`` is ``"observation"`` (``source`` = an observation file) or ``"volume"`` (``source`` = a
    clean NIfTI file or DICOM series folder, with ``series_uid`` for DICOM).
    """

    index: int
    case: str
    stem: str
    kind: str
    source: Path
    series_uid: str | None = None
    modality: str | None = None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from medinvert.cli.invert import METHODS

    parser = subparsers.add_parser(
        "reconstruct", help="reconstruct corrupted volumes (deterministic, data consistent) with reports",
        description="Reconstruct every volume of INPUT (a `medinvert corrupt` output folder or observation "
                    "file; or clean volumes with --corruption) and write <stem>_recon.nii.gz, "
                    "<stem>_report.json, <stem>_report.html and summary.csv into --out.")
    parser.add_argument("input", help="`corrupt` output folder or observation file; with --corruption a NIfTI / "
                                      "DICOM file, DICOM series folder, BraTS case folder or folder of cases")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="shipped model name (t1, t1ce, t2, flair), checkpoint path or random[:SEED]; "
                             "default: the shipped model of each volume's modality (t1 when unknown)")
    parser.add_argument("--corruption", default=None, metavar="SPEC",
                        help="simulate a corruption of clean volumes: kspace:ACC[:CF], mask:TYPE..., noise:SIGMA, "
                             "blur:gaussian:SIGMA or blur:motion:LENGTH:ANGLE")
    parser.add_argument("--measured", default=None, metavar="SPEC",
                        help="the input volumes are noisy measurements to denoise: noise[:auto|SIGMA][:gaussian|rician] "
                             "(sigma estimated by default)")
    parser.add_argument("--reference", default=None, metavar="REF",
                        help="clean reference volume for the metrics (single input only; when simulating, the "
                             "clean input is the reference)")
    parser.add_argument("--method", default="exact", choices=METHODS, help="solver (default exact)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: 10 for k-space with the shipped models, which refine a "
                             "CS-TV guess; 20 otherwise)")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight (default 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per network call (default 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu; under torchrun cuda:LOCAL_RANK)")
    parser.add_argument("--start", default="guess", choices=["guess", "noise"],
                        help="sampler start: guess (noise-free, near the posterior mean; default) or noise "
                             "(a seeded posterior sample)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the simulated corruption and of the start noise, combined with each volume's "
                             "name (default 0)")
    parser.add_argument("--checks", default="fast", choices=("fast", "full", "none"),
                        help="reproducibility / round-trip / sensitivity / withheld-line checks on one batch of slices (fast, "
                             "default), on the whole volume (full) or none")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default MEDINVERT_THREADS or 2); results are bit-reproducible for "
                             "a fixed value")
    parser.add_argument("--modalities", default=None, metavar="LIST",
                        help="with --corruption: only these modalities, e.g. t1,flair (BraTS 2023 names accepted)")
    parser.add_argument("--save-latent", action="store_true", help="also write <stem>_latent.npz (exact inversion)")
    parser.add_argument("--overwrite", action="store_true", help="redo volumes whose outputs already exist")
    parser.add_argument("--allow-modality-mismatch", action="store_true",
                        help="use a checkpoint trained on another modality than the volume's (refused by default)")
    return parser


# ---------------------------------------------------------------------------- planning
def _inside(path: Path, folder: Path) -> bool:
    from medinvert.io.load import is_inside  # lazy: keeps `medinvert --help` free of torch imports

    return is_inside(path, folder)


def _observation_stem(path: Path) -> str | None:
    for suffix in _OBSERVATION_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _observation_modality(path: Path, stem: str) -> str | None:
    """Modality of an observation's source volume (its sidecar's ``modality``, else guessed from its
    ``source``, else from the stem)."""
    import json

    from medinvert.io import guess_modality

    sidecar = path.with_name(f"{stem}_observation.json")
    try:
        header = json.loads(sidecar.read_text(encoding="utf-8"))
        source, modality = header.get("source"), header.get("modality")
    except (OSError, ValueError, AttributeError):
        source, modality = None, None
    if isinstance(modality, str):  # recorded by `corrupt` (a DICOM series' from its description)
        return modality
    return guess_modality(source) if source else guess_modality(f"{stem}.nii.gz")


def plan_jobs(input_path: str | Path, corruption: str | None, out: Path,
              modalities: tuple[str, ...] | None = None) -> list[Job]:
    """The volumes of INPUT in a stable order (see the module docstring); raises `MedinvertError`.

    ``corruption``: the ``--corruption`` or ``--measured`` spec (INPUT then holds volumes), None when
    INPUT holds observations written by `medinvert corrupt`.

    ``modalities`` keeps only the volumes of those canonical modalities (clean inputs only)."""
    from medinvert.errors import MedinvertError

    root = Path(input_path)
    if not root.exists():
        raise MedinvertError("no such file or folder", path=root)
    observations: list[Path] = []
    if root.is_dir():
        observations = sorted(p for p in root.glob("*_observation.json") if not p.name.startswith("."))
    elif _observation_stem(root) is not None:
        observations = [root]
    if corruption is None:
        if modalities is not None:
            raise MedinvertError("--modalities selects clean volumes to corrupt; it needs --corruption")
        if not observations:
            raise MedinvertError("no *_observation.json written by `medinvert corrupt` here; pass --corruption SPEC "
                                 "to simulate a corruption of clean volumes (or --measured noise to denoise them)",
                                 path=root)
        jobs = []
        for index, path in enumerate(observations):
            stem = str(_observation_stem(path))
            jobs.append(Job(index, stem, stem, "observation", path, None, _observation_modality(path, stem)))
        return jobs
    if observations:
        raise MedinvertError("holds observations written by `medinvert corrupt`; reconstruct them without "
                             "--corruption or --measured", path=root)
    return volume_jobs(root, exclude=out, modalities=modalities)


def volume_jobs(root: str | Path, exclude: Path | None = None,
                modalities: tuple[str, ...] | None = None) -> list[Job]:
    """One `Job` per clean volume under ``root`` (`medinvert.io.find_cases`; segmentations, files
    inside ``exclude`` and, when ``modalities`` is given, other modalities skipped).  Stem: the file
    name for BraTS files, else the case id (as `medinvert corrupt` names them)."""
    from medinvert.errors import MedinvertError
    from medinvert.io import find_cases, guess_modality, volume_stem
    from medinvert.io.load import inputs_inside_out
    from medinvert.io.naming import MODALITIES, parse_brats_name

    jobs: list[Job] = []
    inside_out = 0
    for case in find_cases(Path(root)):
        for key, path in case.paths.items():
            if key == "seg":
                continue
            if exclude is not None and _inside(path, exclude):  # our own earlier outputs
                inside_out += 1
                continue
            if modalities is not None and key not in modalities:
                continue
            stem = volume_stem(path) if parse_brats_name(path) is not None else case.case_id
            modality = key if key in MODALITIES else guess_modality(path)
            jobs.append(Job(len(jobs), case.case_id, stem, "volume", Path(path), case.series_uid, modality))
    if not jobs and inside_out:
        raise inputs_inside_out(exclude, root)
    if not jobs:
        wanted = f" of modality {', '.join(modalities)}" if modalities is not None else ""
        raise MedinvertError(f"nothing to reconstruct: no volume{wanted} (segmentations are skipped)", path=root)
    return jobs


# ---------------------------------------------------------------------------- validation
def _validate_options(args: argparse.Namespace) -> None:
    from medinvert.cli.invert import validate_sampling_args
    from medinvert.errors import MedinvertError

    validate_sampling_args(args)
    if not 0 <= args.seed < 2**32:
        raise MedinvertError(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise MedinvertError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MedinvertError("--device cuda requested but no CUDA device is available")
    if args.corruption is not None and args.measured is not None:
        raise MedinvertError("give --corruption (simulate) or --measured (the input is the measurement), not both")
    if args.corruption is not None:
        from medinvert.transforms import parse_corruption_spec

        parse_corruption_spec(args.corruption)
    if args.measured is not None:
        from medinvert.transforms import parse_measured_spec

        parse_measured_spec(args.measured)


def _modalities(text: str | None) -> tuple[str, ...] | None:
    """``"t1,t2f"`` -> ``("t1", "flair")`` (canonical names; BraTS 2023 aliases accepted)."""
    from medinvert.errors import MedinvertError
    from medinvert.models.registry import ALIASES, MODEL_NAMES

    if text is None:
        return None
    names = tuple(ALIASES.get(t.strip().lower(), t.strip().lower()) for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown or not names:
        raise MedinvertError(f"--modalities takes a comma-separated list of {', '.join(MODEL_NAMES)}, got {text!r}")
    return names


def _validate_outputs(jobs: list[Job], out: Path, args: argparse.Namespace) -> None:
    """Unique output names, nothing over an input, no output name taken by a folder."""
    from medinvert.errors import MedinvertError
    from medinvert.io import ensure_not_input
    from medinvert.report import output_paths

    if out.exists() and not out.is_dir():
        raise MedinvertError("--out exists and is not a folder", path=out)
    inputs: list[Path] = [job.source for job in jobs]
    inputs += [job.source.with_name(f"{job.stem}_observation.npz") for job in jobs if job.kind == "observation"]
    inputs += [Path(p) for p in (args.reference, args.model) if p is not None]
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.stem in seen:
            raise MedinvertError(f"two inputs map to the output name {job.stem!r}: {seen[job.stem]} and {job.source}")
        seen[job.stem] = job.source
        for target in output_paths(out, job.stem, save_latent=args.save_latent).files + [out / "summary.csv"]:
            ensure_not_input(target, inputs)
            if target.is_dir():
                raise MedinvertError("output name is taken by a folder", path=target)


def _check_reference_shape(job: Job, shape: tuple[int, ...], path: str) -> None:
    """Refuse a ``--reference`` whose shape differs from the input volume's (read from the observation
    sidecar, or from the loaded clean volume)."""
    import json

    from medinvert.errors import MedinvertError
    from medinvert.io import load_volume

    if job.kind == "observation":
        sidecar = job.source.with_name(f"{job.stem}_observation.json")
        try:
            expected = tuple(json.loads(sidecar.read_text(encoding="utf-8"))["arrays"]["mask"]["shape"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # an unreadable sidecar fails, with its own message, when the volume is reconstructed
    else:
        expected = tuple(load_volume(job.source, series_uid=job.series_uid).shape)
    if tuple(shape) != expected:
        raise MedinvertError(f"reference shape {tuple(shape)} differs from the input volume's {expected}", path=path)


def model_name_for(job: Job, model: str | None) -> str:
    """The model argument of ``job``: ``--model`` or the shipped model of its modality."""
    from medinvert.engine import default_model_name

    return model if model is not None else default_model_name(job.modality)


def _resolve_models(jobs: list[Job], model: str | None) -> dict[str, Any]:
    """Every model the jobs need, loaded once (a missing shipped model fails here, before any work)."""
    from medinvert.inversion import resolve_network

    return {name: resolve_network(name) for name in dict.fromkeys(model_name_for(job, model) for job in jobs)}


# ---------------------------------------------------------------------------- one volume
def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value in ("inf", "-inf"):
        return float(value)
    return None


def _row(job: Job, status: str, output: Path | None, report: dict[str, Any] | None = None,
         message: str = "") -> dict[str, Any]:
    metrics = (report or {}).get("metrics") or {}
    timing = (report or {}).get("timing") or {}
    validation = (report or {}).get("validation") or {}
    return {"case": job.case, "stem": job.stem, "status": status, "psnr": _number(metrics.get("psnr")),
            "ssim": _number(metrics.get("ssim")), "nmse": _number(metrics.get("nmse")),
            "withheld_error": _number(validation.get("relative_error_withheld")),
            "seconds": _number(timing.get("seconds")), "nfe": timing.get("nfe"),
            "output": "" if output is None else str(output), "message": message, "index": job.index}


def reconstruct_job(job: Job, args: argparse.Namespace, models: dict[str, Any], device: str, *,
                    reference: Any = None, progress: bool = False) -> dict[str, Any]:
    """Reconstruct one volume and write its outputs (or skip it when finished); returns its summary row.

    Raises `MedinvertError` (and anything else) for the caller to report; nothing partial is left
    behind because every file is written atomically.
    """
    from medinvert.cli.resume import changed_settings, damaged_outputs
    from medinvert.errors import MedinvertError
    from medinvert.inversion import check_model_modality
    from medinvert.io import load_volume
    from medinvert.io.atomic import remove_stale_temporaries
    from medinvert.io.naming import MODALITIES
    from medinvert.reconstruct import reconstruct_volume
    from medinvert.report import output_paths, write_outputs

    out = Path(args.out)
    paths = output_paths(out, job.stem, save_latent=args.save_latent)
    remove_stale_temporaries(paths.files)  # a killed earlier run's half-written files (ours alone)
    network = models[model_name_for(job, args.model)]
    notes = []
    if args.model is None and job.modality not in MODALITIES:
        notes.append(f"no modality in its name or series description: used the {model_name_for(job, None)} model "
                     "(--model NAME|PATH to choose)")
    notes += _trained_steps_note(network, args.steps)
    if paths.complete() and not args.overwrite:
        previous, damage = damaged_outputs(paths.recon, paths.report_json)
        if damage is None:
            request = {"method": args.method, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                       "start": args.start, "model_sha256": network.reference.get("sha256")}
            volume_job = job.kind == "volume"
            changed = changed_settings(previous, request, args.corruption if volume_job else None,
                                       args.measured if volume_job else None)
            if changed:
                raise MedinvertError(f"outputs exist from a run with other settings ({'; '.join(changed)}); pass "
                                     "--overwrite to redo them or choose another --out", path=paths.recon)
            return _row(job, "skipped", paths.recon, previous, "outputs exist (--overwrite to redo)")
        notes.append(f"redone: earlier outputs were damaged ({damage})")
    if not getattr(args, "allow_modality_mismatch", False):
        check_model_modality(network, job.modality, job.source)
    source_volume = None
    if job.kind == "volume":
        source_volume = load_volume(job.source, series_uid=job.series_uid)
        source: Any = source_volume
        if reference is None and args.measured is None:  # simulated: the clean input is the reference
            reference = source_volume
    else:
        source = job.source
    result = reconstruct_volume(
        source, network, corruption=args.corruption if job.kind == "volume" else None,
        measured=args.measured if job.kind == "volume" else None,
        method=args.method, steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, device=device,
        reference=reference, seed=args.seed, start=args.start, checks=args.checks, return_latent=args.save_latent, progress=progress,
        threads=args.threads, name=job.stem if job.kind == "volume" else None)
    notes += _intensity_map_note(result.report["settings"]["intensity_map"])
    report = write_outputs(result, paths, reference=reference, source_volume=source_volume,
                           title=f"medinvert reconstruction: {job.stem}")
    return _row(job, "done", paths.recon, report, "; ".join(notes))


def _trained_steps_note(network: Any, steps: int | None) -> list[str]:
    """A note when ``--steps`` is none of the step counts a model was trained through
    (`medinvert.train.unrolled`): session 7's models, trained through 10 BDIA steps only, lost 1.5-3 dB
    at 20 steps with ``exact`` (docs/benchmarks.md, session 7)."""
    from medinvert.train.unrolled import step_counts

    config = getattr(network.net, "checkpoint_config", None) or {}
    training = config.get("training") or {}
    if steps is None or not training.get("unrolled_weight"):
        return []
    trained = step_counts(training.get("unrolled_steps") or 10)
    if int(steps) in trained:
        return []
    counts = ", ".join(map(str, trained))
    return [f"the model was trained through {counts} sampling steps; --steps {steps} is likely to reconstruct worse"]


def _intensity_map_note(section: dict[str, Any]) -> list[str]:
    """A note when the volume was reconstructed through a signed-intensity map (`medinvert.signed`):
    z-scored or negated volumes, which the models (trained on magnitude images) see shifted."""
    from medinvert.signed import IntensityMap

    intensity_map = IntensityMap.from_report(section)
    return [] if intensity_map.identity else [f"signed intensities: {intensity_map.describe()}"]


def _describe(row: dict[str, Any]) -> str:
    text = f"{row['stem']}: {row['status']}"
    if row["psnr"] is not None:
        text += f", PSNR {row['psnr']:.2f} dB"
        text += ", SSIM n/a (slices under 7x7)" if row["ssim"] is None else f", SSIM {row['ssim']:.4f}"
    if row["withheld_error"] is not None:  # reference-free (`medinvert.kspace_validation`); 1 = zero-filled
        text += f", withheld-line error {row['withheld_error']:.2f}"
        if row["withheld_error"] >= 1.0:
            text += " (warning: not better than zero-filling on withheld k-space lines)"
    if row["seconds"] is not None and row["status"] == "done":
        text += f", {row['seconds']:.1f} s"
    return text + (f" -> {row['output']}" if row["output"] else "")


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``summary.csv`` (`SUMMARY_COLUMNS`, rows in input order) atomically."""
    import csv
    import io

    from medinvert.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in sorted(rows, key=lambda r: r["index"]):
        writer.writerow(["" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c])
                         for c in SUMMARY_COLUMNS])
    return atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    import contextlib

    from tqdm import tqdm

    from medinvert.errors import MedinvertError, as_user_error
    from medinvert.io import load_volume
    from medinvert.io.atomic import remove_stale_temporaries, require_writable_folder
    from medinvert.train.distributed import init_distributed, shutdown_distributed

    _validate_options(args)
    out = Path(args.out)
    jobs = plan_jobs(args.input, args.corruption or args.measured, out, _modalities(args.modalities))
    if args.reference is not None and len(jobs) != 1:
        raise MedinvertError(f"--reference applies to a single input, but INPUT holds {len(jobs)} volumes")
    _validate_outputs(jobs, out, args)
    require_writable_folder(out)
    reference = load_volume(args.reference) if args.reference is not None else None
    if reference is not None:
        _check_reference_shape(jobs[0], tuple(reference.shape), args.reference)
    models = _resolve_models(jobs, args.model)

    context = init_distributed(args.device)
    try:
        mine = [job for job in jobs if job.index % context.world_size == context.rank]
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        desc = "reconstruct" if context.world_size == 1 else f"reconstruct [rank {context.rank}/{context.world_size}]"
        single = len(jobs) == 1 and sys.stderr.isatty()
        for job in tqdm(mine, desc=desc, unit="volume", file=sys.stderr, disable=None):
            try:
                row = reconstruct_job(job, args, models, str(context.device), reference=reference, progress=single)
            except Exception as failure:  # noqa: BLE001 - a bad volume must not stop the others
                exc = as_user_error(failure)  # a full disk or a permission is the user's to fix
                internal = not isinstance(exc, MedinvertError)
                kind = f"internal error: {type(exc).__name__}: " if internal else ""
                message = kind + " ".join(str(exc).split())
                prefix = f"failed {job.stem}: " if len(jobs) > 1 else ("" if internal else "error: ")
                tqdm.write(f"medinvert reconstruct: {prefix}{message}", file=sys.stderr)
                row = _row(job, "failed", None, None, message)
                row["internal"] = internal
            else:
                if row["status"] == "skipped":
                    tqdm.write(f"medinvert reconstruct: skipped {job.stem}: outputs exist (--overwrite to redo)",
                               file=sys.stderr)
                else:
                    if row["message"]:  # the default model for an unknown modality; damaged outputs redone
                        tqdm.write(f"medinvert reconstruct: {job.stem}: {row['message']}", file=sys.stderr)
                    tqdm.write(_describe(row), file=sys.stdout)
            rows.append(row)
        if context.active:
            import torch.distributed as dist

            gathered: list[Any] = [None] * context.world_size
            dist.all_gather_object(gathered, (rows, created))
            rows = [row for part, _ in gathered for row in part]
            created = any(flag for _, flag in gathered)
        counts = {status: sum(1 for r in rows if r["status"] == status) for status in ("done", "skipped", "failed")}
        if context.is_main:
            if counts["done"] or counts["skipped"]:
                remove_stale_temporaries([out / "summary.csv"])
                where = f"summary: {write_summary(out / 'summary.csv', rows)}"
            else:
                where = "nothing written"
            print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed ({where})",
                  flush=True)
    finally:
        if created and context.is_main:  # a run that produced nothing (all failed, or interrupted) leaves nothing
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty
        shutdown_distributed(context)
    if any(r.get("internal") for r in rows):
        return 1
    return 2 if counts["failed"] else 0
