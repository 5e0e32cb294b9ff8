"""Atomic file output: write to a temporary file next to the target, then `os.replace` it into place.

A reader (or a crashed run) never sees a half-written output: either the old file (or nothing) is
there, or the complete new one.  The temporary file lives in the *same folder* as the target, so the
final `os.replace` is an atomic rename on the same file system, and it keeps the target's suffix
(``.nii.gz`` included), so libraries that choose the format from the file name (nibabel) write the
right thing.  Temporary names start with a dot (``.<stem>.tmp-XXXXXXXX<suffix>``) so folder scans
(`medinvert.io.find_cases`) skip them.

A process killed between creating and renaming its temporary file (SIGKILL, power loss) leaves that
hidden file behind; `remove_stale_temporaries` deletes the ones belonging to given targets, and
batch commands call it for their own outputs before they write them.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from medinvert.errors import MedinvertError

__all__ = ["atomic_write_path", "atomic_write_bytes", "atomic_write_text", "split_suffix", "temporary_names",
           "remove_stale_temporaries", "require_writable_folder"]

#: multi-part suffixes recognised when naming temporary files (longest first)
_MULTI_SUFFIXES = (".nii.gz", ".tar.gz", ".json.gz", ".npy.gz")


def split_suffix(name: str) -> tuple[str, str]:
    """Split a file name into (stem, suffix), treating ``.nii.gz`` and friends as one suffix.

    >>> split_suffix("brain.nii.gz")
    ('brain', '.nii.gz')
    >>> split_suffix("report.json")
    ('report', '.json')
    """
    lower = name.lower()
    for suffix in _MULTI_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    stem, suffix = os.path.splitext(name)
    return stem, suffix


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    Usage::

        with atomic_write_path(out) as tmp:
            nibabel.save(image, tmp)      # write the complete file to tmp
        # here `out` exists and is complete

    On an exception inside the block the temporary file is removed and ``path`` is left untouched
    (an existing file is neither truncated nor replaced).  The final file gets the usual permissions
    (0o666 masked by the process umask), not the 0o600 of `tempfile.mkstemp`.  The target's folder
    must exist (raises `MedinvertError` otherwise).
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise MedinvertError("output folder does not exist", path=folder)
    if target.is_dir():
        raise MedinvertError("output path is a folder, expected a file name", path=target)
    stem, suffix = split_suffix(target.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise MedinvertError("nothing was written to the temporary output file", path=target)
        with open(tmp, "rb") as handle:  # flush to disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``Path(path)``."""
    target = Path(path)
    with atomic_write_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (newlines written as given); returns ``Path(path)``."""
    return atomic_write_bytes(path, text.encode(encoding))


def temporary_names(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files `atomic_write_path` may have left for ``path``: ``.<stem>.tmp-XXXXXXXX<suffix>``
    in its folder (sorted; empty when the folder does not exist)."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    stem, suffix = split_suffix(target.name)
    pattern = re.compile(re.escape(f".{stem}.tmp-") + r"[A-Za-z0-9_]{8}" + re.escape(suffix) + r"\Z")
    return sorted(p for p in target.parent.iterdir() if pattern.match(p.name) and p.is_file())


def remove_stale_temporaries(paths: "list[str | os.PathLike[str]]") -> list[Path]:
    """Delete the leftover temporary files of ``paths`` (see `temporary_names`); returns what was removed.

    Call it only for outputs no other live process is writing (a batch calls it for its own volumes
    before writing them): a temporary file being written right now would be deleted too.
    """
    removed = []
    for path in paths:
        for leftover in temporary_names(path):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover)
    return removed


def require_writable_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse an output folder that could not be created or written, before any work is done.

    Creates nothing that stays: the nearest existing ancestor of ``folder`` must be a folder in which
    a (hidden, at once removed) probe file can be created.  Raises `MedinvertError` naming it.
    """
    existing = Path(folder)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise MedinvertError(f"is not a folder, so the output folder {folder} cannot be created there", path=existing)
    try:
        handle, name = tempfile.mkstemp(prefix=".medinvert-probe-", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        raise MedinvertError(f"cannot write here ({exc.strerror or exc}); choose another --out", path=existing) from None
