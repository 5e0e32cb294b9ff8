"""Inversion round trip on sample-data slices: error, PSNR, NFE and time of every inversion method.

For each dtype and step count, every method inverts the same slices and generates them back through
the volume-level API (`medinvert.inversion.invert` + `medinvert.inversion.generate`: power-of-two
intensity normalisation, deterministic evaluation, fixed slice batches).  Columns:

* NFE/step -- network evaluations per step, inversion / generation (null-text: forward passes incl. the
  inner optimisation; its backward passes are given separately);
* max abs error -- ``max |generate(invert(v)) - v|`` in the volume's intensity units, and relative to
  ``max |v|``; ``bit-identical`` when every float32 voxel comes back with the same bits;
* PSNR -- of the round trip, data range = the slices' maximum (fastMRI convention), ``inf`` when exact;
* CPU s -- median over the timed round trips of the process CPU time (all threads) of ``invert`` +
  ``generate``; invert CPU s -- the same for ``invert`` alone; wall s -- median of the solver loops'
  wall time as the API reports it (no file I/O or model loading); CPU time vs EDICT -- ratio of the
  CPU-time medians in the same block; vs exact -- ratios of the round-trip and of the invert-only
  CPU-time medians to ``exact``'s in the same block (the null-text target).  On a machine
  shared with other jobs CPU time is the steadier measure: wall time also counts the time this process
  waits for a core (a burst of load during one single-run measurement can double it).

The methods are measured round-robin (repeat r runs every method once before repeat r + 1 starts)
after one untimed warm-up round trip per dtype.  All methods see the same condition: the observation
of a 4x Cartesian k-space undersampling of the slices (descriptor + adjoint image ``A^H y``, what the
shipped models are conditioned on).  ``exact``, ``edict``, ``bdia``, ``ddim`` and ``ode`` run unguided
(w = 1); ``ddim (w=W)`` is plain guided DDIM inversion, the baseline that ``negprompt`` and
``nulltext`` (both at w = W, null-text with its published settings: up to 10 Adam iterations per
step, lr 1e-2 (1 - i/100), early stop below 1e-5 + 2e-5 i) improve on.  EDICT runs twice: with its
default float64 pair around the network (the reference row) and with the pair in float32 too
(``edict-f32pair``, float32 blocks only unless listed in ``--float64-methods``).  ``ode`` (dopri5, adaptive) does not depend on the step count
and runs in the first block only; the slow methods run at most ``--slow-repeats`` times, null-text and
guided DDIM only at ``--guided-steps`` (float64: ``--float64-guided-steps``), and float64 only for
``--float64-methods``.  Every repeat is
checked to give the same output bits (marked otherwise).

One intra-op thread by default: on a CPU shared with other jobs a two-thread OpenMP region stalls
whenever the second core is taken (docs/benchmarks.md, "Model forward speed"); measured here, a
1-slice EDICT round trip took ~1 s of CPU time with one thread and ~8 s of wall time with two.

From the repository root (defaults: the shipped t1 model, else the seeded random model; the defaults
are the documented run, sized for ~15 minutes on a busy 2-core machine)::

    python benchmarks/inversion.py --slices 1 --steps 10 20 50 --repeats 5 --dtypes float32 float64 \\
        --float64-repeats 3 --guided-steps 10 20 50 --float64-guided-steps 10 20 --slow-repeats 1 --threads 1

Only null-text, ``exact`` and the two EDICT variants, float32 (the null-text / EDICT-precision table
of docs/benchmarks.md)::

    python benchmarks/inversion.py --only exact edict-f32pair nulltext --dtypes float32 --steps 10 20 50 \\
        --repeats 5 --guided-steps 10 20 50 --slow-repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from medinvert import inversion
from medinvert.errors import MedinvertError
from medinvert.io import load_volume
from medinvert.metrics import psnr
from medinvert.solvers import NullTextState
from medinvert.transforms.corrupt import corrupt

DEFAULT_VOLUME = "sample_data/BraTS-GLI-00002-000/BraTS-GLI-00002-000-t1n.nii.gz"
GUIDANCE = 3.0


@dataclass(frozen=True)
class Method:
    """One row: a label, a key (command-line name), the solver name, its options, the guidance weight,
    and whether it is slow."""

    label: str
    key: str
    name: str
    options: dict[str, Any]
    guidance: float = 1.0
    slow: bool = False


def methods(guidance: float) -> list[Method]:
    """The compared methods, EDICT first (the time reference)."""
    w = f"{guidance:g}"
    return [
        Method("edict (p=0.93, float64 pair)", "edict", "edict", {}),
        Method("edict (p=0.93, float32 pair)", "edict-f32pair", "edict", {"state_dtype": "float32"}),
        Method("exact (bdia, int64)", "exact", "exact", {}),
        Method("bdia (gamma=1)", "bdia", "bdia", {}),
        Method("ddim", "ddim", "ddim", {}),
        # dopri5 is the ode solver's default (option ode_method)
        Method("ode (dopri5, tol 1e-5)", "ode", "ode", {"rtol": 1e-5, "atol": 1e-5}, slow=True),
        Method(f"ddim (w={w})", "ddim-guided", "ddim", {}, guidance=guidance),
        Method(f"negprompt (w={w})", "negprompt", "negprompt", {}, guidance=guidance),
        Method(f"nulltext (w={w})", "nulltext", "nulltext", {}, guidance=guidance, slow=True),
    ]


@dataclass
class Cell:
    """Measurements of one method in one (dtype, steps) block."""

    method: Method
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    cpu_invert: list[float] = field(default_factory=list)
    nfe: tuple[int, int] = (0, 0)
    backward: int = 0
    max_error: float = math.nan
    relative: float = math.nan
    bit_identical: bool = False
    psnr: float = math.nan
    deterministic: bool = True
    first: torch.Tensor | None = None


def central_slices(path: str, count: int) -> torch.Tensor:
    """``count`` central axial slices of the volume at ``path``, ``(X, Y, count)`` float32."""
    volume = load_volume(path)
    z = volume.shape[2]
    start = max(0, z // 2 - count // 2)
    return volume.as_tensor()[:, :, start:start + count].contiguous()


def pick_model(name: str | None) -> tuple[inversion.ResolvedNetwork, str]:
    """The requested model, or the shipped t1 model if installed, else the random model; and a note."""
    if name is None:
        try:
            net = inversion.resolve_network("t1")
            return net, "shipped model t1 (medinvert.models.load_model('t1'))"
        except MedinvertError as exc:
            net = inversion.resolve_network(inversion.RANDOM_MODEL)
            return net, f"seeded random LipschitzUNet 'random:0' (no shipped t1 model: {exc})"
    net = inversion.resolve_network(name)
    return net, f"model {name!r}"


def run_once(cell: Cell, volume: torch.Tensor, net: inversion.ResolvedNetwork, condition: Any, steps: int,
             dtype: str, batch_size: int, threads: int) -> None:
    """One round trip; fills in the cell (error metrics from the first run, determinism afterwards)."""
    m = cell.method
    cpu = time.process_time()
    latent = inversion.invert(volume, net, method=m.name, steps=steps, guidance=m.guidance, condition=condition,
                              batch_size=batch_size, dtype=dtype, threads=threads, **m.options)
    cpu_invert = time.process_time() - cpu
    out = inversion.generate(latent, net)
    cell.cpu.append(time.process_time() - cpu)
    cell.cpu_invert.append(cpu_invert)
    gen = out.meta["medinvert_generate"]
    cell.seconds.append(latent.stats["seconds"] + gen["seconds"])
    got = out.as_tensor()
    if cell.first is None:
        cell.first = got.clone()
        cell.nfe = (latent.stats["nfe"], gen["nfe"])
        cell.backward = int(latent.state.backward.sum()) if isinstance(latent.state, NullTextState) else 0
        diff = (got.to(torch.float64) - volume.to(torch.float64)).abs()
        cell.max_error = float(diff.max())
        cell.relative = cell.max_error / float(volume.abs().max())
        cell.bit_identical = bool(torch.equal(got.view(torch.int32), volume.view(torch.int32)))
        cell.psnr = psnr(got.numpy(), volume.numpy(), data_range=float(volume.max()))
    elif not torch.equal(got.view(torch.int32), cell.first.view(torch.int32)):
        cell.deterministic = False


def fmt(value: float, digits: int = 2) -> str:
    if math.isinf(value):
        return "inf"
    if value == 0.0:
        return "0"
    return f"{value:.{digits}e}"


def print_block(cells: list[Cell], steps: int, dtype: str) -> None:
    reference = statistics.median(cells[0].cpu)
    exact = [c for c in cells if c.method.key == "exact" and c.cpu]
    exact_cpu = (statistics.median(exact[0].cpu), statistics.median(exact[0].cpu_invert)) if exact else None
    print(f"\n**{dtype}, {steps} steps**\n")
    print("| method | NFE/step (invert / generate) | max abs error | relative | PSNR (dB) | CPU s | invert CPU s "
          "| wall s | n | CPU time vs EDICT | vs exact (round trip / invert) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        if not c.seconds:
            continue
        nfe = f"{c.nfe[0] / steps:.3g} / {c.nfe[1] / steps:.3g}"
        if c.backward:
            nfe += f" (+{c.backward / steps:.3g} backward)"
        error = "0 (bit-identical)" if c.bit_identical else fmt(c.max_error)
        rel = "0" if c.bit_identical else fmt(c.relative)
        db = "inf" if math.isinf(c.psnr) else f"{c.psnr:.1f}"
        cpu, wall = statistics.median(c.cpu), statistics.median(c.seconds)
        cpu_inv = statistics.median(c.cpu_invert)
        det = "" if c.deterministic else " (NOT deterministic)"
        label = c.method.label + (" [adaptive: any steps]" if c.method.name == "ode" else "")
        vs_exact = "-" if exact_cpu is None else f"{cpu / exact_cpu[0]:.1f}x / {cpu_inv / exact_cpu[1]:.1f}x"
        print(f"| {label} | {nfe} | {error}{det} | {rel} | {db} | {cpu:.2f} | {cpu_inv:.2f} | {wall:.2f} "
              f"| {len(c.cpu)} | {cpu / reference:.2f}x | {vs_exact} |")


def _repeats_for(args: argparse.Namespace) -> dict[int, int]:
    if len(args.repeats) == 1:
        return {n: args.repeats[0] for n in args.steps}
    if len(args.repeats) != len(args.steps):
        raise SystemExit("--repeats takes one value or one per --steps entry")
    return dict(zip(args.steps, args.repeats))


def plan(args: argparse.Namespace, dtype: str, block: int, steps: int) -> list[tuple[Method, int]]:
    """(method, timed repeats) of one block, following the command-line plan."""
    out = []
    for m in methods(args.guidance):
        if m.key != "edict" and args.only is not None and m.key not in args.only:
            continue
        if m.key != "edict" and dtype == "float64" and m.key not in args.float64_methods:
            continue
        if m.key == "ode" and block > 0:  # adaptive: the step count only fixes the end points
            continue
        guided_steps = args.float64_guided_steps if dtype == "float64" else args.guided_steps
        if m.key in ("nulltext", "ddim-guided") and steps not in guided_steps:
            continue
        repeats = args.float64_repeats if dtype == "float64" else _repeats_for(args)[steps]
        out.append((m, min(repeats, args.slow_repeats) if m.slow else repeats))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", default=DEFAULT_VOLUME, help="NIfTI volume (default: the BraTS 2023 t1n sample)")
    parser.add_argument("--slices", type=int, default=1, help="central axial slices (default 1)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--repeats", type=int, nargs="+", default=[5],
                        help="timed round trips per method: one value, or one per --steps entry (default 5)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--float64-methods", nargs="+",
                        default=[m.key for m in methods(GUIDANCE) if m.key != "edict-f32pair"],
                        help="methods (keys, see --only) also run in float64 (default: all but edict-f32pair)")
    parser.add_argument("--float64-repeats", type=int, default=3, help="timed round trips in float64 (default 3)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="at most this many round trips of nulltext and ode")
    parser.add_argument("--guided-steps", type=int, nargs="*", default=[10, 20, 50],
                        help="step counts at which nulltext and guided ddim run in float32 (default 10 20 50; "
                             "negprompt runs at all)")
    parser.add_argument("--float64-guided-steps", type=int, nargs="*", default=[10, 20],
                        help="the same in float64 (default 10 20)")
    parser.add_argument("--model", default=None, help="model name / path / random[:SEED] (default: t1, else random)")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help="w of the guided methods (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steadiest on a shared machine, see docs)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only these methods (keys: edict edict-f32pair exact bdia ddim ode ddim-guided "
                             "negprompt nulltext; edict always runs)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    volume = central_slices(args.volume, args.slices)
    net, note = pick_model(args.model)
    condition = corrupt(volume, "kspace", acceleration=4, seed=0, name=os.path.basename(args.volume))
    print(f"volume: {args.volume}, {args.slices} central slice(s) {tuple(volume.shape)}; {note}; "
          f"schedule {net.schedule.kind}, prediction {net.prediction}")
    print(f"condition: 4x Cartesian k-space observation (descriptor + adjoint image); guided methods at w = {args.guidance:g}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} intra-op "
          f"threads; timed round trips per step count {_repeats_for(args)} (float64: {args.float64_repeats}; "
          f"nulltext, ode: at most {args.slow_repeats}), measured round-robin after one warm-up round trip")
    started = time.perf_counter()
    for dtype in args.dtypes:
        warm = Cell(Method("warm-up", "ddim", "ddim", {}))
        run_once(warm, volume, net, condition, 2, dtype, args.slices, args.threads)
        for b, steps in enumerate(args.steps):
            block = time.perf_counter()
            cells = [(Cell(m), repeats) for m, repeats in plan(args, dtype, b, steps)]
            for r in range(max(repeats for _, repeats in cells)):
                for cell, repeats in cells:
                    if r < repeats:
                        run_once(cell, volume, net, condition, steps, dtype, args.slices, args.threads)
            print_block([cell for cell, _ in cells], steps, dtype)
            print(f"\n(block wall time {time.perf_counter() - block:.0f} s)")
            sys.stdout.flush()
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
