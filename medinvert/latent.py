"""`Latent`: an inverted volume -- the solver state plus everything `medinvert.generate` needs.

A latent is self-contained: the state (a tensor, a pair, or the int64 pair of the bit-exact solver),
the method and its options, the schedule and the exact sigma grid, the slice batching and thread
count (both fix the network's bits), the model reference with its SHA-256, the source volume's
geometry, the power-of-two intensity scale and the exception patch of voxels the fixed-point grid
cannot hold.  The file format is documented in ``docs/latent-format.md``; in short:

one ``.npz`` (an uncompressed zip of ``.npy`` members, fixed time stamps, no pickles) holding

=====================  =========  ==============  ==============================================
array                  dtype      shape           meaning
=====================  =========  ==============  ==============================================
meta_json              unicode    ()              JSON object: every scalar field + array checksums
sigmas                 float64    (steps + 1,)    the generation grid, decreasing, last entry 0
affine                 float64    (4, 4)          voxel -> RAS affine of the source volume
state.<field>          see below  (Z, 1, X, Y)    the solver state's tensors (slice batch layout)
patch_index            int64      (P,)            flat C-order indices into the (X, Y, Z) volume
patch_values           float32    (P,)            the original float32 values at those voxels
nifti_header           uint8      (348,) / (540,) raw NIfTI header of the source (if it had one)
cond_descriptor        float32    (K,)            condition descriptor (if a condition was given)
cond_image             float32    (X, Y, Z)       conditioning image: A^H y, or the CS-TV guess (if the model uses it)
=====================  =========  ==============  ==============================================

State fields: ``ddim`` / ``ode`` / ``negprompt`` store ``state`` (the ``xbar`` tensor); ``edict``
``state.x``, ``state.y`` (in the option ``state_dtype``, float64 by default); ``bdia`` ``state.x``,
``state.x_next`` (in the run's ``dtype``); ``exact`` ``state.z``, ``state.partner`` (int64 on the grid
``2^-frac_bits``); ``nulltext`` ``state.xbar`` ``(Z, 1, X, Y)`` (run ``dtype``), ``state.null_conds``
``(steps, Z, K)`` (the optimised null condition of every step and slice, network dtype),
``state.iterations`` and ``state.backward`` ``(steps,)`` int64 (inner forward / backward passes).

Guidance: the latent's ``guidance`` is the one record of the classifier-free guidance weight.  For
the guided-inversion methods (``nulltext``, ``negprompt``) it holds the resolved weight ``w > 1``,
their ``guidance`` option is stored as null, and a ``NullTextState``'s own weight is not stored
again (it is restored from ``guidance`` on load).

Versions: format 2 (this one) added ``nulltext`` states, the ``edict`` option ``state_dtype``, the
``ode`` option name ``ode_method`` (formerly ``method``) and the guidance rule above.  Format-1 files
are read and upgraded on load (``method`` -> ``ode_method``; ``state_dtype`` = the file's ``dtype``,
which is what a format-1 EDICT state was computed in; the guided methods' weight resolved into
``guidance``), so they generate exactly what they generated before.

Same latent -> same bytes: members are sorted, time stamps fixed, JSON keys sorted, and nothing
run-dependent (times, host names) is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medinvert.errors import MedinvertError
from medinvert.io.atomic import atomic_write_path
from medinvert.solvers import SOLVERS, BdiaState, EdictState, FixedPointState, NullTextState
from medinvert.solvers.guided import guidance_weight

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "STATE_CLASSES", "Latent"]

FORMAT_NAME = "medinvert-latent"
FORMAT_VERSION = 2

#: state kind (as written in the file) -> state class; ``"tensor"`` is a plain tensor
STATE_CLASSES: dict[str, type | None] = {
    "tensor": None,
    "EdictState": EdictState,
    "BdiaState": BdiaState,
    "FixedPointState": FixedPointState,
    "NullTextState": NullTextState,
}
#: per state kind, the state fields that are not ``(Z, C, X, Y)`` image tensors, and the scalar
#: fields kept elsewhere in the file (restored from the metadata key named)
_NON_IMAGE_FIELDS: dict[str, tuple[str, ...]] = {"NullTextState": ("null_conds", "iterations", "backward")}
_SHARED_SCALARS: dict[str, dict[str, str]] = {"NullTextState": {"guidance": "guidance"}}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_STATE_PREFIX = "state."
_FIXED = ("meta_json", "sigmas", "affine", "patch_index", "patch_values")
_OPTIONAL = ("nifti_header", "cond_descriptor", "cond_image")
_DTYPES = ("float32", "float64")


@dataclass(eq=False)
class Latent:
    """An inverted volume (see the module docstring for the file layout).

    Attributes:
        state: the solver state at ``sigmas[0]``: a ``(Z, 1, X, Y)`` tensor (``ddim``, ``ode``,
            ``negprompt``), an `EdictState` / `BdiaState` pair, a `FixedPointState` (int64, ``exact``)
            or a `NullTextState` (``nulltext``).
        method: solver name (`medinvert.solvers.SOLVERS`).
        options: the method options used (defaults filled in), JSON-serialisable.
        schedule: ``make_schedule(**schedule)`` rebuilds the VP schedule.
        prediction: what the network predicts (``"eps"``, ``"x0"``, ``"v"``).
        steps: number of steps; ``sigmas`` has ``steps + 1`` entries.
        spacing: timestep spacing the grid was made with (``Schedule.sigmas``).
        sigmas: the generation grid itself (decreasing, ends with 0).
        dtype: ``"float32"`` or ``"float64"``: the network's compute dtype and the float state's dtype
            (``edict``: its pair is in the option ``state_dtype``).
        batch_size: slices per network call (fixed chunks: part of what makes eps bitwise reproducible).
        threads: intra-op threads used (`medinvert.determinism.deterministic`).
        guidance: classifier-free guidance weight -- the one record of it (for ``nulltext`` /
            ``negprompt`` the resolved ``w > 1``; see the module docstring).
        model: model reference: ``kind`` (``"checkpoint"``, ``"random"``, ``"module"``), ``name``,
            ``path``, ``sha256``, ``sha256_of`` (``"file"`` or ``"state_dict"``), ``architecture``.
        shape: ``(X, Y, Z)`` of the volume as `medinvert.load_volume` returns it.
        affine: float64 ``(4, 4)`` voxel -> RAS affine.
        scale: the power-of-two intensity scale (the network saw ``volume / scale``).
        source_dtype: dtype of the data before the float32 conversion (e.g. ``"int16"``).
        source: path of the source volume, or None.
        source_meta: JSON-able metadata of the source (modality, spacing, stored shape ...).
        nifti_header: raw NIfTI header bytes of the source, or None.
        patch_index: int64 ``(P,)`` flat indices (C order, ``(X, Y, Z)``) of voxels restored verbatim.
        patch_values: float32 ``(P,)`` their original values.
        cond_descriptor: float32 ``(K,)`` condition descriptor, or None (null condition).
        cond_image: float32 ``(X, Y, Z)`` conditioning image (unnormalised), or None.
        version: medinvert version that wrote it.
        stats: run statistics of the call that made this object (nfe, seconds); never saved.
    """

    state: Any
    method: str
    options: dict[str, Any]
    schedule: dict[str, Any]
    prediction: str
    steps: int
    spacing: str
    sigmas: tuple[float, ...]
    dtype: str
    batch_size: int
    threads: int
    guidance: float
    model: dict[str, Any]
    shape: tuple[int, int, int]
    affine: np.ndarray
    scale: float
    source_dtype: str
    source: str | None
    source_meta: dict[str, Any]
    nifti_header: bytes | None
    patch_index: np.ndarray
    patch_values: np.ndarray
    cond_descriptor: np.ndarray | None
    cond_image: np.ndarray | None
    version: str
    stats: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def frac_bits(self) -> int | None:
        """Fixed-point grid exponent ``q`` (grid ``2^-q``) of an ``exact`` latent, else None."""
        return self.state.frac_bits if isinstance(self.state, FixedPointState) else None

    @property
    def patch_size(self) -> int:
        """Number of voxels restored from the exception patch."""
        return int(self.patch_index.shape[0])

    def sigma_tensor(self) -> torch.Tensor:
        """The grid as a float64 tensor (what the solvers take)."""
        return torch.tensor(self.sigmas, dtype=torch.float64)

    # ------------------------------------------------------------------ serialisation
    def _state_arrays(self) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """(kind, scalar fields, arrays) of the state."""
        if isinstance(self.state, torch.Tensor):
            return "tensor", {}, {"state": _to_numpy(self.state)}
        kind = type(self.state).__name__
        if kind not in STATE_CLASSES:
            raise MedinvertError(f"cannot save a state of type {kind}")
        scalars: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        shared = _SHARED_SCALARS.get(kind, {})
        for f in dataclasses.fields(self.state):
            value = getattr(self.state, f.name)
            if f.name == "sigmas":
                if tuple(value) != tuple(self.sigmas):
                    raise MedinvertError("the state belongs to another sigma grid than the latent records")
            elif f.name in shared:
                if value != getattr(self, shared[f.name]):
                    raise MedinvertError(f"the {kind}'s {f.name} {value} differs from the latent's "
                                         f"{shared[f.name]} {getattr(self, shared[f.name])}")
            elif isinstance(value, torch.Tensor):
                arrays[_STATE_PREFIX + f.name] = _to_numpy(value)
            else:
                scalars[f.name] = value
        return kind, scalars, arrays

    def arrays_and_meta(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything the file holds: the arrays and the JSON-able metadata (without checksums)."""
        kind, scalars, state_arrays = self._state_arrays()
        arrays: dict[str, np.ndarray] = {
            "sigmas": np.asarray(self.sigmas, dtype=np.float64),
            "affine": np.asarray(self.affine, dtype=np.float64),
            "patch_index": np.asarray(self.patch_index, dtype=np.int64),
            "patch_values": np.asarray(self.patch_values, dtype=np.float32),
            **state_arrays,
        }
        if self.nifti_header is not None:
            arrays["nifti_header"] = np.frombuffer(bytes(self.nifti_header), dtype=np.uint8).copy()
        if self.cond_descriptor is not None:
            arrays["cond_descriptor"] = np.asarray(self.cond_descriptor, dtype=np.float32)
        if self.cond_image is not None:
            arrays["cond_image"] = np.asarray(self.cond_image, dtype=np.float32)
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "medinvert_version": self.version,
            "method": self.method,
            "options": self.options,
            "schedule": self.schedule,
            "prediction": self.prediction,
            "steps": int(self.steps),
            "spacing": self.spacing,
            "dtype": self.dtype,
            "batch_size": int(self.batch_size),
            "threads": int(self.threads),
            "guidance": float(self.guidance),
            "model": self.model,
            "grid": {"frac_bits": self.frac_bits},
            "state": {"kind": kind, "fields": scalars, "arrays": sorted(state_arrays)},
            "volume": {
                "shape": [int(s) for s in self.shape],
                "source": self.source,
                "source_dtype": self.source_dtype,
                "meta": self.source_meta,
            },
            "intensity": {"scale": float(self.scale), "normalisation": "volume / power_of_two_scale(robust_scale(volume))"},
            "patch": {"size": self.patch_size},
            "condition": None if self.cond_descriptor is None else {"image": self.cond_image is not None},
        }
        return arrays, meta

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the latent to ``path`` (one ``.npz``) atomically; returns ``Path(path)``.

        Deterministic: the same latent gives the same bytes.
        """
        target = Path(path)
        arrays, meta = self.arrays_and_meta()
        meta["arrays"] = {name: _describe(a) for name, a in sorted(arrays.items())}
        try:
            text = json.dumps(meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise MedinvertError(f"latent metadata is not JSON-serialisable: {exc}", path=target) from None
        arrays["meta_json"] = np.array(text)
        with atomic_write_path(target) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name in sorted(arrays):
                    info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
                    info.external_attr = 0o644 << 16
                    with archive.open(info, "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, _contiguous(arrays[name]), allow_pickle=False)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Latent":
        """Read a latent written by `save`.

        Raises `MedinvertError` naming the file when it is missing, not a readable ``.npz``, not a
        medinvert latent, of an unsupported version, or when an array is missing, unexpected, of
        the wrong shape / dtype, or differs from its recorded SHA-256 (corrupted or edited).
        """
        source = Path(path)
        if not source.is_file():
            raise MedinvertError("latent file not found", path=source)
        arrays = _read_npz(source)
        if "meta_json" not in arrays:
            raise MedinvertError("not a medinvert latent (no meta_json entry)", path=source)
        meta = _parse_meta(arrays.pop("meta_json"), source)
        _check_arrays(arrays, meta, source)
        return _from_parts(arrays, meta, source)


# ---------------------------------------------------------------------- helpers
def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").contiguous().numpy()


def _contiguous(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (``np.ascontiguousarray`` would turn 0-d into 1-d)."""
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _describe(array: np.ndarray) -> dict[str, Any]:
    data = _contiguous(array)
    return {"shape": [int(s) for s in data.shape], "dtype": data.dtype.str,
            "sha256": hashlib.sha256(data.tobytes()).hexdigest()}


