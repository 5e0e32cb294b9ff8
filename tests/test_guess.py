"""The conditioning guess (`medinvert.guess`): the CS-TV weight rule, batch invariance, what the engine
feeds the network, the training samples, and the checkpoint field that selects it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medinvert.cs_tv import cs_tv
from medinvert.engine import run_reconstruction
from medinvert.errors import MedinvertError
from medinvert.guess import (GUESS_ITERATIONS, GUESS_TAU, TUNED_LAMBDA, conditioning_volume, guess_of_config,
                             kspace_tv_guess, tv_weights)
from medinvert.intensity import robust_scale
from medinvert.operators.fft import ifft2c
from medinvert.operators.layout import volume_to_slices
from medinvert.schedule import make_schedule
from medinvert.transforms import corrupt


pytestmark = pytest.mark.usefixtures("one_thread")


def _head(shape: tuple[int, int, int] = (40, 36, 5)) -> torch.Tensor:
    """A bright ellipse with a darker blob per slice, raw scanner-like intensities (0..900)."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    volume = np.zeros(shape, np.float32)
    for z in range(shape[2]):
        volume[:, :, z] = 900 * ((x / 0.8) ** 2 + (y / (0.6 + 0.05 * z)) ** 2 < 1)
        volume[:, :, z] -= 300 * np.exp(-((x - 0.1 * z / shape[2]) ** 2 + y ** 2) / 0.04)
    return torch.from_numpy(volume)


def test_weights_follow_the_tuned_values_and_clamp() -> None:
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[0, :, ::4] = True        # 4x
    mask[1, :, ::8] = True        # 8x
    weights = tv_weights(mask)    # slice 2 is empty: clamped to 16x
    assert weights[0].item() == pytest.approx(TUNED_LAMBDA[4])
    assert weights[1].item() == pytest.approx(TUNED_LAMBDA[8])
    assert weights[2].item() == pytest.approx(16 * TUNED_LAMBDA[4] / 4)


def test_guess_is_the_cs_tv_solution_and_does_not_depend_on_the_batch() -> None:
    observation = corrupt(_head(), "kspace", seed=3, acceleration=4, center_fraction=0.08)
    scale = robust_scale(observation.adjoint)
    y = observation.y.to(torch.complex128) / scale
    mask = volume_to_slices(observation.mask).to(torch.bool)
    together = kspace_tv_guess(y, mask)
    for k in range(y.shape[0]):
        alone = kspace_tv_guess(y[k:k + 1], mask[k:k + 1])
        assert torch.equal(together[k], alone[0])  # bitwise: the batch must not matter
        # independent formula: CS-TV of the slice divided by its own adjoint's robust scale, scaled back
        own = robust_scale(ifft2c(y[k] * mask[k]).real)
        direct = cs_tv(y[k:k + 1] / own, mask[k:k + 1], tv_weights(mask[k:k + 1]), iterations=GUESS_ITERATIONS,
                       tau=GUESS_TAU) * own
        assert torch.allclose(alone, direct, rtol=0, atol=1e-12)
    # better than the adjoint image it starts from (the point of the guess)
    clean = volume_to_slices(_head()).to(torch.float64) / scale
    adjoint = volume_to_slices(observation.adjoint).to(torch.float64) / scale
    assert float((together - clean).norm()) < 0.8 * float((adjoint - clean).norm())


@pytest.mark.parametrize("factor", [1e-3, 0.37, 4096.0])
def test_guess_is_scale_equivariant(factor: float) -> None:
    """``guess(a y) = a guess(y)``: it does not depend on how (or whether) a volume was normalised."""
    observation = corrupt(_head(), "kspace", seed=5, acceleration=8, center_fraction=0.04)
    y = observation.y[1:3].to(torch.complex128)
    mask = volume_to_slices(observation.mask)[1:3].bool()
    base = kspace_tv_guess(y, mask)
    tolerance = 1e-9 * factor * float(base.abs().max())
    assert torch.allclose(kspace_tv_guess(factor * y, mask), factor * base, rtol=1e-9, atol=tolerance)
    with pytest.raises(MedinvertError, match="B, H, W"):
        kspace_tv_guess(y[0], mask[0])
    assert kspace_tv_guess(y[:0], mask[:0]).shape == (0, *y.shape[1:])


def test_conditioning_volume_per_kind() -> None:
    volume = _head()
    kspace = corrupt(volume, "kspace", seed=1, acceleration=4, center_fraction=0.08)
    noisy = corrupt(volume, "noise", seed=1, sigma=20.0)
    assert conditioning_volume(kspace, "adjoint") is kspace.adjoint
    assert conditioning_volume(noisy, "cs_tv") is noisy.adjoint
    image = conditioning_volume(kspace, "cs_tv")
    assert image.shape == kspace.adjoint.shape and image.dtype == torch.float32
    expected = kspace_tv_guess(kspace.y, volume_to_slices(kspace.mask).bool())
    assert torch.equal(volume_to_slices(image), expected.to(torch.float32))
    only = conditioning_volume(kspace, "cs_tv", slices=[2])
    assert torch.equal(only[:, :, 2], image[:, :, 2]) and not only[:, :, [0, 1, 3, 4]].any()
    with pytest.raises(MedinvertError, match="unknown guess"):
        conditioning_volume(kspace, "cs-tv")


