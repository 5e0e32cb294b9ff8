"""`medinvert info PATH [--json] [--series-uid UID]`: describe a volume, a DICOM folder or a folder of cases.

For one volume: shape, spacing, orientation code (nibabel ``aff2axcodes``), affine, detected
modality, stored data type, intensity range, source format (+ qform/sform codes for NIfTI, series
UID and description for DICOM).  A folder holding one DICOM series (and no NIfTI file) is described
as that volume; several DICOM series are listed; a folder with NIfTI files lists the cases
`find_cases` finds (DICOM series included).  Listing is information, not an error (exit 0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info", help="describe a NIfTI file, DICOM series or folder of cases",
        description="Print shape, spacing, orientation, affine, modality and source of a volume. A folder "
                    "with several DICOM series lists them; a folder of NIfTI files lists its cases.")
    parser.add_argument("path", help="NIfTI file, DICOM file, DICOM series folder or folder of cases")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (keys: path, source_format, shape, spacing, affine, "
                             "orientation, modality, dtype (stored type), ...; or path + series / cases for listings)")
    parser.add_argument("--series-uid", default=None, metavar="UID",
                        help="SeriesInstanceUID to describe when the folder holds several DICOM series")
    return parser


def describe_volume(volume: Any, path: Path) -> dict[str, Any]:
    """JSON-ready description of a loaded volume (see the module docstring)."""
    import nibabel as nib
    import numpy as np

    affine = np.asarray(volume.affine, dtype=np.float64)
    data = volume.as_tensor()
    meta = volume.meta
    report: dict[str, Any] = {
        "path": str(path),
        "source_format": meta.get("source_format"),
        "shape": [int(s) for s in volume.shape],
        "spacing": [float(s) for s in meta["spacing"]],
        "orientation": "".join(nib.aff2axcodes(affine)),
        "affine": [[float(v) for v in row] for row in affine],
        "modality": meta.get("modality"),
        "dtype": meta.get("stored_dtype"),
        "intensity": {"min": float(data.min()), "max": float(data.max()), "mean": float(data.double().mean())},
    }
    if meta.get("source_format") == "nifti":
        report["qform_code"] = meta.get("qform_code")
        report["sform_code"] = meta.get("sform_code")
    if meta.get("source_format") == "dicom":
        report["series_uid"] = meta.get("series_uid")
        report["series_description"] = meta.get("series_description")
        report["dicom_modality"] = meta.get("dicom_modality")
    return report


def _print_volume(report: dict[str, Any]) -> None:
    shape = " x ".join(map(str, report["shape"]))
    spacing = " x ".join(f"{s:.4g}" for s in report["spacing"])
    lines = [
        f"path         {report['path']}",
        f"format       {report['source_format']}" + (f" (series {report['series_uid']}"
                                                      + (f", {report['series_description']!r})"
                                                         if report.get("series_description") else ")")
                                                      if report.get("series_uid") else ""),
        f"shape        {shape}",
        f"spacing      {spacing} mm",
        f"orientation  {report['orientation']}",
        f"modality     {report['modality'] or 'unknown'}",
        f"dtype        {report['dtype']} (loaded as float32)",
        f"intensity    min {report['intensity']['min']:.6g}  max {report['intensity']['max']:.6g}  "
        f"mean {report['intensity']['mean']:.6g}",
    ]
    if report["source_format"] == "nifti":
        lines.append(f"codes        qform {report['qform_code']}  sform {report['sform_code']}")
    lines.append("affine       " + "\n             ".join(
        "[" + "  ".join(f"{v:11.5f}" for v in row) + "]" for row in report["affine"]))
    print("\n".join(lines))


def run(args: argparse.Namespace) -> int:
    from medinvert.errors import MedinvertError
    from medinvert.io import find_cases, list_dicom_series, load_volume
    from medinvert.io.dicom import iter_image_files
    from medinvert.io.naming import is_nifti_name

    path = Path(args.path)
    if not path.exists():
        raise MedinvertError("no such file or folder", path=path)
    if path.is_dir() and args.series_uid is None:
        has_nifti = any(is_nifti_name(f) for f in iter_image_files(path))
        series = [] if has_nifti else list_dicom_series(path)
        if len(series) > 1:
            listing = [{"series_uid": s.series_uid, "n_slices": s.n_slices, "rows": s.rows, "columns": s.columns,
                        "description": s.description, "dicom_modality": s.dicom_modality, "folder": str(s.folder)}
                       for s in series]
            if args.json:
                print(json.dumps({"path": str(path), "source_format": "dicom", "series": listing}, indent=2))
            else:
                print(f"{path}: {len(series)} DICOM series (choose one with --series-uid)")
                for s in listing:
                    print(f"  {s['series_uid']}  {s['n_slices']} slices  {s['columns']}x{s['rows']}  "
                          f"{s['description']!r}  {s['folder']}")
            return 0
        if not series:
            cases = find_cases(path)
            listing = [{"case_id": c.case_id, "paths": {k: str(v) for k, v in c.paths.items()},
                        "series_uid": c.series_uid} for c in cases]
            if args.json:
                print(json.dumps({"path": str(path), "cases": listing}, indent=2))
            else:
                print(f"{path}: {len(cases)} case(s)")
                for c in listing:
                    print(f"  {c['case_id']}: " + ", ".join(f"{k}={Path(v).name}" for k, v in c["paths"].items()))
            return 0
    volume = load_volume(path, series_uid=args.series_uid)
    report = describe_volume(volume, path)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_volume(report)
    return 0
