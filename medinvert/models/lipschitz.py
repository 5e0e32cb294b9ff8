"""Lipschitz constant of ``x -> eps_theta(x, t, c)``: analytic upper bounds and empirical estimates.

What is bounded (see docs/lipschitz.md for the proofs and the guarantees built on it): for a fixed
time ``t`` and condition ``c``, the Lipschitz constant, in the Euclidean norm, of the map from the
*whole* network input ``x`` (all ``C_in`` channels of one sample) to the output ``eps``.  It also
bounds the constant with respect to the noisy slice alone (conditioning channels held fixed).  The
network acts on each sample of a batch independently, so the constant is per sample.

* `conv_norm_bound`: ``sqrt(prod ceil(k_i / s_i)) * ||W_mat||_2``, valid for every input size.
* `conv_norm_fourier`: the exact operator norm of the circular convolution on an ``S + k - 1``
  grid (Sedghi, Gupta & Long 2019, Thm 6), an upper bound for the zero-padded convolution on
  inputs of spatial size ``<= S``.
* `conv_norm_power`: power iteration on the convolution itself (an estimate, i.e. a lower bound).
* `lipschitz_upper_bound`: products along the forward graph, sums over skip connections.
* `lipschitz_empirical`: power iteration on ``J^T J`` with forward/reverse-mode products at random
  inputs; returns ``max ||J v||`` over unit ``v`` visited, a lower bound of the true constant.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from medinvert.errors import MedinvertError
from medinvert.models.layers import FiLM, freeze_spectral_norm, overlap_factor

__all__ = [
    "effective_weight",
    "conv_norm_bound",
    "conv_norm_fourier",
    "conv_norm_power",
    "layer_spectral_norms",
    "lipschitz_upper_bound",
    "lipschitz_empirical",
    "jacobian_norm_at",
]

#: relative safety margin on numerically computed singular values (LAPACK backward error is
#: a small multiple of machine epsilon times the norm; 1e-6 covers float64 with a wide margin)
_SVD_MARGIN = 1e-6
#: frequencies per batched SVD in `conv_norm_fourier` (bounds memory)
_FREQ_CHUNK = 4096

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``model`` in eval mode (spectral-norm power iterations do not advance)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight an eval-mode forward pass uses (after spectral normalisation), detached."""
    with _eval_mode(module), torch.no_grad():
        return module.weight.detach().clone()


def _matrix_norm(weight: torch.Tensor) -> float:
    """Largest singular value of ``weight`` reshaped to ``(out, -1)``, as torch's spectral_norm does."""
    mat = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    return float(torch.linalg.matrix_norm(mat, ord=2))


def conv_norm_bound(module: nn.Module) -> float:
    """Upper bound of the operator norm of a convolution (any input size, zero padding).

    ``||conv|| <= sqrt(prod_i ceil(k_i / s_i)) * ||W_mat||_2`` where ``W_mat`` is the weight
    reshaped to ``(C_out, C_in * prod k_i)``: the convolution is ``W_mat`` applied to the im2col
    patch matrix, and each input entry appears in at most ``prod ceil(k_i / s_i)`` patches.
    For ``nn.Linear`` the bound is ``||W||_2`` (exact).
    """
    weight = effective_weight(module)
    if isinstance(module, nn.Linear):
        return _matrix_norm(weight) * (1 + _SVD_MARGIN)
    if not isinstance(module, _CONVS) or module.groups != 1 or any(d != 1 for d in module.dilation):
        raise TypeError(f"unsupported layer for a norm bound: {module!r}")
    factor = overlap_factor(module.kernel_size, module.stride)
    return math.sqrt(factor) * _matrix_norm(weight) * (1 + _SVD_MARGIN)


