"""`Latent` files: save / load round trips, byte determinism, the documented layout, and refusal of
missing, truncated, corrupted or mismatched files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medinvert.errors import MedinvertError
from medinvert.inversion import RANDOM_MODEL, generate, invert, resolve_network
from medinvert.latent import FORMAT_NAME, FORMAT_VERSION, Latent
from medinvert.solvers import NullTextState
from medinvert.solvers.guided import DEFAULT_GUIDANCE
from medinvert.solvers.fixed_point import dequantize


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def net():
    return resolve_network(RANDOM_MODEL)


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    rng = np.random.default_rng(11)
    data = rng.uniform(0, 1500, (14, 10, 3)).astype(np.float32)
    data[0, 0, 0] = 1e-20  # off the grid: a non-empty exception patch
    return torch.from_numpy(data)


def _states_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            if not (x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("method, dtype", [("exact", "float32"), ("edict", "float64"), ("bdia", "float32"),
                                           ("ddim", "float64")])
def test_save_load_round_trip_keeps_every_field_and_the_generated_bits(tmp_path, net, volume, method, dtype):
    latent = invert(volume, net, method=method, steps=3, dtype=dtype, batch_size=2)
    path = latent.save(tmp_path / "latent.npz")
    loaded = Latent.load(path)
    assert _states_equal(latent.state, loaded.state)
    for name in ("method", "options", "schedule", "prediction", "steps", "spacing", "sigmas", "dtype", "batch_size",
                 "threads", "guidance", "model", "shape", "scale", "source_dtype", "source", "source_meta",
                 "nifti_header", "version"):
        assert getattr(loaded, name) == getattr(latent, name), name
    np.testing.assert_array_equal(loaded.affine, latent.affine)
    np.testing.assert_array_equal(loaded.patch_index, latent.patch_index)
    np.testing.assert_array_equal(loaded.patch_values.view(np.int32), latent.patch_values.view(np.int32))
    a, b = generate(latent, net), generate(path)  # the loaded one re-resolves "random:0" by itself
    np.testing.assert_array_equal(a.numpy().view(np.int32), b.numpy().view(np.int32))
    if method == "exact":
        assert latent.patch_size >= 1
        np.testing.assert_array_equal(b.numpy().view(np.int32), volume.numpy().view(np.int32))


def test_same_inversion_gives_the_same_file_bytes(tmp_path, net, volume):
    first = invert(volume, net, steps=3).save(tmp_path / "a.npz")
    second = invert(volume.clone(), net, steps=3).save(tmp_path / "b.npz")
    assert first.read_bytes() == second.read_bytes()


def test_file_is_a_plain_npz_with_the_documented_content(tmp_path, net, volume):
    """Read the file with numpy alone (no medinvert) and check it against independent formulas."""
    latent = invert(volume, net, steps=4, batch_size=3)
    path = latent.save(tmp_path / "plain.npz")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays.pop("meta_json")))
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == FORMAT_VERSION == 2
    assert meta["method"] == "exact" and meta["steps"] == 4 and meta["batch_size"] == 3
    assert set(arrays) == {"sigmas", "affine", "patch_index", "patch_values", "state.z", "state.partner"}
    for name, array in arrays.items():  # every array is described by shape, dtype and SHA-256
        info = meta["arrays"][name]
        assert info["shape"] == list(array.shape) and info["dtype"] == array.dtype.str
        assert info["sha256"] == hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    sigmas = arrays["sigmas"]
    assert sigmas.shape == (5,) and sigmas[-1] == 0.0 and np.all(np.diff(sigmas) < 0)
    z = arrays["state.z"]
    assert z.dtype == np.int64 and z.shape == (3, 1, 14, 10)  # (Z, 1, X, Y)
    q = meta["grid"]["frac_bits"]
    # the latent at sigma_max in VP x coordinates is noise-like: O(1) values (data / scale is O(1) too)
    x_top = z.astype(np.float64) * 2.0**-q
    assert 0.05 < x_top.std() < 20
    assert meta["intensity"]["scale"] == 2.0 ** round(np.log2(meta["intensity"]["scale"]))
    data = volume.numpy()
    np.testing.assert_array_equal(arrays["patch_values"], data.reshape(-1)[arrays["patch_index"]])
    assert meta["patch"]["size"] == arrays["patch_index"].size
    # the medinvert view agrees with the raw one
    np.testing.assert_array_equal(dequantize(latent.state.z, q).numpy(), x_top)


def test_nifti_header_and_conditioning_arrays_round_trip(tmp_path, net):
    from medinvert.io.nifti import make_meta_tensor

    header = bytes(range(256)) + bytes(92)
    data = np.random.default_rng(0).uniform(0, 10, (8, 6, 2)).astype(np.float32)
    vol = make_meta_tensor(data, np.diag([2.0, 2.0, 3.0, 1.0]), {"nifti_header": header, "modality": "t2"})
    latent = invert(vol, net, steps=2, condition=np.arange(16, dtype=np.float32), guidance=3.0)
    loaded = Latent.load(latent.save(tmp_path / "c.npz"))
    assert loaded.nifti_header == header and loaded.guidance == 3.0
    np.testing.assert_array_equal(loaded.cond_descriptor, np.arange(16, dtype=np.float32))
    assert loaded.source_meta["modality"] == "t2"


# ---------------------------------------------------------------------- null-text, guidance, format 1
DESCRIPTOR = np.linspace(-1.0, 1.0, 16, dtype=np.float32)


def test_nulltext_latent_round_trips_through_the_file(tmp_path, net):
    data = np.random.default_rng(5).uniform(0, 300, (8, 6, 2)).astype(np.float32)
    latent = invert(torch.from_numpy(data), net, method="nulltext", steps=3, condition=DESCRIPTOR, inner_steps=2)
    state = latent.state
    assert isinstance(state, NullTextState) and state.null_conds.shape == (3, 2, 16)
    # one record of the weight: the latent's guidance (the default w, as nothing was asked for)
    assert latent.guidance == state.guidance == DEFAULT_GUIDANCE and latent.options["guidance"] is None
    path = latent.save(tmp_path / "nulltext.npz")
    meta = _meta_of(path)
    assert meta["state"]["kind"] == "NullTextState" and meta["state"]["fields"] == {}
    assert sorted(meta["state"]["arrays"]) == ["state.backward", "state.iterations", "state.null_conds", "state.xbar"]
    loaded = Latent.load(path)
    assert _states_equal(state, loaded.state) and loaded.guidance == latent.guidance
    a, b = generate(latent, net), generate(path)  # the file alone reproduces the null-text generation
    np.testing.assert_array_equal(a.numpy().view(np.int32), b.numpy().view(np.int32))
    assert float(np.abs(b.numpy() - data).max()) > 0  # approximate inversion: not the input bits
    assert b.meta["medinvert_generate"]["nfe"] == 2 * 3


def test_guided_weight_is_resolved_once(net):
    data = torch.rand(8, 6, 1)
    assert invert(data, net, method="negprompt", steps=2, condition=DESCRIPTOR, guidance=2.5).guidance == 2.5
    latent = invert(data, net, method="nulltext", steps=2, condition=DESCRIPTOR, guidance=4.0, inner_steps=1)
    assert latent.guidance == latent.state.guidance == 4.0 and latent.options["guidance"] is None
    with pytest.raises(MedinvertError, match="w > 1"):
        invert(data, net, method="negprompt", steps=2, condition=DESCRIPTOR, guidance=0.5)
    with pytest.raises(MedinvertError, match="needs a condition"):
        invert(data, net, method="nulltext", steps=2)


def _as_format_1(path: Path, target: Path, options: dict, **meta_changes) -> Path:
    """``path`` rewritten as a format-1 file with these ``options`` (the metadata is not hashed)."""
    meta = dict(_meta_of(path), format_version=1, options=options, **meta_changes)
    return _rewrite(path, target, replace={"meta_json.npy": _npy(np.array(json.dumps(meta)))})


def test_format_1_files_are_upgraded_and_generate_as_before(tmp_path, net, volume):
    small = volume[:, :, :1]
    ode = invert(small, net, method="ode", steps=2, ode_method="rk4")
    old = _as_format_1(ode.save(tmp_path / "ode.npz"), tmp_path / "ode1.npz",
                       {"method": "rk4", "rtol": 1e-7, "atol": 1e-9, "options": None})
    loaded = Latent.load(old)
    assert loaded.options == ode.options and loaded.options["ode_method"] == "rk4"
    np.testing.assert_array_equal(generate(loaded, net).numpy().view(np.int32),
                                  generate(ode, net).numpy().view(np.int32))
    edict = invert(small, net, method="edict", steps=2, state_dtype="float32")  # a format-1 EDICT pair is float32
    old = _as_format_1(edict.save(tmp_path / "edict.npz"), tmp_path / "edict1.npz", {"p": 0.93})
    loaded = Latent.load(old)
    assert loaded.options["state_dtype"] == "float32" and loaded.state.x.dtype == torch.float32
    np.testing.assert_array_equal(generate(loaded, net).numpy().view(np.int32),
                                  generate(edict, net).numpy().view(np.int32))
    neg = invert(small, net, method="negprompt", steps=2, condition=DESCRIPTOR, guidance=4.0)
    old = _as_format_1(neg.save(tmp_path / "neg.npz"), tmp_path / "neg1.npz", {"guidance": 4.0, "negative": None},
                       guidance=1.0)  # format 1 could keep w in the option and 1 in guidance
    loaded = Latent.load(old)
    assert loaded.guidance == 4.0 and loaded.options["guidance"] is None


# ---------------------------------------------------------------------- refusing bad files
@pytest.fixture(scope="module")
def saved(tmp_path_factory, net, volume) -> Path:
    return invert(volume, net, steps=3).save(tmp_path_factory.mktemp("latent") / "good.npz")


def _rewrite(source: Path, target: Path, *, drop: str | None = None, replace: dict[str, bytes] | None = None) -> Path:
    """Copy a latent zip member by member, dropping or replacing members."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            if name == drop:
                continue
            dst.writestr(name, (replace or {}).get(name, src.read(name)))
    return target


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _meta_of(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        return json.loads(str(archive["meta_json"]))


def test_missing_and_non_latent_files_are_refused(tmp_path, saved):
    with pytest.raises(MedinvertError, match="not found"):
        Latent.load(tmp_path / "nope.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(MedinvertError, match=f"{text}.*not a readable latent"):
        Latent.load(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(MedinvertError, match="single .npy array"):
        Latent.load(single)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(MedinvertError, match="no meta_json"):
        Latent.load(other)


def test_truncated_file_is_refused(tmp_path, saved):
    short = tmp_path / "short.npz"
    short.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(MedinvertError, match="short.npz"):
        Latent.load(short)


def test_changed_state_bytes_are_detected(tmp_path, saved):
    with np.load(saved, allow_pickle=False) as archive:
        z = archive["state.z"].copy()
    z[0, 0, 0, 0] += 1
    bad = _rewrite(saved, tmp_path / "edited.npz", replace={"state.z.npy": _npy(z)})
    with pytest.raises(MedinvertError, match="SHA-256"):
        Latent.load(bad)


def test_missing_array_and_wrong_metadata_are_detected(tmp_path, saved):
    with pytest.raises(MedinvertError, match="missing arrays"):
        Latent.load(_rewrite(saved, tmp_path / "drop.npz", drop="state.partner.npy"))
    meta = _meta_of(saved)
    for key, value, message in [("format_version", 99, "format_version"), ("method", "magic", "unknown method"),
                                ("dtype", "float16", "dtype"), ("steps", 7, "grid")]:
        changed = dict(meta, **{key: value})
        path = _rewrite(saved, tmp_path / f"{key}.npz",
                        replace={"meta_json.npy": _npy(np.array(json.dumps(changed)))})
        with pytest.raises(MedinvertError, match=message):
            Latent.load(path)
    bad_scale = dict(meta, intensity={"scale": 3.0})
    path = _rewrite(saved, tmp_path / "scale.npz", replace={"meta_json.npy": _npy(np.array(json.dumps(bad_scale)))})
    with pytest.raises(MedinvertError, match="power of two"):
        Latent.load(path)


def test_a_failed_save_leaves_the_existing_file_and_no_temporary_files(tmp_path, net, volume):
    latent = invert(volume, net, steps=2)
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")
    latent.state = "not a state"  # saving fails before the rename
    with pytest.raises(MedinvertError):
        latent.save(target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]
