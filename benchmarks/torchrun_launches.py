"""Reliability of many short two-process launches: ``torchrun --nproc_per_node=2 -m medinvert train``.

Session 6 found that a finished gloo worker aborted during interpreter teardown ("terminate called
without an active exception", SIGABRT) in about 1 of 30 launches on a loaded 2-core machine, which
torchrun reports as a failed run although every output was written; CI failed on it twice.  Workers
now leave through `medinvert.cli.exit_process` (``os._exit`` once finished).  This script counts the
launches that fail, and those that fail by SIGABRT, over ``--launches`` short training runs (2 steps,
a tiny network, two 40 x 36 x 6 volumes) run ``--parallel`` at a time to load the machine.

From the repository root::

    OMP_NUM_THREADS=1 python benchmarks/torchrun_launches.py --launches 200 --parallel 2
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), indexing="ij")
    for case in range(2):
        head = ((x / 0.8) ** 2 + (y / 0.7) ** 2 < 1) * (400 + 100 * case)
        volume = np.stack([head * (1 + 0.1 * rng.standard_normal(head.shape)) for _ in range(6)], axis=-1)
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), root / f"BraTS2021_0000{case}_t1.nii.gz")


def _launch(data: Path, out: Path) -> tuple[int, bool]:
    """(exit code, whether a worker died of SIGABRT) of one launch."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "medinvert", "train", str(data), "--modality", "t1", "--steps", "2", "--out", str(out),
               "--batch-size", "2", "--crop", "32", "--channels", "8,16", "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDINVERT_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, "(SIGABRT)" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=2, help="launches running at the same time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        _write_data(root / "data")
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            results = list(pool.map(lambda i: _launch(root / "data", root / f"run{i}.pt"), range(args.launches)))
    failed = sum(1 for code, _ in results if code != 0)
    aborted = sum(1 for _, abort in results if abort)
    print(f"launches {args.launches} (parallel {args.parallel}): failed {failed}, of which SIGABRT {aborted}")


if __name__ == "__main__":
    main()
