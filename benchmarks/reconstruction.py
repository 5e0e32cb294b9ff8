"""Reconstruction benchmark: zero-filled vs tuned CS-TV vs ours (ddim / exact), bounds, full-volume timing.

Markdown tables, printed to stdout (not a timed test; numbers go to ``docs/benchmarks.md``):

1. **Undersampled k-space** on held-out evaluation slices of ``BraTS-GLI-00002-000`` (t1n, never
   trained on; `sample_data/split.json`), random Cartesian line masks from `medinvert.corrupt`
   (seed 0, so the mask is the one ``medinvert corrupt --seed 0`` draws for this file), 4x (centre
   fraction 0.08) and 8x (0.04): zero-filled magnitude ``|F^H y|``, CS-TV (`cs_tv.py`, lambda frozen
   from a grid search on *training* slices of ``BraTS2021_00001``), and ours
   (`medinvert.engine.run_reconstruction`) with ``ddim`` and ``exact`` at 10 / 20 / 50 steps.
   PSNR / SSIM / NMSE with fastMRI conventions (`medinvert.metrics`: data range = the reference
   *volume* maximum, 2-D SSIM averaged over the evaluated slices), the mean per-slice PSNR / SSIM
   with each slice's own maximum as data range (the convention of the DESIGN anchors), and seconds
   per slice.  ``--tune`` first reruns and prints the CS-TV grid search (`cs_tv.tune_lambda`).
2. **Error bounds under varying corruption**: k-space at acceleration 2, 4, 6, 8, 12 (default centre
   fractions 0.32 / acceleration) and Gaussian noise with sigma 0.01 .. 0.1 of the normalised
   intensity (``sigma = rel * robust_scale(clean volume)``), ``exact`` at the engine's default steps for
   each corruption and model (`medinvert.engine.default_steps`; ``--bound-steps`` overrides): step condition
   ``h L`` and Grönwall bound (`medinvert.reconstruct._bounds` on `medinvert.reconstruct._lipschitz`,
   exactly what the per-volume report states), the measured sensitivity ``||x(y + d) - x(y)|| / ||d||``
   for a seeded relative-1e-3 perturbation of ``y`` (the report's recipe), the data-consistency
   residual ``||A x - y|| / ||y||``, and the PSNR of the corrupted input (zero-filled magnitude / noisy
   image) and of the reconstruction, side by side.
3. **One-step denoiser check**: PSNR of one network prediction ``x0`` (and of ``DC(x0)``) from
   ``x + sigma n`` on one held-out slice -- the quality of the learned prior without any sampler.
4. **Full volume**: ``/usr/bin/time -v medinvert reconstruct`` on the whole 240 x 240 x 155 held-out
   t1n (exact, default steps, checks fast): wall seconds and peak RSS.

Evaluation slices: ``n`` interior points of an even grid over the brain range 20..130,
``round(linspace(20, 130, n + 2))[1:-1]`` -- 32, 44, 57, 69, 81, 93, 106, 118 for ``n = 8``.
Intensities are normalised as the engine does (`medinvert.intensity.robust_scale` of ``A^H y``);
CS-TV runs in those units and its output is scaled back.  Run from the repository root::

    python benchmarks/reconstruction.py --model runs/base.pt --quick          # 2 slices, 10 / 20 steps
    python benchmarks/reconstruction.py --model t1 --tune --json /tmp/recon.json   # the full benchmark
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cs_tv  # noqa: E402  (benchmark-local module)

from medinvert.determinism import deterministic  # noqa: E402
from medinvert.engine import default_steps, run_reconstruction, sampling_grid, slice_problem  # noqa: E402
from medinvert.errors import MedinvertError  # noqa: E402
from medinvert.guess import conditioning_volume  # noqa: E402
from medinvert.intensity import robust_scale  # noqa: E402
from medinvert.inversion import ResolvedNetwork, resolve_network  # noqa: E402
from medinvert.io import load_volume  # noqa: E402
from medinvert.metrics import nmse, per_slice_metrics, psnr, ssim  # noqa: E402
from medinvert.operators import Observation, ifft2c, volume_to_slices  # noqa: E402
from medinvert.reconstruct import _bounds, _lipschitz  # noqa: E402  (the report's own bound formulas)
from medinvert.transforms import corrupt, seed_from_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
HELDOUT_CASE = "BraTS-GLI-00002-000"
HELDOUT_FILE = SAMPLE / HELDOUT_CASE / f"{HELDOUT_CASE}-t1n.nii.gz"
TRAINING_CASE = "BraTS2021_00001"
TRAINING_FILE = SAMPLE / TRAINING_CASE / f"{TRAINING_CASE}_t1.nii.gz"
#: axial slices of the held-out case searched for evaluation slices (its brain spans 5..145)
BRAIN_RANGE = (20, 130)
#: training slices (case 1, brain 0..141) on which the CS-TV weight is tuned
TUNING_SLICES = (40, 65, 90, 115)
#: acceleration -> centre fraction of the main comparison (fastMRI settings)
SETTINGS = {4: 0.08, 8: 0.04}
BOUND_ACCELERATIONS = (2, 4, 6, 8, 12)
BOUND_NOISE = (0.01, 0.02, 0.05, 0.1)
SEED = 0
#: sampler start of every reconstruction in this run (`medinvert.engine`, step 3; set by ``--start``)
SAMPLER_START = {"start": "guess"}


def evaluation_slices(n: int, brain_range: tuple[int, int] = BRAIN_RANGE) -> list[int]:
    """``n`` interior points of an even grid over ``brain_range``: ``round(linspace(lo, hi, n + 2))[1:-1]``."""
    if n < 1:
        raise MedinvertError(f"--slices must be >= 1, got {n}")
    grid = np.linspace(brain_range[0], brain_range[1], n + 2)[1:-1]
    return sorted({int(round(v)) for v in grid})


def check_split() -> None:
    """Refuse to run unless the evaluation case is held out and the tuning case is a training case."""
    split = json.loads((SAMPLE / "split.json").read_text(encoding="utf-8"))
    if HELDOUT_CASE not in split["heldout"] or HELDOUT_CASE in split["train"]:
        raise MedinvertError(f"{HELDOUT_CASE} is not held out in sample_data/split.json")
    if TRAINING_CASE not in split["train"]:
        raise MedinvertError(f"{TRAINING_CASE} is not a training case in sample_data/split.json")


# ---------------------------------------------------------------------- metrics and methods
def score(recon: torch.Tensor, reference: torch.Tensor, data_range: float) -> dict[str, float]:
    """PSNR / SSIM / NMSE of ``(X, Y, n)`` slices (fastMRI: ``data_range`` = reference volume max), plus
    the mean per-slice PSNR / SSIM with each slice's own maximum as data range (the DESIGN anchors' convention)."""
    per_slice = per_slice_metrics(recon, reference, per_slice_range=True)
    return {"psnr": psnr(recon, reference, data_range=data_range),
            "ssim": ssim(recon, reference, data_range=data_range),
            "nmse": nmse(recon, reference),
            "psnr_slice_max": float(np.mean(per_slice["psnr"])),
            "ssim_slice_max": float(np.mean(per_slice["ssim"]))}


def normalised_kspace(observation: Observation, slices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(y / s, mask, s)`` of ``slices``: complex128 ``(n, X, Y)``, bool ``(n, X, Y)``, ``s = robust_scale(A^H y)``."""
    scale = robust_scale(observation.adjoint)
    index = torch.tensor(list(slices))
    y = observation.y.index_select(0, index).to(torch.complex128) / scale
    mask = volume_to_slices(observation.mask).index_select(0, index)
    return y, mask, scale


