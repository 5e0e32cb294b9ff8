"""Error types shared by the whole package.

`MedinvertError` is the one exception class for *user* problems: a file that cannot be read, a
parameter out of range, a mask of the wrong shape.  The CLI turns it into a single line on stderr and
exit code 2.  Its message must name the file (where there is one) and the problem, in one line.
Anything else that escapes is an internal error (exit code 1).
"""

from __future__ import annotations

from pathlib import Path


class MedinvertError(Exception):
    """A user / input error: bad file, bad parameter, inconsistent inputs (CLI exit code 2)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        message = " ".join(str(message).split())  # always one line
        if path is not None:
            message = f"{path}: {message}"
        super().__init__(message)
        self.path = None if path is None else str(path)


class NumericalError(MedinvertError):
    """A numerical guard tripped: fixed-point overflow, NaN/Inf produced by the network."""
