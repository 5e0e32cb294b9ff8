"""Solver registry, option and grid validation, exact NFE counts (counted by wrapping the network), callbacks."""

from __future__ import annotations

import pytest
import torch

from _solver_helpers import CountingNet, TinyNet, single_thread  # noqa: F401 (autouse fixture)
from medinvert.denoiser import Denoiser
from medinvert.errors import MedinvertError
from medinvert.schedule import make_schedule
from medinvert.solvers import SOLVERS, BdiaState, EdictState, FixedPointState, get_solver
from medinvert.solvers.base import EXACTNESS

SCHEDULE = make_schedule("linear")


def test_registry_contents():
    assert set(SOLVERS) == {"ddim", "edict", "bdia", "exact", "ode", "nulltext", "negprompt"}
    for name, spec in SOLVERS.items():
        assert spec.name == name and spec.exact_in in EXACTNESS and spec.summary
    assert SOLVERS["exact"].exact_in == "floating_point" and SOLVERS["exact"].nfe_per_step == 1
    assert SOLVERS["edict"].nfe_per_step == 2 and SOLVERS["ode"].nfe_per_step is None
    with pytest.raises(MedinvertError, match="ddim, edict, bdia, exact, ode"):
        get_solver("dpm++")


def test_unknown_and_bad_options():
    den = Denoiser(TinyNet(), SCHEDULE)
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    sig = SCHEDULE.sigmas(3)
    with pytest.raises(MedinvertError, match="no option"):
        SOLVERS["ddim"].generate(den, x, sig, gamma=0.5)
    for name, options in (("edict", {"p": 0.0}), ("bdia", {"gamma": 1.5}), ("exact", {"scheme": "rk4"}),
                          ("exact", {"frac_bits": 70}), ("ode", {"ode_method": "magic"}), ("ode", {"rtol": -1.0}),
                          ("edict", {"state_dtype": "float16"})):
        with pytest.raises(MedinvertError):
            SOLVERS[name].invert(den, x, sig, **options)
    # the ode option `method` (it collided with the API's `method`) is refused naming its new name
    with pytest.raises(MedinvertError, match="'method' is now 'ode_method'"):
        SOLVERS["ode"].invert(den, x, sig, method="rk4")


@pytest.mark.parametrize(
    "sigmas",
    [
        torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64),  # does not end at 0
        torch.tensor([1.0, 3.0, 0.0], dtype=torch.float64),  # not decreasing
        torch.tensor([0.0], dtype=torch.float64),  # too short
        torch.tensor([[2.0, 0.0]], dtype=torch.float64),  # not 1-D
        torch.tensor([float("nan"), 0.0], dtype=torch.float64),
    ],
)
def test_bad_grids_are_refused(sigmas):
    den = Denoiser(TinyNet(), SCHEDULE)
    with pytest.raises(MedinvertError):
        SOLVERS["ddim"].generate(den, torch.zeros(1, 1, 4, 4), sigmas)


# method, options, NFE: invert, generate from the inverted state, generate from a tensor (n = steps)
NFE_TABLE = [
    ("ddim", {}, lambda n: (n, n, n)),
    ("edict", {}, lambda n: (2 * n, 2 * n, 2 * n)),
    ("bdia", {}, lambda n: (n, n - 1, n)),
    ("exact", {"scheme": "bdia"}, lambda n: (n, n - 1, n)),
    ("exact", {"scheme": "leapfrog"}, lambda n: (n, n - 1, n)),
    ("exact", {"scheme": "heun"}, lambda n: (n + 1, n + 1, n + 1)),
    ("ode", {"ode_method": "rk4"}, lambda n: (4 * n, 4 * n, 4 * n)),  # fixed grid: 4 stages per grid step
]


@pytest.mark.parametrize("name,options,expected", NFE_TABLE)
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_exact_nfe_counts(name, options, expected, guidance):
    net = CountingNet(TinyNet(seed=1))
    den = Denoiser(net, SCHEDULE, cond=torch.ones(3), guidance=guidance)
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    steps = 5
    sig = SCHEDULE.sigmas(steps)
    branches = 1 if guidance == 1.0 else 2
    counts = []
    state = SOLVERS[name].invert(den, x0, sig, **options)
    counts.append(den.nfe)
    den.reset_counters()
    SOLVERS[name].generate(den, state, sig, **options)
    counts.append(den.nfe)
    den.reset_counters()
    SOLVERS[name].generate(den, float(sig[0]) * x0, sig, **options)
    counts.append(den.nfe)
    assert tuple(counts) == tuple(branches * c for c in expected(steps))
    assert len(net.calls) == branches * sum(expected(steps))  # the network agrees with the counter
    assert all(batch == 2 for batch, _ in net.calls)


def test_ode_nfe_is_the_networks_count():
    net = CountingNet(TinyNet(seed=2))
    den = Denoiser(net, SCHEDULE)
    x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    SOLVERS["ode"].invert(den, x0, SCHEDULE.sigmas(4), rtol=1e-4, atol=1e-6)
    assert den.nfe == len(net.calls) > 0


@pytest.mark.parametrize("name", ["ddim", "edict", "bdia", "exact", "ode"])
def test_callbacks_see_every_step(name):
    den = Denoiser(TinyNet(seed=3), SCHEDULE)
    sig = SCHEDULE.sigmas(4)
    x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seen = []
    options = {"rtol": 1e-4, "atol": 1e-6} if name == "ode" else {}
    state = SOLVERS[name].invert(den, x0, sig, callback=seen.append, **options)
    assert [d["step"] for d in seen] == [0, 1, 2, 3]
    assert all(d["direction"] == "invert" and d["method"] == name for d in seen)
    assert [d["sigma"] for d in seen] == sig.flip(0)[1:].tolist()
    seen.clear()
    SOLVERS[name].generate(den, state, sig, callback=seen.append, **options)
    expected = [1, 2, 3] if name in ("bdia", "exact") else [0, 1, 2, 3]  # pairs start one level in
    assert [d["step"] for d in seen] == expected
    assert seen[-1]["sigma"] == 0.0 and seen[-1]["nfe"] == den.nfe


def test_states_record_their_grid():
    den = Denoiser(TinyNet(seed=4), SCHEDULE)
    x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sig = SCHEDULE.sigmas(6)
    other = SCHEDULE.sigmas(7)
    for name, kind in (("edict", EdictState), ("bdia", BdiaState), ("exact", FixedPointState)):
        state = SOLVERS[name].invert(den, x0, sig)
        assert isinstance(state, kind) and state.sigma == float(sig[0])
        with pytest.raises(MedinvertError, match="grid"):
            SOLVERS[name].generate(den, state, other)
    state = SOLVERS["exact"].invert(den, x0, sig, scheme="heun")
    with pytest.raises(MedinvertError, match="scheme"):
        SOLVERS["exact"].generate(den, state, sig, scheme="bdia")
    with pytest.raises(MedinvertError, match="frac_bits"):
        SOLVERS["exact"].generate(den, state, sig, frac_bits=30)
