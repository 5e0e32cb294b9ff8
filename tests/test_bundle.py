"""The MONAI bundle in bundles/medinvert_mri_recon and its transforms (medinvert.bundle).

The end-to-end test runs the bundle exactly as a user does (``python -m monai.bundle run`` in a
subprocess, from the bundle folder) on the held-out sample case, on a 2-slice slab, and checks the
written files against independent computations: the affine against the input's affine moved by the
slab offset, the measured k-space samples of the reconstruction against those of the clean input
(numpy FFT), and the mask against `medinvert.transforms.corrupt` on the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medinvert.bundle import CentralSlabd, LoadVolumed, SeededCorruptiond, central_slab, slab_affine
from medinvert.errors import MedinvertError
from medinvert.io import load_volume
from medinvert.transforms import RandKspaceUndersampled, corrupt

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "medinvert_mri_recon"
SAMPLE = REPO / "sample_data" / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t1n.nii.gz"

#: mandatory top-level keys of configs/metadata.json: the MONAI bundle specification
#: (docs "MONAI Bundle Specification", metadata.json) and MONAI 1.6's `monai.bundle.utils.DEFAULT_METADATA`
#: (which names ``required_packages_version``, the successor of ``optional_packages_version``)
MANDATORY_KEYS = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                  "required_packages_version", "task", "description", "authors", "copyright",
                  "network_data_format")
#: keys every tensor format specifier in network_data_format must hold
TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
               "is_patch_data", "channel_def")


def _metadata() -> dict:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text(encoding="utf-8"))


def test_bundle_layout() -> None:
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "LICENSE", "docs/README.md"):
        assert (BUNDLE / name).is_file(), name
    json.loads((BUNDLE / "configs" / "inference.json").read_text(encoding="utf-8"))
    license_text = (BUNDLE / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert "ICBM" in license_text


def test_metadata_has_every_mandatory_key() -> None:
    meta = _metadata()
    missing = [key for key in MANDATORY_KEYS if key not in meta]
    assert not missing, f"metadata.json lacks {missing}"
    for key in ("version", "monai_version", "pytorch_version", "numpy_version"):
        assert re.fullmatch(r"\d+(\.\d+)+", meta[key]), f"{key}: {meta[key]!r} is not a release version"
    assert meta["version"] in meta["changelog"]
    assert isinstance(meta["required_packages_version"], dict) and "medinvert" in meta["required_packages_version"]
    for key in ("task", "description", "authors", "copyright"):
        assert isinstance(meta[key], str) and meta[key].strip()
    formats = meta["network_data_format"]
    assert set(formats) >= {"inputs", "outputs"} and formats["inputs"] and formats["outputs"]
    for group in ("inputs", "outputs"):
        for name, spec in formats[group].items():
            lacking = [key for key in TENSOR_KEYS if key not in spec]
            assert not lacking, f"{group}.{name} lacks {lacking}"
            assert spec["num_channels"] == len(spec["channel_def"])
            assert isinstance(spec["is_patch_data"], bool)
            assert spec["value_range"] == [] or len(spec["value_range"]) == 2


def test_metadata_matches_the_shipped_network() -> None:
    """Channel counts and descriptor length stated in metadata.json are those of models/model.pt."""
    from medinvert.models.checkpoint import load_checkpoint
    from medinvert.operators import DESCRIPTOR_LENGTH

    net, _ = load_checkpoint(BUNDLE / "models" / "model.pt")
    inputs = _metadata()["network_data_format"]["inputs"]
    assert inputs["image"]["num_channels"] == net.in_channels
    assert inputs["cond"]["spatial_shape"] == [DESCRIPTOR_LENGTH]
    assert _metadata()["network_data_format"]["outputs"]["pred"]["num_channels"] == 1


def test_model_is_the_shipped_t1_model() -> None:
    """models/model.pt is a byte copy of medinvert/models/weights/t1.pt (refresh: see docs/README.md)."""
    shipped = REPO / "medinvert" / "models" / "weights" / "t1.pt"
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (shipped, BUNDLE / "models" / "model.pt")]
    assert digest[0] == digest[1], "bundle model is stale: cp medinvert/models/weights/t1.pt " \
                                   "bundles/medinvert_mri_recon/models/model.pt"


def test_central_slab_keeps_world_coordinates(oblique_nifti: Path) -> None:
    volume = LoadVolumed("image")({"image": oblique_nifti})["image"]  # 9x8x7, oblique affine
    slab = CentralSlabd("image", slices=3)({"image": volume})["image"]
    start = (7 - 3) // 2
    assert tuple(slab.shape) == (9, 8, 3)
    assert torch.equal(slab.as_tensor(), volume.as_tensor()[:, :, start:start + 3])
    assert slab.meta["slab"] == [start, start + 3]
    a_full, a_slab = volume.affine.numpy(), slab.affine.numpy()
    for voxel in ([0, 0, 0], [8, 7, 2], [3, 5, 1]):  # world position of slab voxel == that of voxel + start
        inside = np.array([voxel[0], voxel[1], voxel[2] + start, 1.0])
        np.testing.assert_allclose(a_slab @ np.array([*voxel, 1.0]), a_full @ inside, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(slab_affine(a_full, 0), a_full)
    assert central_slab(volume, None) is volume and central_slab(volume, 7) is volume
    with pytest.raises(MedinvertError):
        CentralSlabd("image", slices=0)


def test_seeded_corruption_matches_corrupt(oblique_nifti: Path) -> None:
    """Per-volume seeding from the file name: the same observation as `corrupt`, whatever came before."""
    volume = load_volume(oblique_nifti)
    wrapper = SeededCorruptiond(RandKspaceUndersampled("image", acceleration=2.0, center_fraction=0.25), seed=3)
    first = wrapper({"image": volume})["image_observation"]
    wrapper.transform.randomize(None)  # disturb the random state: the next call reseeds from the name
    second = wrapper({"image": volume})["image_observation"]
    expected = corrupt(volume, "kspace", seed=3, acceleration=2.0, center_fraction=0.25)
    for obs in (first, second):
        assert torch.equal(obs.mask, expected.mask) and torch.equal(obs.y, expected.y)
        assert obs.params == expected.params
    with pytest.raises(MedinvertError):
        SeededCorruptiond(LoadVolumed("image"))


def test_seeded_corruption_draws_each_volumes_own_mask_from_concurrent_threads(tmp_path: Path, make_nifti) -> None:
    """MONAI's ``CacheDataset`` runs this (deterministic) transform in a thread pool: with one shared inner
    transform, a call could draw with another volume's seed.  Every observation must be `corrupt`'s."""
    import sys as system
    from concurrent.futures import ThreadPoolExecutor

    volumes = [load_volume(make_nifti(tmp_path / f"case{i:02d}.nii.gz", shape=(24, 20, 2))) for i in range(12)]
    wrapper = SeededCorruptiond(RandKspaceUndersampled("image", acceleration=4.0, center_fraction=0.08), seed=0)
    interval = system.getswitchinterval()
    system.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            observations = list(pool.map(lambda v: wrapper({"image": v})["image_observation"], volumes * 3))
    finally:
        system.setswitchinterval(interval)
    for volume, obs in zip(volumes * 3, observations):
        expected = corrupt(volume, "kspace", seed=0, acceleration=4.0, center_fraction=0.08)
        assert torch.equal(obs.mask, expected.mask) and obs.params == expected.params


def test_a_channel_first_monai_pipeline_writes_every_output_with_the_files_codes(tmp_path: Path, make_nifti) -> None:
    """``LoadImaged`` + ``EnsureChannelFirstd`` hand (1, X, Y, Z) MetaTensors along; the reports draw them
    and the reconstruction keeps the file's qform / sform codes (2 / 2 here), which MONAI's reader keeps
    in the meta data rather than as a NIfTI header."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from _recon_helpers import phantom, write_tiny_model
    from medinvert.bundle import ReconstructVolumed, SaveReconstructiond

    path = make_nifti(tmp_path / "scan.nii.gz", phantom((24, 20, 3)), qform_code=2, sform_code=2)
    model = write_tiny_model(tmp_path / "tiny.pt")
    pipeline = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                        SeededCorruptiond(RandKspaceUndersampled("image"), seed=0),
                        ReconstructVolumed("image", model=str(model), steps=2, checks="none"),
                        SaveReconstructiond("image", str(tmp_path / "out"))])
    pipeline({"image": str(path)})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scan_recon.nii.gz", "scan_report.html", "scan_report.json"]
    header = nib.load(tmp_path / "out" / "scan_recon.nii.gz").header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (2, 2)
    np.testing.assert_allclose(header.get_best_affine(), nib.load(path).affine, atol=1e-5)


