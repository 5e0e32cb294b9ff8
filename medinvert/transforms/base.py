"""Shared machinery of the corruption transforms.

Array transforms (`CorruptionTransform` subclasses) follow MONAI's pattern: they subclass
``monai.transforms.Randomizable`` and ``Transform``, draw every random number in `randomize` from
their own ``self.R`` (a ``numpy.random.RandomState``; seed it with ``set_random_state``), and hold
all the logic in ``__call__``, which *returns* an `Observation` and stores nothing but the drawn
random parameters on the transform.  ``randomize`` draws two 32-bit seeds -- one for the mask, one
for the noise field -- and the masks / noise are deterministic functions of them (fastMRI's
``mask_func(shape, seed)`` convention), so they can be regenerated from ``Observation.params``.
A fresh transform is seeded with 0: same input, same output, unless you reseed it.

Dict transforms (`CorruptionDictTransform` subclasses) are thin: they own one array transform,
forward ``set_random_state`` to it, randomize it once per call (all keys share one draw) and store
``transform(data[key])`` under ``key + observation_suffix``.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from medinvert.errors import MedinvertError
from medinvert.operators.descriptor import make_descriptor
from medinvert.operators.layout import as_plain_tensor
from medinvert.operators.observation import Observation
from medinvert.transforms.params import normalize_params

__all__ = ["CorruptionTransform", "CorruptionDictTransform", "VolumeInput", "as_volume", "foreground_mean",
           "gaussian_field"]


class VolumeInput:
    """A checked input volume: float32 ``data`` ``(X, Y, Z)``, float64 ``affine`` ``(4, 4)``, ``source``."""

    __slots__ = ("data", "affine", "source")

    def __init__(self, data: torch.Tensor, affine: torch.Tensor, source: str | None) -> None:
        self.data, self.affine, self.source = data, affine, source


_REAL_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool, torch.uint16,
                        torch.uint32, torch.uint64)


def as_volume(img: Any) -> VolumeInput:
    """Check and unpack a volume (MetaTensor, tensor or array) of shape ``(X, Y, Z)``; trailing singleton
    axes ``(X, Y, Z, 1)`` and a leading channel ``(1, X, Y, Z)`` are dropped, and a 2-D image ``(X, Y)``
    becomes ``(X, Y, 1)``.  A MetaTensor whose ``meta["spatial_shape"]`` is one axis shorter than the
    data (MONAI's ``EnsureChannelFirst``) has its channel dropped, so ``(1, X, Y)`` is the image ``(X, Y)``.

    Raises `MedinvertError` (naming the source file when known) for a wrong number of dimensions,
    complex or non-numeric data, or NaN / Inf voxels.
    """
    meta = getattr(img, "meta", None) or {}
    source = meta.get("filename_or_obj") or None
    source = str(source) if source is not None else None
    affine = getattr(img, "affine", None)
    affine = torch.eye(4, dtype=torch.float64) if affine is None else as_plain_tensor(affine).to(torch.float64).cpu()
    if tuple(affine.shape) != (4, 4):
        raise MedinvertError(f"volume affine must be 4x4, got {tuple(affine.shape)}", path=source)
    try:
        data = as_plain_tensor(img).detach().cpu()
    except (TypeError, ValueError) as exc:
        raise MedinvertError(f"not an image array ({exc})", path=source) from None
    if data.is_complex() or not (data.dtype.is_floating_point or data.dtype in _REAL_INTEGER_DTYPES):
        raise MedinvertError(f"volume must hold real numbers, got {data.dtype}", path=source)
    spatial = meta.get("spatial_shape")
    channel_first = spatial is not None and data.ndim == len(spatial) + 1  # a MetaTensor after EnsureChannelFirst
    if (channel_first or data.ndim == 4) and data.shape[0] == 1:
        data = data[0]
    while data.ndim > 3 and data.shape[-1] == 1:  # (X, Y, Z, 1, ...): a 4-D file's singleton axes
        data = data[..., 0]
    if data.ndim == 2:  # one image: a volume of one slice, as `medinvert.io.load_volume` reads a 2-D file
        data = data[:, :, None]
    if data.ndim != 3 or min(data.shape) < 1:
        raise MedinvertError(f"expected a volume of shape (X, Y, Z), got shape {tuple(data.shape)}", path=source)
    data = data.to(torch.float32).contiguous()
    if not bool(torch.isfinite(data).all()):
        raise MedinvertError("volume contains NaN or Inf voxels", path=source)
    return VolumeInput(data, affine, source)


def foreground_mean(volume: torch.Tensor) -> float:
    """Mean intensity of the foreground: voxels with ``|v| > 0.1 * q99(|v|)``, ``q99`` the 99th
    percentile of ``|v|`` (0 when the volume is all zero).  The reference for ``snr`` and ``sigma_rel``."""
    values = np.abs(as_plain_tensor(volume).detach().cpu().numpy().astype(np.float64, copy=False)).ravel()
    if values.size == 0:
        return 0.0
    q99 = float(np.percentile(values, 99))
    if q99 <= 0:
        values = values[values > 0]
        return float(values.mean()) if values.size else 0.0
    return float(values[values > 0.1 * q99].mean())


def gaussian_field(shape: Sequence[int], seed: int, *, complex_valued: bool = False) -> torch.Tensor:
    """Standard normal noise (float32, or complex64 with ``E|n|^2 = 1``) from a 32-bit ``seed``
    (numpy PCG64 stream, identical on every platform)."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    if complex_valued:
        real = rng.standard_normal(size=tuple(shape), dtype=np.float32)
        imag = rng.standard_normal(size=tuple(shape), dtype=np.float32)
        return torch.complex(torch.from_numpy(real), torch.from_numpy(imag)) / np.float32(np.sqrt(2.0))
    return torch.from_numpy(rng.standard_normal(size=tuple(shape), dtype=np.float32))


class CorruptionTransform(Randomizable, Transform):
    """Base of the array corruption transforms (see the module docstring).

    Subclasses set ``kind`` and implement ``_apply(volume, mask_seed, noise_seed) -> Observation``.
    """

    kind: str = ""

    def __init__(self, **params: Any) -> None:
        #: validated parameters (`medinvert.transforms.params.normalize_params`)
        self.params: dict[str, Any] = normalize_params(self.kind, params)
        self._seeds: tuple[int, int] | None = None
        self.set_random_state(0)

    def randomize(self, data: Any = None) -> None:
        """Draw the mask seed and the noise seed from ``self.R``."""
        draws = self.R.randint(0, 2**32, size=2, dtype=np.int64)
        self._seeds = (int(draws[0]), int(draws[1]))

    def __call__(self, img: Any, randomize: bool = True) -> Observation:  # type: ignore[override]
        """Corrupt ``img`` (``(X, Y, Z)``; MetaTensor affine / file name are kept) -> `Observation`."""
        volume = as_volume(img)
        if randomize or self._seeds is None:
            self.randomize(None)
        assert self._seeds is not None
        try:
            return self._apply(volume, *self._seeds)
        except MedinvertError as exc:  # name the volume in messages raised without a file
            if exc.path is None and volume.source is not None:
                raise MedinvertError(str(exc), path=volume.source) from None
            raise

    def _apply(self, volume: VolumeInput, mask_seed: int, noise_seed: int) -> Observation:
        raise NotImplementedError

    def _noise_sigma(self, volume: VolumeInput) -> dict[str, Any]:
        """Absolute noise std from ``sigma`` or ``snr`` plus its relative value, as params entries."""
        sigma, snr = self.params.get("sigma"), self.params.get("snr")
        if not sigma and snr is None:
            return {"sigma": 0.0, "snr": None, "sigma_rel": 0.0, "foreground_mean": None}
        fg = foreground_mean(volume.data)
        if snr is not None:
            if fg <= 0:
                raise MedinvertError("volume has no foreground (all zero): an SNR cannot be defined, give sigma",
                                     path=volume.source)
            sigma = fg / snr
        sigma = float(sigma or 0.0)
        return {"sigma": sigma, "snr": snr if snr is not None else (fg / sigma if sigma > 0 and fg > 0 else None),
                "sigma_rel": sigma / fg if fg > 0 else 0.0, "foreground_mean": fg}

    def _observation(self, volume: VolumeInput, *, y: torch.Tensor, mask: torch.Tensor, adjoint: torch.Tensor,
                     params: Mapping[str, Any], kernel: torch.Tensor | None = None) -> Observation:
        return Observation(kind=self.kind, y=y, mask=mask, params=dict(params), adjoint=adjoint,
                           descriptor=make_descriptor(self.kind, params), affine=volume.affine, kernel=kernel,
                           source=volume.source)


class CorruptionDictTransform(Randomizable, MapTransform):
    """Base of the dict wrappers: ``data[key + observation_suffix] = array_transform(data[key])``."""

    array_class: type[CorruptionTransform] = CorruptionTransform

    def __init__(self, keys: KeysCollection, observation_suffix: str = "_observation",
                 allow_missing_keys: bool = False, **params: Any) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.observation_suffix = observation_suffix
        self.transform = self.array_class(**params)

    def set_random_state(self, seed: int | None = None,
                         state: np.random.RandomState | None = None) -> "CorruptionDictTransform":
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.transform.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:  # type: ignore[override]
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            d[f"{key}{self.observation_suffix}"] = self.transform(d[key], randomize=False)
        return d
