"""`medinvert.edit`: zero leakage with the exact method, real changes inside, drift-free chains.

Everything runs the built-in seeded ``random`` model on tiny volumes (one intra-op thread).  The
leakage checks compare float32 *bit patterns* of every voxel outside the (feathered) mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import medinvert
from medinvert.editing import EditOp, edit, edit_level, load_mask, make_region, parse_op
from medinvert.errors import MedinvertError
from medinvert.inversion import resolve_network
from medinvert.solvers import exact
from medinvert.solvers.exact import FixedPointState

MODEL = "random"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A smooth blob plus texture, positive everywhere (so scale edits change every masked voxel)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    blob = np.exp(-2.0 * sum(g * g for g in grids))
    return (50.0 + 300.0 * blob + rng.uniform(0.0, 40.0, size=shape)).astype(np.float32)


def random_mask(shape: tuple[int, int, int], seed: int, fraction: float = 0.15) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < fraction
    mask.flat[rng.integers(mask.size)] = True  # never empty
    return mask


def bits(a) -> np.ndarray:
    data = a.as_tensor().numpy() if hasattr(a, "as_tensor") else np.asarray(a)
    return np.ascontiguousarray(data, dtype=np.float32).view(np.int32)


def write_other(path, shape, seed=7):
    import nibabel as nib

    nib.save(nib.Nifti1Image(make_volume(shape, seed), np.eye(4)), str(path))
    return path


# ---------------------------------------------------------------------- ops
@pytest.mark.parametrize("text, kind, value", [("shift:0.2", "shift", 0.2), ("scale:1.5", "scale", 1.5),
                                               ("inpaint", "inpaint", None), (" SHIFT:-1e-3 ", "shift", -1e-3)])
def test_parse_op(text, kind, value):
    op = parse_op(text)
    assert (op.kind, op.value) == (kind, value)
    assert parse_op(op) is op


@pytest.mark.parametrize("text", ["blur:2", "shift", "shift:", "shift:abc", "scale:nan", "shift:inf", "inpaint:3",
                                  "transplant:", "transplant:/no/such/file.nii.gz"])
def test_parse_op_refuses_bad_ops(text):
    with pytest.raises(MedinvertError):
        parse_op(text)


def test_noop_ops():
    assert parse_op("shift:0").is_noop and parse_op("scale:1").is_noop
    assert not parse_op("shift:0.1").is_noop and not parse_op("inpaint").is_noop


# ---------------------------------------------------------------------- zero leakage
OPS = ["shift:0.3", "shift:-0.2", "scale:1.6", "inpaint", "transplant"]


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(12, 24), st.integers(12, 24), st.integers(1, 4)),
       steps=st.integers(2, 6), mask_seed=st.integers(0, 10**6), t_edit=st.sampled_from([None, 1.0, 0.5, 0.2]))
def test_exact_edit_has_zero_leakage_and_changes_the_mask(tmp_path, op, shape, steps, mask_seed, t_edit):
    volume = make_volume(shape, seed=mask_seed % 7)
    mask = random_mask(shape, mask_seed)
    if op == "transplant":
        op = f"transplant:{write_other(tmp_path / 'other.nii.gz', shape)}"
    result = edit(volume, mask, op, MODEL, steps=steps, t_edit=t_edit, seed=mask_seed)
    out = result.volume.as_tensor().numpy()
    np.testing.assert_array_equal(bits(out)[~mask], bits(volume)[~mask])
    report = result.report
    assert report["leakage"]["max_abs"] == 0.0 and report["leakage"]["bit_identical"]
    assert report["outside_mask"]["bit_identical"]
    changed = out[mask] != volume[mask]
    assert changed.mean() > 0.9, f"only {changed.mean():.2f} of the masked voxels changed"
    assert report["change_inside"]["max_abs"] > 0
    assert report["mask_voxels"] == int(mask.sum()) and report["held_voxels"] == int((~mask).sum())
    assert out.dtype == np.float32 and out.shape == volume.shape


def test_shift_moves_the_region_by_about_delta_in_input_units():
    volume = make_volume((20, 20, 3))
    mask = np.zeros(volume.shape, bool)
    mask[5:14, 6:15, :] = True
    result = edit(volume, mask, "shift:0.25", MODEL, steps=10, t_edit=0.1)
    change = result.report["change_inside"]["mean"]
    expected = 0.25 * result.report["scale"]
    assert abs(change - expected) < 0.2 * expected
    assert result.report["nfe"] == {"total": result.report["edit_steps"] * 2 - 1,
                                    "invert": result.report["edit_steps"], "generate": result.report["edit_steps"] - 1}


def test_feathered_edit_is_bit_identical_outside_the_band_and_blends_inside_it():
    volume = make_volume((24, 22, 3))
    mask = np.zeros(volume.shape, bool)
    mask[9:14, 8:13, 1] = True
    result = edit(volume, mask, "shift:0.4", MODEL, steps=6, t_edit=0.3, feather=2)
    region = make_region(torch.from_numpy(mask), 2)
    held = region.held.numpy()
    band = region.edited.numpy() & ~mask
    out = result.volume.as_tensor().numpy()
    np.testing.assert_array_equal(bits(out)[held], bits(volume)[held])
    assert band.any() and (out[band] != volume[band]).any()
    assert result.report["leakage"]["bit_identical"] and not result.report["outside_mask"]["bit_identical"]
    assert "dilated by 2 voxels" in result.report["leakage"]["region"]
    # the band's change is between none and the full edit: weights fall linearly with distance
    inside, edge = np.abs(out - volume)[mask].mean(), np.abs(out - volume)[band].mean()
    assert 0 < edge < inside


def test_ddim_baseline_leaks_outside_the_mask():
    volume = make_volume((20, 18, 2))
    mask = np.zeros(volume.shape, bool)
    mask[6:12, 5:11, :] = True
    result = edit(volume, mask, "shift:0.2", MODEL, steps=6, t_edit=0.5, method="ddim")
    assert result.report["leakage"]["max_abs"] > 0 and not result.report["leakage"]["bit_identical"]
    assert result.report["frac_bits"] is None


def test_edit_is_deterministic():
    volume = make_volume((16, 16, 3))
    mask = random_mask(volume.shape, 3)
    a = edit(volume, mask, "inpaint", MODEL, steps=4, seed=5, start="noise").volume
    b = edit(volume, mask, "inpaint", MODEL, steps=4, seed=5, start="noise").volume
    c = edit(volume, mask, "inpaint", MODEL, steps=4, seed=6, start="noise").volume
    np.testing.assert_array_equal(bits(a), bits(b))
    assert (bits(a) != bits(c)).any()


def test_guess_start_inpainting_ignores_the_seed_and_still_holds_the_outside():
    volume = make_volume((16, 16, 3))
    mask = random_mask(volume.shape, 4)
    a = edit(volume, mask, "inpaint", MODEL, steps=4, seed=5)
    b = edit(volume, mask, "inpaint", MODEL, steps=4, seed=6)
    noisy = edit(volume, mask, "inpaint", MODEL, steps=4, seed=5, start="noise").volume
    assert a.report["start"] == "guess"
    np.testing.assert_array_equal(bits(a.volume), bits(b.volume))
    assert (bits(a.volume) != bits(noisy)).any()
    outside = ~mask.astype(bool)
    np.testing.assert_array_equal(bits(np.asarray(a.volume))[outside], bits(volume)[outside])
    with pytest.raises(MedinvertError, match="unknown start"):
        edit(volume, mask, "inpaint", MODEL, steps=4, start="zeros")


def test_untouched_slices_cost_nothing_and_stay_identical():
    volume = make_volume((16, 16, 5))
    mask = np.zeros(volume.shape, bool)
    mask[4:9, 4:9, 2] = True
    result = edit(volume, mask, "shift:0.3", MODEL, steps=4, t_edit=1.0)
    assert result.report["slices"] == [2]
    out = result.volume.as_tensor().numpy()
    np.testing.assert_array_equal(bits(out)[:, :, [0, 1, 3, 4]], bits(volume)[:, :, [0, 1, 3, 4]])


# ---------------------------------------------------------------------- drift-free chains
def awkward_volume() -> np.ndarray:
    """A volume with values the fixed-point grid cannot hold (-0.0, tiny numbers) inside and outside."""
    volume = make_volume((18, 16, 3), seed=2)
    volume[0, 0, 0] = -0.0
    volume[1, 0, 0] = 1e-30
    volume[0, 1, 1] = -0.0    # held voxels of an edited slice
    volume[1, 1, 1] = 2e-35
    volume[8, 8, 1] = -0.0    # inside the chain tests' mask
    volume[9, 8, 1] = -3e-28
    return volume


def chain_mask(shape: tuple[int, ...]) -> np.ndarray:
    """The edit region of the chain tests: a 7 x 7 square on slice 1 (holding the awkward values)."""
    mask = np.zeros(shape, bool)
    mask[5:12, 5:12, 1] = True
    return mask


def test_ten_noop_cycles_are_bit_identical():
    volume = awkward_volume()
    mask = chain_mask(volume.shape)
    current = volume
    for cycle in range(10):
        op = "shift:0" if cycle % 2 == 0 else "scale:1"
        current = edit(current, mask, op, MODEL, steps=5, t_edit=1.0).volume.as_tensor().numpy()
        np.testing.assert_array_equal(bits(current), bits(volume), err_msg=f"cycle {cycle}")


def test_ten_small_edit_cycles_change_only_the_mask():
    volume = awkward_volume()
    mask = chain_mask(volume.shape)
    current = volume
    for cycle in range(10):
        current = edit(current, mask, "shift:0.02", MODEL, steps=5, t_edit=0.3).volume.as_tensor().numpy()
        np.testing.assert_array_equal(bits(current)[~mask], bits(volume)[~mask], err_msg=f"cycle {cycle}")
    assert (current[mask] != volume[mask]).mean() > 0.9


def test_transplant_of_the_volume_itself_is_a_noop(tmp_path):
    import nibabel as nib

    volume = make_volume((16, 14, 2))
    path = tmp_path / "self.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    mask = random_mask(volume.shape, 1, fraction=0.3)
    out = edit(path, mask, f"transplant:{path}", MODEL, steps=4).volume
    np.testing.assert_array_equal(bits(out), bits(volume))


# ---------------------------------------------------------------------- masks and arguments
def test_mask_checks():
    shape = (8, 6, 3)
    with pytest.raises(MedinvertError, match="does not match the volume shape"):
        load_mask(np.ones((8, 6, 2)), shape)
    with pytest.raises(MedinvertError, match="empty"):
        load_mask(np.zeros(shape), shape)
    with pytest.raises(MedinvertError, match="NaN"):
        load_mask(np.full(shape, np.nan), shape)
    labels = np.zeros(shape, np.uint8)
    labels[1, 1, 1], labels[2, 2, 2] = 2, 4  # a segmentation: every non-zero label is edited
    assert int(load_mask(labels, shape).sum()) == 2


def test_mask_geometry_must_match_the_volume():
    from monai.data import MetaTensor

    volume = MetaTensor(torch.from_numpy(make_volume((12, 12, 2))), affine=torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0])))
    mask = np.zeros((12, 12, 2), np.float32)
    mask[3:6, 3:6, 0] = 1
    shifted = MetaTensor(torch.from_numpy(mask), affine=torch.eye(4))
    with pytest.raises(MedinvertError, match="affine"):
        edit(volume, shifted, "shift:0.1", MODEL, steps=3)
    # a plain array carries no geometry: accepted
    assert edit(volume, mask, "shift:0.1", MODEL, steps=3).report["leakage"]["bit_identical"]


@pytest.mark.parametrize("kwargs", [{"method": "edict"}, {"steps": 1}, {"t_edit": 0.0}, {"t_edit": 1.5},
                                    {"feather": -1}, {"seed": -1}, {"batch_size": 0}])
def test_bad_arguments_are_refused(kwargs):
    volume = make_volume((8, 8, 2))
    with pytest.raises(MedinvertError):
        edit(volume, np.ones(volume.shape), "shift:0.1", MODEL, **kwargs)


def test_edit_level_picks_the_nearest_time_with_two_steps_left():
    net = resolve_network(MODEL)
    sigmas = net.schedule.sigmas(10)
    assert edit_level(net.schedule, sigmas, 1.0) == 0
    assert edit_level(net.schedule, sigmas, 0.01) == 8
    assert edit_level(net.schedule, sigmas, 0.5) == 5


def test_public_surface():
    assert medinvert.edit is edit
    assert isinstance(parse_op("inpaint"), EditOp)


# ---------------------------------------------------------------------- the solver hook
def test_exact_generate_hold_hook_identity_changes_nothing_and_heun_refuses_it():
    from medinvert.denoiser import Denoiser

    net = resolve_network(MODEL)
    denoiser = Denoiser(net.net, net.schedule, batch_size=2)
    x0 = torch.from_numpy(make_volume((12, 12, 3))).permute(2, 0, 1)[:, None] / 256.0
    sigmas = net.schedule.sigmas(5)
    latent = exact.invert(denoiser, x0, sigmas)
    seen: list[int] = []

    def identity(state: FixedPointState) -> FixedPointState:
        seen.append(len(state.sigmas))
        return state

    plain = exact.generate(denoiser, latent, sigmas)
    held = exact.generate(denoiser, latent, sigmas, hold=identity)
    assert torch.equal(plain, held) and torch.equal(held, x0.to(torch.float64))
    assert seen == [5, 4, 3, 2]  # one call per step, the state's grid shrinking
    with pytest.raises(MedinvertError, match="two-level"):
        exact.generate(denoiser, sigmas[0] * torch.randn(1, 1, 8, 8), sigmas, scheme="heun", hold=identity)
    with pytest.raises(MedinvertError, match="hold hook"):
        exact.generate(denoiser, latent, sigmas, hold=lambda s: FixedPointState(s.scheme, s.frac_bits, s.z,
                                                                                  s.partner.float().long()[:1],
                                                                                  s.sigmas))