def run_zero_filled(observation: Observation, slices: Sequence[int], threads: int) -> tuple[torch.Tensor, float]:
    """Zero-filled magnitude ``|F^H y|`` of ``slices`` ``(X, Y, n)`` and seconds per slice."""
    with deterministic(threads):
        started = time.perf_counter()
        y = observation.y.index_select(0, torch.tensor(list(slices)))
        image = ifft2c(y).abs().to(torch.float32).permute(1, 2, 0).contiguous()  # = observation.image() there
        seconds = time.perf_counter() - started
    return image, seconds / len(slices)


def run_cs_tv(observation: Observation, slices: Sequence[int], lam: float, threads: int) -> tuple[torch.Tensor, float]:
    """CS-TV of ``slices`` in input units ``(X, Y, n)`` float32, and seconds per slice."""
    with deterministic(threads):
        started = time.perf_counter()
        y, mask, scale = normalised_kspace(observation, slices)
        x = cs_tv.cs_tv(y, mask, lam)
        seconds = time.perf_counter() - started
    return (x * scale).permute(1, 2, 0).to(torch.float32).contiguous(), seconds / len(slices)


def run_ours(observation: Observation, resolved: ResolvedNetwork, method: str, steps: int, slices: Sequence[int],
             threads: int, batch_size: int, y_override: torch.Tensor | None = None) -> tuple[torch.Tensor, float, int]:
    """`run_reconstruction` on ``slices``: ``(X, Y, n)`` output, seconds per slice, NFE per batch-run."""
    base_seed = seed_from_name(Path(observation.source or HELDOUT_FILE.name).name, SEED)
    with deterministic(threads):
        run = run_reconstruction(observation, resolved.net, resolved.schedule, method=method, steps=steps,
                                 batch_size=batch_size, prediction=resolved.prediction, base_seed=base_seed,
                                 slices=list(slices), y_override=y_override,  # type: ignore[arg-type]
                                 start=SAMPLER_START["start"], guess=resolved.guess)
    done = len(run.evaluated_slices)
    return run.volume[:, :, list(slices)].clone(), run.seconds / max(done, 1), run.nfe


