"""Volume-level inversion: ``invert(volume) -> Latent`` and ``generate(latent) -> volume``.

A volume ``(X, Y, Z)`` is handled as a batch of its axial slices ``(Z, 1, X, Y)`` (slices along array
axis 2, as `medinvert.load_volume` returns them), divided by one power-of-two intensity scale
``s = power_of_two_scale(robust_scale(volume))`` (`medinvert.intensity`; dividing and multiplying
by a power of two is exact in binary floating point), and run through a solver of
`medinvert.solvers.SOLVERS` driven by a `medinvert.denoiser.Denoiser`.  Any in-plane size works:
`medinvert.models.LipschitzUNet` zero-pads to its multiple internally and crops back.  Only 2D
(slice) networks are supported here; 2.5D and 3D networks raise `MedinvertError`.

Bit-exact round trip (``method="exact"``).  ``generate(invert(v))`` returns the float32 voxels of
``v`` bit-for-bit because

1. ``v / s`` is exact (power-of-two scale) and the bit-exact solver maps grid integers back to the
   very same integers (`medinvert.solvers.exact`);
2. a float32 value ``u`` survives the fixed-point grid ``2^-q`` exactly when ``|u| >= 2^(23-q)``;
   every voxel that would not come back bit-identical (tiny values, ``-0.0``, values whose division
   by ``s`` underflows) is found at inversion time by recomputing the whole output path, and its
   original float32 value is stored in the latent's *exception patch*, which `generate` writes back;
3. the network is bitwise deterministic: evaluation runs inside `medinvert.determinism.deterministic`
   (deterministic algorithms, no TF32, a fixed intra-op thread count -- `DEFAULT_THREADS` = 4 or
   ``MEDINVERT_THREADS`` -- recorded in the latent and reused by `generate`), and the slices are cut
   into the same fixed chunks of ``batch_size`` in both directions (recorded in the latent).

Bitwise network determinism holds on the same machine type with the same torch / oneDNN / CUDA
versions; across platforms the network's last bits may differ and the round trip is then exact
only up to the solver's stability (see ``docs/latent-format.md``).

Model argument (`resolve_network`): an ``nn.Module`` (or ``(module, config)`` as returned by
`medinvert.load_model`), a shipped model name or checkpoint path, ``"random"`` / ``"random:SEED"``
(a seeded randomly initialised small `LipschitzUNet`, for tests and benchmarks until trained models
ship), or None: the shipped model of the volume's modality (``volume.meta["modality"]``) when it is
installed, else ``"random"``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from medinvert.determinism import float32_default
from medinvert.errors import MedinvertError, NumericalError
from medinvert.guess import conditioning_volume, guess_of_config
from medinvert.latent import Latent
from medinvert.models.slab import slab_stack
from medinvert.operators.layout import as_plain_tensor
from medinvert.models.volume import as_slice_network
from medinvert.schedule import Schedule, make_schedule

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor

__all__ = [
    "RANDOM_MODEL",
    "RANDOM_ARCHITECTURE",
    "DEFAULT_SCHEDULE",
    "ResolvedNetwork",
    "random_network",
    "default_model",
    "resolve_network",
    "check_model_modality",
    "invert",
    "generate",
    "roundtrip",
]

#: name of the built-in randomly initialised model (``"random"`` = ``"random:0"``)
RANDOM_MODEL = "random"
#: architecture of the ``"random"`` model: a small 2D LipschitzUNet without conditioning images
RANDOM_ARCHITECTURE: dict[str, Any] = {
    "dim": "2d", "n_cond_channels": 0, "channels": [8, 16], "blocks_per_level": 1, "mid_blocks": 1,
    "patch": 2, "emb_dim": 32, "time_dim": 16,
}
#: schedule used for networks whose configuration names none (the training default)
DEFAULT_SCHEDULE: dict[str, Any] = {"kind": "cosine"}
_SCHEDULE_KEYS = ("kind", "num_train_timesteps", "beta_start", "beta_end")
#: largest difference (mm) between entries of two affines still counted as the same geometry
AFFINE_TOLERANCE = 1e-3
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: source metadata copied into the latent (JSON-able values only)
_META_KEYS = ("filename_or_obj", "modality", "source_format", "stored_dtype", "stored_shape", "qform_code",
              "sform_code", "spacing", "series_uid", "series_description", "dicom_modality")


@dataclass(frozen=True)
class ResolvedNetwork:
    """A network ready for the denoiser, with what the latent records about it.

    Attributes:
        net: the module (eval mode), called ``net(x (B, 1 + E, H, W), t (B,), cond (B, K) | None)``.
        schedule: the VP schedule it was trained with (`DEFAULT_SCHEDULE` if its config names none).
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        reference: ``kind`` (checkpoint / random / module), ``name``, ``path``, ``sha256``,
            ``sha256_of`` (file / state_dict), ``architecture``.
        n_cond_channels: conditioning image channels per slice the network expects.
        neighbours: ``k`` of a 2.5D network (it also sees the conditioning image of ``k`` slices on
            each side, `medinvert.models.slab`); 0 for 2D networks.
        descriptor_dim: length ``K`` of its condition descriptor (None if unknown).
        guess: its conditioning image for k-space data, ``"adjoint"`` or ``"cs_tv"`` (`medinvert.guess`).
        modality: canonical modality its checkpoint was trained on (``t1``, ``t1ce``, ``t2``,
            ``flair``), None when unknown or multi-contrast (see `check_model_modality`).
    """

    net: nn.Module
    schedule: Schedule
    prediction: str
    reference: dict[str, Any]
    n_cond_channels: int
    descriptor_dim: int | None
    modality: str | None = None
    neighbours: int = 0
    guess: str = "adjoint"


# ---------------------------------------------------------------------- networks
def _parse_random(text: str) -> int | None:
    """Seed of ``"random"`` / ``"random:SEED"``; None for any other name."""
    if text == RANDOM_MODEL:
        return 0
    if not text.startswith(RANDOM_MODEL + ":"):
        return None
    raw = text[len(RANDOM_MODEL) + 1:]
    if not raw.isdigit() or int(raw) >= 2**63:
        raise MedinvertError(f"model {text!r}: the random model's seed must be a non-negative integer (random:SEED)")
    return int(raw)


def random_network(seed: int = 0) -> nn.Module:
    """The built-in ``"random:SEED"`` model: `RANDOM_ARCHITECTURE` with weights drawn from ``seed``.

    The global torch RNG is left untouched (weights come from a forked RNG).  Eval mode.
    """
    from medinvert.models import LipschitzUNet
    from medinvert.operators import DESCRIPTOR_LENGTH

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LipschitzUNet(descriptor_dim=DESCRIPTOR_LENGTH, **RANDOM_ARCHITECTURE)
    return net.eval()


def default_model(modality: str | None) -> str:
    """The model used when none is given: the shipped model of ``modality`` if installed, else ``"random"``."""
    from medinvert.models.registry import ALIASES, available_models

    if modality:
        key = ALIASES.get(str(modality).lower(), str(modality).lower())
        if key in available_models():
            return key
    return RANDOM_MODEL


def _schedule_from(config: dict[str, Any]) -> Schedule:
    raw = config.get("schedule")
    spec = dict(DEFAULT_SCHEDULE) if not isinstance(raw, dict) else {k: raw[k] for k in _SCHEDULE_KEYS if k in raw}
    return make_schedule(**spec)


def _architecture(net: nn.Module, config: dict[str, Any]) -> dict[str, Any]:
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        arch = getattr(net, "config", None)
    return dict(arch) if isinstance(arch, dict) else {}


def _wrap(net: nn.Module, config: dict[str, Any], reference: dict[str, Any]) -> ResolvedNetwork:
    if not isinstance(net, nn.Module):
        raise MedinvertError(f"model must be an nn.Module, a model name or a checkpoint path, got {type(net).__name__}")
    arch = _architecture(net, config)
    dim = arch.get("dim", "2d")
    if dim not in ("2d", "2.5d", "3d"):
        raise MedinvertError(f"unknown network dimensionality {dim!r}")
    net = as_slice_network(net)  # a 3D network sees the whole volume (`medinvert.models.volume`)
    prediction = config.get("prediction", "eps")
    reference = {**reference, "architecture": arch or {"class": type(net).__name__}}
    descriptor_dim = arch.get("descriptor_dim")
    return ResolvedNetwork(net, _schedule_from(config), str(prediction), reference,
                           int(arch.get("n_cond_channels", 0)), None if descriptor_dim is None else int(descriptor_dim),
                           _canonical_modality(config.get("modality")), int(arch.get("neighbours", 0)),
                           guess_of_config(config))


def _canonical_modality(value: Any) -> str | None:
    """``"t2w"`` -> ``"t2"``; None for anything that is not one of the shipped models' modalities."""
    from medinvert.models.registry import ALIASES, MODEL_NAMES

    if not isinstance(value, str):
        return None
    key = ALIASES.get(value.strip().lower(), value.strip().lower())
    return key if key in MODEL_NAMES else None


