"""File-name conventions: output stems, image kinds, and modality guesses from BraTS / BIDS names.

Canonical modality names used everywhere in medinvert: ``t1``, ``t1ce``, ``t2``, ``flair``, ``seg``.

BraTS naming (facts from the challenge data releases):

* 2021 (and 2018-2020): ``BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``
  (2020: ``BraTS20_Training_001_t1.nii.gz``) -- the case id is everything before the last ``_``.
* 2023 / 2024, every cohort (GLI, MEN, MET, PED, SSA, ...):
  ``BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` with ``t1n -> t1``, ``t1c -> t1ce``,
  ``t2w -> t2``, ``t2f -> flair``.

For any other file the *last* ``_``/``-`` separated token of the stem is looked up in the same table,
extended with the BIDS suffixes ``T1w`` and ``FLAIR`` (case-insensitive), e.g. ``sub-01_T2w.nii.gz``
-> ``t2``.  Nothing else is guessed: an unknown token gives ``None``.
"""

from __future__ import annotations

import re
from pathlib import Path


__all__ = [
    "MODALITIES",
    "NIFTI_SUFFIXES",
    "DICOM_SUFFIXES",
    "guess_modality",
    "guess_series_modality",
    "parse_brats_name",
    "volume_stem",
    "is_nifti_name",
]

#: canonical modality names, in the order used for listings
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair", "seg")

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")

#: last name token (lower case) -> canonical modality
_TOKEN_TO_MODALITY: dict[str, str] = {
    # BraTS 2021
    "t1": "t1",
    "t1ce": "t1ce",
    "t2": "t2",
    "flair": "flair",
    "seg": "seg",
    # BraTS 2023
    "t1n": "t1",
    "t1c": "t1ce",
    "t2w": "t2",
    "t2f": "flair",
    # BIDS suffixes (T2w shared with BraTS 2023)
    "t1w": "t1",
    "t1gd": "t1ce",
}

_BRATS_2021 = re.compile(r"^(?P<case>brats\w*?)_(?P<mod>t1|t1ce|t2|flair|seg)$", re.IGNORECASE)
_BRATS_2023 = re.compile(
    r"^(?P<case>brats-[a-z]+-\d+-\d+)-(?P<mod>t1n|t1c|t2w|t2f|seg)$", re.IGNORECASE
)


def _strip_image_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES + DICOM_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def is_nifti_name(path: str | Path) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """Name used for a volume's outputs: the file name without ``.nii``/``.nii.gz``/``.dcm``/``.dicom``
    /``.ima``, or the folder name for a DICOM series folder.

    Other suffixes are kept (DICOM files are often named ``1.2.840.113619.2.55.3.4``).

    >>> volume_stem("data/BraTS2021_00000_t1.nii.gz")
    'BraTS2021_00000_t1'
    """
    p = Path(path)
    if p.is_dir():
        return p.resolve().name if p.name in ("", ".", "..") else p.name
    return _strip_image_suffix(p.name)


def parse_brats_name(path: str | Path) -> tuple[str, str] | None:
    """``(case_id, canonical_modality)`` for a BraTS 2021 / 2023-style NIfTI name, else ``None``.

    >>> parse_brats_name("BraTS-GLI-00005-101-t2f.nii.gz")
    ('BraTS-GLI-00005-101', 'flair')
    >>> parse_brats_name("BraTS2021_00000_t1ce.nii.gz")
    ('BraTS2021_00000', 't1ce')
    """
    name = Path(path).name
    if not is_nifti_name(name):
        return None
    stem = _strip_image_suffix(name)
    for pattern in (_BRATS_2023, _BRATS_2021):
        match = pattern.match(stem)
        if match:
            return match.group("case"), _TOKEN_TO_MODALITY[match.group("mod").lower()]
    return None


def guess_modality(path: str | Path) -> str | None:
    """Canonical modality guessed from a file or folder name (BraTS rules, then BIDS suffixes), or None.

    >>> guess_modality("sub-01_ses-1_FLAIR.nii.gz")
    'flair'
    >>> guess_modality("brain.nii.gz") is None
    True
    """
    brats = parse_brats_name(path)
    if brats is not None:
        return brats[1]
    stem = _strip_image_suffix(Path(path).name)
    token = re.split(r"[_\-.\s]+", stem)[-1].lower() if stem else ""
    return _TOKEN_TO_MODALITY.get(token)


#: words of a DICOM SeriesDescription / ProtocolName that name a contrast agent (T1 post-contrast)
_CONTRAST_WORDS = frozenset({"post", "gd", "gad", "gado", "contrast", "+c", "c+", "ce", "postcontrast", "mdc"})
#: words that deny one: "T1 pre Gd", "T1 W/O CONTRAST", "T1 non-contrast", "native"
_NO_CONTRAST_WORDS = frozenset({"pre", "precontrast", "non", "noncontrast", "without", "native", "nativ"})
#: words that name a FLAIR (fluid-attenuated T2) sequence; with a T1 word it is a T1 FLAIR (T1-weighted)
_FLAIR_WORDS = frozenset({"flair", "t2f", "tirm", "dark-fluid", "darkfluid"})


def guess_series_modality(description: str) -> str | None:
    """Canonical modality from a scanner's series description (``"AX T2 FLAIR"``, ``"t1_mprage_sag"``,
    ``"T1 post Gd"``), or None.  Every word counts (unlike `guess_modality`, which reads file-name
    suffixes): a T1 word with a contrast word and no denial (``pre``, ``w/o``, ``non``) is t1ce, any
    other T1 word t1 (``AX T1 FLAIR`` is T1-weighted); then FLAIR words give flair, T2 words t2.

    >>> guess_series_modality("T2 axial"), guess_series_modality("AX T1 +C"), guess_series_modality("localizer")
    ('t2', 't1ce', None)
    """
    text = description.lower().replace("w/o", " without ")
    words = {w for w in re.split(r"[\s_/.,()]+", text) if w}
    words |= {part for w in words for part in w.split("-") if part}
    mapped = {_TOKEN_TO_MODALITY.get(w) for w in words}
    t1 = bool({"t1", "t1ce"} & mapped) or bool(words & {"t1w", "mprage", "spgr", "bravo", "tfl", "tfe", "vibe"})
    if t1:
        contrast = "t1ce" in mapped or bool(words & _CONTRAST_WORDS)
        return "t1ce" if contrast and not words & _NO_CONTRAST_WORDS else "t1"
    if words & _FLAIR_WORDS:
        return "flair"
    return "t2" if "t2" in mapped else None
