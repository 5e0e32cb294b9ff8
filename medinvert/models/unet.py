"""`LipschitzUNet`: the conditional noise predictor ``eps_theta(x, t, c)`` (2D, 2.5D, 3D patches).

Architecture (fully convolutional, no normalisation layers, every x-path layer of known Lipschitz
constant; see docs/lipschitz.md)::

    x (B, C_in, *S) --zero pad to a multiple of patch * 2^levels--> space_to_depth(patch)
      -> stem conv3 -> [ResBlock x n -> skip -> down conv2/stride 2] per level -> mid ResBlocks
      -> [up: conv1 + depth_to_space(2), + skip -> ResBlock x n] per level
      -> act -> head conv3 -> depth_to_space(patch) -> crop -> eps (B, 1, *S)

The time ``t`` (sinusoidal features -> MLP) and the descriptor ``c`` (MLP, or a learned null
embedding) are summed into one embedding that modulates every block through a bounded FiLM.

Channel layout of ``x`` (the denoiser stacks it in this order):

* ``"2d"``: ``[noisy slice, n_cond_channels conditioning images]``, ``x: (B, C_in, H, W)``;
* ``"2.5d"``: ``[noisy centre slice, conditioning image of the centre, the conditioning images of
  the 2k neighbours z-k .. z-1, z+1 .. z+k]`` (`medinvert.models.slab`; the ODE state stays one slice);
* ``"3d"``: ``[noisy patch, conditioning]``, ``x: (B, C_in, D, H, W)``.

The output is the predicted noise of the (centre) slice / patch.  The constructor's keyword
arguments are the whole configuration (``model.config``, JSON-able; `LipschitzUNet.from_config`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medinvert.errors import MedinvertError
from medinvert.models.layers import (
    ACTIVATION_LIPSCHITZ,
    AdditiveCouplingBlock,
    FilmGain,
    NormOf,
    ResidualBlock,
    SinusoidalEmbedding,
    apply_spectral_norm,
    conv_nd,
    depth_to_space,
    make_activation,
    overlap_factor,
    refresh_spectral_vectors,
    space_to_depth,
)

__all__ = ["LipschitzUNet", "DIMS", "BLOCKS"]

#: supported variants -> number of spatial dimensions of x
DIMS: dict[str, int] = {"2d": 2, "2.5d": 2, "3d": 3}
#: supported block kinds
BLOCKS = ("residual", "coupling")


class LipschitzUNet(nn.Module):
    """Conditional noise predictor with spectrally normalised convolutions.

    Args:
        dim: ``"2d"`` (default), ``"2.5d"`` (neighbouring slices' conditioning as channels) or ``"3d"`` (patches).
        n_cond_channels: extra conditioning image channels (e.g. the observation's adjoint image).
        neighbours: ``k`` neighbouring slices on each side (``"2.5d"`` only, ``k >= 1``).
        channels: feature channels per resolution level; ``len(channels) - 1`` downsamplings.
        blocks_per_level: blocks per level in the encoder and in the decoder.
        mid_blocks: blocks at the coarsest level.
        patch: space-to-depth factor of the stem (1 = none; 2 halves the working resolution).
        descriptor_dim: length ``K`` of the corruption descriptor ``cond``.
        emb_dim: size of the joint time/condition embedding.
        time_dim: size of the sinusoidal time features.
        activation: ``"silu"`` or ``"leaky_relu"``.
        spectral_norm: spectrally normalise every convolution on the x-path.
        sn_target: target *operator-norm bound* ``c`` of each normalised convolution: its
            reshaped weight matrix is normalised to ``c / sqrt(overlap)`` so that
            ``sqrt(overlap) * ||W_mat||_2 = c`` (see docs/lipschitz.md).
        film_scale_max: FiLM gains lie in ``[1 - s, 1 + s]`` with ``s = film_scale_max``.
        block: ``"residual"`` or ``"coupling"`` (additive coupling, injective by construction).
    """

    def __init__(
        self,
        *,
        dim: str = "2d",
        n_cond_channels: int = 0,
        neighbours: int = 0,
        channels: Sequence[int] = (32, 64, 128),
        blocks_per_level: int = 1,
        mid_blocks: int = 1,
        patch: int = 2,
        descriptor_dim: int = 8,
        emb_dim: int = 128,
        time_dim: int = 64,
        activation: str = "silu",
        spectral_norm: bool = True,
        sn_target: float = 1.0,
        film_scale_max: float = 1.0,
        block: str = "residual",
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        _validate(dim, n_cond_channels, neighbours, channels, blocks_per_level, mid_blocks, patch,
                  descriptor_dim, emb_dim, time_dim, activation, sn_target, film_scale_max, block)
        self.config: dict[str, Any] = {
            "dim": dim, "n_cond_channels": int(n_cond_channels), "neighbours": int(neighbours),
            "channels": channels, "blocks_per_level": int(blocks_per_level), "mid_blocks": int(mid_blocks),
            "patch": int(patch), "descriptor_dim": int(descriptor_dim), "emb_dim": int(emb_dim),
            "time_dim": int(time_dim), "activation": activation, "spectral_norm": bool(spectral_norm),
            "sn_target": float(sn_target), "film_scale_max": float(film_scale_max), "block": block,
        }
        sd = DIMS[dim]
        self.spatial_dims = sd
        self.in_channels = 1 + 2 * int(neighbours) + int(n_cond_channels)
        self.descriptor_dim = int(descriptor_dim)
        self.patch = int(patch)
        self.levels = len(channels) - 1
        self.multiple = self.patch * 2**self.levels
        self.act_lip = ACTIVATION_LIPSCHITZ[activation]

        # time / condition embedding (not on the x-path: no Lipschitz constraint needed)
        self.time_features = SinusoidalEmbedding(time_dim)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_mlp = nn.Sequential(nn.Linear(descriptor_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_cond = nn.Parameter(torch.randn(emb_dim) * 0.02)

        def make_block(c: int, index: int) -> nn.Module:
            if block == "coupling":
                return AdditiveCouplingBlock(c, emb_dim, sd, activation, film_scale_max, parity=index % 2)
            return ResidualBlock(c, emb_dim, sd, activation, film_scale_max)

        r = 2**sd
        self.stem = conv_nd(sd, self.in_channels * self.patch**sd, channels[0], 3)
        self.enc = nn.ModuleList(
            nn.ModuleList(make_block(channels[i], j) for j in range(blocks_per_level)) for i in range(self.levels)
        )
        self.down = nn.ModuleList(conv_nd(sd, channels[i], channels[i + 1], 2, stride=2) for i in range(self.levels))
        self.mid = nn.ModuleList(make_block(channels[-1], j) for j in range(mid_blocks))
        # decoder, coarsest first: up[i] maps channels[L-i] -> channels[L-i-1]
        self.up = nn.ModuleList(
            conv_nd(sd, channels[i + 1], channels[i] * r, 1) for i in reversed(range(self.levels))
        )
        self.dec = nn.ModuleList(
            nn.ModuleList(make_block(channels[i], j) for j in range(blocks_per_level))
            for i in reversed(range(self.levels))
        )
        self.act = make_activation(activation)
        self.head = conv_nd(sd, channels[0], self.patch**sd, 3)

        if spectral_norm:
            for module in self.x_path_convs():
                target = float(sn_target) / math.sqrt(overlap_factor(module.kernel_size, module.stride))
                apply_spectral_norm(module, target)
            # start the power iterations at the exact singular vectors (torch starts from 15
            # iterations on random vectors, which can leave sigma a few percent low)
            refresh_spectral_vectors(self)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LipschitzUNet":
        """Build a model from ``model.config`` (unknown keys raise `MedinvertError`)."""
        import inspect

        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise MedinvertError(f"unknown architecture option(s) {unknown}; known: {sorted(allowed)}")
        return cls(**dict(config))

    def x_path_convs(self) -> list[nn.Module]:
        """Every convolution on the path from x to the output (the ones the bound multiplies)."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]

    # ------------------------------------------------------------------ forward
    def embed(
        self, t: torch.Tensor, cond: torch.Tensor | None = None, cond_drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Joint embedding ``(B, emb_dim)`` of time ``t: (B,)`` and descriptor ``cond: (B, K)``.

        ``cond=None`` uses the learned null embedding for every row; ``cond_drop: (B,)`` bool
        replaces the flagged rows by it (condition dropout for classifier-free guidance, Ho &
        Salimans 2022).
        """
        te = self.time_mlp(self.time_features(t))
        null = self.null_cond.to(te.dtype)[None, :]
        if cond is None:
            ce = null.expand_as(te)
        else:
            ce = self.cond_mlp(cond.to(te.dtype))
            if cond_drop is not None:
                ce = torch.where(cond_drop[:, None], null, ce)
        return F.silu(te + ce)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cond: torch.Tensor | None = None,
        cond_drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise: ``x: (B, C_in, *S)``, ``t: (B,)`` in [0, 1], ``cond: (B, K)`` or None.

        ``cond_drop: (B,)`` bool marks rows whose condition is replaced by the null embedding.
        Any spatial size is accepted (zero padded to a multiple of ``patch * 2^levels`` and cropped
        back).  Returns ``(B, 1, *S)`` in the dtype of ``x``.
        """
        t = self._check(x, t, cond, cond_drop)
        if self.spatial_dims == 3 and x.shape[0] == 1 and x.device.type == "cpu":
            # PyTorch runs single-sample 3D convolutions on CPU with its native kernel, ~10x
            # slower than oneDNN (measured: benchmarks/model_speed.py); a batch of two identical
            # samples takes the oneDNN path.  The second copy is discarded (no effect on gradients).
            pair = [torch.cat([v, v]) if v is not None else None for v in (x, t, cond, cond_drop)]
            return self._forward(pair[0], pair[1], pair[2], pair[3])[:1]
        return self._forward(x, t, cond, cond_drop)

    def _forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, cond_drop: torch.Tensor | None
    ) -> torch.Tensor:
        """`forward` after validation; ``t: (B,)`` tensor."""
        emb = self.embed(t, cond, cond_drop)
        spatial = tuple(x.shape[2:])
        pads: list[int] = []
        for n in reversed(spatial):  # F.pad order: last axis first
            extra = (-n) % self.multiple
            pads += [extra // 2, extra - extra // 2]
        h = F.pad(x, pads) if any(pads) else x
        # channels-last activations: oneDNN convolutions run ~1.3x faster on CPU in this layout
        layout = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
        h = self.stem(space_to_depth(h, self.patch).contiguous(memory_format=layout))
        skips: list[torch.Tensor] = []
        for blocks, down in zip(self.enc, self.down):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            h = down(h)
        for blk in self.mid:
            h = blk(h, emb)
        for up, blocks in zip(self.up, self.dec):
            h = depth_to_space(up(h), 2) + skips.pop()
            for blk in blocks:
                h = blk(h, emb)
        h = depth_to_space(self.head(self.act(h)), self.patch)
        if any(pads):
            index = [slice(None), slice(None)]
            for axis, n in enumerate(spatial):
                start = pads[2 * (len(spatial) - 1 - axis)]
                index.append(slice(start, start + n))
            h = h[tuple(index)]
        return h.contiguous()

    def _check(
        self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None, cond_drop: torch.Tensor | None
    ) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 + self.spatial_dims:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise MedinvertError(
                f"network input must have {2 + self.spatial_dims} dims (B, C, *spatial) for dim="
                f"{self.config['dim']!r}, got {shape}"
            )
        b, c = x.shape[:2]
        if c != self.in_channels:
            raise MedinvertError(f"network expects {self.in_channels} input channels, got {c}")
        if not x.is_floating_point():
            raise MedinvertError(f"network input must be floating point, got {x.dtype}")
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t))
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise MedinvertError(f"time t must have shape ({b},), got {tuple(t.shape)}")
        t = t.to(device=x.device, dtype=x.dtype)
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise MedinvertError("diffusion time t must lie in [0, 1]")
        if cond is not None and (cond.dim() != 2 or cond.shape != (b, self.descriptor_dim)):
            raise MedinvertError(f"condition must have shape ({b}, {self.descriptor_dim}), got {tuple(cond.shape)}")
        if cond_drop is not None and (cond_drop.shape != (b,) or cond_drop.dtype != torch.bool):
            raise MedinvertError(f"cond_drop must be a bool tensor of shape ({b},), got {cond_drop.dtype} "
                                 f"{tuple(cond_drop.shape)}")
        return t

    # ------------------------------------------------------------------ Lipschitz bookkeeping
    def lipschitz_graph(self, norm_of: NormOf, film_gain: FilmGain) -> float:
        """Upper bound of Lip(x -> forward(x, t, c)) for fixed (t, c), following the forward graph.

        ``norm_of(conv)`` must return an upper bound of that convolution's operator norm and
        ``film_gain(film)`` the largest |gain| of that FiLM layer for the (t, c) considered.
        Composition multiplies bounds; a sum (skip connection) adds them; zero padding, cropping
        and space/depth rearrangements are isometries or projections (constant <= 1).
        """
        lip = norm_of(self.stem)
        skips: list[float] = []
        for blocks, down in zip(self.enc, self.down):
            for blk in blocks:
                lip *= blk.lipschitz_bound(norm_of, film_gain)
            skips.append(lip)
            lip *= norm_of(down)
        for blk in self.mid:
            lip *= blk.lipschitz_bound(norm_of, film_gain)
        for up, blocks in zip(self.up, self.dec):
            lip = lip * norm_of(up) + skips.pop()
            for blk in blocks:
                lip *= blk.lipschitz_bound(norm_of, film_gain)
        return lip * self.act_lip * norm_of(self.head)


def _validate(
    dim: str, n_cond_channels: int, neighbours: int, channels: list[int], blocks_per_level: int,
    mid_blocks: int, patch: int, descriptor_dim: int, emb_dim: int, time_dim: int, activation: str,
    sn_target: float, film_scale_max: float, block: str,
) -> None:
    """Raise `MedinvertError` (one line) on an inconsistent architecture configuration."""
    if dim not in DIMS:
        raise MedinvertError(f"unknown network dim {dim!r}; choose one of {sorted(DIMS)}")
    if dim == "2.5d" and neighbours < 1:
        raise MedinvertError("dim='2.5d' needs neighbours >= 1 (slices on each side)")
    if dim != "2.5d" and neighbours != 0:
        raise MedinvertError(f"neighbours={neighbours} only applies to dim='2.5d'")
    if n_cond_channels < 0:
        raise MedinvertError(f"n_cond_channels must be >= 0, got {n_cond_channels}")
    if len(channels) < 1 or min(channels) < 2:
        raise MedinvertError(f"channels must be a non-empty list of ints >= 2, got {channels}")
    if blocks_per_level < 0 or mid_blocks < 0:
        raise MedinvertError("blocks_per_level and mid_blocks must be >= 0")
    if patch < 1:
        raise MedinvertError(f"patch must be >= 1, got {patch}")
    if descriptor_dim < 1 or emb_dim < 1:
        raise MedinvertError("descriptor_dim and emb_dim must be >= 1")
    if time_dim < 2 or time_dim % 2:
        raise MedinvertError(f"time_dim must be an even number >= 2, got {time_dim}")
    if activation not in ACTIVATION_LIPSCHITZ:
        raise MedinvertError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATION_LIPSCHITZ)}")
    if not sn_target > 0:
        raise MedinvertError(f"sn_target must be > 0, got {sn_target}")
    if not film_scale_max >= 0:
        raise MedinvertError(f"film_scale_max must be >= 0, got {film_scale_max}")
    if block not in BLOCKS:
        raise MedinvertError(f"unknown block kind {block!r}; choose one of {list(BLOCKS)}")
