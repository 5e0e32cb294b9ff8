"""DICOM loading: slice order from geometry, the affine against the DICOM pixel-position equation,
series selection, single and multi-frame files, and broken inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medinvert.errors import MedinvertError
from medinvert.io import list_dicom_series, load_volume, require_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _world_ras(spec, slice_index: int, row: int, col: int) -> np.ndarray:
    """DICOM PS3.3 eq. C.7.6.2.1-1: P = IPP + col * dcol * X + row * drow * Y (LPS), then flip x, y."""
    row_cosine, col_cosine = spec.orientation[:3], spec.orientation[3:]
    row_spacing, col_spacing = spec.pixel_spacing
    lps = spec.positions[slice_index] + col * col_spacing * row_cosine + row * row_spacing * col_cosine
    return LPS_TO_RAS @ lps


def test_shuffled_series_matches_geometry(dicom_series) -> None:
    volume = load_volume(dicom_series.folder)
    n = len(dicom_series.files)
    assert tuple(volume.shape) == (12, 10, n) and volume.dtype == torch.float32
    # data: voxel (i, j, k) = column i, row j of the k-th slice along the normal, rescaled
    assert np.array_equal(volume.numpy(), dicom_series.expected_volume)
    affine = volume.affine.numpy()
    for k in range(n):
        for row, col in [(0, 0), (9, 0), (0, 11), (4, 7)]:
            predicted = affine @ np.array([col, row, k, 1.0])
            assert np.allclose(predicted[:3], _world_ras(dicom_series, k, row, col), atol=1e-4)
    assert np.allclose(volume.meta["spacing"], (1.1, 0.9, 2.5), atol=1e-4)
    assert volume.meta["source_format"] == "dicom"
    assert volume.meta["series_uid"] == dicom_series.series_uid
    assert volume.meta["stored_dtype"] == "int16"


def test_shuffled_and_ordered_series_load_identically(dicom_series, make_dicom_series, tmp_path: Path) -> None:
    ordered = make_dicom_series(tmp_path / "ordered", shuffle=False, seed=0)
    assert sorted(p.name for p in ordered.files) == [p.name for p in ordered.files]
    assert [p.name for p in dicom_series.files] != sorted(p.name for p in dicom_series.files)
    a, b = load_volume(dicom_series.folder), load_volume(ordered.folder)
    assert np.array_equal(a.numpy(), b.numpy())
    assert np.array_equal(a.affine.numpy(), b.affine.numpy())


def test_slices_sorted_along_normal_not_by_name(make_dicom_series, tmp_path: Path) -> None:
    """Whatever the normal's sign relative to the axes, slice k+1 lies one step along +normal."""
    spec = make_dicom_series(tmp_path / "tilted", angle_deg=160.0, axis=(1.0, 0.2, 0.1), seed=4)
    affine = load_volume(spec.folder).affine.numpy()
    normal = np.cross(spec.orientation[:3], spec.orientation[3:])
    step_lps = LPS_TO_RAS @ affine[:3, 2]
    assert np.allclose(step_lps, 2.5 * normal, atol=1e-4)
    assert np.linalg.det(affine[:3, :3]) > 0


def test_two_series_error_lists_both_and_uid_selects(two_series_folder) -> None:
    with pytest.raises(MedinvertError) as info:
        load_volume(two_series_folder.folder)
    message = str(info.value)
    assert "\n" not in message and str(two_series_folder.folder) in message
    for spec in two_series_folder.series:
        assert f"{spec.series_uid} ({len(spec.files)} slices" in message
    for spec in two_series_folder.series:
        volume = load_volume(two_series_folder.folder, series_uid=spec.series_uid)
        assert np.array_equal(volume.numpy(), spec.expected_volume)
        assert volume.meta["series_uid"] == spec.series_uid
    with pytest.raises(MedinvertError, match="no DICOM series 9.9.9"):
        load_volume(two_series_folder.folder, series_uid="9.9.9")


def test_list_dicom_series(two_series_folder) -> None:
    found = list_dicom_series(two_series_folder.folder)
    assert [s.series_uid for s in found] == sorted(two_series_folder.uids)
    by_uid = {s.series_uid: s for s in found}
    for spec in two_series_folder.series:
        info = by_uid[spec.series_uid]
        assert info.n_slices == len(spec.files) and info.description == spec.description
        assert set(info.files) == set(spec.files)


def test_single_dicom_file(dicom_series) -> None:
    k = 3
    volume = load_volume(dicom_series.files[k])
    assert tuple(volume.shape) == (12, 10, 1)
    assert np.array_equal(volume.numpy()[:, :, 0], dicom_series.expected_volume[:, :, k])
    affine = volume.affine.numpy()
    assert np.allclose((affine @ [5, 4, 0, 1])[:3], _world_ras(dicom_series, k, 4, 5), atol=1e-4)
    assert np.isclose(volume.meta["spacing"][2], 2.5)  # from SpacingBetweenSlices
    with pytest.raises(MedinvertError, match="2D image"):
        require_volume(volume)
    with pytest.raises(MedinvertError, match="not the requested"):
        load_volume(dicom_series.files[k], series_uid="1.2.3")


