"""The canonical denoiser: any eps / x0 / v network seen as ``eps(xbar, sigma)`` in DDIM-ODE coordinates.

Solvers never see a network (k-diffusion's idea, Karras et al. 2022 sec. 3): they call
``denoiser(xbar, sigma) -> eps`` with ``xbar = x / sqrt(abar)`` and ``sigma = sqrt((1-abar)/abar)``
(see `medinvert.schedule`), and this module does the rest:

1. ``t = schedule.t_of_sigma(sigma)`` and ``x = xbar / sqrt(1 + sigma^2)``;
2. optional extra conditioning channels (e.g. the adjoint image ``A^H y``) are concatenated to ``x``;
3. the network ``net(x, t, cond) -> out`` runs on fixed slice batches, in its own dtype;
4. ``out`` is converted to ``eps`` (``prediction`` = ``"eps"`` | ``"x0"`` | ``"v"``, Salimans & Ho
   2022, ``v = sqrt(abar) eps - sqrt(1 - abar) x0``) in the dtype of ``xbar``.  ``"v_adjoint"`` is
   v-prediction with a skip from the first extra channel ``a`` (the adjoint image):
   ``v = out - sqrt(1 - abar) a``, i.e. the network predicts v relative to the guess ``x0 = a``
   (which dominates at high noise; the skip vanishes as ``abar -> 1``).  Without extra channels, or
   in the unconditional branch whose extra channels are zeros, it is plain v.
   ``"edm_adjoint"`` is the preconditioning of Karras et al. 2022 (EDM, Table 1, eq. 7) centred on the
   guess ``m = a``: ``x0 = m + c_skip (xbar - m) + c_out out`` with ``c_skip = s_d^2 / (sigma^2 + s_d^2)``
   and ``c_out = sigma s_d / sqrt(sigma^2 + s_d^2)`` (`edm_coefficients`), where ``s_d`` is the expected
   spread of ``x0 - m``: `SIGMA_DATA_GUESS` for a slice whose guess is non-zero, `SIGMA_DATA_NULL`
   (the data itself) when it is all zero (dropped condition, no extra channels).  An untrained network
   (``out = 0``) then returns the minimum-variance blend of the noisy state and the guess at every
   noise level, and the identity as ``sigma -> 0``;
5. classifier-free guidance (Ho & Salimans 2022): ``eps = eps_null + w (eps_cond - eps_null)``.

Guard: a network output holding NaN or Inf raises `medinvert.errors.NumericalError` whose
``batch_index`` is the first bad batch element, whatever the solver (callers map it to a slice).

Mutation: the three counters (`nfe`, `calls`, `forward_calls`) are the only state that changes;
everything else is fixed at construction (use `Denoiser.replace` for a variant).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from medinvert.errors import MedinvertError, NumericalError
from medinvert.schedule import Schedule

__all__ = ["PREDICTIONS", "Denoiser", "network_dtype", "edm_coefficients", "guess_spread", "SIGMA_DATA_GUESS",
           "SIGMA_DATA_NULL"]

#: Network output parameterisations understood by `Denoiser`.
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "v_adjoint", "edm_adjoint")

#: ``edm_adjoint``: spread of ``x0 - A^H y`` in normalised units (the adjoint image of a 4x random
#: Cartesian mask is off by RMSE ~0.05, 8x ~0.08; noise and blur corruptions are similar or better)
SIGMA_DATA_GUESS = 0.1
#: ``edm_adjoint``: spread of ``x0`` itself (normalised slices: 0 .. ~1, std ~0.3 - 0.4) -- no guess
SIGMA_DATA_NULL = 0.5


def edm_coefficients(sigma: float | torch.Tensor, sigma_data: float | torch.Tensor) -> tuple[Any, Any]:
    """``(c_skip, c_out)`` of Karras et al. 2022, Table 1: ``s_d^2 / (sigma^2 + s_d^2)`` and
    ``sigma s_d / sqrt(sigma^2 + s_d^2)`` (scalars or broadcastable tensors)."""
    total = sigma * sigma + sigma_data * sigma_data
    c_skip = sigma_data * sigma_data / total
    c_out = sigma * sigma_data / (total ** 0.5)
    return c_skip, c_out


def guess_spread(guess: torch.Tensor) -> torch.Tensor:
    """Per-sample ``s_d`` of ``edm_adjoint`` for guess images ``(B, 1, ...)``: `SIGMA_DATA_GUESS` where
    the guess has a non-zero voxel, `SIGMA_DATA_NULL` where it is all zero.  Shape ``(B, 1, ..., 1)``."""
    nonzero = guess.flatten(1).abs().amax(dim=1) > 0
    spread = torch.where(nonzero, torch.tensor(SIGMA_DATA_GUESS, dtype=guess.dtype, device=guess.device),
                         torch.tensor(SIGMA_DATA_NULL, dtype=guess.dtype, device=guess.device))
    return spread.view(-1, *([1] * (guess.ndim - 1)))

Network = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def network_dtype(net: Any, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype a network computes in: its ``dtype`` attribute, else its first floating parameter
    or buffer, else ``default``."""
    dtype = getattr(net, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(net, nn.Module):
        for tensor in list(net.parameters()) + list(net.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return default


def _network_device(net: Any) -> torch.device | None:
    if isinstance(net, nn.Module):
        for tensor in list(net.parameters()) + list(net.buffers()):
            return tensor.device
    return None


class Denoiser:
    """Wrap ``net(x, t, cond) -> out`` into ``eps(xbar, sigma)``.

    Args:
        net: the network.  ``x`` is ``(B, C + E, H, W)`` or ``(B, C + E, D, H, W)`` (``E`` extra
            channels), ``t`` is ``(B,)`` diffusion time in ``[0, 1]``, ``cond`` is ``(B, K)`` or
            ``None`` (the network's own learned null condition); ``out`` is ``(B, C, ...)``.
            An ``nn.Module`` must be in eval mode (training-mode layers such as spectral-norm power
            iterations or dropout would make evaluation non-deterministic), unless ``grad`` is set.
        schedule: the VP schedule the network was trained with.
        prediction: what the network outputs, ``"eps"``, ``"x0"`` or ``"v"``.
        cond: the condition, ``(K,)`` (shared by the batch) or ``(B, K)``; ``None`` = unconditional.
        null_cond: condition used for the unconditional branch of guidance (``None`` = the network's
            learned null condition).
        guidance: classifier-free guidance weight ``w``.  ``w = 1`` runs only the conditional branch
            and ``w = 0`` only the unconditional one (one network pass each); any other ``w`` runs
            both (two passes, counted as two NFE).
        extra: extra input channels ``(E, ...)`` or ``(B, E, ...)`` (spatial shape of ``x``),
            concatenated to ``x`` after the state channels.
        null_extra: extra channels of the unconditional guidance branch: ``"zeros"`` (default;
            condition dropout in training drops the conditioning images too), ``"same"`` (= ``extra``)
            or a tensor shaped like ``extra``.
        batch_size: slices per network call.  The batch is cut into consecutive chunks of this size
            (the last one may be shorter), so the composition of every network call depends only on
            the batch shape and ``batch_size`` -- a condition for bitwise-reproducible eps.
            ``None`` = the whole batch in one call.
        dtype: dtype the network computes in (default: `network_dtype`).
        grad: run the network with autograd enabled (default off: ``torch.no_grad``).  With ``grad`` a
            network in training mode is accepted: training through the sampler
            (`medinvert.train.unrolled`) needs exactly that.

    Counters (the only mutable state):
        nfe: network evaluations of the whole batch (a guided call with two branches counts 2,
            independently of how many chunks ``batch_size`` cuts the batch into).
        calls: calls of the denoiser.
        forward_calls: actual ``net(...)`` invocations (chunks x branches).
    """

    def __init__(
        self,
        net: Network,
        schedule: Schedule,
        *,
        prediction: str = "eps",
        cond: torch.Tensor | None = None,
        null_cond: torch.Tensor | None = None,
        guidance: float = 1.0,
        extra: torch.Tensor | None = None,
        null_extra: torch.Tensor | str = "zeros",
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        grad: bool = False,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise MedinvertError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        guidance = float(guidance)
        if not math.isfinite(guidance):
            raise MedinvertError(f"guidance weight must be finite, got {guidance}")
        if guidance != 1.0 and cond is None and null_cond is None:
            raise MedinvertError(f"guidance weight {guidance} needs a condition (cond is None)")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise MedinvertError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        for name, c in (("cond", cond), ("null_cond", null_cond)):
            if c is not None and (not isinstance(c, torch.Tensor) or c.ndim not in (1, 2)):
                raise MedinvertError(f"{name} must be a (K,) or (B, K) tensor or None")
        if isinstance(null_extra, str) and null_extra not in ("zeros", "same"):
            raise MedinvertError(f"null_extra must be 'zeros', 'same' or a tensor, got {null_extra!r}")
        if isinstance(null_extra, torch.Tensor) and (extra is None or null_extra.shape != extra.shape):
            raise MedinvertError("a null_extra tensor needs extra channels of the same shape")
        if isinstance(net, nn.Module) and net.training and not grad:
            raise MedinvertError("the network is in training mode; call net.eval() before wrapping it in a Denoiser")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.cond = cond
        self.null_cond = null_cond
        self.guidance = guidance
        self.extra = extra
        self.null_extra = null_extra
        self.batch_size = batch_size
        self.dtype = dtype if dtype is not None else network_dtype(net)
        self.grad = bool(grad)
        self.device = _network_device(net)
        self.nfe = 0
        self.calls = 0
        self.forward_calls = 0

    # ------------------------------------------------------------------ configuration
    def replace(self, **changes: Any) -> "Denoiser":
        """A new `Denoiser` with some constructor arguments changed (counters start at zero)."""
        kwargs = dict(
            prediction=self.prediction, cond=self.cond, null_cond=self.null_cond, guidance=self.guidance,
            extra=self.extra, null_extra=self.null_extra, batch_size=self.batch_size, dtype=self.dtype, grad=self.grad,
        )
        net = changes.pop("net", self.net)
        schedule = changes.pop("schedule", self.schedule)
        unknown = set(changes) - set(kwargs)
        if unknown:
            raise MedinvertError(f"unknown Denoiser option(s): {', '.join(sorted(unknown))}")
        kwargs.update(changes)
        return Denoiser(net, schedule, **kwargs)

    def reset_counters(self) -> None:
        """Set `nfe`, `calls` and `forward_calls` to zero."""
        self.nfe = self.calls = self.forward_calls = 0

    @property
    def branches(self) -> tuple[str, ...]:
        """Which guidance branches one call evaluates: ``("cond",)``, ``("null",)`` or both."""
        if self.guidance == 1.0:
            return ("cond",)
        if self.guidance == 0.0:
            return ("null",)
        return ("null", "cond")

    # ------------------------------------------------------------------ evaluation
    def __call__(self, xbar: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``eps(xbar, sigma)``.

        Args:
            xbar: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` floating state in DDIM-ODE coordinates.
            sigma: scalar noise level (Python float or 0-d tensor), ``0 <= sigma <= sigma_max``.

        Returns:
            eps, same shape, dtype and device as ``xbar``.  For ``x0``-prediction at ``sigma = 0``
            the network is not called and eps is ``0`` (the limit ``-sigma * score`` of any smooth
            data density; ``(xbar - x0) / sigma`` is undefined there).
        """
        if not isinstance(xbar, torch.Tensor) or not xbar.is_floating_point() or xbar.ndim not in (4, 5):
            raise MedinvertError("denoiser input must be a floating (B, C, H, W) or (B, C, D, H, W) tensor")
        if isinstance(sigma, torch.Tensor):
            if sigma.numel() != 1:
                raise MedinvertError("the denoiser takes one scalar sigma for the whole batch")
            sigma = float(sigma.reshape(()))
        s = float(sigma)
        self.calls += 1
        if self.prediction == "x0" and s == 0.0:
            return torch.zeros_like(xbar)
        t = self.schedule.t_of_sigma(s)
        scale = math.sqrt(1.0 + s * s)
        x = xbar / scale
        eps_by_branch = {}
        for branch in self.branches:
            if branch == "cond":
                out = self._network(x, t, self.cond, self.extra)
            else:
                out = self._network(x, t, self.null_cond, self._null_extra())
            extra = self.extra if branch == "cond" else self._null_extra()
            if self.prediction == "edm_adjoint":
                eps_by_branch[branch] = self._edm_eps(out, xbar, s, self._guess(extra, xbar))
                self.nfe += 1
                continue
            if self.prediction == "v_adjoint" and extra is not None:
                out = out.to(xbar.dtype) - (s / scale) * self._guess(extra, xbar)
            eps_by_branch[branch] = self._to_eps(out, xbar, x, s, scale)
            self.nfe += 1
        if len(eps_by_branch) == 1:
            return next(iter(eps_by_branch.values()))
        null, cond = eps_by_branch["null"], eps_by_branch["cond"]
        return null + self.guidance * (cond - null)

    def _to_eps(self, out: torch.Tensor, xbar: torch.Tensor, x: torch.Tensor, s: float, scale: float) -> torch.Tensor:
        out = out.to(dtype=xbar.dtype, device=xbar.device)
        if self.prediction == "eps":
            return out
        if self.prediction == "x0":  # xbar = x0 + sigma eps
            return (xbar - out) / s
        # v (and v_adjoint after its skip) = sqrt(abar) eps - sqrt(1 - abar) x0
        #   =>  eps = sqrt(1 - abar) x + sqrt(abar) v
        return (s * x + out) / scale

    @staticmethod
    def _guess(extra: torch.Tensor | None, xbar: torch.Tensor) -> torch.Tensor:
        """The guess image ``m`` (first extra channel, batch-broadcast) or zeros, in ``xbar``'s dtype."""
        if extra is None:
            return torch.zeros((1, 1) + tuple(xbar.shape[2:]), dtype=xbar.dtype, device=xbar.device)
        skip = extra[:, :1] if extra.ndim == xbar.ndim else extra[None, :1]
        return skip.to(device=xbar.device, dtype=xbar.dtype)

    @staticmethod
    def _edm_eps(out: torch.Tensor, xbar: torch.Tensor, s: float, guess: torch.Tensor) -> torch.Tensor:
        """eps of ``edm_adjoint``: ``x0 = m + c_skip (xbar - m) + c_out out``, ``eps = (xbar - x0) / sigma``
        which simplifies to ``((1 - c_skip) (xbar - m) - c_out out) / sigma`` (finite as sigma -> 0)."""
        spread = guess_spread(guess).to(xbar.dtype)
        if s == 0.0:
            return torch.zeros_like(xbar)
        c_skip, c_out = edm_coefficients(s, spread)
        out = out.to(dtype=xbar.dtype, device=xbar.device)
        return ((1.0 - c_skip) * (xbar - guess) - c_out * out) / s

    def _null_extra(self) -> torch.Tensor | None:
        """Extra channels of the unconditional branch."""
        if self.extra is None:
            return None
        if isinstance(self.null_extra, torch.Tensor):
            return self.null_extra
        return self.extra if self.null_extra == "same" else torch.zeros_like(self.extra)

    def _network(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, extra: torch.Tensor | None) -> torch.Tensor:
        """Run the network on fixed consecutive chunks of the batch; returns ``(B, C, ...)``."""
        batch = x.shape[0]
        device = self.device if self.device is not None else x.device
        xin = x.to(dtype=self.dtype, device=device)
        if extra is not None:
            shape = tuple(extra.shape)
            if extra.ndim == xin.ndim - 1:
                extra = extra.unsqueeze(0)
            if extra.ndim != xin.ndim or extra.shape[2:] != xin.shape[2:] or extra.shape[0] not in (1, batch):
                raise MedinvertError(f"extra channels of shape {shape} do not fit a state of shape {tuple(x.shape)}")
            extra = extra.to(dtype=self.dtype, device=device).expand(batch, *extra.shape[1:])
            xin = torch.cat([xin, extra], dim=1)
        if cond is not None:
            if cond.ndim == 1:
                cond = cond.unsqueeze(0)
            if cond.shape[0] not in (1, batch):
                raise MedinvertError(f"condition batch {cond.shape[0]} does not match the state batch {batch}")
            cond = cond.to(dtype=self.dtype, device=device).expand(batch, cond.shape[1])
        tt = t.to(dtype=self.dtype, device=device).expand(batch)
        step = self.batch_size or batch
        outs = []
        with torch.set_grad_enabled(self.grad):
            for start in range(0, batch, step):
                stop = min(start + step, batch)
                out = self.net(xin[start:stop], tt[start:stop], None if cond is None else cond[start:stop])
                self.forward_calls += 1
                if not isinstance(out, torch.Tensor) or out.shape != (stop - start,) + tuple(x.shape[1:]):
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise MedinvertError(f"network output {got} does not match the state slice {(stop - start,) + tuple(x.shape[1:])}")
                _check_finite_output(out, start, t)
                outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def _check_finite_output(out: torch.Tensor, offset: int, t: torch.Tensor) -> None:
    """Raise `NumericalError` (with ``batch_index``) when a network output chunk ``(b, C, ...)`` that
    starts at batch position ``offset`` holds NaN or Inf: a broken network must stop the volume with
    a clear message, not flow into the solver state or the output file."""
    bad = ~torch.isfinite(out.detach())
    if bool(bad.any()):
        index = offset + int(torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1))[0, 0])
        raise NumericalError(f"the network returned NaN/Inf at t={float(t.reshape(-1)[0]):.6g} in batch element "
                             f"{index}", batch_index=index)
