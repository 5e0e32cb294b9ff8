"""Checkpoint files: one ``.pt`` holding plain tensors and a JSON configuration.

File layout (a dict written by `torch.save`, read back with ``torch.load(weights_only=True)``)::

    {
      "format": "medinvert-checkpoint",
      "format_version": 1,
      "config": "<JSON text>",          # architecture kwargs + everything the caller passed
      "state_dict": {name: Tensor},     # model.state_dict()
      "frozen": bool,                   # spectral-norm parametrizations baked into the weights
      "step": int,
      "ema_state": {name: Tensor},      # optional: EMA weights, same keys as state_dict
      "optimizer_state": {...},         # optional: optimizer.state_dict() (tensors, numbers)
    }

The JSON config always carries ``architecture`` (the model's constructor kwargs),
``format_version``, ``medinvert_version``, ``created`` (UTC ISO time, unless given) and ``step``;
callers add ``schedule``, ``prediction``, ``normalisation``, ``modality``, ``data`` ... as they
like.  Loading never runs pickled code: ``weights_only=True`` refuses any non-tensor object, and a
refused file is classified by parsing (never executing) its pickle stream.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from medinvert.determinism import float32_default
from medinvert.errors import MedinvertError
from medinvert.io.atomic import atomic_write_path
from medinvert.models.layers import freeze_spectral_norm
from medinvert.models.unet import LipschitzUNet

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "save_checkpoint",
    "read_checkpoint",
    "load_checkpoint",
    "model_sha256",
    "state_dict_sha256",
]

FORMAT = "medinvert-checkpoint"
FORMAT_VERSION = 1

_PICKLED_CODE = "checkpoint contains pickled code; refusing to load"
#: globals a plain-tensor checkpoint may reference (anything else means pickled objects/code)
_SAFE_GLOBAL_PREFIXES = ("torch.", "torch ", "collections OrderedDict", "collections.OrderedDict")


def _is_plain_state(state: Any) -> bool:
    return isinstance(state, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    )


def _plain(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (no views into live parameters, no autograd history)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: Mapping[str, Any] | None = None,
    *,
    ema_state: Mapping[str, torch.Tensor] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    step: int = 0,
) -> Path:
    """Write ``model`` (a `LipschitzUNet`) and ``config`` to ``path`` atomically; returns the path.

    ``config`` must be JSON-serialisable (no NaN); its ``architecture`` entry is always replaced by
    ``model.config``.  ``ema_state`` must have exactly the keys of ``model.state_dict()``.  Note
    for EMA of spectrally normalised models: average the parameters only and copy the power
    iteration buffers (``..._u`` / ``..._v``) from the live model, or call
    `medinvert.models.layers.refresh_spectral_vectors` on the EMA model before saving.
    """
    target = Path(path)
    if not hasattr(model, "config"):
        raise MedinvertError("can only save a medinvert network (model has no .config)", path=target)
    state = model.state_dict()
    if ema_state is not None:
        if not _is_plain_state(ema_state) or set(ema_state) != set(state):
            raise MedinvertError("ema_state must be a state dict with the model's keys", path=target)
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    full = {"created": created, **dict(config or {})}
    full.update({
        "architecture": dict(model.config),
        "format_version": FORMAT_VERSION,
        "medinvert_version": _package_version(),
        "step": int(step),
    })
    try:
        config_text = json.dumps(full, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MedinvertError(f"checkpoint config is not JSON-serialisable: {exc}", path=target) from None
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_text,
        "state_dict": _plain(state),
        "frozen": not any(hasattr(m, "parametrizations") for m in model.modules()),
        "step": int(step),
    }
    if ema_state is not None:
        payload["ema_state"] = _plain(ema_state)
    if optimizer_state is not None:
        payload["optimizer_state"] = optimizer_state
    with atomic_write_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def _package_version() -> str:
    from medinvert import __version__

    return __version__


def _pickle_globals(data: bytes) -> set[str]:
    """Names of the globals referenced by the pickle stream(s) in ``data`` (parsed, not run).

    Scans consecutive pickles (the legacy torch format concatenates several) until one fails to
    parse.  ``STACK_GLOBAL`` takes its module and name from the two strings pushed before it.
    """
    found: set[str] = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str):
                    strings.append(arg)
                if opcode.name in ("GLOBAL", "INST"):
                    found.add(str(arg))
                elif opcode.name == "STACK_GLOBAL":
                    found.add(" ".join(strings[-2:]) if len(strings) >= 2 else "?")
        except Exception:  # noqa: BLE001 - anything unparsable ends the scan
            break
    return found


def _refused_for_code(path: Path) -> bool:
    """True when the file's pickle references globals other than torch's tensor machinery."""
    try:
        raw = path.read_bytes()
    except OSError:
        return False
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                raw = archive.read(names[0]) if names else b""
        except Exception:  # noqa: BLE001 - a broken archive is corruption, not code
            return False
    return any(not name.startswith(_SAFE_GLOBAL_PREFIXES) for name in _pickle_globals(raw))


def _reason(path: Path, exc: Exception) -> str:
    """A short, one-line description of why torch could not read ``path``."""
    text = str(exc)
    if path.stat().st_size == 0:
        return "the file is empty"
    with open(path, "rb") as handle:
        zipped = handle.read(2) == b"PK"
    if zipped and not zipfile.is_zipfile(path):
        return "truncated zip archive (no end-of-archive record)"
    if "zip archive" in text or "archive is corrupted" in text or isinstance(exc, zipfile.BadZipFile):
        return "damaged zip archive"
    if "Weights only load failed" in text:
        return "unreadable pickle data"
    return type(exc).__name__


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a checkpoint file without building a model.

    Returns the payload dict with ``config`` parsed from JSON (a dict).  Raises `MedinvertError`
    naming the file when it is missing, contains pickled code (never executed), is corrupted or
    truncated, or is not a medinvert checkpoint.
    """
    source = Path(path)
    if not source.is_file():
        raise MedinvertError("checkpoint file not found", path=source)
    try:
        with warnings.catch_warnings():  # torch warns (several lines) about foreign pickle protocols
            warnings.simplefilter("ignore")
            payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        if _refused_for_code(source):
            raise MedinvertError(_PICKLED_CODE, path=source) from None
        raise MedinvertError(f"not a readable checkpoint (corrupted or truncated file): {_reason(source, exc)}",
                             path=source) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MedinvertError(f"not a medinvert checkpoint (no format={FORMAT!r} entry)", path=source)
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MedinvertError(f"unsupported checkpoint format version {version!r} "
                             f"(this medinvert reads <= {FORMAT_VERSION})", path=source)
    if not _is_plain_state(payload.get("state_dict")):
        raise MedinvertError("checkpoint has no valid state_dict", path=source)
    if "ema_state" in payload and not _is_plain_state(payload["ema_state"]):
        raise MedinvertError("checkpoint has an invalid ema_state", path=source)
    try:
        config = json.loads(payload.get("config", ""))
    except (TypeError, ValueError):
        raise MedinvertError("checkpoint config is not valid JSON", path=source) from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), dict):
        raise MedinvertError("checkpoint config has no 'architecture' entry", path=source)
    payload["config"] = config
    return payload


