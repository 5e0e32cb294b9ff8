"""Error types shared by the whole package.

`MedinvertError` is the one exception class for *user* problems: a file that cannot be read, a
parameter out of range, a mask of the wrong shape.  The CLI turns it into a single line on stderr and
exit code 2.  Its message must name the file (where there is one) and the problem, in one line.
A file system refusing an operation (no permission, disk full, read-only, not a folder) is also the
user's to fix: `as_user_error` turns such an `OSError` into a `MedinvertError` naming the file.
Anything else that escapes is an internal error (exit code 1).
"""

from __future__ import annotations

import errno
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
    """A numerical guard tripped: fixed-point overflow, NaN/Inf produced by the network.

    ``batch_index`` is the position along dim 0 of the slice batch where it tripped (None when not
    known); `at_slice` turns it into the volume's slice index and names the file, for the message a
    user sees ("... in slice 7 (array axis 2)").
    """

    def __init__(self, message: str, path: str | Path | None = None, *, batch_index: int | None = None) -> None:
        super().__init__(message, path)
        self.reason = " ".join(str(message).split())
        self.batch_index = batch_index
        self.slice_index: int | None = None

    def at_slice(self, slice_index: int, path: str | Path | None = None) -> "NumericalError":
        """A copy whose message says ``slice <slice_index> (array axis 2)`` instead of the batch element."""
        where = f"slice {slice_index} (array axis 2)"
        text = self.reason
        if self.batch_index is not None and f"batch element {self.batch_index}" in text:
            text = text.replace(f"batch element {self.batch_index}", where)
        else:
            text = f"{text} ({where})"
        located = NumericalError(text, path)
        located.slice_index = slice_index
        return located


#: errno values of a file system refusing an operation: the user's to fix (exit code 2)
FILE_SYSTEM_REFUSALS = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOTDIR,
                                  errno.EISDIR, errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG})


def as_user_error(exc: BaseException) -> BaseException:
    """``exc`` as a `MedinvertError` naming its file when it is a file-system refusal (an `OSError`
    whose errno is in `FILE_SYSTEM_REFUSALS`); any other exception is returned unchanged."""
    if isinstance(exc, OSError) and not isinstance(exc, MedinvertError) and exc.errno in FILE_SYSTEM_REFUSALS:
        return MedinvertError(exc.strerror or str(exc), path=exc.filename)
    return exc
