"""Fixed-point grid arithmetic: exact quantisation of float32, rounding, range and overflow guards."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medinvert.errors import MedinvertError, NumericalError
from medinvert.solvers.fixed_point import (
    LIMIT,
    MAX_FRAC_BITS,
    MIN_FRAC_BITS,
    checked_add,
    checked_linear,
    choose_frac_bits,
    dequantize,
    on_grid,
    quantize,
    round_to_grid,
)


def _float32_exponent(v: float) -> int:
    """Unbiased binary exponent of a normal float32 (from its bit pattern, independent of frexp)."""
    bits = struct.unpack("<I", struct.pack("<f", v))[0]
    return ((bits >> 23) & 0xFF) - 127


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-1e4, max_value=1e4), min_size=1, max_size=40),
    q=st.integers(min_value=30, max_value=MAX_FRAC_BITS - 2),
)
def test_float32_on_grid_round_trips_bitwise(values, q):
    x = torch.tensor(values, dtype=torch.float32)
    assume_range = float(x.abs().max()) * 2.0**q < LIMIT
    if not assume_range:
        return
    z = quantize(x, q)
    assert z.dtype == torch.int64
    back = dequantize(z, q, dtype=torch.float32)
    mask = on_grid(x, q)
    # the documented sufficient condition: |v| >= 2^(23 - q) (normal floats) lies on the grid
    for v, m in zip(values, mask.tolist()):
        if v != 0.0 and abs(v) >= 2.0 ** (23 - q) and abs(v) >= 2.0**-126:
            assert m, (v, q)
            assert _float32_exponent(v) - 23 >= -q
    assert torch.equal(back[mask].view(torch.int32), x[mask].view(torch.int32))
    # off-grid values are rounded to the nearest grid point
    err = (back.double() - x.double()).abs()
    assert float(err.max()) <= 2.0 ** (-q - 1) + 1e-300


def test_integers_and_raw_intensities_are_exact():
    x = torch.arange(0, 4096, dtype=torch.float32)
    q = choose_frac_bits(4095.0)
    assert bool(on_grid(x, q).all())
    assert torch.equal(dequantize(quantize(x, q), q, torch.float32), x)


def test_sub_grid_values_and_negative_zero_are_flagged():
    q = 40
    x = torch.tensor([1.0, 2.0**-41, 3 * 2.0**-45, -0.0, 0.0, 2.0 ** (23 - q)], dtype=torch.float32)
    mask = on_grid(x, q).tolist()
    assert mask == [True, False, False, False, True, True]


def test_round_half_even():
    q = 20
    ulp = 2.0**-q
    v = torch.tensor([0.5 * ulp, 1.5 * ulp, 2.5 * ulp, -0.5 * ulp, -1.5 * ulp], dtype=torch.float64)
    assert round_to_grid(v, q).tolist() == [0, 2, 2, 0, -2]


def test_round_to_grid_errors_name_batch_and_step():
    q = 50
    v = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    v[2, 0, 1, 1] = float("nan")
    with pytest.raises(NumericalError, match=r"step 7.*batch element 2"):
        round_to_grid(v, q, what="increment", step=7)
    v = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    v[1, 0, 0, 0] = 2.0 ** (62 - q)
    with pytest.raises(NumericalError, match="batch element 1"):
        round_to_grid(v, q)
    v[1, 0, 0, 0] = math.nextafter(2.0 ** (62 - q), 0)
    assert int(round_to_grid(v, q).abs().max()) < LIMIT


def test_checked_add_detects_overflow_without_wrapping():
    big = torch.full((2, 1, 2, 2), LIMIT // 2, dtype=torch.int64)
    small = torch.ones_like(big)
    assert int(checked_add(big, small).max()) == LIMIT // 2 + 1
    inc = torch.zeros_like(big)
    inc[1, 0, 0, 1] = LIMIT // 2
    with pytest.raises(NumericalError, match=r"step 3 in batch element 1"):
        checked_add(big, inc, step=3)
    # negative direction
    assert int(checked_add(big, small, sign=-1).max()) == LIMIT // 2 - 1
    # reflection 2p - y as used by reversible Heun
    p = torch.full((1, 1, 1, 1), LIMIT // 3 + 1, dtype=torch.int64)
    with pytest.raises(NumericalError):
        checked_linear([(2, p), (-1, -p)])
    p = torch.full((1, 1, 1, 1), LIMIT // 4, dtype=torch.int64)
    assert int(checked_linear([(2, p), (-1, p)])) == LIMIT // 4


def test_choose_frac_bits():
    assert choose_frac_bits(1.0) == MAX_FRAC_BITS
    q = choose_frac_bits(4095.0)
    assert (4095.0 + 8.0) * 2.0**q * 4 < LIMIT <= (4095.0 + 8.0) * 2.0 ** (q + 1) * 4
    q = choose_frac_bits(3.0, scale=math.sqrt(1 + 20291.0**2))
    assert 11.0 * 20291.0 * 2.0**q * 4 < LIMIT
    with pytest.raises(MedinvertError):
        choose_frac_bits(1e20)
    with pytest.raises(MedinvertError):
        choose_frac_bits(float("inf"))


def test_frac_bits_and_dtype_validation():
    with pytest.raises(MedinvertError):
        quantize(torch.zeros(2), MIN_FRAC_BITS - 1)
    with pytest.raises(MedinvertError):
        quantize(torch.zeros(2, dtype=torch.int64), 40)
    with pytest.raises(MedinvertError):
        dequantize(torch.zeros(2, dtype=torch.int32), 40)


def test_dequantize_exact_below_2_53():
    z = torch.tensor(np.array([2**53 - 1, -(2**52) + 3, 12345], dtype=np.int64))
    back = dequantize(z, 40)
    assert [int(v) for v in (back * 2.0**40).tolist()] == z.tolist()
