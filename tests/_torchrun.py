"""Launch ``python -m torch.distributed.run --nproc_per_node=N -m medinvert ...`` from a test.

Each launch gets a free rendezvous port (never a fixed one: parallel or leftover runs would collide)
and one intra-op thread per process.  On failure the assertion shows the ranks' own error lines --
torchrun's summary at the end of stderr names only the exit signal, and the reason a rank aborted
(e.g. a gloo transport exception) is printed earlier.

A launch whose worker was killed by SIGABRT is run once more (after removing the ``outputs`` the first
launch may have written), with a warning carrying that worker's error lines.  Finished gloo workers
used to abort during interpreter teardown (2 of 36 launches on a loaded 2-core machine, twice in
CI); `medinvert.cli.exit_process` now skips that teardown and 200 launches showed no abort.  But
gloo's TCP transport is also known to abort a process from a background thread when a peer socket
closes early (pytorch/gloo#514).  A second abort, or any other failure, fails the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Sequence

__all__ = ["free_port", "run_torchrun", "rank_errors"]

#: lines of a rank's stderr that say why it stopped
_REASONS = ("Error", "error", "terminate", "what()", "Exception", "Signal", "Traceback", "Aborted")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_errors(stderr: str, limit: int = 60) -> str:
    """The lines of ``stderr`` that explain a failure (then its tail), for assertion messages."""
    lines = [line for line in stderr.splitlines() if any(word in line for word in _REASONS)]
    return "\n".join(lines[:limit]) + "\n--- tail ---\n" + stderr[-1500:]


def run_torchrun(arguments: Sequence[str], *, outputs: Sequence[Path], nproc: int = 2, timeout: float = 300,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``medinvert ARGUMENTS`` under torchrun with ``nproc`` processes; returns the finished process.

    ``outputs``: the files and folders the command writes, removed before a relaunch (a checkpoint
    left by the first launch would be refused, finished cases would be skipped).
    """
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", "-m", "medinvert", *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MEDINVERT_THREADS": "1", **(env or {})}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 and "(SIGABRT)" in result.stderr:
        warnings.warn(f"torchrun worker aborted; launching once more. Its errors:\n{rank_errors(result.stderr)}")
        for path in outputs:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        command[command.index(next(c for c in command if c.startswith("--master_port=")))] = f"--master_port={free_port()}"
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
    return result
