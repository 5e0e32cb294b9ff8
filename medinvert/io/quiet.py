"""`quiet_readers`: keep the readers' chatter off stderr, so a bad file costs exactly one line.

nibabel logs every header field it repairs ("sizeof_hdr should be 348; set sizeof_hdr to 348") on
its ``nibabel.global`` logger, and pydicom / nibabel / numpy emit Python warnings for odd values.
A CLI promises one line per bad input (`medinvert.errors.MedinvertError`), so the readers run
inside this context: those log records and warnings are dropped.  Whatever makes a file unusable
still raises -- nothing is hidden that would change the data medinvert returns.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

__all__ = ["quiet_readers"]


class quiet_readers(contextlib.ContextDecorator):  # noqa: N801 - used like a function
    """Context manager / decorator: no ``nibabel.global`` log output and no Python warnings inside."""

    def __enter__(self) -> "quiet_readers":
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._logger = logging.getLogger("nibabel.global")
        self._disabled = self._logger.disabled
        self._logger.disabled = True
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._logger.disabled = self._disabled
        self._warnings.__exit__(*exc)
        return False
