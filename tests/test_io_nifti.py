"""NIfTI loading / saving: round trips, header codes, shape rules and every kind of bad file."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medinvert.errors import MedinvertError
from medinvert.io import MAX_VOXELS, load_volume, nifti_header, require_volume, save_volume


def _nib_array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def test_load_oblique_nifti_matches_nibabel(oblique_nifti: Path, oblique_affine: np.ndarray) -> None:
    volume = load_volume(oblique_nifti)
    assert isinstance(volume, MetaTensor)
    assert volume.dtype == torch.float32 and tuple(volume.shape) == (9, 8, 7)
    assert np.array_equal(volume.numpy(), _nib_array(oblique_nifti))
    assert volume.affine.dtype == torch.float64
    assert np.array_equal(volume.affine.numpy(), oblique_affine)
    expected_spacing = np.linalg.norm(oblique_affine[:3, :3], axis=0)
    assert np.allclose(volume.meta["spacing"], expected_spacing, rtol=0, atol=1e-12)
    assert volume.meta["source_format"] == "nifti"
    assert volume.meta["filename_or_obj"] == str(oblique_nifti)
    assert volume.meta["modality"] is None
    assert (volume.meta["qform_code"], volume.meta["sform_code"]) == (1, 2)


def test_round_trip_keeps_data_affine_and_codes_exactly(oblique_nifti: Path, tmp_path: Path) -> None:
    volume = load_volume(oblique_nifti)
    out = save_volume(volume, tmp_path / "copy.nii.gz")
    again = load_volume(out)
    assert np.array_equal(again.numpy(), volume.numpy())
    assert np.array_equal(again.affine.numpy(), volume.affine.numpy())
    src, dst = nib.load(str(oblique_nifti)).header, nib.load(str(out)).header
    assert (int(dst["qform_code"]), int(dst["sform_code"])) == (1, 2)
    for key in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y",
                "srow_z", "pixdim"):
        assert np.array_equal(src[key], dst[key]), key
    assert dst.get_data_dtype() == np.float32


def test_save_is_deterministic_and_leaves_no_temp_files(oblique_nifti: Path, tmp_path: Path) -> None:
    volume = load_volume(oblique_nifti)
    a = save_volume(volume, tmp_path / "out" / "a.nii.gz")  # parent folder created
    b = save_volume(volume, tmp_path / "out" / "b.nii.gz")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_changed_affine_is_written_with_source_codes(oblique_nifti: Path, tmp_path: Path) -> None:
    volume = load_volume(oblique_nifti)
    shifted = volume.clone()
    new_affine = volume.affine.clone()
    new_affine[:3, 3] += torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    shifted.affine = new_affine
    out = save_volume(shifted, tmp_path / "shifted.nii")
    header = nib.load(str(out)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2)
    assert np.array_equal(load_volume(out).affine.numpy(), new_affine.numpy())  # float32-representable


def test_plain_array_without_source_gets_code_1(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.float64).reshape(5, 4, 3)
    out = save_volume(data, tmp_path / "plain.nii.gz")
    header = nib.load(str(out)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)
    loaded = load_volume(out)
    assert np.array_equal(loaded.affine.numpy(), np.eye(4))
    assert np.array_equal(loaded.numpy(), data.astype(np.float32))


def test_reference_supplies_affine_and_header(oblique_nifti: Path, tmp_path: Path, oblique_affine: np.ndarray) -> None:
    reference = load_volume(oblique_nifti)
    mask = (reference.numpy() > np.median(reference.numpy())).astype(np.float32)
    out = save_volume(mask, tmp_path / "mask.nii.gz", reference=reference, dtype=np.uint8)
    image = nib.load(str(out))
    assert image.get_data_dtype() == np.uint8
    assert np.array_equal(image.affine, oblique_affine)
    assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (1, 2)
    assert np.array_equal(np.asarray(image.dataobj), mask.astype(np.uint8))


def test_integer_dtype_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MedinvertError, match="do not fit"):
        save_volume(np.full((3, 3, 3), 300.0), tmp_path / "x.nii.gz", dtype=np.uint8)
    assert not (tmp_path / "x.nii.gz").exists()


def test_save_refuses_non_nifti_name(tmp_path: Path) -> None:
    with pytest.raises(MedinvertError, match=r"\.nii"):
        save_volume(np.zeros((3, 3, 3)), tmp_path / "x.mha")


def test_nifti_header_accessor(oblique_nifti: Path, oblique_affine: np.ndarray) -> None:
    volume = load_volume(oblique_nifti)
    header = nifti_header(volume)
    assert isinstance(header, nib.Nifti1Header)
    assert np.array_equal(header.get_best_affine(), oblique_affine)
    assert nifti_header(torch.zeros(2, 2, 2)) is None


def test_trailing_singleton_axis_is_squeezed(nifti_4d_singleton: Path, tmp_path: Path) -> None:
    volume = load_volume(nifti_4d_singleton)
    assert tuple(volume.shape) == (12, 10, 6)
    assert np.array_equal(volume.numpy(), _nib_array(nifti_4d_singleton)[..., 0])
    assert np.allclose(volume.meta["spacing"], (1.5, 1.5, 3.0))
    out = save_volume(volume, tmp_path / "squeezed.nii.gz")
    assert nib.load(str(out)).shape == (12, 10, 6)
    assert np.array_equal(load_volume(out).numpy(), volume.numpy())


def test_2d_image_loads_as_single_slice(make_nifti, tmp_path: Path) -> None:
    path = make_nifti(tmp_path / "slice.nii", shape=(6, 5))
    volume = load_volume(path)
    assert tuple(volume.shape) == (6, 5, 1)
    with pytest.raises(MedinvertError, match="2D image.*needs a 3D volume") as info:
        require_volume(volume)
    assert str(path) in str(info.value)
    assert require_volume(load_volume(make_nifti(tmp_path / "vol.nii", shape=(6, 5, 2)))) is not None


def test_true_4d_is_refused(make_nifti, tmp_path: Path) -> None:
    path = make_nifti(tmp_path / "fmri.nii.gz", shape=(5, 4, 3, 2))
    with pytest.raises(MedinvertError, match="2 frames"):
        load_volume(path)


def test_scaled_integer_data_are_rescaled(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, str(tmp_path / "scaled.nii.gz"))
    volume = load_volume(tmp_path / "scaled.nii.gz")
    assert np.array_equal(volume.numpy(), data * np.float32(0.5) + np.float32(10.0))
    assert volume.meta["stored_dtype"] == "int16"


def test_modality_from_brats_name(make_nifti, tmp_path: Path) -> None:
    path = make_nifti(tmp_path / "BraTS-GLI-00001-000-t2f.nii.gz", shape=(4, 4, 2))
    assert load_volume(path).meta["modality"] == "flair"


# ----------------------------------------------------------------------------------------- bad input


def _assert_one_line_error(path: Path, pattern: str) -> None:
    with pytest.raises(MedinvertError, match=pattern) as info:
        load_volume(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_missing_path(tmp_path: Path) -> None:
    _assert_one_line_error(tmp_path / "nope.nii.gz", "no such file")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    _assert_one_line_error(path, "empty")


@pytest.mark.parametrize("name", ["random.nii.gz", "random.nii"])
def test_random_bytes_named_nifti(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    _assert_one_line_error(path, "not a readable NIfTI")


def test_gzipped_text_named_nifti(tmp_path: Path) -> None:
    path = tmp_path / "text.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image\n" * 40))
    _assert_one_line_error(path, "not a readable NIfTI")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_file(make_nifti, tmp_path: Path, suffix: str) -> None:
    data = np.random.default_rng(0).standard_normal((24, 24, 24)).astype(np.float32)  # incompressible
    full = make_nifti(tmp_path / f"full{suffix}", data, np.eye(4))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _assert_one_line_error(cut, "truncated or corrupt")


def test_nan_and_inf_are_counted(make_nifti, tmp_path: Path) -> None:
    data = np.ones((5, 5, 3), dtype=np.float32)
    data[0, 0, 0] = data[1, 2, 1] = data[4, 4, 2] = np.nan
    data[2, 2, 2] = np.inf
    data[3, 1, 0] = -np.inf
    path = make_nifti(tmp_path / "nan.nii.gz", data, np.eye(4))
    _assert_one_line_error(path, "3 NaN and 2 Inf")


def test_absurd_dimensions_refused_before_allocating(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((4096, 4096, 1024))
    assert 4096 * 4096 * 1024 > MAX_VOXELS
    path = tmp_path / "huge.nii"
    # a valid header followed by a few bytes of "data": reading the voxels would need 64 GiB
    path.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    _assert_one_line_error(path, "limit")


def test_series_uid_with_nifti_is_refused(oblique_nifti: Path) -> None:
    with pytest.raises(MedinvertError, match="only applies to DICOM"):
        load_volume(oblique_nifti, series_uid="1.2.3")


def test_folder_of_nifti_files_is_not_a_volume(make_nifti, tmp_path: Path) -> None:
    make_nifti(tmp_path / "cases" / "a.nii.gz", shape=(3, 3, 3))
    _assert_one_line_error(tmp_path / "cases", "NIfTI file")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("hello")
    _assert_one_line_error(tmp_path / "nothing", "no NIfTI or DICOM images")


def test_a_header_without_codes_keeps_them_and_its_affine(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(5, 4, 3), None)
    image.header.set_zooms((0.7, 0.9, 3.3))
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    source = tmp_path / "nocodes.nii"
    nib.save(image, source)
    volume = load_volume(source)
    out = save_volume(volume * 2, tmp_path / "out.nii.gz", reference=volume)
    written = nib.load(str(out))
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (0, 0)
    assert np.array_equal(load_volume(out).affine.numpy(), volume.affine.numpy())