def check_model_modality(net: ResolvedNetwork, modality: str | None, path: Any = None) -> None:
    """Refuse a network trained on another modality than the volume's.

    ``modality`` is the volume's (guessed from its file or series name, `medinvert.io.guess_modality`).
    Nothing is checked when either side is unknown (an un-named volume, the ``random`` model, a
    multi-contrast ``--modality all`` checkpoint).  Raises `MedinvertError` naming ``path``.
    """
    want = _canonical_modality(modality)
    if want is None or net.modality is None or want == net.modality:
        return
    name = net.reference.get("name") or net.reference.get("path") or "the model"
    raise MedinvertError(f"model {name} was trained on {net.modality} images but this volume is {want} (from its "
                         f"name); use the {want} model, or pass --allow-modality-mismatch to use it anyway", path=path)


def _module_reference(net: nn.Module) -> dict[str, Any]:
    from medinvert.models.checkpoint import state_dict_sha256

    return {"kind": "module", "name": None, "path": None, "sha256": state_dict_sha256(net.state_dict()),
            "sha256_of": "state_dict"}


def _from_checkpoint(path: Path, name: str) -> ResolvedNetwork:
    from medinvert.models.checkpoint import load_checkpoint, model_sha256

    sha = model_sha256(path)
    net, config = load_checkpoint(path)
    reference = {"kind": "checkpoint", "name": name, "path": str(path.resolve()), "sha256": sha, "sha256_of": "file"}
    return _wrap(net, config, reference)


