"""Guided-inversion peers: null-text (Mokady et al. 2023) and negative-prompt (Miyake et al. 2023) inversion.

Round trips on a conditional Gaussian model whose optimal eps is known in closed form, checked against
plain guided DDIM inversion at the same guidance weight and against independent re-computations with
the plain `Denoiser` / `ddim` path; NFE counted by wrapping the network; determinism; user errors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _solver_helpers import CountingNet, TinyNet, single_thread  # noqa: F401 (autouse fixture)
from medinvert.denoiser import Denoiser
from medinvert.errors import MedinvertError
from medinvert.schedule import Schedule, make_schedule
from medinvert.solvers import SOLVERS, NullTextState, get_solver
from medinvert.solvers.guided import DEFAULT_GUIDANCE

W = 3.0
K = 16  # condition length = pixels of a 4 x 4 sample: the null condition can move every pixel's mean


class ConditionalGaussianNet(nn.Module):
    """Optimal eps of Gaussian data ``N(mu + M c, s^2)`` per pixel, as a network ``net(x, t, cond)``.

    ``eps = sigma (xbar - mean) / (s^2 + sigma^2)`` with ``xbar = x sqrt(1 + sigma^2)`` (see
    `medinvert.analytic`); the condition ``c`` (``(B, K)``) shifts the mean linearly (``M: (P, K)``),
    ``cond=None`` leaves it at ``mu``.  Float64, no parameters.
    """

    dtype = torch.float64

    def __init__(self, mu: torch.Tensor, s: torch.Tensor, m: torch.Tensor, schedule: Schedule) -> None:
        super().__init__()
        self.mu, self.s, self.m, self.schedule = mu, s, m, schedule
        self.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        sigma = self.schedule.sigma_of_t(t.to(torch.float64)).reshape(-1, 1, 1, 1)
        xbar = x.to(torch.float64) * torch.sqrt(1.0 + sigma * sigma)
        mean = self.mu
        if cond is not None:
            mean = mean + (cond.to(torch.float64) @ self.m.T).reshape(x.shape[0], *self.mu.shape)
        return sigma * (xbar - mean) / (self.s * self.s + sigma * sigma)


def _setup(kind: str = "linear", seed: int = 0, batch: int = 3) -> tuple[nn.Module, Schedule, torch.Tensor, torch.Tensor]:
    """(network, schedule, condition (K,), clean samples (batch, 1, 4, 4)) drawn from the conditional model."""
    gen = torch.Generator().manual_seed(seed)
    schedule = make_schedule(kind)
    shape = (1, 4, 4)
    mu = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    s = 0.4 + 0.6 * torch.rand(shape, generator=gen, dtype=torch.float64)
    m = 0.5 * torch.randn(mu.numel(), K, generator=gen, dtype=torch.float64)
    cond = torch.randn(K, generator=gen, dtype=torch.float64)
    x0 = mu + (cond @ m.T).reshape(shape) + s * torch.randn((batch, *shape), generator=gen, dtype=torch.float64)
    return ConditionalGaussianNet(mu, s, m, schedule), schedule, cond, x0


def _round_trip_error(name: str, den: Denoiser, x0: torch.Tensor, sig: torch.Tensor, **options) -> float:
    state = SOLVERS[name].invert(den, x0, sig, **options)
    return float((SOLVERS[name].generate(den, state, sig, **options) - x0).abs().max())


def test_registry_entries():
    for name in ("nulltext", "negprompt"):
        spec = get_solver(name)
        assert spec.exact_in == "none" and spec.summary and "guidance" in spec.defaults
    assert SOLVERS["negprompt"].nfe_per_step == 1
    assert SOLVERS["nulltext"].nfe_per_step is None  # set by the inner optimisation
    # the published settings: N = 10 inner iterations, lr 1e-2 (1 - i / 100), stop below 1e-5 + 2e-5 i
    assert SOLVERS["nulltext"].defaults == {"guidance": None, "inner_steps": 10, "lr": 1e-2, "lr_decay": 1e-2,
                                            "tol": 1e-5, "tol_growth": 2e-5}


def test_nulltext_beats_guided_ddim_inversion():
    net, schedule, cond, x0 = _setup()
    den = Denoiser(net, schedule, cond=cond, guidance=W)
    sig = schedule.sigmas(50)
    ddim_error = _round_trip_error("ddim", den, x0, sig)  # plain guided DDIM inversion at the same w
    nulltext_error = _round_trip_error("nulltext", den, x0, sig)
    assert nulltext_error < 0.3 * ddim_error  # published settings (lr decaying to 0.51e-2 at step 49)
    assert _round_trip_error("nulltext", den, x0, sig, lr_decay=0.0) < 0.15 * ddim_error  # a constant rate
    # a larger learning rate than the paper's lets Adam follow this model's strong conditioning more closely
    assert _round_trip_error("nulltext", den, x0, schedule.sigmas(10), lr=0.1) < 0.05 * _round_trip_error(
        "ddim", den, x0, schedule.sigmas(10))


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_negprompt_round_trip_is_the_unguided_ddim_round_trip(kind):
    net, schedule, cond, x0 = _setup(kind)
    sig = schedule.sigmas(20)
    guided = Denoiser(net, schedule, cond=cond, guidance=W)
    unguided = Denoiser(net, schedule, cond=cond)
    state = SOLVERS["negprompt"].invert(guided, x0, sig)
    assert torch.equal(state, SOLVERS["ddim"].invert(unguided, x0, sig))
    back = SOLVERS["negprompt"].generate(guided, state, sig)
    # eps(c) + w (eps(c) - eps(c)) = eps(c): generation is guidance-1 DDIM, bit for bit
    assert torch.equal(back, SOLVERS["ddim"].generate(unguided, state, sig))
    assert float((back - x0).abs().max()) < _round_trip_error("ddim", guided, x0, sig)


def test_nulltext_state_is_the_pivot_and_steps_follow_the_published_schedule():
    net, schedule, cond, x0 = _setup(seed=1)
    sig = schedule.sigmas(8)
    den = Denoiser(net, schedule, cond=cond, guidance=W)
    # a huge tol: every slice stops after its first iteration -- whose Adam update is kept, as published
    state = SOLVERS["nulltext"].invert(den, x0, sig, tol=1e9)
    assert isinstance(state, NullTextState) and state.guidance == W and state.sigma == float(sig[0])
    assert state.null_conds.shape == (8, 3, K)
    assert state.iterations.tolist() == [1] * 8 and state.backward.tolist() == [1] * 8
    assert torch.equal(state.xbar, SOLVERS["ddim"].invert(Denoiser(net, schedule, cond=cond), x0, sig))
    # Adam's first update moves each entry by lr_i g / (|g| + 1e-8): by lr_i = 1e-2 (1 - i / 100) here
    moves = torch.diff(torch.cat([torch.zeros(1, 3, K, dtype=torch.float64), state.null_conds]), dim=0).abs()
    expected = 1e-2 * (1 - torch.arange(8, dtype=torch.float64) / 100)
    torch.testing.assert_close(moves.amax(dim=(1, 2)), expected, rtol=1e-4, atol=0)
    # generation is guided DDIM with step i's null condition in the unconditional branch
    xbar = state.xbar
    for i in range(8):
        step_den = Denoiser(net, schedule, cond=cond, null_cond=state.null_conds[i], guidance=W)
        xbar = xbar + (float(sig[i + 1]) - float(sig[i])) * step_den(xbar, float(sig[i]))
    assert torch.equal(SOLVERS["nulltext"].generate(den, state, sig), xbar)


def test_nulltext_slices_stop_on_their_own_threshold():
    net, schedule, cond, x0 = _setup(seed=8, batch=2)
    sig = schedule.sigmas(12)
    den = Denoiser(net, schedule, cond=cond, guidance=W)
    options = {"lr": 0.1, "tol": 2.5e-3, "tol_growth": 0.0}  # step losses here: 6e-4 .. 8e-3
    alone = []
    for b in range(2):  # each slice on its own (the paper inverts one image at a time)
        alone.append(SOLVERS["nulltext"].invert(den, x0[b:b + 1], sig, **options))
    both = SOLVERS["nulltext"].invert(den, x0, sig, **options)
    # a batch stops when its last slice does, and every slice ends where it ends alone
    assert both.iterations.tolist() == torch.maximum(alone[0].iterations, alone[1].iterations).tolist()
    assert alone[0].iterations.tolist() != alone[1].iterations.tolist()  # the thresholds really bite
    for b in range(2):
        torch.testing.assert_close(both.null_conds[:, b], alone[b].null_conds[:, 0], rtol=1e-9, atol=1e-12)


def test_nulltext_optimisation_lowers_every_step_loss():
    net, schedule, cond, x0 = _setup(seed=2)
    n = 12
    sig = schedule.sigmas(n)
    den = Denoiser(net, schedule, cond=cond, guidance=W)
    seen: list[dict] = []
    state = SOLVERS["nulltext"].invert(den, x0, sig, callback=seen.append)
    steps = [d for d in seen if d["phase"] == "null_optimisation"]
    assert [d["step"] for d in seen if d["phase"] == "pivot"] == list(range(n))
    assert [d["step"] for d in steps] == list(range(n)) and steps[-1]["sigma"] == 0.0
    assert int(state.backward.sum()) > 0
    # generation replays the optimised trajectory exactly
    assert torch.equal(SOLVERS["nulltext"].generate(den, state, sig), steps[-1]["state"])
    # the pivot (guidance-1 DDIM inversion), in generation order
    pivot = [x0]
    SOLVERS["ddim"].invert(Denoiser(net, schedule, cond=cond), x0, sig, callback=lambda d: pivot.append(d["state"]))
    pivot = pivot[::-1]

    def land(xbar: torch.Tensor, i: int, null: torch.Tensor) -> tuple[torch.Tensor, float]:
        step_den = Denoiser(net, schedule, cond=cond, null_cond=null, guidance=W)
        out = xbar + (float(sig[i + 1]) - float(sig[i])) * step_den(xbar, float(sig[i]))
        scale = (1.0 + float(sig[i + 1]) ** 2) ** 0.5  # the loss is measured in VP x coordinates
        return out, float(((out - pivot[i + 1]) / scale).pow(2).flatten(1).mean(1).max())

    xbar, start = state.xbar, torch.zeros(3, K, dtype=torch.float64)
    for i, info in enumerate(steps):
        _, loss_start = land(xbar, i, start)  # where the optimisation of step i started
        landed, loss = land(xbar, i, state.null_conds[i])
        assert loss <= loss_start
        assert torch.allclose(landed, info["state"], rtol=0, atol=1e-12)
        xbar, start = info["state"], state.null_conds[i]


def test_nfe_counted_by_wrapping_the_network():
    net, schedule, cond, x0 = _setup(seed=3)
    counting = CountingNet(net)
    n = 6
    sig = schedule.sigmas(n)
    den = Denoiser(counting, schedule, cond=cond, guidance=W)
    state = SOLVERS["nulltext"].invert(den, x0, sig, inner_steps=4)
    k = state.iterations
    # pivot n, then per step: 1 conditional + k_i inner passes (autograd) + 1 final null pass
    assert den.nfe == len(counting.calls) == n + 2 * n + int(k.sum())
    assert bool(((k >= 1) & (k <= 4)).all()) and bool((state.backward <= k).all())
    assert sum(1 for _, has_cond in counting.calls if has_cond) == den.nfe  # null branch gets a descriptor too
    counting.calls.clear()
    den.reset_counters()
    SOLVERS["nulltext"].generate(den, state, sig)
    assert den.nfe == len(counting.calls) == 2 * n
    for negative, per_step in ((None, 1), (cond.tolist(), 1), ((cond + 1).tolist(), 2)):
        counting.calls.clear()
        den.reset_counters()
        latent = SOLVERS["negprompt"].invert(den, x0, sig, negative=negative)
        assert den.nfe == len(counting.calls) == n
        den.reset_counters()
        SOLVERS["negprompt"].generate(den, latent, sig, negative=negative)
        assert den.nfe == per_step * n


def test_negprompt_edit_uses_the_source_condition_as_negative():
    net, schedule, cond, x0 = _setup(seed=4)
    sig = schedule.sigmas(10)
    source = Denoiser(net, schedule, cond=cond)
    latent = SOLVERS["negprompt"].invert(source, x0, sig)
    edit = cond + 0.3
    den = Denoiser(net, schedule, cond=edit, guidance=2.0)
    out = SOLVERS["negprompt"].generate(den, latent, sig, negative=cond)
    reference = Denoiser(net, schedule, cond=edit, null_cond=cond, guidance=2.0)
    assert torch.equal(out, SOLVERS["ddim"].generate(reference, latent, sig))


def test_real_network_float32_batches_and_determinism():
    net = TinyNet(seed=5, cond_dim=3)
    schedule = make_schedule("scaled_linear")
    x0 = torch.randn(3, 1, 6, 5, generator=torch.Generator().manual_seed(5))
    cond = torch.tensor([0.5, -1.0, 0.25])
    sig = schedule.sigmas(6)
    runs = []
    for _ in range(2):
        den = Denoiser(net, schedule, cond=cond, guidance=W, batch_size=2)
        state = SOLVERS["nulltext"].invert(den, x0, sig, inner_steps=3)
        out = SOLVERS["nulltext"].generate(den, state, sig)
        assert out.dtype == torch.float32 and state.null_conds.dtype == torch.float32
        runs.append((state, out))
    (a, out_a), (b, out_b) = runs
    assert torch.equal(a.null_conds, b.null_conds) and torch.equal(a.xbar, b.xbar) and torch.equal(out_a, out_b)
    assert all(p.grad is None for p in net.parameters())  # the model is never modified
    assert bool(a.null_conds.any())  # the optimisation moved the null condition
    den = Denoiser(net, schedule, cond=cond, guidance=W, batch_size=2)
    latent = SOLVERS["negprompt"].invert(den, x0, sig)
    assert torch.equal(SOLVERS["negprompt"].generate(den, latent, sig), SOLVERS["negprompt"].generate(den, latent, sig))


def test_guidance_resolution():
    net, schedule, cond, x0 = _setup(seed=6, batch=1)
    sig = schedule.sigmas(3)
    assert SOLVERS["nulltext"].invert(Denoiser(net, schedule, cond=cond), x0, sig).guidance == DEFAULT_GUIDANCE
    assert SOLVERS["nulltext"].invert(Denoiser(net, schedule, cond=cond, guidance=5.0), x0, sig).guidance == 5.0
    assert SOLVERS["nulltext"].invert(Denoiser(net, schedule, cond=cond), x0, sig, guidance=2.0).guidance == 2.0


def test_user_errors():
    net, schedule, cond, x0 = _setup(seed=7, batch=1)
    sig = schedule.sigmas(4)
    den = Denoiser(net, schedule, cond=cond, guidance=W)
    for name in ("nulltext", "negprompt"):
        with pytest.raises(MedinvertError, match="needs a condition"):
            SOLVERS[name].invert(Denoiser(net, schedule), x0, sig)
        with pytest.raises(MedinvertError, match="w > 1"):
            SOLVERS[name].invert(Denoiser(net, schedule, cond=cond), x0, sig, guidance=1.0)
        with pytest.raises(MedinvertError, match="contradicts"):
            SOLVERS[name].invert(den, x0, sig, guidance=2.0)
        with pytest.raises(MedinvertError, match="Denoiser"):
            SOLVERS[name].invert(lambda xbar, sigma: xbar, x0, sig)
        with pytest.raises(MedinvertError, match="no option"):
            SOLVERS[name].invert(den, x0, sig, gamma=1.0)
    for options in ({"inner_steps": 0}, {"lr": -1.0}, {"tol": float("nan")}):
        with pytest.raises(MedinvertError):
            SOLVERS["nulltext"].invert(den, x0, sig, **options)
    with pytest.raises(MedinvertError, match="negative"):
        SOLVERS["negprompt"].generate(den, x0 * float(sig[0]), sig, negative=[1.0, 2.0])
    state = SOLVERS["nulltext"].invert(den, x0, sig, inner_steps=1)
    with pytest.raises(MedinvertError, match="NullTextState"):
        SOLVERS["nulltext"].generate(den, state.xbar, sig)
    with pytest.raises(MedinvertError, match="grid"):
        SOLVERS["nulltext"].generate(den, state, schedule.sigmas(5))
    with pytest.raises(MedinvertError, match="optimised for guidance"):
        SOLVERS["nulltext"].generate(Denoiser(net, schedule, cond=cond), state, sig, guidance=4.0)