def _read_npz(source: Path) -> dict[str, np.ndarray]:
    try:
        with open(source, "rb") as handle:
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise MedinvertError("not a latent archive (a single .npy array, expected an .npz)", path=source)
            with archive:
                return {name: archive[name] for name in archive.files}
    except MedinvertError:
        raise
    except Exception as exc:  # zipfile / numpy format errors, truncation, pickled object arrays
        reason = " ".join(str(exc).split())[:120]
        raise MedinvertError(f"not a readable latent file, corrupted or truncated ({type(exc).__name__}: {reason})",
                             path=source) from None


def _parse_meta(entry: np.ndarray, source: Path) -> dict[str, Any]:
    if entry.dtype.kind != "U" or entry.shape != ():
        raise MedinvertError("latent meta_json entry is not a text scalar", path=source)
    try:
        meta = json.loads(str(entry))
    except json.JSONDecodeError as exc:
        raise MedinvertError(f"latent meta_json is not valid JSON ({exc.msg})", path=source) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise MedinvertError(f"not a medinvert latent (format is not {FORMAT_NAME!r})", path=source)
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise MedinvertError(f"unsupported latent format_version {version!r} (this medinvert reads 1 to {FORMAT_VERSION})",
                             path=source)
    required = ("method", "options", "schedule", "prediction", "steps", "spacing", "dtype", "batch_size", "threads",
                "guidance", "model", "state", "volume", "intensity", "arrays", "medinvert_version")
    missing = [key for key in required if key not in meta]
    if missing:
        raise MedinvertError(f"latent metadata lacks {', '.join(missing)}", path=source)
    if meta["method"] not in SOLVERS:
        raise MedinvertError(f"latent names an unknown method {meta['method']!r}; valid: {', '.join(SOLVERS)}",
                             path=source)
    if meta["dtype"] not in _DTYPES:
        raise MedinvertError(f"latent dtype {meta['dtype']!r} is not one of {', '.join(_DTYPES)}", path=source)
    for key in ("steps", "batch_size", "threads"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 1:
            raise MedinvertError(f"latent {key} must be a positive integer, got {meta[key]!r}", path=source)
    for key in ("options", "schedule", "model", "state", "volume", "intensity", "arrays"):
        if not isinstance(meta[key], dict):
            raise MedinvertError(f"latent metadata entry {key!r} is malformed", path=source)
    if meta["state"].get("kind") not in STATE_CLASSES:
        raise MedinvertError(f"latent state kind {meta['state'].get('kind')!r} is unknown", path=source)
    if not _finite_number(meta["guidance"]):
        raise MedinvertError(f"latent guidance {meta['guidance']!r} is not a finite number", path=source)
    _upgrade(meta, version, source)
    scale = meta["intensity"].get("scale")
    if not isinstance(scale, (int, float)) or not scale > 0 or not math.isfinite(scale) \
            or math.frexp(float(scale))[0] != 0.5:
        raise MedinvertError(f"latent intensity scale {scale!r} is not a positive power of two", path=source)
    return meta


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # a JSON integer beyond float range
        return False


def _upgrade(meta: dict[str, Any], version: int, source: Path) -> None:
    """Bring the options of a format-``version`` file to the current format (in place).

    Format 1 -> 2: the ``ode`` option ``method`` is now ``ode_method``; an ``edict`` pair was computed in
    the run's ``dtype`` (now the option ``state_dtype``).  Every version: the guided methods' weight
    lives in ``guidance`` alone (`guidance_weight` of the option and the recorded ``guidance``, the
    rule `medinvert.inversion.invert` applies), their ``guidance`` option becomes null.
    """
    options = meta["options"]
    if version < 2:
        if meta["method"] == "ode" and "method" in options:
            options["ode_method"] = options.pop("method")
        if meta["method"] == "edict":
            options.setdefault("state_dtype", meta["dtype"])
    if "guidance" in SOLVERS[meta["method"]].defaults:
        try:
            meta["guidance"] = guidance_weight(options.get("guidance"), meta["guidance"], meta["method"],
                                               "the latent's guidance")
        except MedinvertError as exc:
            raise MedinvertError(f"latent guidance is inconsistent: {exc}", path=source) from None
        options["guidance"] = None


def _check_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any], source: Path) -> None:
    declared: dict[str, Any] = meta["arrays"]
    state_names = set(meta["state"].get("arrays", []))
    expected = set(_FIXED[1:]) | state_names
    missing = sorted((expected | set(declared)) - set(arrays))
    unexpected = sorted(set(arrays) - set(declared))
    if missing or unexpected or not expected <= set(declared):
        parts = ([f"missing arrays {missing}"] if missing else []) + ([f"unexpected arrays {unexpected}"] if unexpected else [])
        raise MedinvertError(f"latent arrays do not match its metadata: {'; '.join(parts) or 'undeclared arrays'}",
                             path=source)
    if set(arrays) - expected - set(_OPTIONAL):
        raise MedinvertError(f"latent holds unknown arrays {sorted(set(arrays) - expected - set(_OPTIONAL))}", path=source)
    for name, array in arrays.items():
        info = declared[name]
        got = _describe(array)
        if not isinstance(info, dict) or info.get("shape") != got["shape"] or info.get("dtype") != got["dtype"]:
            raise MedinvertError(f"latent array {name!r} is {got['dtype']} {got['shape']} but the metadata declares "
                                 f"{info}", path=source)
        if info.get("sha256") != got["sha256"]:
            raise MedinvertError(f"latent array {name!r} does not match its SHA-256 (corrupted or edited file)",
                                 path=source)


