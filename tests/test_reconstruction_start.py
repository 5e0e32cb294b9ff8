"""The sampler's deterministic starts (`medinvert.engine`, step 3): ``guess`` and ``noise``."""

from __future__ import annotations

import pytest
import torch

from _recon_helpers import phantom, write_tiny_model
from medinvert.engine import run_reconstruction
from medinvert.errors import MedinvertError
from medinvert.inversion import resolve_network
from medinvert.transforms import corrupt


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    from monai.data import MetaTensor

    model = write_tiny_model(tmp_path_factory.mktemp("start") / "tiny.pt")
    resolved = resolve_network(str(model))
    volume = MetaTensor(torch.from_numpy(phantom((24, 20, 2))))
    return resolved, corrupt(volume, "kspace", seed=0, acceleration=4, center_fraction=0.16)


def _run(problem, **kwargs):
    resolved, observation = problem
    torch.set_num_threads(1)
    return run_reconstruction(observation, resolved.net, resolved.schedule, method="exact", steps=4,
                              prediction=resolved.prediction, **kwargs).volume


def test_guess_start_ignores_the_seed_and_noise_start_depends_on_it(problem):
    assert torch.equal(_run(problem, start="guess", base_seed=1), _run(problem, start="guess", base_seed=2))
    one, again = _run(problem, start="noise", base_seed=1), _run(problem, start="noise", base_seed=1)
    assert torch.equal(one, again)
    assert not torch.equal(one, _run(problem, start="noise", base_seed=2))
    assert not torch.equal(one, _run(problem, start="guess", base_seed=1))


def test_unknown_start_is_refused(problem):
    with pytest.raises(MedinvertError, match="unknown start"):
        _run(problem, start="zeros")


def test_default_grid_per_kind(problem, monkeypatch):
    """k-space: karras from `KSPACE_START_SIGMA` (rho-spaced, decreasing to sigma_min, then 0); other
    kinds, fewer steps and the CS-TV guess: the trailing grid from sigma_max; an explicit spacing
    overrides the default."""
    import medinvert.engine as engine
    from medinvert.engine import KSPACE_START_SIGMA, sampling_grid

    monkeypatch.setattr(engine, "KSPACE_KARRAS_MIN_STEPS", 6)   # the rule, at test sizes

    resolved, observation = problem
    schedule = resolved.schedule
    grid = sampling_grid(observation, schedule, 6)
    assert float(grid[0]) == pytest.approx(KSPACE_START_SIGMA) and float(grid[-1]) == 0.0
    assert float(grid[-2]) == pytest.approx(schedule.sigma_min)
    rho = torch.tensor([float(v) ** (1 / 7) for v in grid[:-1]], dtype=torch.float64)
    assert torch.allclose(rho[1:] - rho[:-1], (rho[1:] - rho[:-1]).mean().expand(5), rtol=1e-9, atol=0.0)  # eq. 5 spacing
    masked = corrupt(torch.from_numpy(phantom((24, 20, 2))), "mask", seed=0)
    assert torch.equal(sampling_grid(masked, schedule, 6), schedule.sigmas(6, "trailing"))
    assert torch.equal(sampling_grid(observation, schedule, 6, "trailing"), schedule.sigmas(6, "trailing"))
    assert torch.equal(sampling_grid(observation, schedule, 5), schedule.sigmas(5, "trailing"))  # too few steps
    # a model refining the CS-TV guess: trailing at every step count
    assert torch.equal(sampling_grid(observation, schedule, 6, guess="cs_tv"), schedule.sigmas(6, "trailing"))
    run = run_reconstruction(observation, resolved.net, schedule, steps=6, prediction=resolved.prediction)
    assert run.sigmas == [float(v) for v in grid]