def resolve_network(model: Any = None, modality: str | None = None) -> ResolvedNetwork:
    """Turn a model argument into a `ResolvedNetwork`.

    Args:
        model: None (`default_model` of ``modality``), ``"random"`` / ``"random:SEED"``, a shipped
            model name (``t1``, ``t1ce``, ``t2``, ``flair`` and BraTS 2023 aliases) or a checkpoint
            path (`medinvert.models.registry.load_model`), an ``nn.Module`` in eval mode (its
            ``checkpoint_config`` when `load_checkpoint` built it, else an eps-prediction network on
            the default schedule), a ``(module, config)`` pair, or a `ResolvedNetwork` (returned as is).
        modality: the volume's modality, used only when ``model`` is None.

    The reference records the checkpoint file's SHA-256 for files and the state dict's SHA-256
    (`medinvert.models.checkpoint.state_dict_sha256`) for the random model and in-memory modules.
    """
    if isinstance(model, ResolvedNetwork):
        return model
    if model is None:
        model = default_model(modality)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], dict):
        return _wrap(model[0], model[1], _module_reference(model[0]))
    if isinstance(model, nn.Module):  # a module from `load_model` carries its checkpoint's config
        config = getattr(model, "checkpoint_config", None)
        return _wrap(model, dict(config) if isinstance(config, dict) else {}, _module_reference(model))
    if isinstance(model, (str, os.PathLike)):
        from medinvert.models.checkpoint import state_dict_sha256
        from medinvert.models.registry import resolve_model

        text = os.fspath(model)
        seed = _parse_random(text)
        if seed is not None:
            net = random_network(seed)
            reference = {"kind": "random", "name": f"{RANDOM_MODEL}:{seed}", "path": None,
                         "sha256": state_dict_sha256(net.state_dict()), "sha256_of": "state_dict"}
            return _wrap(net, {}, reference)
        return _from_checkpoint(resolve_model(text), text)
    raise MedinvertError(f"model must be an nn.Module, a model name or a checkpoint path, got {type(model).__name__}")


