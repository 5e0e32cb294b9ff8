"""Corruption parameters: defaults, validation, and the one-string corruption spec.

Parameters per kind (keyword names shared by `medinvert.corrupt`, the transforms and the CLI):

======  =====================================================================================
kind    parameters (default)
======  =====================================================================================
kspace  acceleration (4), center_fraction (0.32 / acceleration: 0.08 at 4x, 0.04 at 8x, as in
        fastMRI), pattern ("random" | "equispaced" | "variable-density"), sigma / snr (none)
mask    mask_type ("box" | "blobs" | "slices" | "file"), size_fraction (0.3, box side per axis),
        n_blobs (5), radius_fraction ([0.05, 0.15] of min(X, Y)), slice_fraction (0.2),
        mask_file (for "file": a NIfTI / DICOM mask, 1 = kept), sigma / snr (none)
noise   sigma (absolute std) or snr (mean foreground intensity / std) -- exactly one,
        noise_model ("gaussian" | "rician")
blur    blur ("gaussian" | "motion"), blur_sigma (1.5 px), motion_length (9 px),
        motion_angle (0 degrees, from array axis 0 towards axis 1), sigma / snr (none)
======  =====================================================================================

For kspace, mask and blur, ``sigma`` / ``snr`` add Gaussian measurement noise (complex Gaussian in
k-space with ``E|n|^2 = sigma^2``, i.e. ``sigma`` per pixel in the image domain).

Corruption spec grammar (`parse_corruption_spec`)::

    spec    := KIND (":" field)*
    field   := value | key "=" value          positional values first, then key=value pairs
    KIND    := kspace | mask | noise | blur

Positional values, in order: ``kspace:ACCELERATION:CENTER_FRACTION:PATTERN``,
``mask:MASK_TYPE`` (``mask:file:PATH`` -- the rest of the spec is the path, colons included),
``noise:SIGMA:NOISE_MODEL``, ``blur:gaussian:BLUR_SIGMA``, ``blur:motion:LENGTH:ANGLE``.  Keys are
the parameter names above (``-`` may replace ``_``).  Examples: ``kspace:4:0.08``, ``kspace:8``,
``kspace:4:0.08:equispaced``, ``mask:box``, ``mask:blobs:n_blobs=3``, ``noise:0.05``,
``noise:snr=20:noise_model=rician``, ``blur:gaussian:2.0``, ``blur:motion:9:45``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from medinvert.errors import MedinvertError
from medinvert.operators.descriptor import KINDS

__all__ = ["DEFAULTS", "PATTERNS", "MASK_TYPES", "NOISE_MODELS", "BLUR_TYPES", "normalize_params",
           "parse_corruption_spec"]

PATTERNS: tuple[str, ...] = ("random", "equispaced", "variable-density")
MASK_TYPES: tuple[str, ...] = ("box", "blobs", "slices", "file")
NOISE_MODELS: tuple[str, ...] = ("gaussian", "rician")
BLUR_TYPES: tuple[str, ...] = ("gaussian", "motion")

#: kind -> parameter -> default (None = not set)
DEFAULTS: dict[str, dict[str, Any]] = {
    "kspace": {"acceleration": 4.0, "center_fraction": None, "pattern": "random", "sigma": None, "snr": None},
    "mask": {"mask_type": "box", "size_fraction": 0.3, "n_blobs": 5, "radius_fraction": [0.05, 0.15],
             "slice_fraction": 0.2, "mask_file": None, "sigma": None, "snr": None},
    "noise": {"sigma": None, "snr": None, "noise_model": "gaussian"},
    "blur": {"blur": "gaussian", "blur_sigma": 1.5, "motion_length": 9.0, "motion_angle": 0.0,
             "sigma": None, "snr": None},
}

_POSITIONAL: dict[str, tuple[str, ...]] = {
    "kspace": ("acceleration", "center_fraction", "pattern"),
    "mask": ("mask_type",),
    "noise": ("sigma", "noise_model"),
}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise MedinvertError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MedinvertError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MedinvertError(f"{name} must be finite, got {value!r}")
    return number


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise MedinvertError(f"unknown {name} {value!r} (expected one of: {', '.join(options)})")
    return str(value)


def _open_unit(name: str, value: Any) -> float:
    number = _number(name, value)
    if not 0 < number < 1:
        raise MedinvertError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return number


def _noise(kind: str, p: dict[str, Any]) -> None:
    sigma, snr = p["sigma"], p["snr"]
    if sigma is not None and snr is not None:
        raise MedinvertError("give either sigma or snr, not both")
    if sigma is not None:
        p["sigma"] = _number("sigma", sigma)
        if p["sigma"] < 0 or (kind == "noise" and p["sigma"] == 0):
            raise MedinvertError(f"sigma must be {'positive' if kind == 'noise' else 'non-negative'}, got {sigma!r}")
    if snr is not None:
        p["snr"] = _number("snr", snr)
        if p["snr"] <= 0:
            raise MedinvertError(f"snr must be positive, got {snr!r}")
    if kind == "noise" and sigma is None and snr is None:
        raise MedinvertError("noise needs a noise level: give sigma (absolute std) or snr")


def normalize_params(kind: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults filled in, types coerced, ranges checked; raises `MedinvertError` on anything wrong
    (unknown kind or parameter, acceleration < 1, center fraction outside (0, 1), negative sigma,
    unknown pattern / mask type / noise model / blur type, ...)."""
    kind = _choice("corruption kind", kind, KINDS)
    given = dict(params or {})
    unknown = sorted(set(given) - set(DEFAULTS[kind]))
    if unknown:
        raise MedinvertError(f"unknown parameter(s) {', '.join(unknown)} for kind {kind!r} "
                             f"(accepted: {', '.join(DEFAULTS[kind])})")
    p = {**DEFAULTS[kind], **{k: v for k, v in given.items() if v is not None}}
    _noise(kind, p)
    if kind == "kspace":
        p["acceleration"] = _number("acceleration", p["acceleration"])
        if p["acceleration"] < 1:
            raise MedinvertError(f"acceleration must be >= 1, got {p['acceleration']:g}")
        if p["center_fraction"] is None:
            p["center_fraction"] = min(0.32 / p["acceleration"], 0.5)
        p["center_fraction"] = _open_unit("center fraction", p["center_fraction"])
        p["pattern"] = _choice("k-space pattern", p["pattern"], PATTERNS)
    elif kind == "mask":
        p["mask_type"] = _choice("mask type", p["mask_type"], MASK_TYPES)
        p["size_fraction"] = _open_unit("box size fraction", p["size_fraction"])
        p["slice_fraction"] = _open_unit("slice dropout fraction", p["slice_fraction"])
        n_blobs = _number("n_blobs", p["n_blobs"])
        if n_blobs < 1 or n_blobs != int(n_blobs):
            raise MedinvertError(f"n_blobs must be a positive integer, got {p['n_blobs']!r}")
        p["n_blobs"] = int(n_blobs)
        radius = p["radius_fraction"]
        if isinstance(radius, str) or not hasattr(radius, "__len__") or len(radius) != 2:
            raise MedinvertError(f"radius_fraction must be two numbers (min, max), got {radius!r}")
        lo, hi = (_number("radius_fraction", v) for v in radius)
        if not 0 < lo <= hi < 1:
            raise MedinvertError(f"radius_fraction must satisfy 0 < min <= max < 1, got {list(radius)}")
        p["radius_fraction"] = [lo, hi]
        if p["mask_type"] == "file" and p["mask_file"] is None:
            raise MedinvertError("mask type 'file' needs a mask file (mask_file / --mask-file)")
        if p["mask_file"] is not None:
            if p["mask_type"] != "file":
                raise MedinvertError(f"a mask file is only used with mask type 'file', not {p['mask_type']!r}")
            p["mask_file"] = str(Path(p["mask_file"]))
    elif kind == "noise":
        p["noise_model"] = _choice("noise model", p["noise_model"], NOISE_MODELS)
    else:
        p["blur"] = _choice("blur type", p["blur"], BLUR_TYPES)
        p["blur_sigma"] = _number("blur_sigma", p["blur_sigma"])
        if p["blur_sigma"] <= 0:
            raise MedinvertError(f"blur sigma must be positive, got {p['blur_sigma']:g}")
        p["motion_length"] = _number("motion_length", p["motion_length"])
        if p["motion_length"] < 1:
            raise MedinvertError(f"motion length must be at least 1 pixel, got {p['motion_length']:g}")
        p["motion_angle"] = _number("motion_angle", p["motion_angle"])
    return p


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def parse_corruption_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse a corruption spec (grammar in the module docstring) into ``(kind, normalised params)``.

    >>> parse_corruption_spec("kspace:8")[1]["center_fraction"]
    0.04
    >>> parse_corruption_spec("blur:motion:9:45")[1]["motion_angle"]
    45.0
    """
    if not isinstance(spec, str) or not spec.strip():
        raise MedinvertError(f"empty corruption spec {spec!r}")
    kind, *fields = spec.strip().split(":")
    kind = _choice("corruption kind", kind.strip().lower(), KINDS)
    if kind == "mask" and len(fields) >= 2 and fields[0] == "file" and "=" not in fields[1]:
        fields = ["file", "mask_file=" + ":".join(fields[1:])]
    positional = _POSITIONAL.get(kind, ())
    if kind == "blur" and fields and "=" not in fields[0]:
        positional = ("blur", "motion_length", "motion_angle") if fields[0] == "motion" else ("blur", "blur_sigma")
    params: dict[str, Any] = {}
    seen_keyword = False
    for index, field in enumerate(fields):
        if field == "":
            raise MedinvertError(f"empty field {index + 1} in corruption spec {spec!r}")
        if "=" in field:
            key, _, text = field.partition("=")
            key = key.strip().replace("-", "_")
            seen_keyword = True
            if key == "radius_fraction":
                value: Any = [_value(v) for v in text.split(",")]
            else:
                value = text if key == "mask_file" else _value(text)
        else:
            if seen_keyword:
                raise MedinvertError(f"positional value {field!r} after key=value in corruption spec {spec!r}")
            if index >= len(positional):
                raise MedinvertError(f"too many values in corruption spec {spec!r} (a {kind} spec takes "
                                     f"{':'.join(p.upper() for p in positional) or 'no values'})")
            key, value = positional[index], _value(field)
        if key in params:
            raise MedinvertError(f"parameter {key} given twice in corruption spec {spec!r}")
        params[key] = value
    return kind, normalize_params(kind, params)
