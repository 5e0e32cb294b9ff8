"""Batches keep going and nothing is lost (issue #8, items 2 and 3).

* a bad case in a folder run is reported in one line and skipped, the others finish, and the exit
  code and the summary say how many failed (`reconstruct`, `corrupt`);
* inputs stay byte-identical (SHA-256 before and after every command here);
* every output file comes into place by an atomic rename (`os.replace` of a temporary file);
* existing outputs are never replaced without ``--overwrite`` (every command that writes);
* a `reconstruct` batch killed with SIGKILL mid-run and restarted ends with the same outputs as an
  uninterrupted run, and leaves no temporary file behind.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _recon_helpers import phantom, write_tiny_model
from conftest import write_nifti
from medinvert.cli import COMMANDS, main

FAST = ["--steps", "3", "--checks", "none", "--threads", "1"]


def _cli(capsys, argv: list) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Four cases, two of them bad: a_t1 (ok), b_t1 (random bytes), c_t1 (NaN voxel), d_t1 (ok)."""
    folder = tmp_path / "cases"
    write_nifti(folder / "a_t1.nii.gz", phantom((20, 16, 3), seed=0), np.eye(4))
    (folder / "b_t1.nii.gz").write_bytes(np.random.default_rng(0).bytes(1500))
    bad = phantom((20, 16, 3), seed=2)
    bad[3, 3, 1] = np.nan
    write_nifti(folder / "c_t1.nii.gz", bad, np.eye(4))
    write_nifti(folder / "d_t1.nii.gz", phantom((20, 16, 3), seed=3), np.eye(4))
    return folder


# ---------------------------------------------------------------------------- batches keep going
def test_reconstruct_batch_reports_and_skips_bad_cases(capsys, tmp_path, mixed_folder):
    before = _digests(mixed_folder)
    out = tmp_path / "out"
    code, stdout, stderr = _cli(capsys, ["reconstruct", mixed_folder, "--corruption", "kspace:4", "--model", "random",
                                         "--out", out, *FAST])
    assert code == 2  # documented: 2 when any volume failed with an input error
    assert "2 done, 0 skipped, 2 failed" in stdout
    lines = stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in stderr, stderr
    assert "failed b_t1" in lines[0] and "b_t1.nii.gz" in lines[0] and "not a readable NIfTI" in lines[0]
    assert "failed c_t1" in lines[1] and "c_t1.nii.gz" in lines[1] and "NaN" in lines[1]
    with open(out / "summary.csv", newline="") as handle:
        rows = {row["stem"]: row for row in csv.DictReader(handle)}
    assert {stem: row["status"] for stem, row in rows.items()} == {
        "a_t1": "done", "b_t1": "failed", "c_t1": "failed", "d_t1": "done"}
    assert "NaN" in rows["c_t1"]["message"]
    assert _files(out) == {"summary.csv"} | {f"{s}_{k}" for s in ("a_t1", "d_t1")
                                             for k in ("recon.nii.gz", "report.json", "report.html")}
    assert _digests(mixed_folder) == before


def test_corrupt_batch_reports_and_skips_bad_cases(capsys, tmp_path, mixed_folder):
    before = _digests(mixed_folder)
    out = tmp_path / "out"
    code, stdout, stderr = _cli(capsys, ["corrupt", mixed_folder, "--kind", "kspace", "--out", out])
    assert code == 2
    assert "wrote 2 corrupted volume(s)" in stdout and "2 failed" in stdout
    lines = stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("medinvert corrupt: failed b_t1") and "c_t1.nii.gz" in lines[1]
    assert {p.split("_")[0] for p in _files(out)} == {"a", "d"}
    assert _digests(mixed_folder) == before


def test_a_batch_with_only_bad_cases_leaves_nothing(capsys, tmp_path, mixed_folder):
    for good in ("a_t1.nii.gz", "d_t1.nii.gz"):
        (mixed_folder / good).unlink()
    out = tmp_path / "out"
    code, stdout, stderr = _cli(capsys, ["reconstruct", mixed_folder, "--corruption", "kspace:4", "--model", "random",
                                         "--out", out, *FAST])
    assert code == 2 and "0 done, 0 skipped, 2 failed (nothing written)" in stdout
    assert len(stderr.splitlines()) == 2
    assert not out.exists()


