"""Fixed-point arithmetic on the integer grid ``2^-q Z`` (int64) for the bit-exact solver.

A real value ``v`` is held as the int64 ``round(v * 2^q)`` (``q = frac_bits``).  Sums of grid values
are exact integer sums, so an update ``z' = z + R(increment)`` is undone by ``z = z' - R(increment)``
with the very same integer -- whatever rounding happened inside ``R``.

- ``R(v) = round_half_even(v * 2^q)`` is computed in float64: the scaling by a power of two is exact,
  so the only rounding is the final one to an integer.
- Range: every grid integer is kept below ``LIMIT = 2^62`` in magnitude (so ``|a| + |b|`` of two
  grid values never overflows int64), i.e. real values below ``2^(62 - q)``.  Every add is checked
  first (`checked_add`) and overflow raises `medinvert.errors.NumericalError`; nothing wraps.
- Quantising float32 input: a float32 ``v`` with ``|v| >= 2^(23 - q)`` has its last mantissa bit at
  or above ``2^-q``, so it lies on the grid and ``dequantize(quantize(v)) == v`` exactly (power-of-two
  scaling only).  Smaller non-zero values (and float64 input with more bits) are rounded to the grid;
  `on_grid` tells which values survive, so a caller can keep a patch of the others.
- ``dequantize`` is exact for ``|z| < 2^53`` (and for any integer that came from a float32 value);
  beyond that the float64 result is rounded, deterministically.
"""

from __future__ import annotations

import math

import torch

from medinvert.errors import MedinvertError, NumericalError

__all__ = [
    "LIMIT",
    "NOISE_BOUND",
    "MIN_FRAC_BITS",
    "MAX_FRAC_BITS",
    "quantize",
    "dequantize",
    "on_grid",
    "round_to_grid",
    "checked_add",
    "checked_linear",
    "choose_frac_bits",
]

#: Magnitude bound of every grid integer (exclusive).
LIMIT: int = 2**62
#: Assumed bound of |standard normal noise| when sizing the grid (max of ~1e15 draws is below 8).
NOISE_BOUND: float = 8.0
MIN_FRAC_BITS: int = 16
MAX_FRAC_BITS: int = 56
# headroom factor (2 bits) above the estimated largest value: parasitic oscillation, guidance overshoot
_HEADROOM_BITS = 2


def _check_frac_bits(frac_bits: int) -> int:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not MIN_FRAC_BITS <= frac_bits <= MAX_FRAC_BITS:
        raise MedinvertError(f"frac_bits must be an integer in [{MIN_FRAC_BITS}, {MAX_FRAC_BITS}], got {frac_bits!r}")
    return frac_bits


def _first_bad_batch(mask: torch.Tensor) -> int:
    """Index along dim 0 of the first True element of a boolean tensor."""
    flat = mask.reshape(mask.shape[0], -1).any(dim=1) if mask.ndim > 0 else mask.reshape(1)
    return int(torch.nonzero(flat)[0, 0])


def round_to_grid(values: torch.Tensor, frac_bits: int, *, what: str = "value", step: int | None = None) -> torch.Tensor:
    """``R(v) = round_half_even(v * 2^q)`` as int64, from a float tensor (computed in float64).

    Raises `NumericalError` naming the batch index (dim 0) and ``step`` for NaN/Inf or a result
    with ``|R| >= LIMIT``.
    """
    q = _check_frac_bits(frac_bits)
    scaled = values.to(torch.float64) * float(2**q)
    where = "" if step is None else f" at step {step}"
    finite = torch.isfinite(scaled)
    if not bool(finite.all()):
        index = _first_bad_batch(~finite)
        raise NumericalError(f"non-finite {what}{where} in batch element {index}", batch_index=index)
    rounded = torch.round(scaled)
    too_big = rounded.abs() >= float(LIMIT)
    if bool(too_big.any()):
        index = _first_bad_batch(too_big)
        raise NumericalError(
            f"{what}{where} exceeds the fixed-point range |v| < 2^{62 - q} (frac_bits={q}) in batch element "
            f"{index}; use fewer frac_bits or rescale the input", batch_index=index
        )
    return rounded.to(torch.int64)


