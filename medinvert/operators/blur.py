"""Blur operator: 2-D convolution with a fixed kernel over the last two dimensions, zero padding.

``A x = k * x`` (true convolution, ``(A x)[n] = sum_m k[m] x[n - m]``) with zero padding and "same"
output size, so measurements keep the image's shape.  With zero padding the exact adjoint is the
correlation with the same kernel, i.e. the convolution with the flipped kernel
``k~[m] = k[-m]``, again zero-padded "same" (both kernel sides odd, so the centre tap is well defined).

Data consistency has no closed form: `data_consistency` runs a few conjugate-gradient iterations on
the normal equations of ``min_x lambda ||A x - y||^2 + mu ||x - x0||^2``, i.e.
``(lambda A^H A + mu I) x = lambda A^H y + mu x0``, started at ``x0`` (each image of the batch is
its own system, so inner products run over the last two dimensions only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medinvert.operators.base import LinearOperator, as_weight

__all__ = ["BlurOperator"]


class BlurOperator(LinearOperator):
    """Zero-padded "same" 2-D convolution.

    Args:
        kernel: real ``(kh, kw)`` tensor with odd ``kh`` and ``kw`` (see `medinvert.operators.kernels`).
        mu: Tikhonov weight pulling the data-consistency solution towards ``x0_pred`` (> 0).
        cg_iterations: conjugate-gradient iterations per data-consistency call.
    """

    kind = "blur"

    def __init__(self, kernel: torch.Tensor, *, mu: float = 1e-2, cg_iterations: int = 10) -> None:
        kernel = torch.as_tensor(kernel)
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"blur kernel must be 2-D with odd sides, got shape {tuple(kernel.shape)}")
        if kernel.is_complex() or not bool(torch.isfinite(kernel).all()):
            raise ValueError("blur kernel must be real and finite")
        if not mu > 0:
            raise ValueError(f"mu must be positive, got {mu}")
        if cg_iterations < 1:
            raise ValueError(f"cg_iterations must be at least 1, got {cg_iterations}")
        self.kernel = kernel
        self.mu = float(mu)
        self.cg_iterations = int(cg_iterations)

    def _correlate(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Zero-padded "same" cross-correlation of ``x`` (``(..., H, W)``) with ``kernel``."""
        if x.is_complex():
            return torch.complex(self._correlate(x.real, kernel), self._correlate(x.imag, kernel))
        shape = x.shape
        flat = x.reshape(-1, 1, shape[-2], shape[-1])
        k = kernel.to(device=x.device, dtype=x.dtype)[None, None]
        out = F.conv2d(flat, k, padding=(kernel.shape[0] // 2, kernel.shape[1] // 2))
        return out.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``k * x`` (convolution = correlation with the flipped kernel)."""
        return self._correlate(x, torch.flip(self.kernel, dims=(0, 1)))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^H y``: correlation with ``k`` (= convolution with the flipped kernel)."""
        return self._correlate(y, self.kernel)

    def data_consistency(self, x0_pred: torch.Tensor, y: torch.Tensor,
                         weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """CG solution of ``(lambda A^H A + mu I) x = lambda A^H y + mu x0`` after ``cg_iterations``
        steps from ``x = x0`` (``lambda = weight``; ``lambda = 0`` returns ``x0``)."""
        lam = as_weight(weight, x0_pred)
        y = y.to(x0_pred.dtype)
        dims = (-2, -1)

        def system(v: torch.Tensor) -> torch.Tensor:
            return lam * self.normal(v) + self.mu * v

        x = x0_pred.clone()
        r = lam * self.adjoint(y) + self.mu * x0_pred - system(x)
        p = r.clone()
        rs = (r.conj() * r).real.sum(dim=dims, keepdim=True)
        for _ in range(self.cg_iterations):
            ap = system(p)
            denom = (p.conj() * ap).real.sum(dim=dims, keepdim=True)
            alpha = torch.where(denom > 0, rs / torch.where(denom > 0, denom, 1), 0)
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = (r.conj() * r).real.sum(dim=dims, keepdim=True)
            beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1), 0)
            p = r + beta * p
            rs = rs_new
        return x
