"""`Observation`: what a corruption produced, everything a reconstruction needs, and its file format.

Layouts (volume = ``(X, Y, Z)``, in-plane axes 0 and 1, see `medinvert.operators.layout`):

* ``y`` -- the measured data, stored *slice-wise* ``(Z, X, Y)`` so that ``operator().forward`` of
  the slice stack is directly comparable with it.  complex64 centred k-space for ``kspace`` (zero
  where not measured), float32 images for ``mask`` (zero where missing), ``noise`` and ``blur``.
* ``mask`` -- bool ``(X, Y, Z)``, True = measured / kept.  For ``kspace`` voxel ``(i, j, k)`` is True
  when k-space sample ``(i, j)`` of slice ``k`` was measured, in the centred order of the orthonormal
  2-D FFT over array axes 0 and 1.  All True for ``noise`` and ``blur``.
* ``adjoint`` -- ``A^H y`` as a real float32 volume ``(X, Y, Z)``.  For ``kspace`` it is the real part
  of ``F^H (M y)``, which is the exact adjoint of ``A`` restricted to real images (``Re <A x, y> =
  <x, Re A^H y>`` for real ``x``); the complex ``y`` is kept, so nothing is lost.
* ``descriptor`` -- float32 ``(DESCRIPTOR_LENGTH,)`` conditioning vector (`medinvert.operators.descriptor`).
* ``kernel`` -- float32 ``(kh, kw)`` blur kernel (``blur`` only, else None).
* ``affine`` -- float64 ``(4, 4)`` voxel->RAS affine of the source volume; ``source`` its path.
* ``nifti_header`` -- the source's raw NIfTI header (348 or 540 bytes) when it was a NIfTI file, so a
  reconstruction from the saved observation keeps its qform / sform codes, units and description.

File format (open, no pickles), written by `Observation.save(stem)`:

``<stem>_observation.npz`` -- a standard numpy ``.npz`` (zip of ``.npy`` files, deflate-compressed,
fixed time stamps so the bytes are reproducible) holding

============  =========  =============  ==================================================
array         dtype      shape          meaning
============  =========  =============  ==================================================
y             float32    (Z, X, Y)      measured image (mask / noise / blur)
y_real        float32    (Z, X, Y)      real part of the measured k-space (kspace)
y_imag        float32    (Z, X, Y)      imaginary part of the measured k-space (kspace)
mask          uint8      (X, Y, Z)      1 = measured / kept
adjoint       float32    (X, Y, Z)      A^H y
descriptor    float32    (L,)           conditioning vector, L = DESCRIPTOR_LENGTH
affine        float64    (4, 4)         voxel -> RAS
kernel        float32    (kh, kw)       blur kernel (blur only)
nifti_header  uint8      (348,)/(540,)  raw NIfTI header of the source (optional)
============  =========  =============  ==================================================

``<stem>_observation.json`` -- UTF-8 JSON object: ``format`` ("medinvert-observation"),
``format_version`` (2; version 1 files, without ``nifti_header`` and ``modality``, are read too),
``medinvert_version``, ``kind``, ``params`` (the corruption parameters,
e.g. acceleration, center_fraction, pattern, seed, sigma, noise_model, blur spec), ``source``,
``modality`` (of the source, or null),
``layout`` (axis order of each array), ``arrays`` (name -> ``{"shape", "dtype"}``), ``npz`` (file name
of the archive, informational) and ``npz_sha256`` (SHA-256 of the ``.npz`` bytes).

`Observation.load` reads the pair, verifies the checksum, keys, shapes and dtypes, and raises
`MedinvertError` naming the offending file for anything wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medinvert.errors import MedinvertError
from medinvert.operators.base import LinearOperator
from medinvert.operators.blur import BlurOperator
from medinvert.operators.descriptor import DESCRIPTOR_LENGTH, KINDS
from medinvert.operators.fft import ifft2c
from medinvert.operators.identity import IdentityOperator
from medinvert.operators.inpaint import InpaintOperator
from medinvert.operators.kspace import KspaceOperator
from medinvert.operators.layout import as_plain_tensor, slices_to_volume, volume_to_slices

__all__ = ["Observation", "observation_paths", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "medinvert-observation"
FORMAT_VERSION = 2  # 2 added the optional nifti_header array and modality; 1 is still read
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_LAYOUT = {"y": "Z,X,Y", "y_real": "Z,X,Y", "y_imag": "Z,X,Y", "mask": "X,Y,Z", "adjoint": "X,Y,Z",
           "descriptor": "L", "affine": "4,4", "kernel": "kh,kw", "nifti_header": "bytes"}
_HEADER_SIZES = (348, 540)  # NIfTI-1, NIfTI-2


def observation_paths(stem: str | Path) -> tuple[Path, Path]:
    """``(<stem>_observation.npz, <stem>_observation.json)``."""
    stem = str(stem)
    return Path(f"{stem}_observation.npz"), Path(f"{stem}_observation.json")


def _resolve(path: str | Path) -> tuple[Path, Path]:
    """The (npz, json) pair for a stem, a ``*_observation`` name, or either file of the pair."""
    text = str(path)
    for suffix in ("_observation.json", "_observation.npz", "_observation"):
        if text.endswith(suffix):
            return observation_paths(text[: -len(suffix)])
    return observation_paths(text)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic ``.npz``: sorted members, fixed time stamps, deflate (level 1) compression."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=1)  # fast; zeros still shrink
    return buffer.getvalue()


@dataclass(eq=False)
class Observation:
    """A corrupted measurement of one volume (layouts in the module docstring).

    Attributes:
        kind: "kspace", "mask", "noise" or "blur".
        y: measured data ``(Z, X, Y)``; complex64 for kspace, float32 otherwise.
        mask: bool ``(X, Y, Z)``, True = measured / kept.
        params: JSON-serialisable corruption parameters (normalised, seed included).
        adjoint: float32 ``(X, Y, Z)``, ``A^H y`` (real part for kspace).
        descriptor: float32 ``(DESCRIPTOR_LENGTH,)``.
        affine: float64 ``(4, 4)`` voxel->RAS affine of the source volume.
        kernel: float32 ``(kh, kw)`` for blur, None otherwise.
        source: path of the source volume, or None.
        nifti_header: raw NIfTI header bytes of the source, or None.
        modality: canonical modality of the source (from its name or DICOM series description), or None.
    """

    kind: str
    y: torch.Tensor
    mask: torch.Tensor
    params: dict[str, Any]
    adjoint: torch.Tensor
    descriptor: torch.Tensor
    affine: torch.Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))
    kernel: torch.Tensor | None = None
    source: str | None = None
    nifti_header: bytes | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown observation kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        self.y = as_plain_tensor(self.y)
        self.mask = as_plain_tensor(self.mask)
        self.adjoint = as_plain_tensor(self.adjoint)
        self.descriptor = as_plain_tensor(self.descriptor)
        self.affine = as_plain_tensor(self.affine).to(torch.float64)
        want_y = torch.complex64 if self.kind == "kspace" else torch.float32
        if self.y.dtype != want_y or self.y.ndim != 3:
            raise ValueError(f"y must be a 3-D {want_y} tensor (Z, X, Y), got {self.y.dtype} {tuple(self.y.shape)}")
        z, x, yy = self.y.shape
        if self.mask.dtype != torch.bool or tuple(self.mask.shape) != (x, yy, z):
            raise ValueError(f"mask must be bool of shape {(x, yy, z)}, got {self.mask.dtype} {tuple(self.mask.shape)}")
        if self.adjoint.dtype != torch.float32 or tuple(self.adjoint.shape) != (x, yy, z):
            raise ValueError(f"adjoint must be float32 of shape {(x, yy, z)}, got {self.adjoint.dtype} "
                             f"{tuple(self.adjoint.shape)}")
        if self.descriptor.dtype != torch.float32 or tuple(self.descriptor.shape) != (DESCRIPTOR_LENGTH,):
            raise ValueError(f"descriptor must be float32 of shape ({DESCRIPTOR_LENGTH},), got "
                             f"{self.descriptor.dtype} {tuple(self.descriptor.shape)}")
        if tuple(self.affine.shape) != (4, 4):
            raise ValueError(f"affine must be 4x4, got {tuple(self.affine.shape)}")
        if (self.kind == "blur") != (self.kernel is not None):
            raise ValueError("a kernel is required for blur observations and only for them")
        if self.kernel is not None:
            self.kernel = as_plain_tensor(self.kernel)
            if self.kernel.dtype != torch.float32 or self.kernel.ndim != 2:
                raise ValueError(f"kernel must be a 2-D float32 tensor, got {self.kernel.dtype} "
                                 f"{tuple(self.kernel.shape)}")
        try:  # canonical JSON types (lists, not tuples) so a save/load round trip is exact
            self.params = json.loads(json.dumps(dict(self.params), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params must be JSON-serialisable: {exc}") from None
        if self.source is not None:
            self.source = str(self.source)
        if self.nifti_header is not None:
            self.nifti_header = bytes(self.nifti_header)
            if len(self.nifti_header) not in _HEADER_SIZES:
                raise ValueError(f"nifti_header must be {' or '.join(map(str, _HEADER_SIZES))} bytes, got "
                                 f"{len(self.nifti_header)}")

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape ``(X, Y, Z)``."""
        return tuple(int(s) for s in self.mask.shape)  # type: ignore[return-value]

    def operator(self, **kwargs: Any) -> LinearOperator:
        """The forward operator ``A`` acting on the slice stack ``(Z, X, Y)`` (so ``operator().forward(
        volume_to_slices(x))`` reproduces ``y`` up to noise).  ``kwargs`` go to `BlurOperator` (mu,
        cg_iterations)."""
        if self.kind == "kspace":
            return KspaceOperator(volume_to_slices(self.mask).contiguous())
        if self.kind == "mask":
            return InpaintOperator(volume_to_slices(self.mask).contiguous())
        if self.kind == "noise":
            return IdentityOperator()
        assert self.kernel is not None
        return BlurOperator(self.kernel, **kwargs)

    def image(self) -> torch.Tensor:
        """The corrupted image a person looks at, float32 ``(X, Y, Z)``: the zero-filled magnitude
        ``|F^H y|`` for kspace, ``y`` itself otherwise."""
        data = ifft2c(self.y).abs().to(torch.float32) if self.kind == "kspace" else self.y
        return slices_to_volume(data).contiguous()

    def with_measurement(self, y: torch.Tensor) -> "Observation":
        """A copy with measurement ``y`` (the layout and dtype of ``self.y``) and its adjoint recomputed."""
        adjoint = self.operator().adjoint(y)
        adjoint = adjoint.real if adjoint.is_complex() else adjoint
        return replace(self, y=y, adjoint=slices_to_volume(adjoint.to(torch.float32)).contiguous())

    # ------------------------------------------------------------------ file format
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "mask": self.mask.numpy().astype(np.uint8),
            "adjoint": self.adjoint.numpy(),
            "descriptor": self.descriptor.numpy(),
            "affine": self.affine.numpy(),
        }
        if self.kind == "kspace":
            arrays["y_real"] = self.y.real.contiguous().numpy()
            arrays["y_imag"] = self.y.imag.contiguous().numpy()
        else:
            arrays["y"] = self.y.numpy()
        if self.kernel is not None:
            arrays["kernel"] = self.kernel.numpy()
        if self.nifti_header is not None:
            arrays["nifti_header"] = np.frombuffer(self.nifti_header, dtype=np.uint8).copy()
        return arrays

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>_observation.npz`` and ``<stem>_observation.json`` (atomically, npz first,
        creating missing folders); returns their paths.  Same observation -> same bytes."""
        from medinvert import __version__
        from medinvert.io.atomic import atomic_write_bytes, atomic_write_text

        npz_path, json_path = observation_paths(stem)
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays()
        blob = _npz_bytes(arrays)
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "medinvert_version": __version__,
            "kind": self.kind,
            "params": self.params,
            "source": self.source,
            "modality": self.modality,
            "layout": {name: _LAYOUT[name] for name in sorted(arrays)},
            "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in sorted(arrays.items())},
            "npz": npz_path.name,
            "npz_sha256": hashlib.sha256(blob).hexdigest(),
        }
        atomic_write_bytes(npz_path, blob)
        atomic_write_text(json_path, json.dumps(header, indent=2, sort_keys=True, allow_nan=False) + "\n")
        return npz_path, json_path

    @classmethod
    def load(cls, path: str | Path) -> "Observation":
        """Read an observation saved by `save`; ``path`` is the stem, the ``.json`` or the ``.npz``.

        Raises `MedinvertError` (naming the file) for a missing file, bad JSON, a wrong format or
        version, a checksum mismatch, an unreadable archive, missing / unexpected arrays, or arrays
        whose shape or dtype disagrees with the sidecar or with each other.
        """
        npz_path, json_path = _resolve(path)
        header = _read_header(json_path)
        if not npz_path.is_file():
            raise MedinvertError("observation data file not found (expected next to its .json sidecar)", path=npz_path)
        blob = npz_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != header["npz_sha256"]:
            raise MedinvertError("checksum mismatch: the file was modified or corrupted since it was written "
                                 f"(sha256 recorded in {json_path.name})", path=npz_path)
        arrays = _read_arrays(blob, npz_path)
        kind = header["kind"]
        expected = {"mask", "adjoint", "descriptor", "affine"}
        expected |= {"y_real", "y_imag"} if kind == "kspace" else {"y"}
        if kind == "blur":
            expected.add("kernel")
        missing, extra = expected - set(arrays), set(arrays) - expected - {"nifti_header"}
        if missing or extra:
            parts = ([f"missing arrays {sorted(missing)}"] if missing else []) + \
                    ([f"unexpected arrays {sorted(extra)}"] if extra else [])
            raise MedinvertError(f"not a valid {kind} observation: {'; '.join(parts)}", path=npz_path)
        declared = header["arrays"]
        for name, array in arrays.items():
            info = declared.get(name)
            if not isinstance(info, dict) or list(array.shape) != info.get("shape") or array.dtype.name != info.get("dtype"):
                raise MedinvertError(f"array {name!r} is {array.dtype.name} {list(array.shape)} but the sidecar "
                                     f"declares {info}", path=npz_path)
        want = {"mask": "uint8", "adjoint": "float32", "descriptor": "float32", "affine": "float64",
                "y": "float32", "y_real": "float32", "y_imag": "float32", "kernel": "float32",
                "nifti_header": "uint8"}
        for name, array in arrays.items():
            if array.dtype.name != want[name]:
                raise MedinvertError(f"array {name!r} has dtype {array.dtype.name}, expected {want[name]}", path=npz_path)
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise MedinvertError(f"array {name!r} contains NaN or Inf", path=npz_path)
        if np.any(arrays["mask"] > 1):
            raise MedinvertError("array 'mask' must contain only 0 and 1", path=npz_path)
        if kind == "kspace":
            if arrays["y_real"].shape != arrays["y_imag"].shape:
                raise MedinvertError("arrays 'y_real' and 'y_imag' differ in shape", path=npz_path)
            y = torch.complex(torch.from_numpy(arrays["y_real"]), torch.from_numpy(arrays["y_imag"]))
        else:
            y = torch.from_numpy(arrays["y"])
        try:
            return cls(
                kind=kind, y=y, mask=torch.from_numpy(arrays["mask"]) != 0, params=header["params"],
                adjoint=torch.from_numpy(arrays["adjoint"]), descriptor=torch.from_numpy(arrays["descriptor"]),
                affine=torch.from_numpy(arrays["affine"]),
                kernel=torch.from_numpy(arrays["kernel"]) if "kernel" in arrays else None,
                source=header.get("source"),
                nifti_header=arrays["nifti_header"].tobytes() if "nifti_header" in arrays else None,
                modality=header.get("modality") if isinstance(header.get("modality"), str) else None,
            )
        except ValueError as exc:
            raise MedinvertError(f"inconsistent observation: {exc}", path=npz_path) from None


def _read_header(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise MedinvertError("observation sidecar not found", path=json_path)
    try:
        header = json.loads(json_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MedinvertError("observation sidecar is not UTF-8 text", path=json_path) from None
    except json.JSONDecodeError as exc:
        raise MedinvertError(f"observation sidecar is not valid JSON ({exc.msg} at line {exc.lineno} column "
                             f"{exc.colno})", path=json_path) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise MedinvertError(f"not a medinvert observation sidecar (missing \"format\": \"{FORMAT_NAME}\")",
                             path=json_path)
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise MedinvertError(f"unsupported observation format_version {version!r} (this medinvert reads "
                             f"version {FORMAT_VERSION})", path=json_path)
    missing = [k for k in ("kind", "params", "arrays", "npz_sha256") if k not in header]
    if missing:
        raise MedinvertError(f"observation sidecar lacks keys {missing}", path=json_path)
    if header["kind"] not in KINDS:
        raise MedinvertError(f"unknown observation kind {header['kind']!r}", path=json_path)
    if not isinstance(header["params"], dict) or not isinstance(header["arrays"], dict) \
            or not isinstance(header["npz_sha256"], str):
        raise MedinvertError("observation sidecar has malformed params / arrays / npz_sha256 entries",
                             path=json_path)
    return header


def _read_arrays(blob: bytes, npz_path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as exc:  # zipfile / numpy format errors, pickled object arrays
        raise MedinvertError(f"observation data cannot be read ({type(exc).__name__}: {exc})", path=npz_path) from None
