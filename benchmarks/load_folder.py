"""Load test: a folder of many small volumes through `torchrun ... -m medinvert reconstruct`.

Writes ``--cases`` (default 50) small NIfTI volumes (default 48 x 48 x 6, a textured ellipse, each
different) into a temporary folder and runs::

    /usr/bin/time -v torchrun --nproc_per_node=2 -m medinvert reconstruct FOLDER \\
        --corruption kspace:4 --model random --out OUT

with ``OMP_NUM_THREADS=1 MEDINVERT_THREADS=1``.  While it runs, every ``--interval`` seconds it
samples each rank process (a descendant of torchrun running medinvert): resident memory (``VmRSS``),
its peak (``VmHWM``) and the number of open file descriptors (``/proc/<pid>/fd``), together with the
number of volumes finished so far.  Afterwards it checks that every volume has its three output files
and a ``done`` row in ``summary.csv``, and that no temporary file is left.

Printed: wall time, peak RSS per rank (``VmHWM``) and of the largest process (``time -v``), RSS and
open descriptors of each rank early in the run (after the first volume, within the first quarter)
and late (last quarter)
-- bounded memory and no leaked handles mean the late numbers do not grow with the volumes done.
Linux only (``/proc``).  From the repository root::

    OMP_NUM_THREADS=1 python benchmarks/load_folder.py --cases 50
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np


def write_volumes(folder: Path, cases: int, shape: tuple[int, int, int]) -> list[str]:
    """``cases`` float32 NIfTI volumes ``case000_t1.nii.gz`` ... (different texture each); returns stems."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.7) ** 2 < 1
    stems = []
    for i in range(cases):
        rng = np.random.default_rng(i)
        data = np.zeros(shape, np.float32)
        for k in range(shape[2]):
            texture = 20 * np.sin((6 + i % 5) * x + k) * np.cos(4 * y) + 5 * rng.standard_normal(x.shape)
            data[:, :, k] = inside * (100.0 + 10 * k + texture)
        stem = f"case{i:03d}_t1"
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), folder / f"{stem}.nii.gz")
        stems.append(stem)
    return stems


@dataclass
class Sample:
    """One look at one rank process."""

    seconds: float
    done: int        #: volumes finished (report.json written) when sampled
    rss_mb: float
    hwm_mb: float
    fds: int


@dataclass
class Rank:
    pid: int
    samples: list[Sample] = field(default_factory=list)


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (via /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _status_mb(pid: int, key: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def _is_rank(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"medinvert" in cmdline and b"reconstruct" in cmdline and not any(b"torchrun" in c or
                                                                            b"torch.distributed.run" in c
                                                                            for c in cmdline)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _phase(samples: list[Sample], lo: float, hi: float, total: int) -> list[Sample]:
    """Samples taken while ``lo * total <= done < hi * total`` and at least one volume was done (after
    start-up), else the last sample."""
    return [s for s in samples if s.done >= 1 and lo * total <= s.done < hi * total] or samples[-1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 48, 6), metavar=("X", "Y", "Z"))
    parser.add_argument("--nproc", type=int, default=2, help="torchrun --nproc_per_node (default 2)")
    parser.add_argument("--interval", type=float, default=0.25, help="sampling period in seconds")
    parser.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="medinvert-load-"))
    folder, out = root / "cases", root / "out"
    if out.exists():
        shutil.rmtree(out)
    stems = write_volumes(folder, args.cases, tuple(args.shape))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDINVERT_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
                f"--master_port={_free_port()}"]
    command = [*torchrun, "-m", "medinvert", "reconstruct", str(folder), "--corruption", "kspace:4",
               "--model", "random", "--out", str(out)]
    timed = (["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []) + command
    print("command: OMP_NUM_THREADS=1 MEDINVERT_THREADS=1 " + " ".join(timed), flush=True)

    start = time.perf_counter()
    process = subprocess.Popen(timed, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ranks: dict[int, Rank] = {}
    while process.poll() is None and time.perf_counter() - start < args.timeout:
        done = len(list(out.glob("*_report.json"))) if out.exists() else 0
        for pid in _children(process.pid):
            if not _is_rank(pid):
                continue
            try:
                sample = Sample(time.perf_counter() - start, done, _status_mb(pid, "VmRSS"), _status_mb(pid, "VmHWM"),
                                len(os.listdir(f"/proc/{pid}/fd")))
            except (OSError, ValueError):
                continue
            ranks.setdefault(pid, Rank(pid)).samples.append(sample)
        time.sleep(args.interval)
    if process.poll() is None:
        process.kill()
        print(f"timed out after {args.timeout:.0f} s", file=sys.stderr)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start

    missing = [f"{s}_{k}" for s in stems for k in ("recon.nii.gz", "report.json", "report.html")
               if not (out / f"{s}_{k}").is_file()]
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    statuses = {r["stem"]: r["status"] for r in rows}
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    peak_time = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    summary = re.search(r"\d+ done, \d+ skipped, \d+ failed.*", stdout)

    print(f"\nexit code {process.returncode}; {summary.group(0) if summary else 'no summary line'}")
    print(f"volumes: {args.cases} x {'x'.join(map(str, args.shape))}, {args.nproc} ranks, wall {wall:.1f} s "
          f"({args.cases / wall:.2f} volumes/s)")
    print(f"outputs: {3 * args.cases - len(missing)}/{3 * args.cases} files, summary rows "
          f"{sum(1 for v in statuses.values() if v == 'done')}/{args.cases} done, temporary files left: {len(leftovers)}")
    if peak_time:
        print(f"peak RSS of the largest process (time -v): {int(peak_time.group(1)) / 1024:.0f} MB")
    print("\n| rank pid | samples | peak RSS (VmHWM) | RSS early -> late | open fds early -> late (max) |")
    print("|---|---|---|---|---|")
    for rank in sorted(ranks.values(), key=lambda r: r.pid):
        early = _phase(rank.samples, 0.0, 0.25, args.cases)
        late = _phase(rank.samples, 0.75, 1.01, args.cases)
        print(f"| {rank.pid} | {len(rank.samples)} | {max(s.hwm_mb for s in rank.samples):.0f} MB | "
              f"{max(s.rss_mb for s in early):.0f} -> {max(s.rss_mb for s in late):.0f} MB | "
              f"{max(s.fds for s in early)} -> {max(s.fds for s in late)} ({max(s.fds for s in rank.samples)}) |")
    ok = (process.returncode == 0 and not missing and len(rows) == args.cases
          and set(statuses.values()) == {"done"} and not leftovers)
    if not ok:
        print(stderr[-3000:], file=sys.stderr)
    print("\nOK" if ok else "\nFAILED")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