def test_config_names_the_guess() -> None:
    assert guess_of_config({}) == "adjoint"
    assert guess_of_config({"conditioning": {"channels": ["adjoint_real"]}}) == "adjoint"
    assert guess_of_config({"conditioning": {"guess": "cs_tv"}}) == "cs_tv"
    with pytest.raises(MedinvertError, match="unknown"):
        guess_of_config({"conditioning": {"guess": "wavelets"}})


class _Recorder(nn.Module):
    """A network that outputs zeros and records the conditioning channels it was given (all of them for a
    2.5D configuration, else the one)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.config = {"n_cond_channels": 1}
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        self.seen.append(x[:, 1:].detach().clone() if self.config.get("neighbours") else x[:, 1].detach().clone())
        return torch.zeros_like(x[:, :1])


def test_engine_feeds_the_guess_and_starts_there() -> None:
    observation = corrupt(_head(), "kspace", seed=2, acceleration=4, center_fraction=0.08)
    scale = robust_scale(observation.adjoint)
    net = _Recorder().eval()
    run_reconstruction(observation, net, make_schedule("linear"), method="ddim", steps=2, batch_size=3,
                       prediction="edm_adjoint", guess="cs_tv", slices=range(1, 4))
    expected = kspace_tv_guess(observation.y[1:4].to(torch.complex128) / scale,
                               volume_to_slices(observation.mask)[1:4].bool()).to(torch.float32)
    assert all(torch.equal(fed, expected) for fed in net.seen)  # every call: the guess of slices 1-3
    # the same slices in other batches give the same bytes (the guess is computed per slice)
    runs = [run_reconstruction(observation, _Recorder().eval(), make_schedule("linear"), method="exact", steps=3,
                               batch_size=b, prediction="edm_adjoint", guess="cs_tv").volume for b in (1, 2, 5)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    adjoint_run = run_reconstruction(observation, _Recorder().eval(), make_schedule("linear"), method="exact",
                                     steps=3, batch_size=2, prediction="edm_adjoint").volume
    assert not torch.equal(runs[0], adjoint_run)


def test_shipped_model_defaults_and_condition() -> None:
    """The shipped t1 model refines the CS-TV guess: 10 steps on the trailing grid by default (20 for a
    model with the adjoint guess), and `invert` under the observation stores the guess as its image."""
    from medinvert.inversion import invert, resolve_network
    from medinvert.reconstruct import reconstruct_volume

    resolved = resolve_network("t1")
    assert resolved.guess == "cs_tv"
    volume = _head((32, 32, 2))
    result = reconstruct_volume(volume, resolved, corruption="kspace:4", checks="none", progress=False, threads=1)
    settings = result.report["settings"]
    assert settings["steps"] == 10 and settings["guess"] == "cs_tv" and settings["grid"].startswith("trailing")
    plain = reconstruct_volume(volume, "random", corruption="kspace:4", checks="none", progress=False, threads=1)
    assert plain.report["settings"]["steps"] == 20 and plain.report["settings"]["guess"] == "adjoint"
    latent = invert(result.volume, resolved, steps=2, condition=result.observation, threads=1)
    assert np.array_equal(latent.cond_image, conditioning_volume(result.observation, "cs_tv").numpy())


def test_2p5d_network_sees_the_guesses_of_its_neighbours() -> None:
    """A 2.5D network under the CS-TV guess gets the guess of its slice and of its neighbours (the engine's
    volume path, `conditioning_volume`), equal to the 2D path's guess of each slice to float32 rounding."""
    from medinvert.models.slab import slab_stack

    observation = corrupt(_head(), "kspace", seed=4, acceleration=4, center_fraction=0.08)
    scale = robust_scale(observation.adjoint)
    net = _Recorder().eval()
    net.config = {"n_cond_channels": 1, "neighbours": 1}
    run_reconstruction(observation, net, make_schedule("linear"), method="ddim", steps=1, batch_size=5,
                       prediction="edm_adjoint", guess="cs_tv")
    guesses = kspace_tv_guess(observation.y.to(torch.complex128) / scale, volume_to_slices(observation.mask).bool())
    expected = slab_stack(guesses.to(torch.float32), range(5), 1)        # (5, 3, X, Y): centre, then neighbours
    fed = net.seen[0]
    assert fed.shape == expected.shape
    assert torch.allclose(fed, expected, rtol=1e-5, atol=1e-6)
    # a run of some slices solves only those and their neighbours, and feeds the same stacks
    part = _Recorder().eval()
    part.config = dict(net.config)
    run_reconstruction(observation, part, make_schedule("linear"), method="ddim", steps=1, batch_size=5,
                       prediction="edm_adjoint", guess="cs_tv", slices=range(1, 3))
    assert torch.equal(part.seen[0], fed[1:3])