def test_outputs_of_a_failed_write_are_removed(tmp_path: Path, monkeypatch) -> None:
    """A failure while writing the reports leaves no reconstruction without its reports behind."""
    import medinvert.report.html as html
    from medinvert import reconstruct_volume
    from medinvert.report import output_paths, write_outputs

    from _recon_helpers import phantom, write_tiny_model

    result = reconstruct_volume(phantom((24, 20, 2)), str(write_tiny_model(tmp_path / "tiny.pt")),
                                corruption="kspace:4", steps=2, checks="none", return_latent=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(html, "write_html_report", broken)
    paths = output_paths(tmp_path / "out", "scan")
    with pytest.raises(OSError, match="disk full"):
        write_outputs(result, paths)
    assert list((tmp_path / "out").iterdir()) == []


def test_observations_batch_with_monais_no_collation(tmp_path: Path, make_nifti) -> None:
    """The documented way to batch observations in a DataLoader (they are not tensors)."""
    from monai.data import DataLoader, Dataset
    from monai.data.utils import no_collation
    from monai.transforms import Compose

    files = [make_nifti(tmp_path / f"case{i}.nii.gz", shape=(24, 20, 2)) for i in range(3)]
    transform = Compose([LoadVolumed("image"), SeededCorruptiond(RandKspaceUndersampled("image"), seed=0)])
    batches = list(DataLoader(Dataset([{"image": str(f)} for f in files], transform), batch_size=2,
                              collate_fn=no_collation))
    assert [len(batch) for batch in batches] == [2, 1]
    for item, path in zip([item for batch in batches for item in batch], files):
        expected = corrupt(load_volume(path), "kspace", seed=0)
        assert torch.equal(item["image_observation"].mask, expected.mask)


def test_central_slab_all_is_the_whole_volume() -> None:
    """``monai.bundle run`` drops a ``--slices None`` override, so ``--slices all`` is the spelling."""
    assert CentralSlabd("image", slices="all").slices is None
    with pytest.raises(MedinvertError, match="'all' or null"):
        CentralSlabd("image", slices="half")


def _centred_fft2(x: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D FFT over axes 0, 1 with the zero frequency in the centre (independent of torch)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))


