"""Building blocks of the Lipschitz conditional UNet, each with a known Lipschitz constant in x.

Every layer on the x-path is one of

* a convolution (`torch.nn.Conv2d` / `Conv3d`, zero padding), optionally spectrally normalised
  (`apply_spectral_norm`); its operator norm is bounded in `medinvert.models.lipschitz`;
* an activation with a known Lipschitz constant (`ACTIVATION_LIPSCHITZ`);
* a FiLM modulation ``h -> h * (1 + s_max * tanh(a)) + b`` whose per-channel gain is at most
  ``1 + s_max`` whatever the time and condition (Perez et al. 2018, "FiLM");
* a permutation of entries (`space_to_depth` / `depth_to_space`), an isometry.

No normalisation layer is used: GroupNorm divides by a data-dependent standard deviation and has no
useful global Lipschitz constant.

Shapes: ``D`` is the number of spatial dimensions (2 or 3); feature maps are ``(B, C, *S)`` with
``len(S) == D``; the embedding ``emb`` is ``(B, E)``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

__all__ = [
    "ACTIVATION_LIPSCHITZ",
    "make_activation",
    "conv_nd",
    "overlap_factor",
    "apply_spectral_norm",
    "freeze_spectral_norm",
    "refresh_spectral_vectors",
    "space_to_depth",
    "depth_to_space",
    "SinusoidalEmbedding",
    "FiLM",
    "ResidualBlock",
    "AdditiveCouplingBlock",
    "NormOf",
    "FilmGain",
]

#: Lipschitz constant of each supported activation (upper bounds of sup |f'|).
#: SiLU: f'(x) = s(x) (1 + x (1 - s(x))) peaks at 1.0998 near x = 2.40 (s = logistic sigmoid).
ACTIVATION_LIPSCHITZ: dict[str, float] = {"silu": 1.1, "leaky_relu": 1.0}

#: callable returning an upper bound of a conv layer's operator norm
NormOf = Callable[[nn.Module], float]
#: callable returning the largest per-channel |gain| of a FiLM layer (for the (t, c) considered)
FilmGain = Callable[["FiLM"], float]


def make_activation(name: str) -> nn.Module:
    """The activation module named ``name`` (a key of `ACTIVATION_LIPSCHITZ`)."""
    if name == "silu":
        return nn.SiLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1)
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATION_LIPSCHITZ)}")


def conv_nd(dim: int, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Module:
    """A ``dim``-D convolution with zero "same" padding for odd kernels and none for even ones.

    Odd kernels keep the spatial size at stride 1; the even kernel is only used as ``kernel ==
    stride`` (non-overlapping patches: downsampling by ``stride``).
    """
    if dim not in (2, 3):
        raise ValueError(f"spatial dimension must be 2 or 3, got {dim}")
    padding = kernel // 2 if kernel % 2 == 1 else 0
    cls = nn.Conv2d if dim == 2 else nn.Conv3d
    return cls(in_ch, out_ch, kernel, stride=stride, padding=padding, padding_mode="zeros")


def overlap_factor(kernel_size: Sequence[int], stride: Sequence[int]) -> int:
    """Largest number of output positions whose receptive field contains one input position.

    For a convolution with kernel ``k`` and stride ``s`` (per axis) this is
    ``prod_i ceil(k_i / s_i)``; it is the squared norm bound of the im2col (patch extraction)
    operator, so ``||conv|| <= sqrt(overlap_factor) * ||W_mat||_2`` (see docs/lipschitz.md).
    """
    return math.prod(math.ceil(k / s) for k, s in zip(kernel_size, stride))


class _Scale(nn.Module):
    """Parametrization ``W -> c * W`` (chained after spectral normalisation to set the target)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.scale