def dc_residual(observation: Observation, recon: torch.Tensor, slices: Sequence[int]) -> float:
    """``||A x - y|| / ||y||`` over the measured samples of ``slices`` (input units)."""
    top, bottom = 0.0, 0.0
    for column, k in enumerate(slices):
        problem = slice_problem(observation, 1.0, k, k + 1)
        predicted = problem.operator.forward(recon[:, :, column][None, None].to(torch.float64))
        top += float(torch.linalg.vector_norm(predicted - problem.y.to(predicted.dtype))) ** 2
        bottom += float(torch.linalg.vector_norm(problem.y)) ** 2
    return math.sqrt(top / bottom) if bottom > 0 else 0.0


def measured_sensitivity(observation: Observation, resolved: ResolvedNetwork, method: str, steps: int,
                         slices: Sequence[int], recon: torch.Tensor, threads: int, batch_size: int,
                         relative: float = 1e-3) -> float:
    """``||x(y + d) - x(y)|| / ||d||`` on ``slices`` for a seeded Gaussian ``d`` on the measured samples,
    ``||d|| ~ relative ||y||`` -- the recipe of the per-volume report (same start noise)."""
    y = observation.y
    generator = torch.Generator().manual_seed(SEED)
    noise = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    if y.is_complex():
        noise = torch.complex(noise, torch.randn(y.shape, generator=generator, dtype=torch.float64))
    index = torch.tensor(list(slices))
    keep = torch.zeros(y.shape[0], dtype=torch.bool)
    keep[index] = True
    noise = noise * ((y != 0) & keep[:, None, None])
    size = float(torch.linalg.vector_norm(y.index_select(0, index).to(noise.dtype)))
    delta = noise * (relative * size / float(torch.linalg.vector_norm(noise)))
    moved, _, _ = run_ours(observation, resolved, method, steps, slices, threads, batch_size,
                           y_override=(y.to(delta.dtype) + delta).to(y.dtype))
    dx = float(torch.linalg.vector_norm((moved - recon).to(torch.float64)))
    return dx / float(torch.linalg.vector_norm(delta))


# ---------------------------------------------------------------------- tables
@dataclass
class Row:
    """One line of the comparison table."""

    acceleration: int
    method: str
    steps: int | None
    metrics: dict[str, float]
    seconds_per_slice: float


def tune(threads: int) -> dict[int, cs_tv.TuningResult]:
    """Grid search of the CS-TV weight on `TUNING_SLICES` of the *training* case, per acceleration."""
    volume = load_volume(TRAINING_FILE)
    results = {}
    for acceleration, centre in SETTINGS.items():
        observation = corrupt(volume, "kspace", seed=SEED, acceleration=acceleration, center_fraction=centre)
        y, mask, scale = normalised_kspace(observation, TUNING_SLICES)
        reference = volume_to_slices(volume).index_select(0, torch.tensor(TUNING_SLICES)).to(torch.float64) / scale
        with deterministic(threads):
            results[acceleration] = cs_tv.tune_lambda(y, mask, reference, float(volume.max()) / scale)
    return results


