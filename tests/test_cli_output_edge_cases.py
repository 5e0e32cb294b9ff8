"""Edge cases of inputs and output folders that real scans and real file systems produce: headers kept
through a saved observation, impossible output folders, masks that measure nothing, ``--out`` inside
the input, mislabelled gzip files, and the default model for a volume of unknown modality."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _recon_helpers import phantom, write_tiny_model
from medinvert.cli import main

FAST = ["--steps", "3", "--checks", "none", "--batch-size", "4"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _scan(path: Path, data: np.ndarray | None = None) -> Path:
    """A NIfTI whose header says MNI space (sform code 4), a separate scanner qform and micron units."""
    image = nib.Nifti1Image(phantom() if data is None else data, np.diag([0.9, 0.9, 2.0, 1.0]))
    qform = np.diag([0.9, 0.9, 2.0, 1.0])
    qform[:3, 3] = [1.0, -2.0, 3.0]
    image.set_qform(qform, code=1)
    image.set_sform(np.diag([0.9, 0.9, 2.0, 1.0]), code=4)
    image.header.set_xyzt_units("micron", "msec")
    image.header["descrip"] = b"scanner X"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def _header_facts(path: Path) -> tuple:
    header = nib.load(path).header
    return (int(header["qform_code"]), int(header["sform_code"]), header.get_xyzt_units(), bytes(header["descrip"]),
            header.get_qform().tolist(), header.get_sform().tolist())


def test_reconstruction_from_a_saved_observation_keeps_the_source_header(capsys, tmp_path, model):
    source = _scan(tmp_path / "in" / "scan_t1.nii.gz")
    code, _, stderr = _run(capsys, "corrupt", source, "--kind", "kspace", "--out", tmp_path / "obs")
    assert code == 0, stderr
    code, _, stderr = _run(capsys, "reconstruct", tmp_path / "obs", "--out", tmp_path / "via_obs", "--model", model,
                           *FAST)
    assert code == 0, stderr
    code, _, stderr = _run(capsys, "reconstruct", source, "--corruption", "kspace:4", "--out", tmp_path / "direct",
                           "--model", model, *FAST)
    assert code == 0, stderr
    expected = _header_facts(source)
    assert _header_facts(tmp_path / "via_obs" / "scan_t1_recon.nii.gz") == expected
    assert _header_facts(tmp_path / "direct" / "scan_t1_recon.nii.gz") == expected


@pytest.mark.parametrize("command", ["corrupt", "reconstruct", "convert"])
def test_an_output_folder_that_cannot_exist_is_a_user_error(capsys, tmp_path, model, command):
    source = _scan(tmp_path / "scan_t1.nii.gz")
    (tmp_path / "afile").write_text("a file, not a folder")
    argv = {"corrupt": ["corrupt", source, "--kind", "kspace", "--out", tmp_path / "afile" / "sub"],
            "reconstruct": ["reconstruct", source, "--corruption", "kspace:4", "--model", model, "--out",
                            tmp_path / "afile" / "sub", *FAST],
            "convert": ["convert", source, tmp_path / "afile" / "out.nii.gz"]}[command]
    code, _, stderr = _run(capsys, *argv)
    assert code == 2 and stderr.count("\n") == 1 and "afile" in stderr and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "scan_t1.nii.gz"]


def test_a_matrix_too_thin_for_a_centre_band_still_measures_the_zero_frequency(capsys, tmp_path):
    """Two phase-encoding lines at 4x: ``round(2 * 0.08) = 0`` centre lines (fastMRI would then measure
    nothing, which used to be refused); the zero-frequency line is measured, and only it."""
    thin = tmp_path / "thin_t1.nii.gz"
    nib.save(nib.Nifti1Image(phantom((32, 2, 3)), np.eye(4)), thin)
    code, _, stderr = _run(capsys, "corrupt", thin, "--kind", "kspace", "--out", tmp_path / "out")
    assert code == 0, stderr
    mask = np.asarray(nib.load(tmp_path / "out" / "thin_t1_mask.nii.gz").dataobj)
    assert mask[:, 1].all() and not mask[:, 0].any()


@pytest.mark.parametrize("command", ["corrupt", "reconstruct"])
def test_out_holding_the_input_says_so(capsys, tmp_path, model, monkeypatch, command):
    source = _scan(tmp_path / "scan_t1.nii.gz")
    monkeypatch.chdir(tmp_path)
    argv = (["corrupt", source.name, "--kind", "kspace", "--out", "."] if command == "corrupt" else
            ["reconstruct", source.name, "--corruption", "kspace:4", "--model", model, "--out", ".", *FAST])
    code, _, stderr = _run(capsys, *argv)
    assert code == 2 and "lies inside --out" in stderr and "segmentations" not in stderr, stderr


def test_gzip_data_named_nii_is_explained(capsys, tmp_path):
    source = _scan(tmp_path / "scan.nii.gz")
    misnamed = source.rename(tmp_path / "scan.nii")
    code, _, stderr = _run(capsys, "info", misnamed)
    assert code == 2 and "gzip-compressed but named .nii" in stderr
    # and the other way round: plain NIfTI bytes under a .nii.gz name (a browser decompressed the download)
    plain = _scan(tmp_path / "plain.nii")
    renamed = plain.rename(tmp_path / "plain.nii.gz")
    code, _, stderr = _run(capsys, "info", renamed)
    assert code == 2 and "not gzip-compressed" in stderr and "plain.nii.gz" in stderr, stderr


def test_unknown_modality_gets_a_note_after_success_and_in_the_summary(capsys, tmp_path, model):
    plain = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(phantom(), np.eye(4)), plain)
    code, _, stderr = _run(capsys, "reconstruct", plain, "--corruption", "kspace:4", "--out", tmp_path / "out",
                           *FAST)  # no --model: the shipped t1 model, said once
    assert code == 0 and stderr.count("no modality in its name") == 1, stderr
    with (tmp_path / "out" / "summary.csv").open() as handle:
        row, = csv.DictReader(handle)
    assert "used the t1 model" in row["message"]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    code, _, stderr = _run(capsys, "reconstruct", broken, "--corruption", "kspace:4", "--out", tmp_path / "o2", *FAST)
    assert code == 2 and stderr.count("\n") == 1, stderr  # a user error stays one line, without the note


def test_a_series_modality_survives_corrupt_then_reconstruct(capsys, tmp_path, make_dicom_series):
    """The modality of a DICOM series comes from its description; `corrupt` records it in the
    observation, so both routes pick the same shipped model."""
    spec = make_dicom_series(tmp_path / "series_07", n_slices=3, rows=20, cols=24, description="AX T2 TSE")
    code, _, stderr = _run(capsys, "corrupt", spec.folder, "--kind", "kspace", "--out", tmp_path / "obs")
    assert code == 0, stderr
    code, _, stderr = _run(capsys, "reconstruct", tmp_path / "obs", "--out", tmp_path / "rec", *FAST)
    assert code == 0 and "no modality" not in stderr, stderr
    report = json.loads((tmp_path / "rec" / "series_07_report.json").read_text())
    assert report["settings"]["model"] == "t2"


def test_file_system_refusals_are_user_errors_and_other_os_errors_are_not():
    import errno

    from medinvert.errors import MedinvertError, as_user_error

    full = as_user_error(OSError(errno.ENOSPC, "No space left on device", "out/a_recon.nii.gz"))
    assert isinstance(full, MedinvertError) and str(full) == "out/a_recon.nii.gz: No space left on device"
    timeout = TimeoutError(errno.ETIMEDOUT, "timed out")
    assert as_user_error(timeout) is timeout


def test_an_interrupted_run_that_produced_nothing_leaves_no_folder(capsys, tmp_path, model, monkeypatch):
    import medinvert.reconstruct

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medinvert.reconstruct, "reconstruct_volume", interrupted)
    source = _scan(tmp_path / "scan_t1.nii.gz")
    code, _, stderr = _run(capsys, "reconstruct", source, "--corruption", "kspace:4", "--model", model, "--out",
                           tmp_path / "out", *FAST)
    assert code == 130 and "interrupted" in stderr and not (tmp_path / "out").exists()


def test_sigterm_is_handled_like_ctrl_c(capsys, tmp_path, model, monkeypatch):
    """``kill`` / ``timeout`` (SIGTERM) during a run: "terminated", exit 143, no folder left behind (it
    used to end the process on the spot, leaving an empty --out folder); the handler is restored."""
    import os
    import signal
    import time

    import medinvert.reconstruct

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises in the main thread at the next bytecode
        raise AssertionError("SIGTERM was not turned into an interrupt")

    monkeypatch.setattr(medinvert.reconstruct, "reconstruct_volume", terminated)
    source = _scan(tmp_path / "scan_t1.nii.gz")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code, _, stderr = _run(capsys, "reconstruct", source, "--corruption", "kspace:4", "--model", model, "--out",
                               tmp_path / "out", *FAST)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143 and "terminated" in stderr and not (tmp_path / "out").exists()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_both_routes_seed_each_volume_by_its_own_name(capsys, tmp_path, model, monkeypatch):
    """Two patients' ``T1.nii.gz`` get different masks, the same ones whether simulated by ``corrupt``
    or by ``reconstruct --corruption``; the start seed does not depend on how the input path was typed."""
    for patient in ("patient1", "patient2"):
        _scan(tmp_path / "pts" / patient / "T1.nii.gz")
    code, _, stderr = _run(capsys, "corrupt", tmp_path / "pts", "--kind", "kspace", "--out", tmp_path / "obs")
    assert code == 0, stderr
    code, _, stderr = _run(capsys, "reconstruct", tmp_path / "pts", "--corruption", "kspace:4", "--out",
                           tmp_path / "direct", "--model", model, *FAST)
    assert code == 0, stderr
    sidecars = sorted((tmp_path / "obs").glob("*_observation.json"))
    assert len(sidecars) == 2
    corrupted = {p.name: json.loads(p.read_text())["params"]["mask_seed"] for p in sidecars}
    direct = {p.name.replace("_report.json", "_observation.json"): json.loads(p.read_text())["input"]
              for p in (tmp_path / "direct").glob("*_report.json")}
    assert len(set(corrupted.values())) == 2
    assert {k: v["params"]["mask_seed"] for k, v in direct.items()} == corrupted
    # a corrupt output read as "." from inside it, or by its full path: the same start seed and bytes
    monkeypatch.chdir(tmp_path / "obs")
    stem = sidecars[0].name.removesuffix("_observation.json")
    outputs = []
    for source, out in ((sidecars[0].name, tmp_path / "r1"), (sidecars[0], tmp_path / "r2")):
        code, _, stderr = _run(capsys, "reconstruct", source, "--out", out, "--model", model, "--start", "noise", *FAST)
        assert code == 0, stderr
        outputs.append((out / f"{stem}_recon.nii.gz").read_bytes())
    assert outputs[0] == outputs[1]


def test_signed_intensities_get_a_note(capsys, tmp_path, model):
    """A z-scored volume reconstructs through the signed-intensity map, with a note (stderr and
    summary.csv) naming the offset; a non-negative one gets none."""
    data = phantom()
    for name, volume in (("zscored_t1.nii.gz", (data - data.mean()) / data.std()), ("plain_t1.nii.gz", data)):
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), tmp_path / name)
        code, _, stderr = _run(capsys, "reconstruct", tmp_path / name, "--corruption", "kspace:4", "--out",
                               tmp_path / name.split("_")[0], "--model", model, *FAST)
        assert code == 0, stderr
        assert ("signed intensities" in stderr) == name.startswith("zscored"), stderr


def test_steps_other_than_the_trained_ones_get_a_note(capsys, tmp_path):
    """The shipped models record the step counts they were trained through; another --steps value is said."""
    from medinvert.models import load_model
    from medinvert.train.unrolled import step_counts

    training = load_model("t1")[1]["training"]
    trained = step_counts(training["unrolled_steps"])
    untrained = next(n for n in range(1, 100) if n not in trained)
    source = _scan(tmp_path / "scan_t1.nii.gz")
    for steps, noted in ((trained[0], False), (untrained, True)):
        code, _, stderr = _run(capsys, "reconstruct", source, "--corruption", "kspace:4", "--out", tmp_path / str(steps),
                               "--steps", str(steps), "--checks", "none")
        assert code == 0, stderr
        assert (f"was trained through {', '.join(map(str, trained))} sampling steps" in stderr) == noted, stderr


def test_evaluate_names_an_empty_mask(tmp_path, capsys):
    """An all-zero --mask is refused with one line naming the mask file."""
    for name, volume in (("recon.nii.gz", phantom()), ("mask.nii.gz", np.zeros(phantom().shape, np.uint8))):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / name)
    code, _, stderr = _run(capsys, "evaluate", tmp_path / "recon.nii.gz", tmp_path / "recon.nii.gz",
                           "--mask", tmp_path / "mask.nii.gz")
    assert code == 2 and "mask.nii.gz" in stderr and "empty" in stderr and len(stderr.strip().splitlines()) == 1
