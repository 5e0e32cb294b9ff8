"""A real scan as the measurement: denoise a noisy volume instead of simulating a corruption.

`measured_noise(volume)` wraps a volume that *is* noisy data -- a real acquisition -- into an
`Observation` of kind ``"noise"`` (identity operator, ``y`` = the volume itself, nothing added), so that
`medinvert.reconstruct_volume` denoises it (`medinvert.engine`, step 3': the sampler starts at the
image, at its own noise level).  The noise std is given, or estimated per axial slice from the finest
(Haar) wavelet detail coefficients (median absolute deviation / 0.6745, Donoho & Johnstone 1994),
the median over the slices with signal taken.

Spec grammar of ``medinvert reconstruct --measured`` (`parse_measured_spec`)::

    noise                 sigma estimated, Gaussian model
    noise:auto[:MODEL]    the same, MODEL = gaussian | rician
    noise:SIGMA[:MODEL]   sigma given in the volume's intensity units
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from medinvert.errors import MedinvertError
from medinvert.operators.descriptor import make_descriptor
from medinvert.operators.layout import volume_to_slices
from medinvert.operators.observation import Observation
from medinvert.transforms.base import as_volume, foreground_mean

__all__ = ["NOISE_MODELS", "parse_measured_spec", "haar_diagonal_detail", "estimate_noise_sigma", "measured_noise"]

NOISE_MODELS: tuple[str, ...] = ("gaussian", "rician")


def parse_measured_spec(text: str) -> dict[str, Any]:
    """``"noise[:auto|SIGMA][:MODEL]"`` -> ``{"sigma": float | None, "noise_model": str}``."""
    parts = [p.strip().lower() for p in str(text).split(":")]
    if not parts or parts[0] != "noise" or len(parts) > 3:
        raise MedinvertError(f"--measured takes noise[:auto|SIGMA][:gaussian|rician], got {text!r}")
    sigma: float | None = None
    if len(parts) > 1 and parts[1] not in ("", "auto"):
        try:
            sigma = float(parts[1])
        except ValueError:
            raise MedinvertError(f"--measured noise sigma must be a number or 'auto', got {parts[1]!r}") from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise MedinvertError(f"--measured noise sigma must be > 0, got {parts[1]!r}")
    model = parts[2] if len(parts) > 2 else "gaussian"
    if model not in NOISE_MODELS:
        raise MedinvertError(f"--measured noise model must be gaussian or rician, got {model!r}")
    return {"sigma": sigma, "noise_model": model}


def haar_diagonal_detail(image: np.ndarray) -> np.ndarray:
    """Finest-scale diagonal Haar wavelet coefficients of a 2-D ``image`` ``(X, Y)``:
    ``(a - b - c + d) / 2`` over each 2x2 block (an orthonormal transform, so i.i.d. noise of std
    ``sigma`` gives coefficients of std ``sigma``); ``(X // 2, Y // 2)``."""
    x = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    return (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0


def estimate_noise_sigma(volume: torch.Tensor) -> float:
    """Noise std of ``volume`` ``(X, Y, Z)``: per axial slice ``median(|HH|) / 0.6745`` of the finest
    diagonal Haar detail (Donoho & Johnstone 1994, MAD of the finest wavelet subband), then the median
    over the slices that have signal; 0 for a volume without any."""
    data = torch.as_tensor(volume).detach().cpu().to(torch.float64).numpy()
    estimates = []
    for k in range(data.shape[2]):
        image = data[:, :, k]
        if min(image.shape) < 2 or np.ptp(image) == 0:
            continue
        estimates.append(float(np.median(np.abs(haar_diagonal_detail(image)))) / 0.6744897501960817)
    return float(np.median(estimates)) if estimates else 0.0


def measured_noise(volume: Any, sigma: float | None = None, noise_model: str = "gaussian") -> Observation:
    """The noisy ``volume`` (path, MetaTensor or array ``(X, Y, Z)``) as a kind-``"noise"`` observation.

    ``sigma`` None: estimated (`estimate_noise_sigma`).  Raises `MedinvertError` when the volume has no
    measurable noise (e.g. constant) or the model is unknown.
    """
    if noise_model not in NOISE_MODELS:
        raise MedinvertError(f"noise model must be gaussian or rician, got {noise_model!r}")
    if isinstance(volume, (str, os.PathLike)):
        from medinvert.io import load_volume

        volume = load_volume(volume)
    data = as_volume(volume)
    image = data.data.to(torch.float32).contiguous()
    estimated = sigma is None
    sigma = estimate_noise_sigma(image) if sigma is None else float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise MedinvertError("no noise measurable in the volume (estimated sigma is 0); give --measured noise:SIGMA",
                             path=data.source)
    fg = foreground_mean(image)
    params: dict[str, Any] = {"sigma": sigma, "sigma_estimated": estimated, "noise_model": noise_model,
                              "snr": fg / sigma if fg > 0 else None, "sigma_rel": sigma / fg if fg > 0 else 0.0,
                              "foreground_mean": fg, "measured": True}
    return Observation(kind="noise", y=volume_to_slices(image).contiguous(), mask=torch.ones(image.shape, dtype=torch.bool),
                       params=params, adjoint=image, descriptor=make_descriptor("noise", params),
                       affine=data.affine, source=data.source)
