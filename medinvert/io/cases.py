"""`find_cases`: turn a file or a folder tree into a sorted list of cases (modality -> path maps).

Layouts recognised (all may be mixed under one root, searched recursively, hidden entries skipped):

* BraTS 2021-style files ``BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz`` and BraTS 2023-style
  files ``BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (any cohort: GLI, MEN, MET, PED, SSA,
  ...) are grouped by case id and folder, whether the root is one case folder or a folder of case
  folders; keys are the canonical modalities (see `medinvert.io.naming`).  The same case id in two
  folders gives two cases (``BraTS2021_00001`` and ``healthy_BraTS2021_00001``).
* Any other NIfTI file is its own case: id = file stem, key = the guessed modality or ``"image"``.
* Every DICOM series (grouped by SeriesInstanceUID, anywhere below the root) is its own case: key
  ``"image"`` -> the deepest folder holding the series' files, ``series_uid`` set; id = that folder's
  name when the folder holds one series, else ``<folder>_<SeriesDescription>_<uid tail>``.
* A folder whose DICOM files cannot be read (a truncated slice, a text file named ``.dcm``) is one
  case with ``error`` set: loading it raises that error, so a batch fails that case alone and goes on
  with the others.  When it is the only case found, `find_cases` raises the error itself.

Ids that would collide get their relative folder path prepended (``sub1_brain``), then a counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medinvert.errors import MedinvertError
from medinvert.io.dicom import iter_image_files, scan_dicom_files, series_info
from medinvert.io.naming import (MODALITIES, guess_modality, guess_series_modality, is_nifti_name, parse_brats_name,
                                 volume_stem)

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor

__all__ = ["Case", "find_cases"]


def _ordered(paths: dict[str, Path]) -> dict[str, Path]:
    """Canonical modalities first (t1, t1ce, t2, flair, seg), then other keys alphabetically."""
    rank = {name: i for i, name in enumerate(MODALITIES)}
    return {k: paths[k] for k in sorted(paths, key=lambda k: (rank.get(k, len(rank)), k))}


@dataclass(frozen=True)
class Case:
    """One case: an id and its images.

    ``paths`` maps canonical modality names (``t1``, ``t1ce``, ``t2``, ``flair``, ``seg``), or
    ``"image"`` when the modality is unknown, to a NIfTI file or a DICOM series folder.
    ``series_uid`` is set for DICOM series (pass it to `load_volume`); ``None`` otherwise.
    ``error`` is set for a folder of unreadable DICOM files (the reason, naming the file).
    Hashing uses ``case_id`` and ``series_uid`` only.
    """

    case_id: str
    paths: dict[str, Path] = field(hash=False)
    series_uid: str | None = None
    error: str | None = field(default=None, hash=False, compare=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The keys of ``paths`` in canonical order."""
        return tuple(self.paths)

    def load(self, key: str) -> "MetaTensor":
        """Load one image of the case with `medinvert.io.load_volume`."""
        from medinvert.io.load import load_volume

        if self.error is not None:
            raise MedinvertError(self.error)
        if key not in self.paths:
            raise MedinvertError(f"case {self.case_id} has no {key!r} image (has: {', '.join(self.paths)})")
        return load_volume(self.paths[key], series_uid=self.series_uid)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def _unique_ids(entries: list[tuple[str, Path, Any]], root: Path) -> list[str]:
    """Make ids unique: colliding ids get their relative folder path prepended, then ``_2``, ``_3``..."""
    ids = [e[0] for e in entries]
    counts: dict[str, int] = {}
    for case_id in ids:
        counts[case_id] = counts.get(case_id, 0) + 1
    result = []
    for case_id, location, _ in entries:
        if counts[case_id] > 1:
            try:
                rel = location.parent.relative_to(root)
            except ValueError:
                rel = Path()
            prefix = _slug("_".join(rel.parts))
            case_id = f"{prefix}_{case_id}" if prefix else case_id
        result.append(case_id)
    seen: dict[str, int] = {}
    final = []
    for case_id in result:
        seen[case_id] = seen.get(case_id, 0) + 1
        final.append(case_id if seen[case_id] == 1 else f"{case_id}_{seen[case_id]}")
    return final


