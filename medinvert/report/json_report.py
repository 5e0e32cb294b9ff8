"""The JSON report of a reconstruction: strict JSON (no NaN / Infinity), written atomically.

`reconstruct_volume` returns its report as a plain ``dict`` that may hold numpy scalars, tensors,
paths, tuples and non-finite floats (a slice identical to its reference has PSNR ``inf``; a slice
whose reference is all zero has NMSE ``nan``).  `json_safe` turns it into values that the JSON
standard allows, so any reader (Python, JavaScript, ``jq``) parses the file:

* finite floats stay floats; ``inf`` / ``-inf`` become the strings ``"inf"`` / ``"-inf"`` (Python's
  ``float("inf")`` reads them back) and ``nan`` becomes ``null``;
* numpy / torch scalars become Python numbers, arrays and tensors nested lists;
* tuples become lists, paths strings, mapping keys strings.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "report_json_text", "write_json_report", "read_json_report"]


def _float(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def json_safe(value: Any) -> Any:
    """``value`` with every non-JSON type replaced as the module docstring says (a new object)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "detach"):  # torch tensor (MetaTensor included)
        import torch

        value = torch.Tensor.numpy(value.detach().cpu().as_subclass(torch.Tensor))
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy array or scalar
        return json_safe(value.tolist())
    raise TypeError(f"cannot store a {type(value).__name__} in a JSON report")


def report_json_text(report: dict[str, Any]) -> str:
    """Strict JSON text of ``report`` (2-space indent, keys in the report's order, trailing newline)."""
    return json.dumps(json_safe(report), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_json_report(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report`` as strict JSON to ``path`` atomically (temp file + rename); returns the path."""
    from medinvert.io.atomic import atomic_write_text

    return atomic_write_text(path, report_json_text(report))


def read_json_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a report written by `write_json_report` (``"inf"`` strings are left as they are)."""
    from medinvert.errors import MedinvertError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedinvertError(f"cannot read the JSON report: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise MedinvertError("a JSON report must hold an object", path=path)
    return data
