"""Run the ``medinvert`` command line in-process from a test."""

from __future__ import annotations

from medinvert.cli import main

__all__ = ["run"]


def run(*argv: object) -> int:
    """Exit code of ``medinvert ARGV`` (argparse usage errors exit through SystemExit)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code)