def _single_file_case(path: Path) -> Case:
    if is_nifti_name(path):
        brats = parse_brats_name(path)
        if brats is not None:
            return Case(brats[0], {brats[1]: path})
        return Case(volume_stem(path), {guess_modality(path) or "image": path})
    groups = scan_dicom_files([path])  # reads the header only; raises for broken .dcm files
    if not groups:
        raise MedinvertError("is neither a NIfTI (.nii / .nii.gz) nor a DICOM image file", path=path)
    return Case(volume_stem(path), {guess_modality(path) or "image": path}, next(iter(groups)))


def _scan_folders(files: list[Path]) -> tuple[dict[str, list[tuple[Path, Any]]], dict[Path, str]]:
    """`scan_dicom_files` one folder at a time: (series uid -> members in path order, folder -> error)."""
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    broken: dict[Path, str] = {}
    for folder, members in sorted(by_folder.items()):
        try:
            found = scan_dicom_files(members)
        except MedinvertError as exc:
            broken[folder] = str(exc)
            continue
        for uid, series in found.items():
            groups.setdefault(uid, []).extend(series)
    return {uid: sorted(series, key=lambda m: m[0]) for uid, series in sorted(groups.items())}, broken


def find_cases(root: str | Path) -> list[Case]:
    """All cases under ``root`` (a file or a folder), sorted by ``case_id``; see the module docstring.

    Raises `MedinvertError` when ``root`` does not exist, holds no NIfTI / DICOM image, or a BraTS
    case folder has two files for the same modality.
    """
    root = Path(root)
    if not root.exists():
        raise MedinvertError("no such file or folder", path=root)
    if root.is_file():
        if root.stat().st_size == 0:
            raise MedinvertError("file is empty (0 bytes)", path=root)
        return [_single_file_case(root)]

    files = iter_image_files(root)
    brats: dict[tuple[str, Path], dict[str, Path]] = {}  # (case id, folder) -> modality -> file
    entries: list[tuple[str, Path, Any]] = []  # (id, location, payload)
    for path in files:
        if not is_nifti_name(path):
            continue
        parsed = parse_brats_name(path)
        if parsed is None:
            entries.append((volume_stem(path), path, ("nifti", path)))
            continue
        case_id, modality = parsed
        case_paths = brats.setdefault((case_id, path.parent), {})
        if modality in case_paths:
            raise MedinvertError(f"BraTS case {case_id} has two {modality} images: {case_paths[modality].name} and "
                                 f"{path.name}", path=path.parent)
        case_paths[modality] = path
    for (case_id, folder), case_paths in brats.items():
        # location whose parent is the folder that distinguishes same-id cases (e.g. "healthy/")
        location = folder if folder.name == case_id else folder / case_id
        entries.append((case_id, location, ("brats", case_paths)))

    groups, broken = _scan_folders([f for f in files if not is_nifti_name(f)])
    if broken and not groups and not entries and len(broken) == 1:
        raise MedinvertError(next(iter(broken.values())))
    for folder, error in broken.items():
        entries.append((volume_stem(folder), folder, ("broken", error)))
    infos = [series_info(uid, members) for uid, members in groups.items()]
    per_folder: dict[Path, int] = {}
    for info in infos:
        per_folder[info.folder] = per_folder.get(info.folder, 0) + 1
    for info in infos:
        folder_name = volume_stem(info.folder)
        if per_folder[info.folder] == 1:
            case_id = folder_name
        else:
            tail = info.series_uid.replace(".", "")[-6:]
            case_id = "_".join(x for x in (folder_name, _slug(info.description), tail) if x)
        entries.append((case_id, info.folder, ("dicom", info)))

    if not entries:
        raise MedinvertError("no NIfTI or DICOM images found", path=root)
    entries.sort(key=lambda e: (e[0], str(e[1])))
    cases = []
    for case_id, (_, location, (kind, payload)) in zip(_unique_ids(entries, root), entries):
        if kind == "nifti":
            cases.append(Case(case_id, {guess_modality(payload) or "image": payload}))
        elif kind == "brats":
            cases.append(Case(case_id, _ordered(payload)))
        elif kind == "broken":
            cases.append(Case(case_id, {guess_modality(location) or "image": location}, error=payload))
        else:
            modality = guess_modality(payload.folder) or guess_series_modality(payload.description)
            cases.append(Case(case_id, {modality or "image": payload.folder}, payload.series_uid))
    return sorted(cases, key=lambda c: (c.case_id, c.series_uid or ""))