def _network_for_latent(latent: Latent, model: Any) -> ResolvedNetwork:
    """The latent's model, re-resolved and checked against its SHA-256 (an explicit ``model`` wins)."""
    if model is not None:
        return resolve_network(model)
    ref = latent.model
    kind, recorded = ref.get("kind"), ref.get("sha256")
    if kind == "random":
        net = resolve_network(str(ref.get("name")))
        if net.reference["sha256"] != recorded:
            raise MedinvertError(f"the rebuilt model {ref.get('name')!r} has state-dict SHA-256 "
                                 f"{net.reference['sha256'][:12]}..., the latent was made with {str(recorded)[:12]}... "
                                 "(different torch RNG?); pass the model explicitly to override")
        return net
    if kind == "checkpoint":
        from medinvert.models.checkpoint import model_sha256
        from medinvert.models.registry import resolve_model

        found: list[tuple[Path, str]] = []
        for candidate in (ref.get("name"), ref.get("path")):
            if not candidate:
                continue
            try:
                path = resolve_model(candidate)
            except MedinvertError:
                continue
            sha = model_sha256(path)
            if sha == recorded:
                return _from_checkpoint(path, str(ref.get("name")))
            found.append((path, sha))
        if found:
            path, sha = found[0]
            raise MedinvertError(f"model checkpoint {path} has SHA-256 {sha[:12]}..., but the latent was made with "
                                 f"{str(recorded)[:12]}...; pass the model explicitly to override")
        raise MedinvertError(f"the latent's model {ref.get('name')!r} (path {ref.get('path')}) cannot be found; "
                             "pass the model explicitly")
    raise MedinvertError(f"the latent was made with an in-memory model (state-dict SHA-256 {str(recorded)[:12]}...); "
                         "pass it to generate as model=")