def test_bundle_runs_on_the_sample_case(tmp_path: Path) -> None:
    out = tmp_path / "bundle_out"
    slices = 2
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--meta_file", "configs/metadata.json", "--output_dir", str(out), "--slices", str(slices)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stem = "BraTS-GLI-00002-000-t1n"
    recon_path, report_path = out / f"{stem}_recon.nii.gz", out / f"{stem}_report.json"
    assert recon_path.is_file() and report_path.is_file() and (out / f"{stem}_report.html").is_file()
    assert f"wrote {report_path}" in done.stdout

    source = nib.load(str(SAMPLE))
    depth = source.shape[2]
    start = (depth - slices) // 2
    recon = nib.load(str(recon_path))
    assert recon.shape == (*source.shape[:2], slices)
    shift = np.eye(4)
    shift[2, 3] = start
    np.testing.assert_allclose(recon.affine, source.affine @ shift, rtol=0, atol=1e-5)  # input affine, slab origin
    assert recon.get_data_dtype() == np.float32

    # measured k-space samples of the output equal those of the clean input (noiseless data consistency)
    clean = np.asarray(source.dataobj, dtype=np.float64)[:, :, start:start + slices]
    observation = corrupt(central_slab(load_volume(SAMPLE), slices), "kspace", seed=0, acceleration=4.0,
                          center_fraction=0.08)
    mask = observation.mask.numpy()
    k_out, k_clean = _centred_fft2(np.asarray(recon.dataobj, dtype=np.float64)), _centred_fft2(clean)
    residual = np.linalg.norm((k_out - k_clean)[mask]) / np.linalg.norm(k_clean[mask])
    assert residual <= 1e-3
    assert np.abs(np.asarray(recon.dataobj)).max() > 0

    report = json.loads(report_path.read_text(encoding="utf-8"))
    for section in ("input", "settings", "data_consistency", "lipschitz", "bounds", "metrics", "timing", "bundle"):
        assert section in report, section
    assert report["bundle"]["slab"] == [start, start + slices]
    assert report["input"]["params"]["mask_seed"] == observation.params["mask_seed"]
    assert report["settings"]["method"] == "exact" and report["settings"]["steps"] == 10
    model_sha = hashlib.sha256((BUNDLE / "models" / "model.pt").read_bytes()).hexdigest()
    assert report["settings"]["model_sha256"] == model_sha  # the bundle's own weights were used