def quantize(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Float tensor -> int64 grid integers ``round_half_even(x * 2^q)`` (exact for on-grid values)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise MedinvertError("quantize needs a floating tensor")
    return round_to_grid(x, frac_bits, what="input value")


def dequantize(z: torch.Tensor, frac_bits: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """int64 grid integers -> ``z * 2^-q`` in float64 (then cast to ``dtype``)."""
    if not isinstance(z, torch.Tensor) or z.dtype != torch.int64:
        raise MedinvertError("dequantize needs an int64 tensor")
    q = _check_frac_bits(frac_bits)
    return (z.to(torch.float64) * float(2.0**-q)).to(dtype)


def on_grid(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Boolean mask of the values of ``x`` that survive ``dequantize(quantize(x))`` bit-for-bit
    (in ``x``'s dtype)."""
    back = dequantize(quantize(x, frac_bits), frac_bits, dtype=x.dtype)
    # compare bit patterns: -0.0 must stay -0.0
    return (back == x) & (torch.signbit(back) == torch.signbit(x))


def _amax_per_batch(z: torch.Tensor) -> list[int]:
    return [int(v) for v in z.abs().reshape(z.shape[0], -1).amax(dim=1)]


def checked_add(z: torch.Tensor, increment: torch.Tensor, *, step: int | None = None, sign: int = 1) -> torch.Tensor:
    """``z + sign * increment`` on int64 grid values, refusing results that could reach ``LIMIT``.

    The check is the sufficient bound ``max|z| + max|increment| < LIMIT`` per batch element (both
    operands are below ``LIMIT``, so the check itself cannot overflow).
    """
    return checked_linear([(1, z), (sign, increment)], step=step)


def checked_linear(terms: list[tuple[int, torch.Tensor]], *, step: int | None = None) -> torch.Tensor:
    """``sum(c * z for c, z in terms)`` for small integer ``c`` on int64 grid values, with the bound
    ``sum(|c| max|z|) < LIMIT`` checked per batch element in Python integers before computing."""
    bounds = None
    for c, z in terms:
        amax = _amax_per_batch(z)
        scaled = [abs(c) * a for a in amax]
        bounds = scaled if bounds is None else [u + v for u, v in zip(bounds, scaled)]
    assert bounds is not None
    for index, bound in enumerate(bounds):
        if bound >= LIMIT:
            where = "" if step is None else f" at step {step}"
            raise NumericalError(
                f"fixed-point overflow{where} in batch element {index}: the state would leave |z| < 2^62 "
                "(use fewer frac_bits or rescale the input)", batch_index=index
            )
    out = None
    for c, z in terms:
        term = z if c == 1 else z * c
        out = term if out is None else out + term
    assert out is not None
    return out


def choose_frac_bits(max_abs: float, scale: float = 1.0) -> int:
    """Finest grid whose range holds ``(max_abs + NOISE_BOUND) * scale`` with 2 bits of headroom.

    ``max_abs`` bounds the clean data, ``scale`` is the largest factor between the state's
    coordinates and the data (1 for VP ``x``, ``sqrt(1 + sigma_max^2)`` for ``xbar``).  Clamped to
    ``[MIN_FRAC_BITS, MAX_FRAC_BITS]``; raises `MedinvertError` if even ``MIN_FRAC_BITS`` cannot hold it.
    """
    if not math.isfinite(max_abs) or max_abs < 0 or not math.isfinite(scale) or scale <= 0:
        raise MedinvertError(f"cannot size the fixed-point grid for max |x| = {max_abs}, scale = {scale}")
    bound = (max_abs + NOISE_BOUND) * scale
    int_bits = max(0, math.ceil(math.log2(bound)))
    q = 62 - int_bits - _HEADROOM_BITS
    if q < MIN_FRAC_BITS:
        raise MedinvertError(
            f"values up to {bound:.3g} need more than {62 - MIN_FRAC_BITS} integer bits; rescale the input"
        )
    return min(q, MAX_FRAC_BITS)
