"""Forward-pass speed of the Lipschitz UNet on CPU (eval mode, no grad).

Prints a Markdown table: median wall time over ``--runs`` timed calls (after ``--warmup`` calls;
all cases are measured round-robin) for a 240 x 240 slice at batch 1 and batch 8 (per slice), for
the 2D, 2.5D and 3D-patch variants, with spectral normalisation parametrized (eval mode: the stored
power-iteration vectors are reused, each weight is normalised once per forward pass -- which is
also all `torch.nn.utils.parametrize.cached()` saves when a forward pass uses each weight once),
frozen (`freeze_spectral_norm`), and without spectral normalisation.  From the repository root::

    python benchmarks/model_speed.py --threads 2 --runs 20
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from typing import Callable

import torch

from medinvert.models import LipschitzUNet, freeze_spectral_norm

#: variant -> (table label, constructor kwargs); every variant takes one conditioning image channel
VARIANTS: dict[str, tuple[str, dict]] = {
    "2d": ("2d", {"dim": "2d", "n_cond_channels": 1}),
    "2.5d": ("2.5d (k=2)", {"dim": "2.5d", "neighbours": 2, "n_cond_channels": 1}),
    "3d": ("3d patch", {"dim": "3d", "n_cond_channels": 1}),
}


def interleaved_times(cases: list[Callable[[], object]], runs: int, warmup: int) -> list[list[float]]:
    """Wall times (ms) of every case, measured round-robin: run r times case 0, 1, 2, ... once each.

    Interleaving spreads any burst of load from other processes on a shared machine evenly over
    the cases, so their ratios stay fair even when absolute times are disturbed.
    """
    for fn in cases:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(runs):
        for fn, bucket in zip(cases, times):
            start = time.perf_counter()
            fn()
            bucket.append(1e3 * (time.perf_counter() - start))
    return times


def make_input(model: LipschitzUNet, batch: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, model.in_channels, *shape), generator=gen)
    t = torch.rand(batch, generator=gen)
    cond = torch.randn(batch, model.descriptor_dim, generator=gen)
    return x, t, cond


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=240, help="2D slice side")
    parser.add_argument("--patch3d", type=int, nargs=3, default=(32, 64, 64), help="3D patch D H W")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, str, str, str]] = []
    cases: list[Callable[[], object]] = []
    for key in args.variants:
        name, kwargs = VARIANTS[key]
        torch.manual_seed(0)
        shape = tuple(args.patch3d) if kwargs["dim"] == "3d" else (args.size, args.size)
        base = LipschitzUNet(**kwargs).eval()
        plain = LipschitzUNet(**kwargs, spectral_norm=False).eval()
        n_params = sum(p.numel() for p in base.parameters())
        modes = [
            ("SN parametrized", base),
            ("SN frozen", freeze_spectral_norm(copy.deepcopy(base))),
            ("no SN", plain),
        ]
        for mode, model in modes:
            size = "x".join(str(s) for s in shape)
            rows.append((name, f"{model.in_channels}x{size}", f"{n_params / 1e6:.2f} M", mode))
            for batch in (1, 8):
                x, t, cond = make_input(model, batch, shape)

                def case(model=model, x=x, t=t, cond=cond) -> None:  # noqa: ANN001
                    with torch.inference_mode():
                        model(x, t, cond)

                cases.append(case)
    times = interleaved_times(cases, args.runs, args.warmup)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}; median (and min) of "
          f"{args.runs} interleaved runs after {args.warmup} warm-up calls\n")
    print("| variant | input | params | mode | batch 1 median (ms) | batch 1 min (ms) | batch 8 median (ms / item) |")
    print("|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        one, eight = times[2 * i], times[2 * i + 1]
        print(f"| {' | '.join(row)} | {statistics.median(one):.1f} | {min(one):.1f} | "
              f"{statistics.median(eight) / 8:.1f} |")


if __name__ == "__main__":
    main()