def apply_spectral_norm(module: nn.Module, target: float, n_power_iterations: int = 1) -> nn.Module:
    """Spectrally normalise ``module.weight`` so that its reshaped matrix has norm ``target``.

    Uses `torch.nn.utils.parametrizations.spectral_norm` (Miyato et al. 2018), which divides the
    weight, reshaped to ``(out_channels, -1)``, by a power-iteration estimate of its largest
    singular value, then a chained parametrization multiplies by ``target``.  The power iteration
    runs (and refines its estimate) on every forward pass in training mode; in eval mode the stored
    vectors are reused.  The target is recorded as ``module.sn_target`` (float).
    """
    if not target > 0:
        raise ValueError(f"spectral-norm target must be positive, got {target}")
    spectral_norm(module, "weight", n_power_iterations=n_power_iterations)
    if target != 1.0:
        parametrize.register_parametrization(module, "weight", _Scale(target))
    module.sn_target = float(target)
    return module


def freeze_spectral_norm(model: nn.Module) -> nn.Module:
    """Bake every parametrized weight into a plain parameter (in place) and return ``model``.

    The frozen weight is the one an eval-mode forward pass uses (the normalised weight computed
    from the current power-iteration vectors), so outputs are unchanged while inference becomes
    faster and free of parametrization state.  ``sn_target`` attributes are kept for reporting.
    Do not call this on a model you still train: the normalisation stops applying.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for module in list(model.modules()):
            if parametrize.is_parametrized(module):
                # torch injects one subclass per parametrized module and deletes the weight
                # property from it on removal; `copy.deepcopy` shares that subclass between the
                # copy and the original, so give this module a private clone of it first.
                cls = type(module)
                module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    model.train(was_training)
    return model


def refresh_spectral_vectors(model: nn.Module) -> nn.Module:
    """Set every spectral-norm power-iteration pair ``(u, v)`` to the exact top singular vectors.

    After this, the eval-mode weight of each normalised layer has reshaped-matrix norm equal to its
    target up to rounding (instead of up to power-iteration convergence).  Useful after loading
    averaged (EMA) weights, whose stored ``u, v`` were estimated for other weights.  In place.
    """
    with torch.no_grad():
        for module in model.modules():
            if not parametrize.is_parametrized(module, "weight"):
                continue
            for param in module.parametrizations.weight:
                if hasattr(param, "_u") and hasattr(param, "_v"):
                    original = module.parametrizations.weight.original
                    mat = original.flatten(1).to(torch.float64)
                    u, _, vh = torch.linalg.svd(mat, full_matrices=False)
                    param._u.copy_(u[:, 0].to(param._u.dtype))
                    param._v.copy_(vh[0].to(param._v.dtype))
    return model


def space_to_depth(x: torch.Tensor, r: int) -> torch.Tensor:
    """Fold ``r``-sized spatial blocks into channels: ``(B, C, *S) -> (B, C * r^D, *(S / r))``.

    A permutation of the entries (an isometry, Lipschitz constant 1).  2D uses
    `torch.nn.functional.pixel_unshuffle`; 3D uses the same channel ordering generalised.
    """
    if r == 1:
        return x
    if x.dim() == 4:
        return F.pixel_unshuffle(x, r)
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // r, r, h // r, r, w // r, r)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * r**3, d // r, h // r, w // r)


def depth_to_space(x: torch.Tensor, r: int) -> torch.Tensor:
    """Inverse of `space_to_depth`: ``(B, C * r^D, *S) -> (B, C, *(S * r))`` (an isometry)."""
    if r == 1:
        return x
    if x.dim() == 4:
        return F.pixel_shuffle(x, r)
    b, cr, d, h, w = x.shape
    c = cr // r**3
    x = x.reshape(b, c, r, r, r, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, d * r, h * r, w * r)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of the diffusion time (Vaswani et al. 2017, sec. 3.5).

    ``t: (B,)`` in [0, 1] is scaled by 1000 (the discrete-step range of DDPM, Ho et al. 2020) and
    mapped to ``(B, dim)`` = ``[sin(1000 t w_k), cos(1000 t w_k)]`` with ``w_k = 10000^(-k/half)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time-embedding size must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 1000.0 * t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class FiLM(nn.Module):
    """Feature-wise affine modulation with a bounded gain.

    ``h: (B, C, *S)``, ``emb: (B, E)`` -> ``h * g + b`` with ``g = 1 + s_max * tanh(a)``, ``(a, b)``
    a linear function of ``emb``.  For any time and condition ``|g| <= 1 + s_max``, so the map
    ``h -> h * g + b`` has Lipschitz constant ``max |g| <= 1 + s_max``.  The projection starts at
    zero (identity modulation at initialisation).
    """

    def __init__(self, channels: int, emb_dim: int, scale_max: float) -> None:
        super().__init__()
        if scale_max < 0:
            raise ValueError(f"FiLM scale bound must be >= 0, got {scale_max}")
        self.channels = channels
        self.scale_max = float(scale_max)
        self.proj = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def gain_and_shift(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample, per-channel gain and shift, each ``(B, C)``."""
        a, b = self.proj(emb).chunk(2, dim=1)
        return 1.0 + self.scale_max * torch.tanh(a), b

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gain, shift = self.gain_and_shift(emb)
        view = (h.shape[0], self.channels) + (1,) * (h.dim() - 2)
        return torch.addcmul(shift.view(view), h, gain.view(view))