def _in_dtype(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``net`` computing in ``dtype`` (a converted copy if needed; the caller's module is untouched)."""
    from medinvert.denoiser import network_dtype

    if network_dtype(net) == dtype:
        return net
    return copy.deepcopy(net).to(dtype)


# ---------------------------------------------------------------------- volumes
@dataclass
class _Source:
    """A volume as the engine needs it: float32 ``(X, Y, Z)`` data, geometry and provenance."""

    data: torch.Tensor
    affine: np.ndarray
    meta: dict[str, Any]
    header: bytes | None
    path: str | None
    dtype: str


def _jsonable(value: Any) -> Any:
    """A JSON-compatible copy of simple metadata values, or None when it is not simple."""
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, torch.Tensor) and value.numel() <= 16:
        return _jsonable(value.tolist())
    if isinstance(value, np.ndarray) and value.size <= 16:
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    return None


def _as_source(volume: Any) -> _Source:
    """Load / unwrap ``volume`` (path, MetaTensor, tensor or array) into a `_Source`."""
    from medinvert.io import load_volume

    path: str | None = None
    if isinstance(volume, (str, os.PathLike)):
        path = os.fspath(volume)
        volume = load_volume(path)
    meta = dict(getattr(volume, "meta", None) or {})
    affine = getattr(volume, "affine", None)
    affine = np.eye(4) if affine is None else np.asarray(
        affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise MedinvertError(f"volume affine must be a finite 4x4 matrix, got shape {affine.shape}", path=path)
    try:
        data = as_plain_tensor(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume)
    except (TypeError, ValueError, RuntimeError):
        raise MedinvertError(f"volume must be a path, a tensor or an array, got {type(volume).__name__}") from None
    if data.is_complex() or data.dtype == torch.bool or data.ndim < 2:
        raise MedinvertError(f"volume must be a real (X, Y, Z) array, got {data.dtype} of shape {tuple(data.shape)}",
                             path=path)
    source_dtype = str(meta.get("stored_dtype") or str(data.dtype).replace("torch.", ""))
    meta.setdefault("stored_shape", tuple(int(s) for s in data.shape))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise MedinvertError(f"volume must be (X, Y, Z), got shape {tuple(data.shape)}", path=path)
    data = data.to(torch.float32).contiguous()
    if not bool(torch.isfinite(data).all()):
        raise MedinvertError("volume contains NaN or Inf voxels", path=path)
    header = meta.get("nifti_header")
    kept = {k: _jsonable(meta[k]) for k in _META_KEYS if k in meta and _jsonable(meta[k]) is not None}
    if path is None and isinstance(meta.get("filename_or_obj"), str):
        path = meta["filename_or_obj"]
    return _Source(data, affine, kept, bytes(header) if isinstance(header, (bytes, bytearray)) else None, path,
                   source_dtype)


def _to_batch(volume: torch.Tensor) -> torch.Tensor:
    """``(X, Y, Z)`` -> slice batch ``(Z, 1, X, Y)`` (contiguous copy)."""
    return volume.permute(2, 0, 1).unsqueeze(1).contiguous()


def _to_volume(batch: torch.Tensor, scale: float) -> torch.Tensor:
    """Slice batch ``(Z, 1, X, Y)`` (any float dtype) -> float32 ``(X, Y, Z)`` times ``scale``.

    The one output path of both `invert` (to predict the exception patch) and `generate`.
    """
    return (batch[:, 0].permute(1, 2, 0).to(torch.float32) * scale).contiguous()


def _bits_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Boolean mask of float32 voxels whose bit patterns differ."""
    return a.contiguous().view(torch.int32) != b.contiguous().view(torch.int32)


# ---------------------------------------------------------------------- conditions
def _condition(condition: Any, shape: tuple[int, int, int], net: ResolvedNetwork,
               affine: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(descriptor (K,), image (X, Y, Z) or None)`` of a condition argument.

    ``condition``: None (null condition), an `medinvert.operators.Observation` or the path of one
    (its descriptor, and its conditioning image when the network takes one: the adjoint ``A^H y``, or
    the CS-TV guess of k-space data for a model trained with one, `medinvert.guess.conditioning_volume`),
    or a descriptor vector of length ``K``.  An observation must have the volume's shape and, when
    ``affine`` (the volume's geometry) is given, its affine (entries within `AFFINE_TOLERANCE` mm).
    """
    if condition is None:
        return None, None
    label = None
    if isinstance(condition, (str, os.PathLike)):
        from medinvert.operators import Observation

        label = os.fspath(condition)
        condition = Observation.load(condition)
    image = None
    if hasattr(condition, "descriptor") and hasattr(condition, "adjoint"):
        if tuple(condition.shape) != tuple(shape):
            raise MedinvertError(f"the condition's observation has shape {tuple(condition.shape)}, the volume {shape}; "
                                 "it belongs to another volume", path=label)
        observed = np.asarray(condition.affine.detach().cpu().numpy() if isinstance(condition.affine, torch.Tensor)
                              else condition.affine, dtype=np.float64)
        if affine is not None and not np.allclose(observed, affine, rtol=0.0, atol=AFFINE_TOLERANCE):
            raise MedinvertError("the condition's observation has another affine (geometry) than the volume; it "
                                 "belongs to another volume", path=label)
        descriptor = condition.descriptor.detach().cpu().numpy().astype(np.float32)
        if net.n_cond_channels:
            image = conditioning_volume(condition, net.guess).detach().cpu().numpy().astype(np.float32)
    else:
        try:
            descriptor = np.asarray(condition.detach().cpu() if isinstance(condition, torch.Tensor) else condition,
                                    dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise MedinvertError("condition must be None, an Observation (or its path) or a descriptor vector") from None
    if net.descriptor_dim is not None and descriptor.shape != (net.descriptor_dim,):
        raise MedinvertError(f"condition descriptor has length {descriptor.size}, the network expects {net.descriptor_dim}")
    if not np.all(np.isfinite(descriptor)) or (image is not None and not np.all(np.isfinite(image))):
        raise MedinvertError("condition contains NaN or Inf")
    if image is not None and net.n_cond_channels != 1:
        raise MedinvertError(f"networks with {net.n_cond_channels} conditioning channels are not yet supported")
    return descriptor, image


def _denoiser(net: ResolvedNetwork, dtype: torch.dtype, batch_size: int, guidance: float,
              descriptor: np.ndarray | None, image: np.ndarray | None, shape: tuple[int, int, int], scale: float,
              image_slices: Sequence[int] | None = None) -> Any:
    """The `Denoiser` of a slice batch: conditioning ``image`` ``(X, Y, Z)`` (or None) divided by
    ``scale``, stacked per slice as the network expects (2.5D: with its neighbours, `medinvert.models.slab`).
    ``image_slices``: the slices of ``image`` the batch holds, in order (default all of them) -- a batch
    of some slices of a volume still takes its neighbours from the whole ``image``."""
    from medinvert.denoiser import Denoiser

    x, y, _ = shape
    extra = None
    if net.n_cond_channels:
        if image is None:  # no conditioning image: zeros, as in condition dropout during training
            extra = torch.zeros(net.n_cond_channels + 2 * net.neighbours, x, y, dtype=torch.float32)
        else:
            slices = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1) / scale  # (Z, X, Y)
            wanted = range(slices.shape[0]) if image_slices is None else image_slices
            extra = slab_stack(slices, wanted, net.neighbours).contiguous()
    cond = None if descriptor is None else torch.from_numpy(np.ascontiguousarray(descriptor))
    whole_volume = bool(getattr(net.net, "whole_volume", False))  # 3D: one network call per volume
    return Denoiser(_in_dtype(net.net, dtype), net.schedule, prediction=net.prediction, cond=cond, guidance=guidance,
                    extra=extra, batch_size=None if whole_volume else batch_size, dtype=dtype)


# ---------------------------------------------------------------------- validation
def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise MedinvertError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _dtype_name(dtype: Any) -> str:
    for name, value in _DTYPES.items():
        if dtype == name or dtype is value:
            return name
    raise MedinvertError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        return json.loads(json.dumps(options, allow_nan=False))
    except (TypeError, ValueError):
        raise MedinvertError(f"method options must be plain numbers / strings / lists / dicts, got {options!r}") from None


# ---------------------------------------------------------------------- API
@float32_default
def invert(
    volume: Any,
    model: Any = None,
    *,
    method: str = "exact",
    steps: int = 20,
    guidance: float = 1.0,
    condition: Any = None,
    batch_size: int = 8,
    spacing: str = "trailing",
    dtype: str = "float32",
    threads: int | None = None,
    require_modality_match: bool = False,
    **method_options: Any,
) -> Latent:
    """Invert a volume to the latent at the top of the noise schedule.

    Args:
        volume: a path (NIfTI file, DICOM folder / file), a MetaTensor or a tensor / array
            ``(X, Y, Z)`` (``(X, Y)`` and trailing singleton axes are accepted).  Converted to float32.
        model: see `resolve_network` (None: the shipped model of the volume's modality, else ``"random"``).
        method: ``exact`` (bit-exact, default), ``edict``, ``bdia``, ``ddim``, ``ode``, or the guided
            peers ``nulltext`` and ``negprompt`` (these need a ``condition``).
        steps: number of steps of the sigma grid (``Schedule.sigmas(steps, spacing)``).
        guidance: classifier-free guidance weight (``!= 1`` needs a condition; then 2 NFE per eval).
            For ``nulltext`` / ``negprompt`` the weight ``w > 1`` is resolved once here from this
            argument and the method option ``guidance`` (`medinvert.solvers.guided.guidance_weight`:
            the option if given, else this argument if not 1, else 3.0) and recorded as the latent's
            ``guidance``, its only record (the stored option is None).
        condition: None, an `Observation` (or its path) or a descriptor vector (see `_condition`).
        batch_size: slices per network call; recorded and reused by `generate` (bitwise reproducibility).
        spacing: timestep spacing (``trailing``, ``leading``, ``linspace``, ``karras``).
        dtype: ``"float32"`` or ``"float64"``: network compute dtype and float state dtype (the
            ``exact`` state is int64 whatever the dtype).
        threads: intra-op threads (default `medinvert.determinism.default_threads`); recorded.
        require_modality_match: refuse a checkpoint trained on another modality than the volume's
            (`check_model_modality`; the CLI's default).
        **method_options: the method's options (``p`` / ``state_dtype`` for edict, ``gamma`` for bdia,
            ``scheme`` / ``frac_bits`` for exact, ``ode_method`` / ``rtol`` / ``atol`` / ``options`` for
            ode, ``inner_steps`` / ``lr`` / ``lr_decay`` / ``tol`` / ``tol_growth`` for nulltext,
            ``negative`` for negprompt; ``guidance`` for both guided peers, see above).

    Returns:
        the `Latent`; ``latent.stats`` holds ``nfe``, ``nfe_per_step``, ``forward_calls`` and ``seconds``.
    """
    from medinvert import __version__
    from medinvert.determinism import deterministic, default_threads
    from medinvert.intensity import power_of_two_scale, robust_scale
    from medinvert.solvers import get_solver
    from medinvert.solvers.guided import guidance_weight

    spec = get_solver(method)
    options = _check_options(spec.options(**method_options))
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size")
    threads = default_threads() if threads is None else _positive_int(threads, "threads")
    dtype_name = _dtype_name(dtype)
    guidance = float(guidance)
    if not math.isfinite(guidance):
        raise MedinvertError(f"guidance must be finite, got {guidance}")
    guided_method = "guidance" in spec.defaults
    if guided_method:  # one record of w: the latent's guidance (see the docstring)
        guidance = guidance_weight(options["guidance"], guidance, spec.name, "the guidance argument")
        options["guidance"] = None
    source = _as_source(volume)
    x, y, z = (int(s) for s in source.data.shape)
    shape = (x, y, z)
    net = resolve_network(model, modality=source.meta.get("modality"))
    if require_modality_match:
        check_model_modality(net, source.meta.get("modality"), source.path)
    geometry = source.affine if source.path is not None or getattr(volume, "affine", None) is not None else None
    descriptor, image = _condition(condition, shape, net, geometry)
    if guided_method and descriptor is None:
        raise MedinvertError(f"{spec.name} inversion needs a condition (pass condition=... / --condition OBSERVATION)")
    if guidance != 1.0 and descriptor is None:
        raise MedinvertError(f"guidance {guidance} needs a condition (pass condition=...)")
    sigmas = net.schedule.sigmas(steps, spacing)
    scale = power_of_two_scale(robust_scale(source.data))
    batch = _to_batch(source.data / scale)
    torch_dtype = _DTYPES[dtype_name]
    denoiser = _denoiser(net, torch_dtype, batch_size, guidance, descriptor, image, shape, scale)
    with deterministic(threads), _slice_errors(source.path):
        start = time.perf_counter()
        state = spec.invert(denoiser, batch if method == "exact" else batch.to(torch_dtype), sigmas, **options)
        seconds = time.perf_counter() - start
    patch_index, patch_values = _exception_patch(state, batch, source.data, scale)
    stats = {"nfe": denoiser.nfe, "nfe_per_step": denoiser.nfe / steps, "forward_calls": denoiser.forward_calls,
             "seconds": seconds}
    return Latent(
        state=state, method=spec.name, options=options, schedule=net.schedule.config, prediction=net.prediction,
        steps=steps, spacing=spacing, sigmas=tuple(float(v) for v in sigmas), dtype=dtype_name,
        batch_size=batch_size, threads=threads, guidance=guidance, model=net.reference, shape=shape,
        affine=source.affine, scale=scale, source_dtype=source.dtype, source=source.path, source_meta=source.meta,
        nifti_header=source.header, patch_index=patch_index, patch_values=patch_values,
        cond_descriptor=descriptor, cond_image=image, version=__version__, stats=stats,
    )


@contextlib.contextmanager
def _slice_errors(path: str | None) -> Iterator[None]:
    """Re-raise a solver's `NumericalError` naming the file and the slice (the batch is the volume's
    slices ``(Z, 1, X, Y)``, so batch element ``k`` is slice ``k``)."""
    try:
        yield
    except NumericalError as exc:
        if exc.batch_index is None:
            raise NumericalError(exc.reason, path) from None
        raise exc.at_slice(exc.batch_index, path) from None


def _exception_patch(state: Any, batch: torch.Tensor, original: torch.Tensor, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxels the bit-exact path would not return bit-identical: ``(flat indices int64, float32 values)``.

    The prediction runs the generation's own output path on the quantised input (`_to_volume` of
    ``dequantize(quantize(volume / scale))``), which the bit-exact solver reproduces exactly.
    Empty for the other methods (they are not exact; nothing to patch).
    """
    from medinvert.solvers import FixedPointState
    from medinvert.solvers.fixed_point import dequantize, quantize

    if not isinstance(state, FixedPointState):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    predicted = _to_volume(dequantize(quantize(batch, state.frac_bits), state.frac_bits), scale)
    index = torch.nonzero(_bits_differ(predicted, original).reshape(-1)).reshape(-1)
    return index.numpy().astype(np.int64), original.reshape(-1)[index].numpy().astype(np.float32)


@float32_default
def generate(latent: Latent | str | os.PathLike[str], model: Any = None) -> "MetaTensor":
    """Map a latent back to a volume (float32 MetaTensor ``(X, Y, Z)`` with the source's affine and metadata).

    Args:
        latent: a `Latent` or the path of a saved one.
        model: None (default): the latent's model, re-resolved from its recorded name / path and
            checked against its SHA-256 (`MedinvertError` on a mismatch).  An explicit model is used
            as given, without the check.

    ``meta["medinvert_generate"]`` holds ``nfe`` and ``seconds`` of this call.  For ``exact`` latents
    the voxels are bit-identical to the inverted volume's float32 values (same machine and library
    versions, see the module docstring).
    """
    from medinvert.determinism import deterministic
    from medinvert.io.nifti import make_meta_tensor
    from medinvert.solvers import get_solver

    if not isinstance(latent, Latent):
        latent = Latent.load(latent)
    net = _network_for_latent(latent, model)
    spec = get_solver(latent.method)
    denoiser = _denoiser(net, _DTYPES[latent.dtype], latent.batch_size, latent.guidance, latent.cond_descriptor,
                         latent.cond_image, latent.shape, latent.scale)
    with deterministic(latent.threads), _slice_errors(latent.source):
        start = time.perf_counter()
        out = spec.generate(denoiser, latent.state, latent.sigma_tensor(), **latent.options)
        seconds = time.perf_counter() - start
    volume = _to_volume(out, latent.scale)
    if latent.patch_size:
        flat = volume.reshape(-1)
        flat[torch.from_numpy(np.asarray(latent.patch_index))] = torch.from_numpy(np.asarray(latent.patch_values))
    meta: dict[str, Any] = dict(latent.source_meta)
    if latent.source is not None:
        meta["filename_or_obj"] = latent.source
    if latent.nifti_header is not None:
        meta["nifti_header"] = latent.nifti_header
    meta["medinvert_generate"] = {"method": latent.method, "nfe": denoiser.nfe, "seconds": seconds}
    return make_meta_tensor(volume.numpy(), latent.affine, meta)


@float32_default
def roundtrip(volume: Any, model: Any = None, **kwargs: Any) -> dict[str, Any]:
    """``generate(invert(volume))`` with its errors and costs (nothing is written).

    ``kwargs`` go to `invert`.  Returns ``method``, ``steps``, ``dtype``, ``shape``, ``max_abs_error``,
    ``relative_error`` (max abs error / max |volume|), ``bit_identical`` (every float32 voxel),
    ``nfe_invert``, ``nfe_generate``, ``nfe`` (both), ``nfe_per_step`` (inversion NFE / steps),
    ``seconds_invert``, ``seconds_generate``, ``seconds`` (both), ``patch_size`` and the model
    reference (``model``, ``model_sha256``).
    """
    source = _as_source(volume)
    net = resolve_network(model, modality=source.meta.get("modality"))
    latent = invert(_meta_volume(source), net, **kwargs)
    out = generate(latent, net)
    got = out.as_tensor()
    original = source.data
    diff = (got.to(torch.float64) - original.to(torch.float64)).abs()
    peak = float(original.abs().max()) if original.numel() else 0.0
    max_err = float(diff.max()) if diff.numel() else 0.0
    gen = out.meta["medinvert_generate"]
    return {
        "method": latent.method, "steps": latent.steps, "dtype": latent.dtype, "shape": list(latent.shape),
        "max_abs_error": max_err, "relative_error": max_err / peak if peak > 0 else max_err,
        "bit_identical": not bool(_bits_differ(got, original).any()),
        "nfe_invert": latent.stats["nfe"], "nfe_generate": gen["nfe"], "nfe": latent.stats["nfe"] + gen["nfe"],
        "nfe_per_step": latent.stats["nfe_per_step"], "seconds_invert": latent.stats["seconds"],
        "seconds_generate": gen["seconds"], "seconds": latent.stats["seconds"] + gen["seconds"],
        "patch_size": latent.patch_size, "batch_size": latent.batch_size, "threads": latent.threads,
        "model": latent.model.get("name"), "model_sha256": latent.model.get("sha256"),
    }


def _meta_volume(source: _Source) -> Any:
    """A MetaTensor of a `_Source` (keeps modality for the default model choice)."""
    from medinvert.io.nifti import make_meta_tensor

    meta = dict(source.meta)
    if source.header is not None:
        meta["nifti_header"] = source.header
    return make_meta_tensor(source.data.numpy(), source.affine, meta)