def test_an_internal_error_in_one_volume_gives_exit_1_and_the_batch_goes_on(capsys, tmp_path, mixed_folder,
                                                                            monkeypatch):
    """A bug (any exception but `MedinvertError`) in one volume is reported as an internal error in one
    line, the other volumes finish, and the exit code is 1 (not 2: it is not the user's input)."""
    import medinvert.reconstruct as recon

    for bad in ("b_t1.nii.gz", "c_t1.nii.gz"):
        (mixed_folder / bad).unlink()
    real = recon.reconstruct_volume

    def buggy(source, *args, **kwargs):
        if "a_t1" in str(source.meta["filename_or_obj"]):
            raise RuntimeError("simulated bug")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(recon, "reconstruct_volume", buggy)
    out = tmp_path / "out"
    code, stdout, stderr = _cli(capsys, ["reconstruct", mixed_folder, "--corruption", "kspace:4", "--model", "random",
                                         "--out", out, *FAST])
    assert code == 1 and "1 done, 0 skipped, 1 failed" in stdout
    assert stderr.splitlines() == ["medinvert reconstruct: failed a_t1: internal error: RuntimeError: simulated bug"]
    assert (out / "d_t1_recon.nii.gz").is_file() and not list(out.glob("a_t1*"))


# ---------------------------------------------------------------------------- atomic outputs
def test_every_output_is_renamed_into_place(capsys, tmp_path, monkeypatch):
    """Each command's output files are exactly the targets of `os.replace` calls (temporary file ->
    final name): none is written in place, and no temporary file is left."""
    import medinvert.io.atomic as atomic

    renamed: list[Path] = []
    real_replace = os.replace

    def spy(src, dst, *args, **kwargs):
        renamed.append(Path(dst).resolve())
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", spy)
    volume = write_nifti(tmp_path / "in" / "vol_t1.nii.gz", phantom((20, 16, 3)), np.eye(4))
    keep = np.zeros((20, 16, 3), np.uint8)
    keep[4:9, 4:9] = 1
    mask = write_nifti(tmp_path / "in" / "mask.nii.gz", keep, np.eye(4))
    before = _digests(tmp_path / "in")
    runs = {
        "corrupt": ["corrupt", volume, "--kind", "kspace", "--out", tmp_path / "corrupt"],
        "reconstruct": ["reconstruct", volume, "--corruption", "kspace:4", "--model", "random", "--save-latent",
                        "--out", tmp_path / "reconstruct", *FAST],
        "invert": ["invert", volume, "--model", "random", "--steps", "3", "--out", tmp_path / "invert" / "l.npz",
                   "--report", tmp_path / "invert" / "r.json"],
        "generate": ["generate", tmp_path / "invert" / "l.npz", "--out", tmp_path / "generate" / "g.nii.gz"],
        "convert": ["convert", volume, tmp_path / "convert" / "c.nii"],
        "edit": ["edit", volume, "--mask", mask, "--op", "shift:0.1", "--model", "random", "--steps", "3",
                 "--out", tmp_path / "edit" / "e.nii.gz"],
    }
    for name, argv in runs.items():
        if name not in COMMANDS:
            continue
        (tmp_path / name).mkdir(exist_ok=True)
        code, _, stderr = _cli(capsys, argv)
        assert code == 0, (name, stderr)
        written = {p.resolve() for p in (tmp_path / name).rglob("*") if p.is_file()}
        assert written and written <= set(renamed), (name, written - set(renamed))
        assert not [p for p in (tmp_path / name).rglob(".*")], name  # no temporary file left
    assert _digests(tmp_path / "in") == before