def comparison(resolved: ResolvedNetwork, slices: list[int], steps_list: Sequence[int], lambdas: dict[int, float],
               threads: int, batch_size: int) -> list[Row]:
    """Table 1 rows (zero-filled, CS-TV, ddim / exact at every step count) per acceleration."""
    volume = load_volume(HELDOUT_FILE)
    data_range = float(volume.max())
    reference = torch.as_tensor(np.asarray(volume))[:, :, slices].to(torch.float32)
    rows: list[Row] = []
    for acceleration, centre in SETTINGS.items():
        observation = corrupt(volume, "kspace", seed=SEED, acceleration=acceleration, center_fraction=centre)
        image, sec = run_zero_filled(observation, slices, threads)
        rows.append(Row(acceleration, "zero-filled", None, score(image, reference, data_range), sec))
        image, sec = run_cs_tv(observation, slices, lambdas[acceleration], threads)
        rows.append(Row(acceleration, f"CS-TV (lambda {lambdas[acceleration]:g})", None,
                        score(image, reference, data_range), sec))
        for steps in steps_list:
            for method in ("ddim", "exact"):
                image, sec, _ = run_ours(observation, resolved, method, steps, slices, threads, batch_size)
                rows.append(Row(acceleration, method, steps, score(image, reference, data_range), sec))
                print(f"  [{acceleration}x {method} {steps}] PSNR {rows[-1].metrics['psnr']:.2f}", file=sys.stderr)
    return rows


def bounds(resolved: ResolvedNetwork, slices: list[int], steps: int | None, threads: int,
           batch_size: int) -> list[dict[str, Any]]:
    """Table 2 rows: bound, step condition, measured sensitivity, DC residual and PSNR per corruption
    (``steps=None``: the engine's default for each corruption, what a reconstruction runs)."""
    volume = load_volume(HELDOUT_FILE)
    data_range = float(volume.max())
    reference = torch.as_tensor(np.asarray(volume))[:, :, slices].to(torch.float32)
    clean_scale = robust_scale(volume)
    cases: list[tuple[str, dict[str, Any]]] = [
        (f"k-space {a}x (cf {0.32 / a:.3f})", {"kind": "kspace", "acceleration": a}) for a in BOUND_ACCELERATIONS]
    cases += [(f"noise sigma {rel:g}", {"kind": "noise", "sigma": rel * clean_scale}) for rel in BOUND_NOISE]
    rows, requested = [], steps
    for label, spec in cases:
        params = dict(spec)
        kind = params.pop("kind")
        observation = corrupt(volume, kind, seed=SEED, **params)
        steps = default_steps(kind, resolved.guess) if requested is None else requested
        grid = [float(v) for v in sampling_grid(observation, resolved.schedule, steps, guess=resolved.guess)]  # what the engine runs
        with deterministic(threads):
            lipschitz = _lipschitz(resolved.net, resolved.prediction, resolved.schedule, steps,
                                   observation.descriptor.to(torch.float32), tuple(observation.shape[:2]), sigmas=grid)
        bound = _bounds(lipschitz["bound"], resolved.schedule, steps, grid)
        recon, sec, _ = run_ours(observation, resolved, "exact", steps, slices, threads, batch_size)
        sensitivity = measured_sensitivity(observation, resolved, "exact", steps, slices, recon, threads, batch_size)
        corrupted = observation.image()[:, :, slices]  # zero-filled magnitude / noisy image
        rows.append({"corruption": label, "input_psnr": psnr(corrupted, reference, data_range=data_range),
                     "lipschitz_bound": lipschitz["bound"], "lipschitz_empirical": lipschitz["empirical"],
                     "step_hL": bound["step_condition_max_hL"], "gronwall_log10": bound["gronwall_log10_bound"],
                     "measured_sensitivity": sensitivity, "dc_residual": dc_residual(observation, recon, slices),
                     "psnr": psnr(recon, reference, data_range=data_range), "seconds_per_slice": sec,
                     "steps": steps})
        print(f"  [bounds {label}] PSNR {rows[-1]['psnr']:.2f}", file=sys.stderr)
    return rows