def _enhanced_multiframe(path: Path, spec, frame_order: np.ndarray) -> Path:
    """An Enhanced-MR-like multi-frame file holding the series' slices in ``frame_order``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    enhanced_mr = "1.2.840.10008.5.1.4.1.1.4.1"
    sop = generate_uid(entropy_srcs=["multiframe"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = enhanced_mr
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = enhanced_mr, sop, "MR"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["multiframe-series"])
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in spec.orientation]
    measures.PixelSpacing = [f"{v:g}" for v in spec.pixel_spacing]
    measures.SliceThickness = "2.5"
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "2", "-100", "US"
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in frame_order:
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in spec.positions[k]]
        group.PlanePositionSequence = Sequence([position])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.set_pixel_data(spec.pixels[frame_order], photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_multiframe_file_sorted_by_position(dicom_series, tmp_path: Path) -> None:
    order = np.random.default_rng(5).permutation(len(dicom_series.files))
    path = _enhanced_multiframe(tmp_path / "enhanced.dcm", dicom_series, order)
    volume = load_volume(path)
    reference = load_volume(dicom_series.folder)
    assert np.array_equal(volume.numpy(), reference.numpy())
    assert np.allclose(volume.affine.numpy(), reference.affine.numpy(), atol=1e-9)


def _transcode(source: Path, target: Path, syntax: str) -> None:
    """Re-encode the pixel data of one DICOM file into transfer syntax ``syntax`` (a `gdcm.TransferSyntax`
    name) with GDCM, keeping every other element: what a PACS export does.  (GDCM's own writer would also
    turn the file into an Enhanced MR object, so only its encapsulated pixel data are taken.)"""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read(), source
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), target
    encoded = pydicom.dcmread(target)
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = encoded.file_meta.TransferSyntaxUID
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(target, enforce_file_format=True)


#: lossless encodings of PACS exports: JPEG Lossless SV1 (1.2.840.10008.1.2.4.70, the most common),
#: JPEG-LS, JPEG 2000 and RLE; decoded by GDCM (a dependency) or Pillow through pydicom's plugins
LOSSLESS_SYNTAXES = {
    "JPEGLosslessProcess14_1": "1.2.840.10008.1.2.4.70",
    "JPEGLSLossless": "1.2.840.10008.1.2.4.80",
    "JPEG2000Lossless": "1.2.840.10008.1.2.4.90",
    "RLELossless": "1.2.840.10008.1.2.5",
}


@pytest.mark.parametrize("syntax", sorted(LOSSLESS_SYNTAXES))
def test_losslessly_compressed_series_loads_like_the_original(dicom_series, tmp_path: Path, syntax: str) -> None:
    compressed = tmp_path / "compressed"
    compressed.mkdir()
    for path in dicom_series.files:
        _transcode(path, compressed / path.name, syntax)
    syntax_uid = pydicom.dcmread(compressed / dicom_series.files[0].name).file_meta.TransferSyntaxUID
    assert syntax_uid == LOSSLESS_SYNTAXES[syntax]
    volume, original = load_volume(compressed), load_volume(dicom_series.folder)
    assert np.array_equal(volume.numpy(), dicom_series.expected_volume)
    assert np.array_equal(volume.affine.numpy(), original.affine.numpy())


def test_undecodable_compression_names_file_and_syntax(dicom_series, tmp_path: Path) -> None:
    """12-bit lossy JPEG (Extended, process 2/4) has no decoder among the dependencies: one line naming
    the file and the transfer syntax, never a traceback."""
    from pydicom.data import get_testdata_file

    path = tmp_path / "jpeg_extended.dcm"
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))  # pydicom's test image, given a geometry
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    ds.save_as(path)
    with pytest.raises(MedinvertError) as info:
        load_volume(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "cannot decode DICOM pixel data (transfer syntax JPEG Extended" in message


# ----------------------------------------------------------------------------------------- bad input


def test_dicom_without_pixel_data(dicom_series, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_series.files[0])
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MedinvertError, match="no pixel data") as info:
        load_volume(path)
    assert str(path) in str(info.value)
    folder = tmp_path / "with_bad"
    folder.mkdir()
    path.rename(folder / "nopixels.dcm")
    with pytest.raises(MedinvertError, match="no pixel data"):
        load_volume(folder)


def test_non_dicom_bytes_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"definitely not DICOM " * 20)
    with pytest.raises(MedinvertError, match="not a DICOM image file") as info:
        load_volume(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello " * 50)
    with pytest.raises(MedinvertError, match="not a DICOM image file.*NIfTI"):
        load_volume(path)


def test_non_image_files_in_series_folder_are_ignored(dicom_series) -> None:
    (dicom_series.folder / "README.txt").write_text("acquired on a phantom")
    (dicom_series.folder / ".DS_Store").write_bytes(b"\x00\x01")
    assert np.array_equal(load_volume(dicom_series.folder).numpy(), dicom_series.expected_volume)


def test_duplicate_positions_refused(dicom_series) -> None:
    ds = pydicom.dcmread(dicom_series.files[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["dup"])
    ds.save_as(dicom_series.folder / "echo2.dcm", enforce_file_format=True)
    with pytest.raises(MedinvertError, match="same position"):
        load_volume(dicom_series.folder)


def test_missing_slice_refused(dicom_series) -> None:
    dicom_series.files[4].unlink()
    with pytest.raises(MedinvertError, match="non-uniform slice spacing"):
        load_volume(dicom_series.folder)


def test_mixed_orientation_refused(dicom_series) -> None:
    ds = pydicom.dcmread(dicom_series.files[1])
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.save_as(dicom_series.files[1], enforce_file_format=True)
    with pytest.raises(MedinvertError, match="different ImageOrientationPatient"):
        load_volume(dicom_series.folder)


def test_absurd_matrix_refused_before_reading_pixels(dicom_series, tmp_path: Path) -> None:
    folder = tmp_path / "huge"
    folder.mkdir()
    for k, path in enumerate(dicom_series.files[:2]):
        ds = pydicom.dcmread(path)
        ds.Rows, ds.Columns = 65535, 65535  # pixel data stays small: must be refused from the header
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    with pytest.raises(MedinvertError, match="limit"):
        load_volume(folder)


@pytest.mark.parametrize("keep_bytes, problem", [(200, "is truncated"), (1000, "has no pixel data")])
def test_truncated_slice_file_is_named_not_dropped(dicom_series, keep_bytes: int, problem: str) -> None:
    """A slice cut short (a failed copy) in its header parses as an empty or image-class data set
    without Rows, after it as one without pixel data; dropping it would silently give a volume with
    one slice less."""
    victim = min(dicom_series.files)
    victim.write_bytes(victim.read_bytes()[:keep_bytes])
    with pytest.raises(MedinvertError, match=f"{victim.name}: DICOM image file {problem}"):
        load_volume(dicom_series.folder)
    with pytest.raises(MedinvertError, match="truncated"):
        load_volume(victim)


@pytest.mark.parametrize("size", [0, 100])
def test_stub_without_extension_among_series_files_is_refused(make_dicom_series, tmp_path: Path, size: int) -> None:
    spec = make_dicom_series(tmp_path / "series", n_slices=4, prefix="IM")
    extensionless = [path.rename(path.with_suffix("")) for path in spec.files]
    extensionless[0].write_bytes(b"\x00" * size)
    with pytest.raises(MedinvertError, match=f"{extensionless[0].name}: is {size} bytes, too short for a DICOM file"):
        load_volume(spec.folder)
    (spec.folder / "VERSION").write_text("1.2")  # an ordinary small extension-less file is still skipped
    extensionless[0].unlink()
    assert load_volume(spec.folder).shape[-1] == 3


def test_slice_moved_within_its_plane_is_refused(dicom_series) -> None:
    path = dicom_series.files[3]
    ds = pydicom.dcmread(path)
    in_plane = np.asarray(dicom_series.orientation[:3])  # along the row direction: spacing along the normal unchanged
    moved = np.asarray([float(v) for v in ds.ImagePositionPatient]) + 7 * in_plane
    ds.ImagePositionPatient = [f"{v:.6f}" for v in moved]
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MedinvertError, match="7 mm off the line"):
        load_volume(dicom_series.folder)


def test_gantry_tilt_stays_on_its_line_and_loads(make_dicom_series, tmp_path: Path) -> None:
    """Tilted slices are shifted in-plane by the same amount per slice: accepted, with a sheared affine
    whose third column is the step between slice origins."""
    spec = make_dicom_series(tmp_path / "tilt", n_slices=5, shuffle=False)
    shift = np.asarray(spec.orientation[3:]) * 0.8  # along the column direction
    for k, path in enumerate(spec.files):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in spec.positions[k] + k * shift]
        ds.save_as(path, enforce_file_format=True)
    volume = load_volume(spec.folder)
    step = LPS_TO_RAS @ (spec.positions[1] + shift - spec.positions[0])
    assert np.allclose(volume.affine.numpy()[:3, 2], step, atol=1e-5)


def test_positions_rounded_to_two_decimals_still_load(make_dicom_series, tmp_path: Path) -> None:
    """Scanners write ImagePositionPatient with few decimals: an oblique stack of 0.25 mm pixels whose
    positions are rounded to 0.01 mm is one straight stack, not a moved slice."""
    spec = make_dicom_series(tmp_path / "rounded", n_slices=12, pixel_spacing=(0.25, 0.25), slice_spacing=5.0)
    for path in spec.files:
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [f"{float(v):.2f}" for v in ds.ImagePositionPatient]
        ds.save_as(path, enforce_file_format=True)
    assert load_volume(spec.folder).shape[-1] == 12


def test_a_malformed_header_value_names_its_file(dicom_series) -> None:
    path = dicom_series.files[2]
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope
    ds.add(pydicom.DataElement(0x00281053, "LO", "abc"))  # RescaleSlope that is not a number (explicit VR)
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MedinvertError, match=f"{path.name}: malformed DICOM file"):
        load_volume(dicom_series.folder)


def _strip_part10(source: Path, target: Path, *, implicit_vr: bool) -> None:
    """Rewrite ``source`` as a bare data set: no preamble, no file meta (little endian)."""
    ds = pydicom.dcmread(source)
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(target, ds, implicit_vr=implicit_vr, little_endian=True, enforce_file_format=False)


def test_series_without_part10_header_or_suffix_loads_like_the_original(dicom_series, tmp_path: Path) -> None:
    """Bare data sets (no preamble, no file meta, no .dcm: old ACR-NEMA-style exports), implicit and
    explicit VR mixed, load like the Part 10 files; look-alike bytes that do not parse are skipped."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for i, path in enumerate(dicom_series.files):
        _strip_part10(path, bare / f"{(i * 7919) % 1000:08x}", implicit_vr=i % 2 == 0)
    (bare / "README").write_text("exported slices")
    (bare / "junk").write_bytes(b"\x08\x00\x10\x00" + bytes(range(200)))  # starts like a data set, is not one
    expected, volume = load_volume(dicom_series.folder), load_volume(bare)
    assert np.array_equal(volume.numpy(), expected.numpy())
    assert np.array_equal(volume.affine.numpy(), expected.affine.numpy())
    assert [len(s.files) for s in list_dicom_series(bare)] == [len(dicom_series.files)]


