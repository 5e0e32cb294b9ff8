"""`reconstruct_volume` called from a Python pipeline: what MONAI / nibabel hand it (views with negative
strides, singleton and channel axes, tensors that require grad, a loaded module), and the caller's
global state it must leave as it found it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from _recon_helpers import phantom, write_tiny_model
from medinvert import reconstruct_volume
from medinvert.errors import MedinvertError
from medinvert.inversion import resolve_network
from medinvert.models import load_model

SETTINGS = {"corruption": "kspace:4", "steps": 3, "checks": "none", "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _bytes(result) -> bytes:
    return result.volume.as_tensor().numpy().tobytes()


def test_array_layouts_from_monai_and_nibabel_give_the_same_bytes(model):
    volume = phantom((24, 20, 3))
    expected = _bytes(reconstruct_volume(volume, str(model), **SETTINGS))
    flipped_twice = np.flip(np.flip(volume, axis=0).copy(), axis=0)  # a negative-stride view of the same voxels
    assert flipped_twice.strides[0] < 0
    variants = {"negative strides": flipped_twice, "trailing singleton": volume[..., None],
                "channel first": volume[None], "requires grad": torch.from_numpy(volume).requires_grad_(True)}
    for name, data in variants.items():
        assert _bytes(reconstruct_volume(data, str(model), **SETTINGS)) == expected, name
    one_slice = _bytes(reconstruct_volume(volume[..., :1], str(model), **SETTINGS))
    assert _bytes(reconstruct_volume(volume[None, ..., :1], str(model), **SETTINGS)) == one_slice  # (1, X, Y, 1)


def test_big_endian_and_unsigned_arrays_read_like_their_native_values(model):
    """``np.asarray(nibabel_image.dataobj)`` of a big-endian file keeps ``>i2``; pydicom's ``pixel_array`` is
    often ``uint16``: both are the same numbers as a native int16 array, so the same output bytes."""
    magnitude = np.abs(phantom((24, 20, 3)))
    volume = np.round(magnitude / magnitude.max() * 3000).astype(np.int16)  # 0 .. 3000: fits every type
    expected = _bytes(reconstruct_volume(volume, str(model), **SETTINGS))
    variants = {"big-endian int16": volume.astype(">i2"), "uint16": volume.astype(np.uint16),
                "uint32": volume.astype(np.uint32), "big-endian uint16": volume.astype(">u2"),
                "torch uint16": torch.from_numpy(volume.astype(np.int32)).to(torch.uint16)}
    for name, data in variants.items():
        assert _bytes(reconstruct_volume(data, str(model), **SETTINGS)) == expected, name


def test_a_channel_first_2d_image_from_monai_is_one_slice(model, make_nifti, tmp_path: Path):
    """``LoadImage`` + ``EnsureChannelFirst`` on a 2-D NIfTI give ``(1, X, Y)``: the image, not 41 slices of 1 x 33."""
    from monai.transforms import EnsureChannelFirst, LoadImage

    image = phantom((33, 41, 1))[..., 0]
    path = make_nifti(tmp_path / "single.nii.gz", image, np.eye(4))
    loaded = EnsureChannelFirst()(LoadImage(image_only=True)(str(path)))
    assert tuple(loaded.shape) == (1, 33, 41)
    result = reconstruct_volume(loaded, str(model), **SETTINGS)
    assert tuple(result.volume.shape) == (33, 41, 1)
    assert _bytes(result) == _bytes(reconstruct_volume(image, str(model), name="single.nii.gz", **SETTINGS))


def test_a_module_from_load_model_keeps_its_training_config(model):
    net, config = load_model(str(model))
    alone, by_path = resolve_network(net), resolve_network(str(model))
    assert (alone.prediction, alone.schedule.config, alone.guess) == (by_path.prediction, by_path.schedule.config,
                                                                      by_path.guess)
    volume = phantom((24, 20, 3))
    assert _bytes(reconstruct_volume(volume, net, **SETTINGS)) == _bytes(reconstruct_volume(volume, str(model),
                                                                                            **SETTINGS))


def test_the_callers_global_state_is_left_as_it_was(model):
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    torch.manual_seed(1234)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # a caller working in float64
    try:
        net, _ = load_model(str(model))  # built in float32 although the caller's default is float64
        reconstruct_volume(phantom((24, 20, 3)), net, **SETTINGS)
        assert torch.get_default_dtype() == torch.float64
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert torch.equal(torch.rand(3, dtype=torch.float32), expected_draw)  # the RNG was not advanced
    finally:
        torch.set_default_dtype(previous)


def test_a_reference_of_another_shape_is_refused_before_any_work(model):
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, *args):
            calls.append(1)
            raise AssertionError("the network must not run")

    net = Counting().eval()
    with pytest.raises(MedinvertError, match=r"reference shape \(24, 20, 2\) differs"):
        reconstruct_volume(phantom((24, 20, 3)), net, reference=phantom((24, 20, 2)), **SETTINGS)
    assert not calls
