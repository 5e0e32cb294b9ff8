"""The `medinvert` command line.

Each sub-command lives in its own module ``medinvert/cli/<name>.py`` exposing

    def add_parser(subparsers) -> argparse.ArgumentParser   # registers the sub-command
    def run(args: argparse.Namespace) -> int                 # does the work, returns exit code

and is listed in `COMMANDS` below.  Exit codes: 0 success, 2 user / input error (one line on stderr,
no traceback), 1 internal error.  Modules are imported lazily so `medinvert --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from typing import Iterator, Sequence

from medinvert.errors import MedinvertError, as_user_error

#: Sub-command name -> module (relative to this package).  Only commands that work are listed.
#: Command modules must import heavy dependencies (torch, monai) inside `run`, not at module level.
COMMANDS: dict[str, str] = {
    "info": "info",
    "train": "train",
    "models": "models",
    "convert": "convert",
    "corrupt": "corrupt",
    "invert": "invert",
    "generate": "generate",
    "roundtrip": "roundtrip",
    "edit": "edit",
    "reconstruct": "reconstruct",
    "evaluate": "evaluate",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit with code 2 and one line (argparse's own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    from medinvert import __version__

    parser = _Parser(prog="medinvert", description="Exactly invertible diffusion reconstruction of MRI volumes.")
    parser.add_argument("--version", action="version", version=f"medinvert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"medinvert.cli.{module_name}")
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            with _terminate_as_interrupt():
                return int(args._run(args) or 0)
        except OSError as exc:  # the file system refused (permissions, full disk): the user's to fix
            raise as_user_error(exc) from None
    except MedinvertError as exc:
        print(f"medinvert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"medinvert {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"medinvert {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # internal error: one line, traceback only on request
        if os.environ.get("MEDINVERT_DEBUG"):
            traceback.print_exc()
        print(f"medinvert {args.command}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(set MEDINVERT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM received: unwinds like Ctrl-C (a KeyboardInterrupt), reported with exit code 143."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, handle SIGTERM (``kill``, ``timeout``, a batch scheduler) like Ctrl-C: the
    `Terminated` interrupt unwinds through the atomic writers, which remove their temporary files, and
    the command ends with "terminated" and exit code 143 instead of dying mid-write.  The previous
    handler is restored afterwards.  Not installed off the main thread, nor in a worker of a
    multi-process launch: a worker blocked in a collective cannot run a Python handler, and its
    launcher stops it anyway."""
    if threading.current_thread() is not threading.main_thread() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_process(code: int) -> None:
    """End the process with ``code``; a worker of a multi-process launch skips interpreter finalization.

    A gloo worker that has finished (outputs closed, final barrier passed, group destroyed) can still
    abort while the interpreter and the C++ runtime tear down -- "terminate called without an active
    exception", SIGABRT, seen in about 1 of 30 two-process launches on a 2-core machine -- which
    torchrun reports as a failed run although every output was written.  Nothing is left to do at
    that point, so such a worker flushes its streams and leaves with ``os._exit``.  A single process
    exits normally.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def console_main() -> None:  # pragma: no cover - thin wrapper
    exit_process(main())