class ResidualBlock(nn.Module):
    """``x + conv2(act(film(conv1(x), emb)))`` on ``(B, C, *S)``, shape preserving.

    Lipschitz bound in x (fixed emb): ``1 + ||conv1|| * max|g| * Lip(act) * ||conv2||``.
    """

    def __init__(self, channels: int, emb_dim: int, dim: int, activation: str, film_scale_max: float) -> None:
        super().__init__()
        self.conv1 = conv_nd(dim, channels, channels, 3)
        self.film = FiLM(channels, emb_dim, film_scale_max)
        self.act = make_activation(activation)
        self.act_lip = ACTIVATION_LIPSCHITZ[activation]
        self.conv2 = conv_nd(dim, channels, channels, 3)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.film(self.conv1(x), emb)))

    def lipschitz_bound(self, norm_of: NormOf, film_gain: FilmGain) -> float:
        """Upper bound of the Lipschitz constant of ``x -> block(x, emb)``."""
        return 1.0 + norm_of(self.conv1) * film_gain(self.film) * self.act_lip * norm_of(self.conv2)


class AdditiveCouplingBlock(nn.Module):
    """Additive coupling (Dinh et al. 2015, NICE): injective by construction.

    ``x: (B, C, *S)`` is split along channels into ``(x1, x2)`` (which half is kept depends on
    ``parity``); the output is ``(x1, x2 + g(x1, emb))`` with
    ``g = conv2(act(film(conv1(x1), emb)))``.  `inverse` subtracts the same ``g(x1)``, so the block
    is a bijection for every ``g``.  Lipschitz bound in x: ``1 + Lip(g)`` (the block is
    ``x + G(x)`` with ``G(x) = (0, g(x1))``).
    """

    def __init__(
        self, channels: int, emb_dim: int, dim: int, activation: str, film_scale_max: float, parity: int = 0
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"coupling needs at least 2 channels, got {channels}")
        self.c_keep = channels // 2 if parity == 0 else channels - channels // 2
        self.c_move = channels - self.c_keep
        self.parity = parity
        self.conv1 = conv_nd(dim, self.c_keep, channels, 3)
        self.film = FiLM(channels, emb_dim, film_scale_max)
        self.act = make_activation(activation)
        self.act_lip = ACTIVATION_LIPSCHITZ[activation]
        self.conv2 = conv_nd(dim, channels, self.c_move, 3)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.parity == 0:
            return x[:, : self.c_keep], x[:, self.c_keep :]
        return x[:, self.c_move :], x[:, : self.c_move]

    def _merge(self, keep: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
        return torch.cat([keep, move] if self.parity == 0 else [move, keep], dim=1)

    def _g(self, keep: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.film(self.conv1(keep), emb)))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        keep, move = self._split(x)
        return self._merge(keep, move + self._g(keep, emb))

    def inverse(self, y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Exact inverse in exact arithmetic: ``(y1, y2 - g(y1, emb))``."""
        keep, move = self._split(y)
        return self._merge(keep, move - self._g(keep, emb))

    def lipschitz_bound(self, norm_of: NormOf, film_gain: FilmGain) -> float:
        """Upper bound of the Lipschitz constant of ``x -> block(x, emb)``."""
        return 1.0 + norm_of(self.conv1) * film_gain(self.film) * self.act_lip * norm_of(self.conv2)
