"""The files one reconstruction leaves in an output folder, and writing them.

For a volume with output stem ``<stem>`` (the input's name, `medinvert.io.volume_stem`):

* ``<stem>_recon.nii.gz``  -- the reconstruction, float32, the input's affine (and NIfTI header when
  the input was a NIfTI file);
* ``<stem>_latent.npz``    -- optional: its exact inversion (`medinvert.latent.Latent`);
* ``<stem>_report.html``   -- the self-contained HTML report (`medinvert.report.html`);
* ``<stem>_report.json``   -- the JSON report (`medinvert.report.json_report`), written last.

Every file is written atomically, so a volume is *finished* exactly when all of its files exist
(`OutputPaths.complete`); an interrupted volume is redone on the next run.  When writing fails part way
(an exception, Ctrl-C), the files this call had created are removed again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["OutputPaths", "output_paths", "write_outputs"]


@dataclass(frozen=True)
class OutputPaths:
    """Paths of one volume's outputs (``latent`` is None unless requested)."""

    recon: Path
    report_json: Path
    report_html: Path
    latent: Path | None = None

    @property
    def files(self) -> list[Path]:
        """Every output file of the volume, in writing order (the JSON report last)."""
        return [self.recon] + ([self.latent] if self.latent is not None else []) + [self.report_html, self.report_json]

    def complete(self) -> bool:
        """True when every output file exists (the volume was finished by an earlier run)."""
        return all(path.is_file() for path in self.files)


def output_paths(out_dir: str | os.PathLike[str], stem: str, *, save_latent: bool = False) -> OutputPaths:
    """The `OutputPaths` of ``stem`` in ``out_dir``."""
    out = Path(out_dir)
    return OutputPaths(out / f"{stem}_recon.nii.gz", out / f"{stem}_report.json", out / f"{stem}_report.html",
                       out / f"{stem}_latent.npz" if save_latent else None)


def write_outputs(result: Any, paths: OutputPaths, *, reference: Any = None, source_volume: Any = None,
                  title: str | None = None) -> dict[str, Any]:
    """Write a `medinvert.reconstruct.ReconstructionResult` to ``paths`` (folder created if needed).

    Args:
        result: the result (``volume``, ``latent``, ``report``, ``observation``).
        paths: where to write; ``paths.latent`` needs ``result.latent``.
        reference: the clean volume ``(X, Y, Z)`` (or channel-first ``(1, X, Y, Z)``) drawn in the HTML
            report (metrics come from the report).
        source_volume: the loaded input volume, whose NIfTI header the reconstruction keeps.
        title: HTML page title.

    Returns the report as written (with an ``outputs`` section naming the files).
    """
    from medinvert.errors import MedinvertError
    from medinvert.io import save_volume
    from medinvert.report.html import write_html_report
    from medinvert.report.json_report import write_json_report
    from medinvert.transforms.base import as_volume

    if paths.latent is not None and result.latent is None:
        raise MedinvertError("a latent output was requested but the reconstruction has no latent", path=paths.latent)
    if reference is not None:  # a channel-first (1, X, Y, Z) reference of a MONAI pipeline is drawn as (X, Y, Z)
        reference = as_volume(reference).data
    paths.recon.parent.mkdir(parents=True, exist_ok=True)
    report = dict(result.report)
    report["outputs"] = {"reconstruction": str(paths.recon), "report_json": str(paths.report_json),
                         "report_html": str(paths.report_html),
                         "latent": None if paths.latent is None else str(paths.latent)}
    new_files = [path for path in paths.files if not path.exists()]
    try:
        save_volume(result.volume, paths.recon, reference=source_volume)
        if paths.latent is not None:
            result.latent.save(paths.latent)
        write_html_report(paths.report_html, report, observation=result.observation, reconstruction=result.volume,
                          reference=reference, title=title)
        write_json_report(paths.report_json, report)
    except BaseException:  # no half set of outputs: remove the files this call created
        for path in new_files:
            path.unlink(missing_ok=True)
        raise
    return report
