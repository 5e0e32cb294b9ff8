"""Ablation of the Lipschitz controls (issue #5): spectral norm, Lipschitz penalty, coupling blocks.

Trains short, otherwise identical runs (same data, seed, steps, batch, crop, learning rate; all with
``prediction="edm_adjoint"``) into ``--work DIR`` through `medinvert.train.train`, one variant at a
time, then evaluates each checkpoint:

* **Lip bound** -- analytic upper bound of ``Lip_x(network)`` (`lipschitz_upper_bound`): for every
  time / condition / input size ("any t"), and at the 10-step trailing sampling times with the 4x
  k-space descriptor ("sampling t"); the per-convolution bound, no Fourier refinement;
* **Lip emp.** -- `lipschitz_empirical` (power iteration on ``J^T J``, 3 random 64x64 probes x 8
  iterations, float64, middle sampling time): a lower bound of the same constant;
  both through `medinvert.reconstruct._lipschitz`, the per-volume report's own recipe;
* **EDICT / BDIA rel. err.** -- float32 round trip ``generate(invert(v))`` on the central held-out
  slice (z = 77 of ``BraTS-GLI-00002-000`` t1n, 4x k-space condition), ``max |err| / max |v|``, via
  ``benchmarks/inversion.py`` (`run_once`);
* **sensitivity** -- ``||x(y + d) - x(y)|| / ||d||`` for a seeded perturbation ``||d|| = 1e-3 ||y||``
  of the 4x observation (``benchmarks/reconstruction.py`` `measured_sensitivity`, ddim 10 steps);
* **PSNR / SSIM 4x** -- ddim, 10 steps, trailing spacing on 2 held-out slices (57, 93) of the same
  case, random Cartesian mask (seed 0, centre fraction 0.08), fastMRI conventions
  (``benchmarks/reconstruction.py`` `run_ours` / `score`); zero-filled and tuned CS-TV for reference.

Variants (``--variants`` picks a subset; ``--penalty-weight`` / ``--penalty-target`` set the penalty)::

    a  no spectral norm                       d  no SN + Lipschitz penalty (weight 1e-2)
    b  spectral norm, sn_target 1             e  no SN + additive-coupling blocks
    c  spectral norm, sn_target 2             f  no SN + Lipschitz penalty (weight 1)

The penalty is the training loop's hinge ``max(0, ||f(x + d) - f(x)|| / ||d|| - target)^2``.  Its
`TrainConfig` default target 10 is never reached by these networks (on a batch of 12 training inputs,
noise levels 0.02..110, a 1500-step no-SN edm_adjoint model gave ratios of at most 1.06), so with it the
hinge -- and its gradient -- is zero and variant d would repeat variant a; the default target here is
0.5, about the largest ratio of the spectrally normalised model on the same batch.

A variant whose checkpoint in ``--work`` is complete is not retrained (a rerun only evaluates); an
interrupted one is resumed; a checkpoint trained with other settings is refused.  Run from the
repository root (the defaults are the documented run: 140-265 s of training per variant and ~30 s of
evaluation on the shared 2-core machine, about half that on a free core)::

    python benchmarks/ablation.py --work /tmp/medinvert-ablation --json /tmp/ablation.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inversion as roundtrip_bench  # noqa: E402  (benchmarks/inversion.py)
import reconstruction as recon_bench  # noqa: E402  (benchmarks/reconstruction.py)

from medinvert.determinism import deterministic  # noqa: E402
from medinvert.errors import MedinvertError  # noqa: E402
from medinvert.inversion import resolve_network  # noqa: E402
from medinvert.io import load_volume  # noqa: E402
from medinvert.reconstruct import _lipschitz  # noqa: E402  (the report's own bound recipe)
from medinvert.transforms import corrupt  # noqa: E402

ROOT = recon_bench.ROOT
DEFAULT_WORK = Path("/tmp/medinvert-ablation")
ACCELERATION = 4
#: the `TrainConfig` fields that must match for an existing checkpoint to count as this variant's
RECIPE_KEYS = ("data", "modality", "steps", "batch_size", "crop", "lr", "warmup", "seed", "prediction",
               "schedule", "lipschitz_penalty", "lipschitz_target")


@dataclass(frozen=True)
class Recipe:
    """The training settings shared by every variant."""

    data: str
    modality: str = "all"
    steps: int = 600
    batch_size: int = 12
    crop: int = 64
    lr: float = 8e-4
    warmup: int = 100
    seed: int = 0
    threads: int = 1
    prediction: str = "edm_adjoint"
    architecture: tuple[tuple[str, Any], ...] | None = None  # None: `DEFAULT_ARCHITECTURE`


@dataclass(frozen=True)
class Variant:
    """One row: which Lipschitz controls the network is trained with."""

    key: str
    label: str
    spectral_norm: bool
    sn_target: float = 1.0
    penalty: float = 0.0
    block: str = "residual"

    def architecture(self, recipe: Recipe) -> dict[str, Any]:
        from medinvert.train import DEFAULT_ARCHITECTURE

        arch = dict(recipe.architecture) if recipe.architecture is not None else dict(DEFAULT_ARCHITECTURE)
        arch.update(spectral_norm=self.spectral_norm, sn_target=float(self.sn_target), block=self.block)
        return arch

    def train_config(self, recipe: Recipe, work: Path, penalty_target: float) -> Any:
        """The `TrainConfig` of this variant; the checkpoint is ``work / f"{key}.pt"``."""
        from medinvert.train import TrainConfig

        extra = {"lipschitz_penalty": self.penalty, "lipschitz_target": penalty_target} if self.penalty > 0 else {}
        return TrainConfig(data=recipe.data, modality=recipe.modality, out=str(work / f"{self.key}.pt"),
                           steps=recipe.steps, batch_size=recipe.batch_size, crop=recipe.crop, lr=recipe.lr,
                           warmup=recipe.warmup, seed=recipe.seed, threads=recipe.threads,
                           prediction=recipe.prediction, checkpoint_every=max(recipe.steps, 1),
                           architecture=self.architecture(recipe), **extra)


def variants(penalty_weight: float = 1e-2) -> list[Variant]:
    """The compared variants, in table order (see the module docstring)."""
    return [
        Variant("a", "no SN", spectral_norm=False),
        Variant("b", "SN, target 1", spectral_norm=True, sn_target=1.0),
        Variant("c", "SN, target 2", spectral_norm=True, sn_target=2.0),
        Variant("d", f"no SN + penalty {penalty_weight:g}", spectral_norm=False, penalty=penalty_weight),
        Variant("e", "no SN + coupling blocks", spectral_norm=False, block="coupling"),
        Variant("f", "no SN + penalty 1", spectral_norm=False, penalty=1.0),
    ]


def check_work_dir(work: Path) -> Path:
    """``work`` as an absolute path; refused inside the package folder (checkpoints are not shipped there)."""
    resolved = work.expanduser().resolve()
    package = (ROOT / "medinvert").resolve()
    if resolved == package or package in resolved.parents:
        raise MedinvertError("--work must not lie inside the medinvert package folder", work)
    if resolved.exists() and not resolved.is_dir():
        raise MedinvertError("--work names a file; expected a folder", work)
    return resolved


def _stored_mismatch(path: Path, config: Any) -> list[str]:
    """Settings in which the checkpoint at ``path`` differs from ``config`` (empty: same recipe)."""
    from medinvert.models.checkpoint import read_checkpoint

    stored = read_checkpoint(path)["config"]
    training = stored.get("training", {})
    wanted = asdict(config)
    diff = [k for k in RECIPE_KEYS if training.get(k) != wanted[k]]
    arch = stored.get("architecture") or {}  # the model's full config: compare the keys the variant sets
    if any(arch.get(k) != v for k, v in config.architecture.items()):
        diff.append("architecture")
    return diff


def train_variant(variant: Variant, recipe: Recipe, work: Path, penalty_target: float, *,
                  progress: bool = False) -> dict[str, Any]:
    """Train ``variant`` unless ``work/<key>.pt`` is complete; returns its path and training summary.

    An interrupted checkpoint of the same recipe is resumed; one trained with other settings raises
    `MedinvertError` (choose another ``--work``).
    """
    from medinvert.models.checkpoint import read_checkpoint
    from medinvert.train import train
    from medinvert.train.distributed import DistContext

    config = variant.train_config(recipe, work, penalty_target)
    out = Path(config.out)
    trained_now = False
    if out.exists():
        diff = _stored_mismatch(out, config)
        if diff:
            raise MedinvertError(f"checkpoint was trained with other settings ({', '.join(diff)}); "
                                 "use another --work", out)
    if not out.exists() or int(read_checkpoint(out)["step"]) < config.steps:
        work.mkdir(parents=True, exist_ok=True)
        single = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), active=False)
        train(config, single, resume=out.exists(), progress=progress)
        trained_now = True
    training = read_checkpoint(out)["config"]["training"]
    return {"checkpoint": str(out), "trained_now": trained_now, "train_seconds": training.get("seconds"),
            "final_loss": training.get("final_loss"), "completed_steps": training.get("completed_steps")}


def roundtrip_errors(resolved: Any, steps_list: Sequence[int], threads: int) -> dict[str, float]:
    """Float32 EDICT / BDIA round-trip ``max |err| / max |v|`` on the central held-out slice, per step count
    (0.0 when bit-identical); keys ``"edict@10"`` etc."""
    volume = roundtrip_bench.central_slices(str(recon_bench.HELDOUT_FILE), 1)
    condition = corrupt(volume, "kspace", acceleration=ACCELERATION, seed=0, name=recon_bench.HELDOUT_FILE.name)
    out: dict[str, float] = {}
    for steps in steps_list:
        for method in ("edict", "bdia"):
            cell = roundtrip_bench.Cell(roundtrip_bench.Method(method, method, method, {}))
            roundtrip_bench.run_once(cell, volume, resolved, condition, steps, "float32", 1, threads)
            out[f"{method}@{steps}"] = 0.0 if cell.bit_identical else cell.relative
    return out


def evaluate(checkpoint: str | Path, *, slices: Sequence[int], steps: int = 10, roundtrip_steps: Sequence[int] = (10, 50),
             threads: int = 1, batch_size: int = 8) -> dict[str, Any]:
    """Every measured column of the table for one checkpoint (see the module docstring)."""
    started = time.perf_counter()
    resolved = resolve_network(str(checkpoint))
    volume = load_volume(recon_bench.HELDOUT_FILE)
    observation = corrupt(volume, "kspace", seed=recon_bench.SEED, acceleration=ACCELERATION,
                          center_fraction=recon_bench.SETTINGS[ACCELERATION])
    with deterministic(threads):
        lip = _lipschitz(resolved.net, resolved.prediction, resolved.schedule, steps,
                         observation.descriptor.to(torch.float32), tuple(observation.shape[:2]))
    errors = roundtrip_errors(resolved, roundtrip_steps, threads)
    reference = torch.as_tensor(np.asarray(volume))[:, :, list(slices)].to(torch.float32)
    recon, _, _ = recon_bench.run_ours(observation, resolved, "ddim", steps, slices, threads, batch_size)
    metrics = recon_bench.score(recon, reference, float(volume.max()))
    sensitivity = recon_bench.measured_sensitivity(observation, resolved, "ddim", steps, slices, recon, threads,
                                                   batch_size)
    return {"prediction": resolved.prediction, "lip_bound_any_t": lip["network_bound_any_time"],
            "lip_bound_sampling": lip["network_bound"], "lip_empirical": lip["network_empirical"],
            "roundtrip": errors, "sensitivity": sensitivity, "psnr": metrics["psnr"], "ssim": metrics["ssim"],
            "eval_seconds": time.perf_counter() - started}


def baselines(slices: Sequence[int], threads: int) -> dict[str, dict[str, float]]:
    """PSNR / SSIM of zero-filled and tuned CS-TV on the same slices and observation."""
    volume = load_volume(recon_bench.HELDOUT_FILE)
    observation = corrupt(volume, "kspace", seed=recon_bench.SEED, acceleration=ACCELERATION,
                          center_fraction=recon_bench.SETTINGS[ACCELERATION])
    reference = torch.as_tensor(np.asarray(volume))[:, :, list(slices)].to(torch.float32)
    lam = recon_bench.cs_tv.TUNED_LAMBDA[ACCELERATION]
    zero, _ = recon_bench.run_zero_filled(observation, slices, threads)
    tv, _ = recon_bench.run_cs_tv(observation, slices, lam, threads)
    return {"zero-filled": recon_bench.score(zero, reference, float(volume.max())),
            f"CS-TV (lambda {lam:g})": recon_bench.score(tv, reference, float(volume.max()))}


# ---------------------------------------------------------------------- table
def _sci(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0.0:
        return "0"
    return f"{value:.2e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3g}"


def format_table(rows: list[dict[str, Any]], roundtrip_steps: Sequence[int],
                 reference: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown table: one line per evaluated variant (``rows``: `Variant` fields + `train_variant` +
    `evaluate` results), then the reference methods (PSNR / SSIM only)."""
    rt = [f"{m.upper()} rel. err. {n}" for n in roundtrip_steps for m in ("edict", "bdia")]
    head = ["variant", "train s", "final loss", "Lip bound (any t)", "Lip bound (sampling t)", "Lip emp.", *rt,
            "sensitivity", "PSNR 4x (dB)", "SSIM 4x"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"({r['key']}) {r['label']}", _fmt_seconds(r.get("train_seconds")), _sci(r.get("final_loss")),
                 _sci(r["lip_bound_any_t"]), _sci(r["lip_bound_sampling"]), _sci(r["lip_empirical"])]
        cells += [_sci(r["roundtrip"].get(f"{m}@{n}")) for n in roundtrip_steps for m in ("edict", "bdia")]
        cells += [f"{r['sensitivity']:.3g}", f"{r['psnr']:.2f}", f"{r['ssim']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, m in (reference or {}).items():
        blanks = [""] * (len(head) - 3)
        lines.append("| " + " | ".join([name, *blanks, f"{m['psnr']:.2f}", f"{m['ssim']:.4f}"]) + " |")
    return "\n".join(lines)


def _fmt_seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"checkpoint folder (default {DEFAULT_WORK})")
    parser.add_argument("--data", default=str(ROOT / "sample_data"), help="training data folder (default sample_data)")
    parser.add_argument("--modality", default="all", help="training modality (default all: the four pooled)")
    parser.add_argument("--variants", nargs="+", default=None, help="variant keys a..f (default: all)")
    parser.add_argument("--steps", type=int, default=600, help="training steps per variant (default 600)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--penalty-weight", type=float, default=1e-2, help="Lipschitz-penalty weight of variant d")
    parser.add_argument("--penalty-target", type=float, default=0.5,
                        help="hinge target of the penalty variants (default 0.5; see the module docstring)")
    parser.add_argument("--recon-steps", type=int, default=10, help="ddim steps of the reconstruction (default 10)")
    parser.add_argument("--roundtrip-steps", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--slices", type=int, default=2, help="held-out evaluation slices (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, training and evaluation")
    parser.add_argument("--batch-size-eval", type=int, default=8)
    parser.add_argument("--train-only", action="store_true", help="train the missing variants, evaluate nothing")
    parser.add_argument("--progress", action="store_true", help="tqdm bar while training")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except MedinvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    recon_bench.check_split()
    work = check_work_dir(args.work)
    chosen = variants(args.penalty_weight)
    if args.variants:
        unknown = sorted(set(args.variants) - {v.key for v in chosen})
        if unknown:
            raise MedinvertError(f"unknown variant(s) {unknown}; known: {[v.key for v in chosen]}")
        chosen = [v for v in chosen if v.key in args.variants]
    recipe = Recipe(data=str(Path(args.data).resolve()), modality=args.modality, steps=args.steps,
                    batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed, threads=args.threads)
    torch.set_num_threads(args.threads)
    slices = recon_bench.evaluation_slices(args.slices)
    print(f"recipe: {recipe.modality} on {recipe.data}, {recipe.steps} steps, batch {recipe.batch_size}, crop "
          f"{recipe.crop}, lr {recipe.lr:g}, seed {recipe.seed}, prediction {recipe.prediction}, {recipe.threads} "
          f"thread(s); penalty target {args.penalty_target:g}; checkpoints in {work}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    rows: list[dict[str, Any]] = []
    for variant in chosen:
        summary = train_variant(variant, recipe, work, args.penalty_target, progress=args.progress)
        state = "trained" if summary["trained_now"] else "found"
        print(f"  [{variant.key}] {state} {summary['checkpoint']} ({summary['train_seconds']} s)", file=sys.stderr)
        rows.append({**asdict(variant), **summary})
    if args.train_only:
        return 0
    for row in rows:
        row.update(evaluate(row["checkpoint"], slices=slices, steps=args.recon_steps,
                            roundtrip_steps=args.roundtrip_steps, threads=args.threads,
                            batch_size=args.batch_size_eval))
        print(f"  [{row['key']}] PSNR {row['psnr']:.2f}, evaluated in {row['eval_seconds']:.0f} s", file=sys.stderr)
    reference = baselines(slices, args.threads)
    print(f"\nHeld-out BraTS-GLI-00002-000 t1n: round trips on slice 77, reconstruction on slices {slices} "
          f"({ACCELERATION}x, ddim {args.recon_steps} steps, trailing):\n")
    print(format_table(rows, args.roundtrip_steps, reference))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if args.json is not None:
        from medinvert.io.atomic import atomic_write_text

        payload = {"recipe": asdict(recipe), "penalty_target": args.penalty_target, "slices": slices,
                   "rows": rows, "reference": reference}
        atomic_write_text(args.json, json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
