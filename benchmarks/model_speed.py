"""Forward-pass speed of the Lipschitz UNet on CPU (eval mode, no grad).

Prints a Markdown table: median wall time over ``--runs`` timed calls (after ``--warmup`` calls) for
a 240 x 240 slice at batch 1 and batch 8 (per slice), for the 2D, 2.5D and 3D-patch variants, with
spectral normalisation parametrized (power-iteration vectors reused in eval mode), parametrized
inside `torch.nn.utils.parametrize.cached()`, frozen (`freeze_spectral_norm`), and without spectral
normalisation.  Run from the repository root::

    python benchmarks/model_speed.py --threads 2 --runs 20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import time
from typing import Callable, Iterator

import torch
from torch.nn.utils import parametrize

from medinvert.models import LipschitzUNet, freeze_spectral_norm

VARIANTS: dict[str, dict] = {
    "2d": {"dim": "2d", "n_cond_channels": 1},
    "2.5d (k=2)": {"dim": "2.5d", "neighbours": 2, "n_cond_channels": 1},
    "3d patch": {"dim": "3d", "n_cond_channels": 1},
}


def time_ms(fn: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn()`` in ms over ``runs`` calls after ``warmup`` calls.

    The median is the reported figure; the minimum shows what an uncontended run reaches when the
    machine's cores are shared with other jobs.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def make_input(model: LipschitzUNet, batch: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, model.in_channels, *shape), generator=gen)
    t = torch.rand(batch, generator=gen)
    cond = torch.randn(batch, model.descriptor_dim, generator=gen)
    return x, t, cond


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=240, help="2D slice side")
    parser.add_argument("--patch3d", type=int, nargs=3, default=(32, 64, 64), help="3D patch D H W")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"median of {args.runs} runs after {args.warmup} warm-up calls\n")
    print("| variant | input | params | mode | batch 1 median (ms) | batch 1 min (ms) | batch 8 median (ms / item) |")
    print("|---|---|---|---|---|---|---|")
    for name, kwargs in VARIANTS.items():
        torch.manual_seed(0)
        shape = tuple(args.patch3d) if kwargs["dim"] == "3d" else (args.size, args.size)
        base = LipschitzUNet(**kwargs).eval()
        plain = LipschitzUNet(**kwargs, spectral_norm=False).eval()
        n_params = sum(p.numel() for p in base.parameters())
        modes: list[tuple[str, torch.nn.Module, Callable[[], contextlib.AbstractContextManager]]] = [
            ("SN parametrized", base, nothing),
            ("SN cached()", base, parametrize.cached),
            ("SN frozen", freeze_spectral_norm(copy.deepcopy(base)), nothing),
            ("no SN", plain, nothing),
        ]
        for mode, model, ctx in modes:
            cells = []
            for batch in (1, 8):
                x, t, cond = make_input(model, batch, shape)
                with torch.inference_mode(), ctx():
                    median, fastest = time_ms(lambda: model(x, t, cond), args.runs, args.warmup)
                cells += [f"{median / batch:.1f}", f"{fastest / batch:.1f}"]
            size = "x".join(str(s) for s in shape)
            print(f"| {name} | {model.in_channels}x{size} | {n_params / 1e6:.2f} M | {mode} | {cells[0]} | {cells[1]} "
                  f"| {cells[2]} |")


if __name__ == "__main__":
    main()
