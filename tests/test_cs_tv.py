"""CS-TV (`medinvert.cs_tv`): the benchmark's baseline and the models' variational guess.

Checked against independent formulas: the difference operator's adjoint (inner products), the
closed-form real-image normal operator and data prox against direct FFT evaluation, and on a
piecewise-constant phantom that the primal-dual iterations decrease the objective and beat the
zero-filled image.
"""

from __future__ import annotations

import pytest
import torch

import medinvert.cs_tv as cs_tv
from medinvert.metrics import psnr
from medinvert.operators import fft2c, ifft2c
from medinvert.transforms import random_line_mask


pytestmark = pytest.mark.usefixtures("one_thread")


def _phantom(size: int = 48) -> torch.Tensor:
    """Piecewise-constant image: an ellipse of 1.0 holding a 0.5 square and a 0.8 disk, zero outside."""
    i, j = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    c = (size - 1) / 2
    x = ((((i - c) / (0.42 * size)) ** 2 + ((j - c) / (0.34 * size)) ** 2) <= 1).double()
    x[(i > 0.35 * size) & (i < 0.55 * size) & (j > 0.3 * size) & (j < 0.45 * size)] = 0.5
    x[((i - 0.62 * size) ** 2 + (j - 0.6 * size) ** 2) <= (0.09 * size) ** 2] = 0.8
    return x


def test_gradient_adjoint_matches_inner_products() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 7, generator=gen, dtype=torch.float64)
    p = torch.randn(3, 2, 9, 7, generator=gen, dtype=torch.float64)
    lhs = (cs_tv.gradient(x) * p).sum()
    rhs = (x * cs_tv.gradient_adjoint(p)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_total_variation_of_a_step_is_its_height_times_length() -> None:
    x = torch.zeros(10, 6, dtype=torch.float64)
    x[4:, :] = 2.5
    assert float(cs_tv.total_variation(x)) == pytest.approx(2.5 * 6)


@pytest.mark.parametrize("shape", [(8, 10), (9, 7)])
def test_real_normal_operator_and_prox_closed_form(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand((2, *shape), generator=gen) < 0.4
    x = torch.randn((2, *shape), generator=gen, dtype=torch.float64)
    direct = cs_tv.data_term_normal(x, mask)                      # Re F^H M F x
    closed = ifft2c(fft2c(x) * cs_tv.symmetric_mask(mask)).real   # F^H M_s F x
    assert torch.allclose(direct, closed, atol=1e-12)
    y = fft2c(torch.randn((2, *shape), generator=gen, dtype=torch.float64)) * mask
    b = ifft2c(y * mask).real
    v, tau = torch.randn((2, *shape), generator=gen, dtype=torch.float64), 3.0
    prox = cs_tv.data_prox(v, b, mask, tau)
    assert torch.allclose(prox + tau * cs_tv.data_term_normal(prox, mask), v + tau * b, atol=1e-10)


def test_cs_tv_decreases_objective_and_beats_zero_filled() -> None:
    clean = _phantom(48)
    mask = random_line_mask((48, 48), 4.0, 0.08, 3)
    y = fft2c(clean) * mask
    zero_filled = ifft2c(y).abs()
    lam = 2e-3
    objectives: dict[int, float] = {}

    def record(iteration: int, x: torch.Tensor) -> None:
        if iteration % 20 == 0:
            objectives[iteration] = float(cs_tv.objective(x[None], y[None], mask, lam).sum())

    start = float(cs_tv.objective(ifft2c(y).real[None], y[None], mask, lam).sum())
    x = cs_tv.cs_tv(y[None], mask[None], lam, iterations=300, callback=record)[0]
    assert objectives[300] < objectives[100] < objectives[20] < start
    # the final iterate is close to the best objective value seen (no late divergence)
    assert objectives[300] <= min(objectives.values()) * (1 + 1e-3)
    # data fidelity: the measured samples are nearly reproduced
    residual = torch.linalg.vector_norm(fft2c(x) * mask - y) / torch.linalg.vector_norm(y)
    assert float(residual) < 0.05
    gain = psnr(x.numpy(), clean.numpy()) - psnr(zero_filled.numpy(), clean.numpy())
    assert gain > 3.0


def test_cs_tv_rejects_bad_settings() -> None:
    y = torch.zeros(1, 4, 4, dtype=torch.complex128)
    mask = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError):
        cs_tv.cs_tv(y, mask, -1.0)
    with pytest.raises(ValueError):
        cs_tv.cs_tv(y, mask, 1e-3, tau=0.0)


@pytest.mark.parametrize("shape", [(12, 10), (11, 9), (10, 7)])
def test_real_fft_prox_equals_the_centred_complex_formula(shape: tuple[int, int]) -> None:
    """The rfft prox (uncentred filter) against ``F^H [F(v + t b) / (1 + t M_s)]`` with centred complex
    FFTs, for even and odd sizes and a mask that is not point-symmetric."""
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    b = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, *shape, generator=gen) < 0.4
    tau = 3.0
    direct = ifft2c(fft2c(v + tau * b) / (1.0 + tau * cs_tv.symmetric_mask(mask))).real
    assert torch.allclose(cs_tv.data_prox(v, b, mask, tau), direct, atol=1e-12)


def test_per_slice_weights_equal_separate_runs() -> None:
    """``lam`` given per slice solves each slice's own problem: equal to one run per slice (to rounding:
    batched real inverse FFTs do not round like single ones)."""
    clean = torch.stack([_phantom(32), 0.5 * _phantom(32).flip(0)])
    mask = torch.stack([random_line_mask((32, 32), 4.0, 0.08, 1), random_line_mask((32, 32), 8.0, 0.04, 2)])
    y = fft2c(clean) * mask
    together = cs_tv.cs_tv(y, mask, torch.tensor([1e-3, 4e-3], dtype=torch.float64), iterations=40)
    for i, lam in enumerate((1e-3, 4e-3)):
        alone = cs_tv.cs_tv(y[i:i + 1], mask[i:i + 1], lam, iterations=40)
        assert torch.allclose(together[i], alone[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        cs_tv.cs_tv(y, mask, torch.tensor([1e-3, 2e-3, 3e-3]))