def denoiser_check(resolved: ResolvedNetwork, k: int, sigmas: Sequence[float] = (0.02, 0.1, 0.3, 1.0, 3.0, 10.0),
                   acceleration: int = 4) -> dict[str, Any]:
    """One network evaluation per noise level on held-out slice ``k`` (4x k-space conditioning): PSNR of
    the noisy input ``x + sigma n``, of the predicted clean image ``x0 = xbar - sigma eps`` and of
    ``DC(x0)``, in normalised units -- how good the prior is, independently of any sampler."""
    from medinvert.denoiser import Denoiser

    volume = load_volume(HELDOUT_FILE)
    observation = corrupt(volume, "kspace", seed=SEED, acceleration=acceleration,
                          center_fraction=SETTINGS[acceleration])
    scale = robust_scale(observation.adjoint)
    problem = slice_problem(observation, scale, k, k + 1)
    clean = torch.as_tensor(np.asarray(volume))[:, :, k][None, None].to(torch.float64) / scale
    peak = float(volume.max()) / scale
    guess = conditioning_volume(observation, resolved.guess, slices=[k])[:, :, k][None, None].to(torch.float64) / scale
    denoiser = Denoiser(resolved.net, resolved.schedule, prediction=resolved.prediction,
                        cond=observation.descriptor.to(torch.float32), extra=guess.to(torch.float32))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    rows = []
    with deterministic(1), torch.no_grad():
        for sigma in sigmas:
            xbar = clean + sigma * noise
            x0 = xbar - sigma * denoiser(xbar, sigma)
            x0_dc = problem.operator.data_consistency(x0, problem.y, 1.0)
            rows.append({"sigma": sigma, "noisy": psnr(xbar[0, 0], clean[0, 0], data_range=peak),
                         "x0": psnr(x0[0, 0], clean[0, 0], data_range=peak),
                         "x0_dc": psnr(x0_dc[0, 0], clean[0, 0], data_range=peak)})
    return {"slice": k, "adjoint_psnr": psnr(problem.adjoint[0, 0], clean[0, 0], data_range=peak),
            "guess": resolved.guess, "guess_psnr": psnr(guess[0, 0], clean[0, 0], data_range=peak), "rows": rows}


