"""Per-volume seeds derived from a file name (fastMRI's convention: every slice of a volume shares a mask).

``seed_from_name("sub-01_T1w.nii.gz", seed=3)`` hashes the volume's *name* (the file name without
directories and without ``.nii`` / ``.nii.gz`` / ``.dcm``, or a DICOM folder's name) together with the
user seed with SHA-256 and keeps 32 bits.  The result is stable across machines, Python versions and
processes (unlike ``hash()``), does not change when the file moves, and differs between volumes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medinvert.errors import MedinvertError

__all__ = ["seed_from_name"]


def seed_from_name(path_or_name: str | os.PathLike[str], seed: int = 0) -> int:
    """Stable 32-bit seed (``[0, 2**32)``) from a volume's name and a user seed."""
    from medinvert.io.naming import volume_stem

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MedinvertError(f"seed must be a non-negative integer, got {seed!r}")
    name = volume_stem(Path(path_or_name))
    if not name:
        raise MedinvertError(f"cannot derive a seed from an empty name ({str(path_or_name)!r})")
    digest = hashlib.sha256(f"medinvert-seed:{name}:{seed}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")