@float32_default  # built in float32 whatever the caller's default dtype
def load_checkpoint(path: str | os.PathLike[str], *, use_ema: bool = True) -> tuple[LipschitzUNet, dict[str, Any]]:
    """Build the network stored in ``path`` and return ``(model, config)``; model in eval mode.

    With ``use_ema`` (default) the EMA weights are loaded when the file has them, else the raw
    weights.  The config is also attached to the model as ``model.checkpoint_config``, so passing the
    model alone to `medinvert.inversion.resolve_network` keeps its prediction, schedule and guess.
    The caller's global torch RNG is left as it was.  The model's outputs are bitwise those of the saved model (same weights, same
    spectral-norm vectors).
    """
    source = Path(path)
    payload = read_checkpoint(source)
    config = payload["config"]
    try:
        with torch.random.fork_rng(devices=[]):  # the initial weights are replaced: leave the caller's RNG alone
            model = LipschitzUNet.from_config(config["architecture"])
    except MedinvertError as exc:
        raise MedinvertError(f"checkpoint architecture is invalid: {exc}", path=source) from None
    except TypeError as exc:
        raise MedinvertError(f"checkpoint architecture is invalid: {exc}", path=source) from None
    if payload.get("frozen"):
        freeze_spectral_norm(model)
    state = payload["ema_state"] if use_ema and "ema_state" in payload else payload["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise MedinvertError(f"checkpoint weights do not match its architecture: {first}", path=source) from None
    model.eval()
    model.checkpoint_config = config  # so the module alone still says how it was trained (`resolve_network`)
    return model, config


def model_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of the checkpoint file's bytes (identifies the exact file shipped/used)."""
    source = Path(path)
    if not source.is_file():
        raise MedinvertError("checkpoint file not found", path=source)
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and raw bytes (in sorted key order).

    Independent of file metadata (creation time), so it identifies *weights*: equal across DDP
    ranks after a synchronised step, equal before saving and after loading.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
