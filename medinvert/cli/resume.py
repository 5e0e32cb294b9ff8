"""May `medinvert reconstruct` skip a volume whose outputs an earlier run left in ``--out``?

A re-run into the same folder skips finished volumes (resumable batches).  Two checks keep that safe:

* `damaged_outputs`: every output is written atomically, so a reconstruction or JSON report that
  does not read back (a truncated copy, a disk error) was damaged after the run; the volume is then
  redone.  (The HTML report and the latent are not read back.)
* `changed_settings`: the earlier report's ``settings`` and ``input`` sections are compared with
  this run's request (method, steps when given, guidance, seed, start, the model's SHA-256, and the
  parameters of ``--corruption`` or ``--measured``); a difference is an error for that volume --
  skipping would keep outputs of other settings under this run's summary, redoing would overwrite
  them unasked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["changed_settings", "damaged_outputs"]


def damaged_outputs(recon: Path, report_json: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(report, None)`` when the reconstruction and its JSON report read back completely,
    ``(None, reason)`` otherwise.  Reads every voxel (the gzip stream is checked to its end)."""
    import nibabel as nib
    import numpy as np

    from medinvert.errors import MedinvertError
    from medinvert.report import read_json_report

    try:
        report = read_json_report(report_json)
    except MedinvertError as exc:
        return None, str(exc)
    try:
        image = nib.load(str(recon))
        data = np.asarray(image.dataobj)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is damaged
        return None, f"{recon}: does not read back ({type(exc).__name__}: {' '.join(str(exc).split())})"
    expected = (report.get("input") or {}).get("shape")
    if expected is not None and list(data.shape[: len(expected)]) != list(expected):
        return None, f"{recon}: shape {list(data.shape)} differs from the report's {expected}"
    return report, None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def changed_settings(report: dict[str, Any], request: dict[str, Any], corruption: str | None,
                     measured: str | None = None) -> list[str]:
    """The settings in which ``report`` (an earlier run's) differs from ``request``, as ``name: old -> new``.

    ``request``: this run's ``method``, ``steps`` (None = the model's default, not compared),
    ``guidance``, ``seed``, ``start`` and ``model_sha256``.  ``corruption``: the ``--corruption`` spec
    (simulated inputs) or None; ``measured``: the ``--measured`` spec (the input is the noisy data) or
    None.  Their explicitly given parameters are compared with the report's ``input`` section.
    """
    from medinvert.transforms.measured import parse_measured_spec
    from medinvert.transforms.params import parse_corruption_spec

    settings = report.get("settings") or {}
    differences = []
    for key, value in request.items():
        if value is None or key not in settings:
            continue
        if not _same(settings[key], value):
            old, new = (str(settings[key])[:16], str(value)[:16]) if key.endswith("sha256") else (settings[key], value)
            differences.append(f"{key}: {old} -> {new}")
    recorded = report.get("input") or {}
    was_measured = bool((recorded.get("params") or {}).get("measured"))
    if was_measured != (measured is not None):
        differences.append("input: " + ("measured -> simulated" if was_measured else "simulated -> measured"))
    elif measured is not None:
        previous = recorded.get("params") or {}
        spec = parse_measured_spec(measured)
        if spec["sigma"] is None and not previous.get("sigma_estimated"):
            differences.append(f"sigma: {previous.get('sigma')} -> auto")
        elif spec["sigma"] is not None and not _same(previous.get("sigma"), spec["sigma"]):
            differences.append(f"sigma: {previous.get('sigma')} -> {spec['sigma']}")
        if previous.get("noise_model") != spec["noise_model"]:
            differences.append(f"noise_model: {previous.get('noise_model')} -> {spec['noise_model']}")
    if corruption is not None:
        kind, params = parse_corruption_spec(corruption)
        if recorded.get("kind") != kind:
            differences.append(f"corruption: {recorded.get('kind')} -> {kind}")
        else:
            previous = recorded.get("params") or {}
            for key, value in params.items():
                if value is not None and key in previous and not _same(previous[key], value):
                    differences.append(f"{key}: {previous[key]} -> {value}")
    return differences