def conv_norm_fourier(module: nn.Module, spatial_shape: Sequence[int]) -> float:
    """Upper bound of ``||conv||`` for zero-padded inputs of spatial size ``<= spatial_shape``.

    The zero-padded convolution on an ``S`` grid equals restriction o circular convolution on an
    ``N = S + k - 1`` grid o zero embedding (no wrap-around reaches the kept outputs), and the norm
    of the circular convolution is ``max_w ||W_hat(w)||_2`` over the DFT frequencies ``w`` of the
    ``N`` grid, ``W_hat(w)`` the ``C_out x C_in`` matrix of kernel DFTs (Sedghi et al. 2019).
    A stride only subsamples the stride-1 output (norm <= 1), so the same bound holds.
    """
    if not isinstance(module, _CONVS) or module.groups != 1 or any(d != 1 for d in module.dilation):
        raise TypeError(f"unsupported layer for a Fourier bound: {module!r}")
    weight = effective_weight(module).to(torch.float64)
    kernel = weight.shape[2:]
    if len(spatial_shape) != len(kernel):
        raise ValueError(f"spatial shape {tuple(spatial_shape)} does not match kernel {tuple(kernel)}")
    grid = [int(s) + int(k) - 1 for s, k in zip(spatial_shape, kernel)]
    dims = tuple(range(2, 2 + len(kernel)))
    spectrum = torch.fft.rfftn(weight, s=grid, dim=dims)  # real kernel: half spectrum suffices
    c_out, c_in = weight.shape[:2]
    mats = spectrum.permute(*dims, 0, 1).reshape(-1, c_out, c_in)
    best = 0.0
    for start in range(0, mats.shape[0], _FREQ_CHUNK):
        best = max(best, float(torch.linalg.svdvals(mats[start : start + _FREQ_CHUNK])[:, 0].max()))
    return best * (1 + _SVD_MARGIN)


def conv_norm_power(
    module: nn.Module, spatial_shape: Sequence[int], *, n_iter: int = 100, seed: int = 0
) -> float:
    """Power-iteration estimate of ``||conv||`` on inputs of size ``spatial_shape`` (a lower bound).

    Iterates ``v <- C^T C v / ||C^T C v||`` with the bias removed (the operator is linear) and
    returns the largest ``||C v||`` seen for unit ``v``, in float64.
    """
    conv = copy.deepcopy(module).to(torch.float64)
    freeze_spectral_norm(conv)
    conv.eval()
    if conv.bias is not None:
        with torch.no_grad():
            conv.bias.zero_()
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn((1, conv.in_channels, *spatial_shape), generator=gen, dtype=torch.float64)
    v /= v.norm()
    best = 0.0
    for _ in range(n_iter):
        v.requires_grad_(True)
        out = conv(v)
        best = max(best, float(out.detach().norm()))
        (grad,) = torch.autograd.grad(out, v, grad_outputs=out)  # C^T C v
        v = grad.detach() / grad.norm()
    return best


