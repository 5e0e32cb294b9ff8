"""Blur kernels: isotropic Gaussian and linear motion, both odd-sized, centred and summing to 1.

Kernels are 2-D ``(kh, kw)`` float32 tensors indexed like the image's last two axes (axis 0 = H =
the volume's X, axis 1 = W = the volume's Y); the centre tap is ``(kh // 2, kw // 2)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gaussian_kernel", "motion_kernel"]


def gaussian_kernel(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Sampled isotropic Gaussian ``exp(-(i^2 + j^2) / (2 sigma^2))``, normalised to sum 1.

    Radius ``max(1, ceil(truncate * sigma))`` taps, so the kernel is ``(2r + 1, 2r + 1)``.  ``sigma``
    is in pixels and must be positive.
    """
    if not sigma > 0:
        raise ValueError(f"Gaussian blur sigma must be positive, got {sigma}")
    radius = max(1, math.ceil(truncate * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = torch.outer(g, g)
    return (kernel / kernel.sum()).to(torch.float32)


def motion_kernel(length: float, angle: float, samples_per_pixel: int = 16) -> torch.Tensor:
    """Linear motion blur: a segment of ``length`` pixels through the centre, uniformly weighted.

    ``angle`` (degrees) is measured from array axis 0 (H) towards array axis 1 (W): 0 blurs along
    axis 0, 90 along axis 1.  The segment, end points ``+-(length - 1) / 2`` from the centre, is
    sampled at ``samples_per_pixel`` points per pixel, symmetric about the centre, and each point is
    splatted bilinearly (anti-aliasing, as MATLAB's ``fspecial('motion')`` does); so an axis-aligned
    segment of odd integer length covers ``length`` taps with the two end taps at half weight, and
    every kernel is centrosymmetric.  It is normalised to sum 1.
    ``length`` must be at least 1 (length 1 is the identity kernel).
    """
    if not length >= 1:
        raise ValueError(f"motion blur length must be at least 1 pixel, got {length}")
    theta = math.radians(angle)
    direction = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
    half = (length - 1) / 2.0
    radius = math.ceil(half) + 1
    size = 2 * radius + 1
    n = max(3, math.ceil(length * samples_per_pixel)) | 1  # odd: the centre is one of the samples
    t = torch.linspace(-half, half, n, dtype=torch.float64)
    points = t[:, None] * direction[None, :] + radius  # (n, 2) in kernel pixel coordinates
    base = torch.floor(points)
    frac = points - base
    index = base.long()
    kernel = torch.zeros(size, size, dtype=torch.float64)
    for di in (0, 1):
        for dj in (0, 1):
            w = (frac[:, 0] if di else 1 - frac[:, 0]) * (frac[:, 1] if dj else 1 - frac[:, 1])
            kernel.index_put_((index[:, 0] + di, index[:, 1] + dj), w, accumulate=True)
    # drop all-zero border rows / columns in pairs, so both sides stay odd and the kernel centred
    while kernel.shape[0] > 1 and kernel[0].abs().sum() < 1e-12 and kernel[-1].abs().sum() < 1e-12:
        kernel = kernel[1:-1]
    while kernel.shape[1] > 1 and kernel[:, 0].abs().sum() < 1e-12 and kernel[:, -1].abs().sum() < 1e-12:
        kernel = kernel[:, 1:-1]
    return (kernel / kernel.sum()).to(torch.float32)