def _state_from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any], sigmas: tuple[float, ...],
                       source: Path) -> Any:
    info = meta["state"]
    cls = STATE_CLASSES[info["kind"]]
    if cls is None:
        if "state" not in arrays:
            raise MedinvertError("latent has no 'state' array", path=source)
        return torch.from_numpy(arrays["state"])
    values: dict[str, Any] = {}
    fields_ = info.get("fields", {})
    shared = _SHARED_SCALARS.get(info["kind"], {})
    for f in dataclasses.fields(cls):
        key = _STATE_PREFIX + f.name
        if f.name == "sigmas":
            values["sigmas"] = sigmas
        elif f.name in shared:
            values[f.name] = float(meta[shared[f.name]])
        elif key in arrays:
            values[f.name] = torch.from_numpy(arrays[key])
        elif isinstance(fields_, dict) and f.name in fields_:
            values[f.name] = fields_[f.name]
        else:
            raise MedinvertError(f"latent state {info['kind']} lacks its field {f.name!r}", path=source)
    try:
        state = cls(**values)
    except TypeError as exc:
        raise MedinvertError(f"latent state is inconsistent: {exc}", path=source) from None
    if isinstance(state, FixedPointState):
        if state.z.dtype != torch.int64 or state.partner.dtype != torch.int64:
            raise MedinvertError("exact latent state must be int64", path=source)
        if isinstance(state.frac_bits, bool) or not isinstance(state.frac_bits, int):
            raise MedinvertError(f"exact latent frac_bits {state.frac_bits!r} is not an integer", path=source)
    if isinstance(state, NullTextState):
        _check_nulltext(state, meta["steps"], source)
    return state