def layer_spectral_norms(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per x-path convolution: exact norm of its reshaped weight, target, overlap, operator bound.

    Returns ``{module name: {"matrix_norm", "target", "overlap", "operator_bound"}}`` where
    ``matrix_norm`` is ``||W_mat||_2`` of the eval-mode weight reshaped to ``(out, -1)`` (the
    quantity torch's spectral_norm normalises), ``target`` the spectral-norm target (None when
    the layer is not normalised) and ``operator_bound = sqrt(overlap) * matrix_norm``.
    """
    convs = model.x_path_convs() if hasattr(model, "x_path_convs") else [
        m for m in model.modules() if isinstance(m, _CONVS)
    ]
    names = {id(m): n for n, m in model.named_modules()}
    table: dict[str, dict[str, Any]] = {}
    for module in convs:
        overlap = overlap_factor(module.kernel_size, module.stride)
        norm = _matrix_norm(effective_weight(module))
        table[names[id(module)]] = {
            "matrix_norm": norm,
            "target": getattr(module, "sn_target", None),
            "overlap": overlap,
            "operator_bound": math.sqrt(overlap) * norm,
        }
    return table


def _conv_input_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """Spatial input shape of every convolution during one forward pass at ``input_shape``."""
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = []
    for module in model.modules():
        if isinstance(module, _CONVS):
            def hook(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                shapes[id(mod)] = tuple(args[0].shape[2:])

            hooks.append(module.register_forward_pre_hook(hook))
    try:
        dtype = next(model.parameters()).dtype
        x = torch.zeros((1, *input_shape[1:]), dtype=dtype)
        with _eval_mode(model), torch.no_grad():
            model(x, torch.full((1,), 0.5, dtype=dtype), None)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _as_rows(t: Any, cond: torch.Tensor | None, descriptor_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Broadcast ``t`` (float / (n,)) and ``cond`` (None / (K,) / (n, K)) to matching rows."""
    tt = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    if cond is not None:
        cc = torch.as_tensor(cond, dtype=torch.float32)
        if cc.dim() == 1:
            cc = cc[None, :]
        if cc.dim() != 2 or cc.shape[1] != descriptor_dim:
            raise MedinvertError(f"condition must have shape (K,) or (n, K) with K={descriptor_dim}")
        n = max(tt.shape[0], cc.shape[0])
        if tt.shape[0] not in (1, n) or cc.shape[0] not in (1, n):
            raise MedinvertError(f"cannot pair {tt.shape[0]} times with {cc.shape[0]} conditions")
        return tt.expand(n).contiguous(), cc.expand(n, -1).contiguous()
    return tt, None


def lipschitz_upper_bound(
    model: nn.Module,
    *,
    t: float | Sequence[float] | torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    input_shape: Sequence[int] | None = None,
) -> float:
    """Analytic upper bound of ``Lip(x -> model(x, t, c))`` (eval-mode weights, Euclidean norm).

    Args:
        model: a `LipschitzUNet` (anything with ``lipschitz_graph`` and ``embed``).
        t: None -> the bound holds for *every* time and condition (each FiLM gain bounded by
            ``1 + film_scale_max``); a float or 1-D sequence of times -> the bound holds for each of
            them (with ``cond``) using the actual FiLM gains there (tighter).
        cond: descriptor ``(K,)`` or ``(n, K)`` paired with ``t``; None -> the null condition.
            Ignored when ``t`` is None.
        input_shape: ``(B, C, *S)``; None -> per-convolution bound valid for any input size;
            given -> the smaller of that and the Fourier bound at the feature-map sizes of this
            input size, valid for inputs of spatial size ``<= S``.  Costs one small SVD per
            frequency and layer (about 30-40 s for the default 2D model at 240 x 240 on 1 CPU).
    """
    if input_shape is not None:
        shapes = _conv_input_shapes(model, input_shape)

        def norm_of(module: nn.Module) -> float:
            return min(conv_norm_bound(module), conv_norm_fourier(module, shapes[id(module)]))
    else:
        norm_of = conv_norm_bound

    if t is None:
        def film_gain(film: FiLM) -> float:
            return 1.0 + film.scale_max
    else:
        tt, cc = _as_rows(t, cond, model.descriptor_dim)
        if torch.any((tt < 0) | (tt > 1)):
            raise MedinvertError("diffusion time t must lie in [0, 1]")
        with _eval_mode(model), torch.no_grad():
            dtype = next(model.parameters()).dtype
            emb = model.embed(tt.to(dtype), None if cc is None else cc.to(dtype))

        def film_gain(film: FiLM) -> float:
            with torch.no_grad():
                gain, _ = film.gain_and_shift(emb)
            return float(gain.abs().max())

    return float(model.lipschitz_graph(norm_of, film_gain))


def _frozen_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    net = freeze_spectral_norm(copy.deepcopy(model)).to(dtype).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _power_iteration(
    net: nn.Module, x0: torch.Tensor, v: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
    mask: torch.Tensor, n_iter: int,
) -> float:
    """Largest ``||J v||`` over the unit vectors ``v`` visited by power iteration on ``J^T J``."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return net(x, t, cond)

    v = v * mask
    v = v / v.norm()
    _, vjp_fn = torch.func.vjp(f, x0)
    best = 0.0
    for _ in range(n_iter):
        _, jv = torch.func.jvp(f, (x0,), (v,))
        best = max(best, float(jv.norm()))
        (w,) = vjp_fn(jv)
        w = w * mask
        norm = w.norm()
        if norm == 0:
            break
        v = w / norm
    return best


def _inputs(model: nn.Module, b: int, t: float, cond: Any, shape: tuple[int, ...], channels: Sequence[int] | None,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    tt = torch.full((b,), float(t), dtype=dtype)
    cc = None
    if cond is not None:
        cc = torch.as_tensor(cond, dtype=dtype)
        cc = cc.expand(b, -1) if cc.dim() == 1 else cc
    mask = torch.ones(shape, dtype=dtype)
    if channels is not None:
        mask.zero_()
        mask[:, list(channels)] = 1.0
    return tt, cc, mask


def jacobian_norm_at(
    model: nn.Module,
    x: torch.Tensor,
    *,
    t: float = 0.5,
    cond: torch.Tensor | None = None,
    n_iter: int = 20,
    seed: int = 0,
    channels: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Power-iteration estimate of ``||J(x)||_2`` for ``J`` the Jacobian of ``x -> model(x, t, cond)``.

    ``x: (B, C_in, *S)``; returns the largest ``||J v||`` over the unit vectors visited (a lower
    bound of the local norm that converges to it).  ``channels`` restricts ``v`` to those input
    channels.  Runs on a frozen copy in ``dtype``; the model is not modified.
    """
    if n_iter < 1:
        raise MedinvertError("n_iter must be >= 1")
    net = _frozen_copy(model, dtype)
    x0 = x.detach().to(dtype)
    shape = tuple(x0.shape)
    tt, cc, mask = _inputs(model, shape[0], t, cond, shape, channels, dtype)
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return _power_iteration(net, x0, v, tt, cc, mask, n_iter)


def lipschitz_empirical(
    model: nn.Module,
    x_shape: Sequence[int],
    *,
    t: float = 0.5,
    cond: torch.Tensor | None = None,
    n_iter: int = 20,
    n_probes: int = 3,
    seed: int = 0,
    channels: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Empirical Lipschitz estimate: power iteration on ``J^T J`` at random inputs.

    For each of ``n_probes`` points ``x ~ N(0, I)`` of shape ``x_shape = (B, C_in, *S)``, iterate
    ``v <- J^T J v / ||J^T J v||`` (``J`` the Jacobian of ``x -> model(x, t, cond)``; ``J v`` by
    forward mode `torch.func.jvp`, ``J^T u`` by reverse mode `torch.func.vjp`) and return the
    largest ``||J v||`` seen for unit ``v``: a lower bound of the local Jacobian norm, hence of
    the Lipschitz constant.  ``channels`` restricts perturbations to those input channels (e.g.
    ``[0]``: the noisy slice only).  Runs on a frozen copy (the model is not modified), in
    ``dtype``.  Samples of a batch are independent, so ``J`` is block diagonal and a batch of B
    probes gives the largest of their local norms.
    """
    if n_iter < 1 or n_probes < 1:
        raise MedinvertError("n_iter and n_probes must be >= 1")
    net = _frozen_copy(model, dtype)
    shape = tuple(int(s) for s in x_shape)
    tt, cc, mask = _inputs(model, shape[0], t, cond, shape, channels, dtype)
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(n_probes):
        x0 = torch.randn(shape, generator=gen, dtype=dtype)
        v = torch.randn(shape, generator=gen, dtype=dtype)
        best = max(best, _power_iteration(net, x0, v, tt, cc, mask, n_iter))
    return best