def test_bare_big_endian_series_loads_like_the_original(dicom_series, tmp_path: Path) -> None:
    """Explicit VR big endian (retired, PS3.5 A.3), as some old scanners wrote it without a preamble."""
    bare = tmp_path / "bare_be"
    bare.mkdir()
    for i, path in enumerate(dicom_series.files):
        ds = pydicom.dcmread(path)
        ds.preamble = None
        del ds.file_meta
        ds.PixelData = np.frombuffer(ds.PixelData, dtype="<i2").astype(">i2").tobytes()
        pydicom.dcmwrite(bare / f"s{i}", ds, implicit_vr=False, little_endian=False, enforce_file_format=False)
    assert np.array_equal(load_volume(bare).numpy(), load_volume(dicom_series.folder).numpy())


def test_a_corrupt_bare_slice_is_named_not_dropped(dicom_series, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for i, path in enumerate(dicom_series.files):
        _strip_part10(path, bare / f"slice{i}", implicit_vr=False)
    raw = bytearray((bare / "slice2").read_bytes())
    raw[raw.index(b"\x08\x00\x60\x00CS") + 5] = 0  # (0008,0060) Modality: an unknown VR
    (bare / "slice2").write_bytes(bytes(raw))
    with pytest.raises(MedinvertError, match="slice2.*Unknown Value Representation"):
        load_volume(bare)


def test_scanning_a_series_leaves_its_pixel_data_unread(make_dicom_series, tmp_path: Path) -> None:
    """Header values are checked at scan time, but pixel data (deferred by the reader) stay on disk."""
    from medinvert.io.dicom import iter_image_files, scan_dicom_files

    spec = make_dicom_series(tmp_path / "large", n_slices=3, rows=64, cols=48)  # 6 KiB of pixels per file
    [(_, members)] = scan_dicom_files(iter_image_files(spec.folder)).items()
    for _, ds in members:
        assert ds.get_item(0x7FE00010, keep_deferred=True).value is None
    assert load_volume(spec.folder).shape == (48, 64, 3)


def test_a_corrupt_value_representation_is_reported_while_scanning(dicom_series) -> None:
    """pydicom converts values lazily; a broken VR must fail at the scan, naming the file, not later."""
    target = dicom_series.files[3]
    raw = bytearray(target.read_bytes())
    at = raw.index(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality, explicit VR little endian
    raw[at + 5] = 0
    target.write_bytes(bytes(raw))
    with pytest.raises(MedinvertError, match=rf"{target.name}.*Unknown Value Representation"):
        list_dicom_series(dicom_series.folder)