def volume_timing(model: str, steps: int | None, threads: int) -> dict[str, Any]:
    """Table 3: ``/usr/bin/time -v medinvert reconstruct`` on the whole held-out t1n (4x k-space);
    ``steps=None``: the CLI's default for the model."""
    timer = shutil.which("time") or "/usr/bin/time"
    exe = shutil.which("medinvert") or str(Path(sys.executable).with_name("medinvert"))
    with tempfile.TemporaryDirectory(prefix="medinvert-bench-") as out:
        command = [timer, "-v", exe, "reconstruct", str(HELDOUT_FILE.relative_to(ROOT)), "--corruption",
                   "kspace:4:0.08", "--model", model, "--method", "exact",
                   *([] if steps is None else ["--steps", str(steps)]), "--checks", "fast",
                   "--threads", str(threads), "--out", out]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        seconds = time.perf_counter() - started
        report_files = sorted(Path(out).glob("*_report.json"))
        report = json.loads(report_files[0].read_text(encoding="utf-8")) if report_files else {}
    shown = ["/usr/bin/time", "-v", "medinvert", *command[3:-1], "OUT"]
    result: dict[str, Any] = {"command": " ".join(shown), "returncode": done.returncode, "outer_seconds": seconds}
    if done.returncode != 0:
        result["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return result
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        result["wall_seconds"] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    if rss:
        result["peak_rss_mb"] = int(rss.group(1)) / 1024.0
    timing = report.get("timing", {})
    keys = ("reconstruction_seconds", "nfe", "evaluated_slices", "slices_per_second")
    result.update({k: timing.get(k) for k in keys})
    result["psnr"] = report.get("metrics", {}).get("psnr")
    result["ssim"] = report.get("metrics", {}).get("ssim")
    return result


# ---------------------------------------------------------------------- printing
def print_tuning(results: dict[int, cs_tv.TuningResult]) -> None:
    grid = list(next(iter(results.values())).psnr)
    print(f"\nCS-TV weight grid search on training slices {list(TUNING_SLICES)} of {TRAINING_CASE} (t1), "
          "mean PSNR (dB):\n")
    print("| acceleration | " + " | ".join(f"{lam:g}" for lam in grid) + " | chosen |")
    print("|---|" + "---|" * (len(grid) + 1))
    for acceleration, result in results.items():
        cells = [f"**{result.psnr[lam]:.2f}**" if lam == result.best else f"{result.psnr[lam]:.2f}" for lam in grid]
        print(f"| {acceleration}x | " + " | ".join(cells) + f" | {result.best:g} |")


def print_comparison(rows: list[Row], slices: list[int]) -> None:
    print(f"\nHeld-out {HELDOUT_CASE} t1n, slices {slices}, random Cartesian masks (seed {SEED}):\n")
    print("| accel. | method | steps | PSNR (dB) | SSIM | NMSE | vs CS-TV (dB) | PSNR / SSIM, slice max | s / slice |")
    print("|---|---|---|---|---|---|---|---|---|")
    for acceleration in SETTINGS:
        group = [r for r in rows if r.acceleration == acceleration]
        baseline = next(r for r in group if r.method.startswith("CS-TV")).metrics["psnr"]
        for r in group:
            steps = "" if r.steps is None else str(r.steps)
            delta = "" if r.method.startswith("CS-TV") else f"{r.metrics['psnr'] - baseline:+.2f}"
            print(f"| {acceleration}x | {r.method} | {steps} | {r.metrics['psnr']:.2f} | {r.metrics['ssim']:.4f} | "
                  f"{r.metrics['nmse']:.5f} | {delta} | {r.metrics['psnr_slice_max']:.2f} / "
                  f"{r.metrics['ssim_slice_max']:.3f} | {r.seconds_per_slice:.3f} |")


def print_targets(rows: list[Row]) -> None:
    print("\nTargets (checked on these numbers):\n")
    for acceleration, margin in ((4, 5.0), (8, 4.0)):
        group = [r for r in rows if r.acceleration == acceleration]
        baseline = next(r for r in group if r.method.startswith("CS-TV")).metrics["psnr"]
        for r in group:
            if r.method != "exact":
                continue
            ok = r.metrics["psnr"] >= baseline + margin
            text = f"- {acceleration}x exact {r.steps} steps: PSNR {r.metrics['psnr']:.2f} vs CS-TV + {margin:g} = " \
                   f"{baseline + margin:.2f} -> {'met' if ok else 'NOT met'}"
            if acceleration == 4:
                text += f"; SSIM {r.metrics['ssim']:.4f} >= 0.95 -> {'met' if r.metrics['ssim'] >= 0.95 else 'NOT met'}"
            print(text)
    for acceleration in SETTINGS:
        group = {(r.method, r.steps): r for r in rows if r.acceleration == acceleration}
        for (method, steps), r in group.items():
            if method != "exact":
                continue
            gap = r.metrics["psnr"] - group[("ddim", steps)].metrics["psnr"]
            print(f"- {acceleration}x {steps} steps: exact - ddim = {gap:+.2f} dB -> "
                  f"{'met' if gap >= -0.3 else 'NOT met'} (target >= -0.3 dB)")


def print_bounds(rows: list[dict[str, Any]], slices: list[int]) -> None:
    print(f"\nError bounds under varying corruption (exact, held-out slices {slices}):\n")
    print("| corruption | steps | Lip bound | Lip empirical | step h*L | Grönwall bound | measured sensitivity | "
          "DC residual | input PSNR (dB) | PSNR (dB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['corruption']} | {r['steps']} | {r['lipschitz_bound']:.3g} | {r['lipschitz_empirical']:.3g} | "
              f"{r['step_hL']:.3g} | "
              f"1e{r['gronwall_log10']:.1f} | {r['measured_sensitivity']:.3g} | {r['dc_residual']:.2e} | "
              f"{r['input_psnr']:.2f} | {r['psnr']:.2f} |")


def print_denoiser(result: dict[str, Any]) -> None:
    print(f"\nOne-step denoiser check (held-out slice {result['slice']}, 4x conditioning; the real part of the "
          f"zero-filled image A^H y scores {result['adjoint_psnr']:.2f} dB, the network's guess ({result['guess']}) "
          f"{result['guess_psnr']:.2f} dB):\n")
    print("| sigma (xbar units) | noisy input x + sigma n | predicted x0 | DC(x0) |")
    print("|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['sigma']:g} | {r['noisy']:.2f} | {r['x0']:.2f} | {r['x0_dc']:.2f} |")


def print_volume(result: dict[str, Any]) -> None:
    print("\nFull volume (240 x 240 x 155, held-out t1n, 4x k-space):\n")
    print(f"`{result['command']}`\n")
    if "error" in result:
        print(f"not measured: exit code {result['returncode']}: {result['error']}")
        return
    print("| wall (s) | reconstruction only (s) | peak RSS (MB) | NFE | slices reconstructed | PSNR | SSIM |")
    print("|---|---|---|---|---|---|---|")

    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "n/a"

    print(f"| {fmt(result.get('wall_seconds'), '.1f')} | {fmt(result.get('reconstruction_seconds'), '.1f')} | "
          f"{fmt(result.get('peak_rss_mb'), '.0f')} | {result.get('nfe')} | {result.get('evaluated_slices')} | "
          f"{fmt(result.get('psnr'), '.2f')} | {fmt(result.get('ssim'), '.4f')} |")


def sha256_of(path: str) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="t1", help="shipped model name or checkpoint path (default: t1)")
    parser.add_argument("--slices", type=int, default=8, help="evaluation slices (default 8)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (default 10 20 50)")
    parser.add_argument("--bound-steps", type=int, default=None,
                        help="steps of the bounds table (default: the engine's default per corruption)")
    parser.add_argument("--quick", action="store_true", help="2 slices, 10 / 20 steps, 1 bound slice, no volume")
    parser.add_argument("--tune", action="store_true", help="rerun the CS-TV lambda grid search (training slices)")
    parser.add_argument("--bound-slices", type=int, default=2, help="slices for the bounds table (default 2)")
    parser.add_argument("--no-comparison", action="store_true", help="skip the method comparison table")
    parser.add_argument("--no-bounds", action="store_true", help="skip the bounds table")
    parser.add_argument("--no-volume", action="store_true", help="skip the full-volume timing")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of the slice benchmarks (default 1: on a shared, loaded CPU more "
                             "threads oversubscribe the cores and small FFTs slow down a hundredfold)")
    parser.add_argument("--volume-threads", type=int, default=2,
                        help="--threads of the full-volume `medinvert reconstruct` run (default 2: the "
                             "reference machine's cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--start", default="guess", choices=["guess", "noise"], help="sampler start (default guess)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    SAMPLER_START["start"] = args.start
    check_split()
    if args.quick:
        args.slices, args.bound_slices, args.no_volume = 2, 1, True
        steps_list = args.steps or [10, 20]
    else:
        steps_list = args.steps or [10, 20, 50]
    slices = evaluation_slices(args.slices)
    resolved = resolve_network(args.model)
    model_sha = resolved.reference.get("sha256") or sha256_of(args.model)
    print(f"model: {args.model} (sha256 {model_sha}, prediction {resolved.prediction}, "
          f"schedule {resolved.schedule.config}, start {args.start})")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} threads; load average {os.getloadavg()[0]:.2f} at start")
    out: dict[str, Any] = {"model": args.model, "model_sha256": model_sha, "slices": slices, "threads": args.threads}
    lambdas = {a: cs_tv.TUNED_LAMBDA[a] for a in SETTINGS}
    if args.tune:
        tuned = tune(args.threads)
        print_tuning(tuned)
        out["tuning"] = {a: {"best": r.best, "psnr": r.psnr} for a, r in tuned.items()}
        for a, r in tuned.items():
            if r.best != lambdas[a]:
                print(f"note: the grid search picks {r.best:g} at {a}x but TUNED_LAMBDA holds {lambdas[a]:g}; "
                      "the frozen value is used")
    if not args.no_comparison:
        rows = comparison(resolved, slices, steps_list, lambdas, args.threads, args.batch_size)
        print_comparison(rows, slices)
        print_targets(rows)
        out["comparison"] = [r.__dict__ for r in rows]
    if not args.no_bounds:
        bound_slices = evaluation_slices(args.bound_slices)
        bound_rows = bounds(resolved, bound_slices, args.bound_steps, args.threads, args.batch_size)
        print_bounds(bound_rows, bound_slices)
        out["bounds"] = bound_rows
    check = denoiser_check(resolved, evaluation_slices(1)[0])
    print_denoiser(check)
    out["denoiser_check"] = check
    if not args.no_volume:
        result = volume_timing(args.model, None, args.volume_threads)
        print_volume(result)
        out["volume"] = result
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if args.json is not None:
        from medinvert.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
