"""Bitwise-reproducible evaluation: the torch settings under which the same input gives the same bytes.

Bit-exact inversion needs the network to return the same eps bits for the same input in inversion
and in generation, and "same input and settings -> same output bytes" needs it across runs.  Inside
`deterministic()`:

- ``torch.use_deterministic_algorithms(True)``: non-deterministic kernels raise instead of running;
- cuDNN: ``deterministic = True``, ``benchmark = False`` (no autotuned, run-dependent algorithm);
- no TF32 (``allow_tf32 = False`` for matmul and cuDNN, float32 matmul precision ``"highest"``);
- a fixed intra-op thread count, ``threads`` (default `DEFAULT_THREADS` = 2, the cores of the reference CPU machine; or the environment
  variable ``MEDINVERT_THREADS``), because a reduction split over a different number of threads may
  round differently;
- ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set if absent (cuBLAS reproducibility; it only takes effect
  if set before CUDA is initialised, so set it in the environment when using a GPU).

The batch composition of every network call must also be fixed -- `medinvert.denoiser.Denoiser` cuts
batches into chunks that depend only on the batch shape and ``batch_size`` (a conv over 16 slices
and over 1 slice can differ in the last bit).  Everything is restored on exit.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

from medinvert.errors import MedinvertError

__all__ = ["DEFAULT_THREADS", "default_threads", "deterministic", "float32_default"]

T = TypeVar("T")

#: Intra-op threads used for reproducible runs unless ``MEDINVERT_THREADS`` says otherwise.
DEFAULT_THREADS = 2


def default_threads() -> int:
    """``MEDINVERT_THREADS`` if set (a positive integer), else `DEFAULT_THREADS`."""
    raw = os.environ.get("MEDINVERT_THREADS")
    if raw is None:
        return DEFAULT_THREADS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise MedinvertError(f"MEDINVERT_THREADS must be a positive integer, got {raw!r}")
    return value


@contextmanager
def deterministic(threads: int | None = None) -> Iterator[None]:
    """Context manager applying the reproducibility settings above; restores the previous ones.

    Args:
        threads: intra-op thread count (default `default_threads()`).
    """
    threads = default_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise MedinvertError(f"threads must be a positive integer, got {threads!r}")
    saved = {
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "threads": torch.get_num_threads(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "precision": torch.get_float32_matmul_precision(),
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.use_deterministic_algorithms(saved["algorithms"], warn_only=saved["warn_only"])
        torch.set_num_threads(saved["threads"])
        torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
        torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
        torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
        torch.set_float32_matmul_precision(saved["precision"])
        if saved["cublas"] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def float32_default(function: Callable[..., T]) -> Callable[..., T]:
    """Run ``function`` with float32 as torch's default dtype, then restore the caller's.

    The networks and schedules are float32; a caller working with ``torch.set_default_dtype(float64)``
    would otherwise get float64 tensors from ``torch.tensor(0.5)`` inside the library and a dtype
    mismatch in the first matrix product.  Decorates the public entry points.
    """
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_default_dtype(previous)

    return wrapper
