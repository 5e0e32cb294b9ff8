"""Reconstruction reports: strict JSON, a self-contained HTML page with embedded figures, output files.

    write_json_report(path, report) -> Path          strict JSON (NaN / inf made JSON-safe), atomic
    write_html_report(path, report, observation=, reconstruction=, reference=) -> Path
    render_html_report(report, ...) -> str
    output_paths(out_dir, stem, save_latent=False) -> OutputPaths
    write_outputs(result, paths, reference=, source_volume=) -> dict   recon NIfTI + latent + both reports

The report's sections are produced by `medinvert.reconstruct.reconstruct_volume`; this package only
stores and presents them.
"""

from medinvert.report.html import SECTION_ORDER, bound_rows, render_html_report, write_html_report
from medinvert.report.json_report import json_safe, read_json_report, report_json_text, write_json_report
from medinvert.report.outputs import OutputPaths, output_paths, write_outputs

__all__ = [
    "SECTION_ORDER",
    "OutputPaths",
    "bound_rows",
    "json_safe",
    "output_paths",
    "read_json_report",
    "render_html_report",
    "report_json_text",
    "write_html_report",
    "write_json_report",
    "write_outputs",
]
