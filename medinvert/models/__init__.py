"""Lipschitz conditional UNet noise predictor, its Lipschitz bounds, checkpoints and shipped models.

    LipschitzUNet                       -- the network eps_theta(x, t, c) (2D / 2.5D / 3D)
    lipschitz_upper_bound, lipschitz_empirical, layer_spectral_norms   -- medinvert.models.lipschitz
    freeze_spectral_norm, refresh_spectral_vectors, AdditiveCouplingBlock -- medinvert.models.layers
    save_checkpoint, load_checkpoint, read_checkpoint, model_sha256     -- medinvert.models.checkpoint
    load_model, available_models                                        -- medinvert.models.registry
"""

from __future__ import annotations

from medinvert.models.checkpoint import (
    load_checkpoint,
    model_sha256,
    read_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)
from medinvert.models.layers import AdditiveCouplingBlock, freeze_spectral_norm, refresh_spectral_vectors
from medinvert.models.lipschitz import (
    conv_norm_bound,
    conv_norm_fourier,
    conv_norm_power,
    jacobian_norm_at,
    layer_spectral_norms,
    lipschitz_empirical,
    lipschitz_upper_bound,
)
from medinvert.models.registry import available_models, load_model, resolve_model
from medinvert.models.unet import LipschitzUNet

__all__ = [
    "LipschitzUNet",
    "AdditiveCouplingBlock",
    "freeze_spectral_norm",
    "refresh_spectral_vectors",
    "conv_norm_bound",
    "conv_norm_fourier",
    "conv_norm_power",
    "layer_spectral_norms",
    "lipschitz_upper_bound",
    "lipschitz_empirical",
    "jacobian_norm_at",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "model_sha256",
    "state_dict_sha256",
    "load_model",
    "available_models",
    "resolve_model",
]