# ---------------------------------------------------------------------------- no overwrite
def test_existing_outputs_are_never_replaced_without_overwrite(capsys, tmp_path):
    volume = write_nifti(tmp_path / "in" / "vol_t1.nii.gz", phantom((20, 16, 3)), np.eye(4))
    keep = np.zeros((20, 16, 3), np.uint8)
    keep[4:9, 4:9] = 1
    mask = write_nifti(tmp_path / "in" / "mask.nii.gz", keep, np.eye(4))
    model = write_tiny_model(tmp_path / "in" / "tiny_t1.pt")
    latent = tmp_path / "inv" / "l.npz"
    commands = {  # name -> (argv without --overwrite, output folder)
        "corrupt": (["corrupt", volume, "--kind", "kspace", "--out", tmp_path / "cor"], tmp_path / "cor"),
        "invert": (["invert", volume, "--model", "random", "--steps", "3", "--out", latent], tmp_path / "inv"),
        "generate": (["generate", latent, "--out", tmp_path / "gen" / "g.nii.gz"], tmp_path / "gen"),
        "convert": (["convert", volume, tmp_path / "conv" / "c.nii.gz"], tmp_path / "conv"),
        "edit": (["edit", volume, "--mask", mask, "--op", "shift:0.1", "--model", "random", "--steps", "3",
                  "--out", tmp_path / "ed" / "e.nii.gz"], tmp_path / "ed"),
    }
    inputs = _digests(tmp_path / "in")
    for name, (argv, folder) in commands.items():
        if name not in COMMANDS:
            continue
        code, _, stderr = _cli(capsys, argv)
        assert code == 0, (name, stderr)
        first = _digests(folder)
        stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
        code, _, stderr = _cli(capsys, argv)
        assert code == 2 and "--overwrite" in stderr and stderr.count("\n") == 1, (name, stderr)
        assert _digests(folder) == first and {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps, name
        code, _, stderr = _cli(capsys, [*argv, "--overwrite"])
        assert code == 0, (name, stderr)
        assert _digests(folder) == first, f"{name}: rerun with --overwrite is not byte-identical"

    # reconstruct resumes instead: finished volumes are skipped, their files untouched
    argv = ["reconstruct", volume, "--corruption", "kspace:4", "--model", model, "--out", tmp_path / "rec", *FAST]
    assert _cli(capsys, argv)[0] == 0
    recon = tmp_path / "rec" / "vol_t1_recon.nii.gz"
    stamp, data = recon.stat().st_mtime_ns, recon.read_bytes()
    code, stdout, stderr = _cli(capsys, argv)
    assert code == 0 and "0 done, 1 skipped" in stdout and "skipped vol_t1" in stderr
    assert recon.stat().st_mtime_ns == stamp and recon.read_bytes() == data

    # train refuses an existing checkpoint before loading any data
    existing = tmp_path / "train" / "ckpt.pt"
    existing.parent.mkdir()
    existing.write_bytes(model.read_bytes())
    code, _, stderr = _cli(capsys, ["train", tmp_path / "in", "--modality", "t1", "--steps", "1", "--out", existing])
    assert code == 2 and "--resume" in stderr and existing.read_bytes() == model.read_bytes()
    assert _digests(tmp_path / "in") == inputs


# ---------------------------------------------------------------------------- kill and resume
def _comparable(folder: Path) -> dict[str, object]:
    """Outputs of a reconstruct run, minus what legitimately differs between runs: wall-clock timings
    and the output folder's own path (the reconstruction bytes must be identical)."""
    found: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith("_report.json"):
            report = json.loads(path.read_text())
            report.pop("timing", None)
            report.pop("outputs", None)
            found[path.name] = report
        elif path.name == "summary.csv":
            with open(path, newline="") as handle:
                found[path.name] = [(r["stem"], r["psnr"], r["ssim"], r["nmse"]) for r in csv.DictReader(handle)]
        elif not path.name.endswith(".html"):  # the HTML embeds the timings; its figures come from the recon
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_killed_batch_resumes_to_identical_outputs(capsys, tmp_path):
    folder = tmp_path / "cases"
    for i in range(4):
        write_nifti(folder / f"case{i}_t1.nii.gz", phantom((48, 48, 6), seed=i), np.eye(4))
    before = _digests(folder)
    argv = ["reconstruct", folder, "--corruption", "kspace:4", "--model", "random", "--steps", "40", "--checks",
            "none", "--threads", "1", "--save-latent"]

    reference = tmp_path / "reference"
    assert _cli(capsys, [*argv, "--out", reference])[0] == 0

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDINVERT_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "medinvert", *map(str, argv), "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "case0_t1_report.json"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = [i for i in range(4) if (out / f"case{i}_t1_report.json").exists()]
    assert 0 in finished and len(finished) < 4, finished
    # what a kill between mkstemp and rename leaves behind (planted: the kill may or may not hit one)
    stale = out / ".case3_t1_recon.tmp-k1lled00.nii.gz"
    stale.write_bytes(b"half a file")

    code, stdout, stderr = _cli(capsys, [*argv, "--out", out])
    assert code == 0, stderr
    assert f"{4 - len(finished)} done, {len(finished)} skipped, 0 failed" in stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert _comparable(out) == _comparable(reference)
    assert _digests(folder) == before
    assert nib.load(out / "case3_t1_recon.nii.gz").shape == (48, 48, 6)