def _check_nulltext(state: NullTextState, steps: int, source: Path) -> None:
    """The non-image arrays of a null-text state: ``null_conds (steps, Z, K)`` floating, ``iterations``
    and ``backward`` ``(steps,)`` int64 (the image ``xbar`` is checked with the other state tensors)."""
    batch = state.xbar.shape[0] if state.xbar.ndim else -1
    conds = state.null_conds
    if conds.ndim != 3 or conds.shape[0] != steps or conds.shape[1] != batch or not conds.is_floating_point():
        raise MedinvertError(f"nulltext latent null_conds of shape {tuple(conds.shape)} ({conds.dtype}) do not fit "
                             f"{steps} steps and {batch} slices: expected floating ({steps}, {batch}, K)", path=source)
    for name in ("iterations", "backward"):
        counts = getattr(state, name)
        if counts.dtype != torch.int64 or tuple(counts.shape) != (steps,):
            raise MedinvertError(f"nulltext latent {name} must be int64 of shape ({steps},)", path=source)


def _from_parts(arrays: dict[str, np.ndarray], meta: dict[str, Any], source: Path) -> Latent:
    sig = arrays["sigmas"]
    if sig.ndim != 1 or sig.dtype != np.float64 or sig.shape[0] != meta["steps"] + 1 or sig[-1] != 0.0 \
            or not np.all(np.diff(sig) < 0):
        raise MedinvertError(f"latent sigma grid is not a decreasing {meta['steps']}-step grid ending at 0", path=source)
    sigmas = tuple(float(v) for v in sig)
    volume = meta["volume"]
    shape = volume.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s >= 1 for s in shape)):
        raise MedinvertError(f"latent volume shape {shape!r} is not (X, Y, Z)", path=source)
    if arrays["affine"].shape != (4, 4):
        raise MedinvertError("latent affine is not 4x4", path=source)
    state = _state_from_arrays(arrays, meta, sigmas, source)
    x, y, z = shape
    skip = _NON_IMAGE_FIELDS.get(meta["state"]["kind"], ())
    tensors = [state] if isinstance(state, torch.Tensor) else [
        getattr(state, f.name) for f in dataclasses.fields(state)
        if f.name not in skip and isinstance(getattr(state, f.name), torch.Tensor)]
    for tensor in tensors:
        if tuple(tensor.shape[:1]) + tuple(tensor.shape[2:]) != (z, x, y) or tensor.ndim != 4:
            raise MedinvertError(f"latent state of shape {tuple(tensor.shape)} does not fit a {x}x{y}x{z} volume "
                                 f"(expected ({z}, C, {x}, {y}))", path=source)
    index, values = arrays["patch_index"], arrays["patch_values"]
    if index.ndim != 1 or index.shape != values.shape or (index.size and (index.min() < 0 or index.max() >= x * y * z)):
        raise MedinvertError("latent exception patch is inconsistent with the volume shape", path=source)
    cond_image = arrays.get("cond_image")
    if cond_image is not None and tuple(cond_image.shape) != (x, y, z):
        raise MedinvertError("latent conditioning image does not match the volume shape", path=source)
    header = arrays.get("nifti_header")
    return Latent(
        state=state, method=meta["method"], options=meta["options"], schedule=meta["schedule"],
        prediction=meta["prediction"], steps=meta["steps"], spacing=meta["spacing"], sigmas=sigmas,
        dtype=meta["dtype"], batch_size=meta["batch_size"], threads=meta["threads"], guidance=float(meta["guidance"]),
        model=meta["model"], shape=(x, y, z), affine=arrays["affine"], scale=float(meta["intensity"]["scale"]),
        source_dtype=str(volume.get("source_dtype")), source=volume.get("source"),
        source_meta=volume.get("meta") or {}, nifti_header=None if header is None else header.tobytes(),
        patch_index=index, patch_values=values, cond_descriptor=arrays.get("cond_descriptor"),
        cond_image=cond_image, version=str(meta["medinvert_version"]),
    )
