"""Bad-input matrix (issue #8): every bad input, through every command that reads it, costs one line.

Each case runs `corrupt`, `reconstruct`, `invert`, `edit` (once it is registered in
`medinvert.cli.COMMANDS`; skipped before) and, where the file cannot be read, `info`, in process
(`medinvert.cli.main`), and asserts

* exit code 2, exactly one line on stderr, starting ``medinvert <command>:``, naming the file and the
  problem, and no traceback;
* nothing left in the output folder (it does not exist, or holds no file);
* every input file byte-identical afterwards (SHA-256 of all inputs before and after).

A few true subprocess runs prove the same at the process level, and a checkpoint carrying pickled
code is refused without the code ever running (its ``__reduce__`` would create a marker file).

2D images: the loader turns a single 2D image into ``(X, Y, 1)``; every command works slice by slice,
so a 2D image is *valid* for corrupt / reconstruct / invert (tested below); it is refused where a
volume is really needed -- slice dropout (``mask:slices``) -- with the same one-line contract.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch

from _recon_helpers import phantom, write_tiny_model
from conftest import write_dicom_series, write_nifti
from medinvert.cli import COMMANDS, main

FAST = ["--steps", "3", "--checks", "none"]
SHAPE = (20, 16, 3)
EDIT_REGISTERED = "edit" in COMMANDS


# ---------------------------------------------------------------------------- shared inputs
@dataclass
class Workspace:
    """Valid inputs shared by the module's tests (never modified: every test hashes them)."""

    root: Path
    volume: Path        #: vol_t1.nii.gz, 20x16x3 phantom (modality t1 from its name)
    other: Path         #: other_t1.nii.gz, 24x16x3 (another volume)
    mask: Path          #: edit mask of the volume's grid (1 inside a small box)
    observation: Path   #: vol_t1_observation.json written by `medinvert corrupt`
    other_observation: Path
    model: Path         #: tiny t1 checkpoint
    flair_model: Path   #: tiny checkpoint recorded as trained on flair


class _Code:
    """A pickle payload whose unpickling would create ``marker`` (pure Python, no shell)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("inputs")
    volume = write_nifti(root / "vol_t1.nii.gz", phantom(SHAPE), np.eye(4))
    other = write_nifti(root / "other_t1.nii.gz", phantom((24, 16, 3), seed=1), np.eye(4))
    keep = np.zeros(SHAPE, np.uint8)
    keep[5:10, 4:9, :] = 1
    mask = write_nifti(root / "edit_mask.nii.gz", keep, np.eye(4))
    assert main(["corrupt", str(volume), "--kind", "kspace", "--out", str(root / "obs")]) == 0
    assert main(["corrupt", str(other), "--kind", "kspace", "--out", str(root / "obs_other")]) == 0
    model = write_tiny_model(root / "tiny_t1.pt")
    flair = root / "tiny_flair.pt"
    from medinvert.models import LipschitzUNet
    from medinvert.models.checkpoint import save_checkpoint
    from medinvert.operators import DESCRIPTOR_LENGTH

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = LipschitzUNet(n_cond_channels=1, descriptor_dim=DESCRIPTOR_LENGTH, channels=[8, 16], emb_dim=32,
                            time_dim=16)
    save_checkpoint(flair, net, {"schedule": {"kind": "linear"}, "prediction": "eps", "modality": "flair"})
    return Workspace(root, volume, other, mask, root / "obs" / "vol_t1_observation.json",
                     root / "obs_other" / "other_t1_observation.json", model, flair)


def _digests(*folders: Path, skip: Path | None = None) -> dict[str, str]:
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and (skip is None or skip not in path.parents):
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _cli(capsys, argv: list) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors (unknown choice)
        code = exc.code
    captured = capsys.readouterr()
    return int(code), captured.out, captured.err


def _argv(ws: Workspace, command: str, source: Path, out: Path, model: object = "random") -> list:
    """The command line of ``command`` reading ``source`` and writing into ``out``."""
    if command == "corrupt":
        return ["corrupt", source, "--kind", "kspace", "--out", out]
    if command == "reconstruct":
        return ["reconstruct", source, "--corruption", "kspace:4", "--model", model, "--out", out, *FAST]
    if command == "invert":
        return ["invert", source, "--model", model, "--steps", "3", "--out", out / "latent.npz"]
    if command == "edit":
        return ["edit", source, "--mask", ws.mask, "--op", "shift:0.1", "--model", model, "--steps", "3",
                "--out", out / "edited.nii.gz"]
    if command == "info":
        return ["info", source]
    raise AssertionError(command)


def _assert_refused(capsys, ws: Workspace, tmp_path: Path, argv: list, command: str, name: str | None,
                    problem: str) -> str:
    """Run ``argv`` and check the whole contract (see the module docstring); returns the stderr line."""
    if command == "edit" and not EDIT_REGISTERED:
        pytest.skip("`medinvert edit` is not registered in medinvert.cli.COMMANDS yet")
    out = tmp_path / "out"
    before = _digests(ws.root, tmp_path, skip=out)
    code, _, err = _cli(capsys, argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), f"expected one line, got {err!r}"
    assert err.startswith(f"medinvert {command}:"), err
    assert "Traceback" not in err
    if name is not None:
        assert name in err, f"the message does not name {name}: {err!r}"
    assert re.search(problem, err, re.IGNORECASE), f"the message does not say {problem!r}: {err!r}"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))
    assert _digests(ws.root, tmp_path, skip=out) == before, "an input changed"
    return err


# ---------------------------------------------------------------------------- bad volume files
def _nifti_with_dims(path: Path, dims: tuple[int, ...]) -> Path:
    """A valid 4x4x4 NIfTI-1 file whose header dim[] is rewritten to ``dims`` (data left as is)."""
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<8h", raw, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    path.write_bytes(bytes(raw))
    return path


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere_t1.nii.gz"


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty_dir").mkdir()
    return tmp / "empty_dir"


def _empty_file(tmp: Path) -> Path:
    (tmp / "zero_t1.nii.gz").write_bytes(b"")
    return tmp / "zero_t1.nii.gz"


def _random_bytes(tmp: Path) -> Path:
    (tmp / "noise_t1.nii.gz").write_bytes(np.random.default_rng(0).bytes(3000))
    return tmp / "noise_t1.nii.gz"


def _truncated(tmp: Path) -> Path:
    full = write_nifti(tmp / "full.nii.gz", np.random.default_rng(1).random((30, 30, 10)).astype(np.float32),
                       np.eye(4))
    raw = full.read_bytes()
    full.unlink()
    (tmp / "cut_t1.nii.gz").write_bytes(raw[: len(raw) // 2])
    return tmp / "cut_t1.nii.gz"


def _nan_inf(tmp: Path) -> Path:
    data = phantom(SHAPE)
    data[1, 2, 0], data[3, 4, 1] = np.nan, np.inf
    return write_nifti(tmp / "nan_t1.nii.gz", data, np.eye(4))


def _absurd_dims(tmp: Path) -> Path:
    return _nifti_with_dims(tmp / "huge_t1.nii", (30000, 30000, 30000))


def _zero_dim(tmp: Path) -> Path:
    return _nifti_with_dims(tmp / "flat0_t1.nii", (0, 4, 4))


def _dicom_without_pixels(tmp: Path) -> Path:
    import pydicom

    spec = write_dicom_series(tmp / "series_src", n_slices=1, rows=8, cols=8)
    ds = pydicom.dcmread(spec.files[0])
    del ds.PixelData
    ds.save_as(tmp / "nopixels.dcm")
    return tmp / "nopixels.dcm"


def _not_dicom(tmp: Path) -> Path:
    (tmp / "scan.dcm").write_bytes(b"this is a text file, not a DICOM image\n" * 20)
    return tmp / "scan.dcm"


def _mixed_series(tmp: Path) -> Path:
    """One SeriesInstanceUID, two matrix sizes (slices of two acquisitions filed as one series)."""
    folder = tmp / "mixed_series"
    write_dicom_series(folder, n_slices=3, rows=12, cols=12, series_uid="1.2.3.4.5", prefix="A", seed=1)
    write_dicom_series(folder, n_slices=2, rows=10, cols=14, series_uid="1.2.3.4.5", prefix="B", seed=2,
                       origin=(0.0, 0.0, 40.0))
    return folder


#: case id -> (builder, regex of the problem the message must state)
VOLUME_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing-path": (_missing, "no such file"),
    "folder-without-images": (_empty_folder, "no NIfTI or DICOM images"),
    "empty-file": (_empty_file, "empty"),
    "random-bytes-nii-gz": (_random_bytes, "not a readable NIfTI"),
    "truncated-nii-gz": (_truncated, "truncated"),
    "nan-inf-voxels": (_nan_inf, "NaN"),
    "absurd-header-dims": (_absurd_dims, "more than the limit"),
    "zero-sized-dim": (_zero_dim, "non-positive dimension"),
    "dicom-without-pixels": (_dicom_without_pixels, "no pixel data"),
    "non-dicom-bytes-dcm": (_not_dicom, "not a DICOM"),
    "mixed-series": (_mixed_series, "different matrix sizes"),
}
VOLUME_COMMANDS = ("corrupt", "reconstruct", "invert", "edit", "info")


@pytest.mark.parametrize("command", VOLUME_COMMANDS)
@pytest.mark.parametrize("case", sorted(VOLUME_CASES))
def test_bad_volume_is_refused_with_one_line(capsys, ws, tmp_path, case, command):
    build, problem = VOLUME_CASES[case]
    source = build(tmp_path)
    _assert_refused(capsys, ws, tmp_path, _argv(ws, command, source, tmp_path / "out"), command, source.name,
                    problem)


def test_absurd_header_is_refused_before_allocating(tmp_path):
    """2000 x 2000 x 600 float32 would be 9.6 GB: the header check refuses it (`MAX_VOXELS`) and the
    process never grows by more than a few tens of MB."""
    from medinvert.errors import MedinvertError
    from medinvert.io import MAX_VOXELS, load_volume

    path = _nifti_with_dims(tmp_path / "big.nii", (2000, 2000, 600))
    assert 2000 * 2000 * 600 > MAX_VOXELS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MedinvertError, match="more than the limit"):
        load_volume(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # kB


# ---------------------------------------------------------------------------- other bad inputs
def _broken_sidecar(ws: Workspace, tmp: Path) -> Path:
    folder = tmp / "broken_obs"
    folder.mkdir()
    (folder / "vol_t1_observation.npz").write_bytes(ws.observation.with_suffix(".npz").read_bytes())
    (folder / "vol_t1_observation.json").write_text("{\"format\": \"medinvert-observation\", oops")
    return folder / "vol_t1_observation.json"


def _tampered_npz(ws: Workspace, tmp: Path) -> Path:
    folder = tmp / "tampered_obs"
    folder.mkdir()
    raw = bytearray(ws.observation.with_suffix(".npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / "vol_t1_observation.npz").write_bytes(bytes(raw))
    (folder / "vol_t1_observation.json").write_bytes(ws.observation.read_bytes())
    return folder / "vol_t1_observation.json"


def _small_mask(ws: Workspace, tmp: Path) -> Path:
    return write_nifti(tmp / "small_mask.nii.gz", np.ones((10, 8, 3), np.uint8), np.eye(4))


def _moved_mask(ws: Workspace, tmp: Path) -> Path:
    keep = np.ones(SHAPE, np.uint8)
    keep[2:6, 2:6, :] = 0
    return write_nifti(tmp / "moved_mask.nii.gz", keep, np.diag([2.0, 2.0, 2.0, 1.0]))


def _checkpoint_truncated(ws: Workspace, tmp: Path) -> Path:
    raw = ws.model.read_bytes()
    (tmp / "cut.pt").write_bytes(raw[: len(raw) // 2])
    return tmp / "cut.pt"


def _checkpoint_corrupted(ws: Workspace, tmp: Path) -> Path:
    raw = bytearray(ws.model.read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 256):
        raw[i] ^= 0x5A
    (tmp / "damaged.pt").write_bytes(bytes(raw))
    return tmp / "damaged.pt"


def _checkpoint_with_code(ws: Workspace, tmp: Path) -> Path:
    torch.save({"format": "medinvert-checkpoint", "format_version": 1, "payload": _Code(tmp / "PWNED")},
               tmp / "code.pt")
    return tmp / "code.pt"


def _two_series(ws: Workspace, tmp: Path) -> Path:
    folder = tmp / "two_series"
    write_dicom_series(folder, n_slices=3, rows=12, cols=12, prefix="A", seed=1, description="AX T1")
    write_dicom_series(folder, n_slices=3, rows=10, cols=14, prefix="B", seed=2, description="AX T2")
    return folder


Row = Callable[[Workspace, Path, Path], tuple[list, "str | None", str]]

#: case id -> (command, row builder(ws, tmp, out) -> (argv, name in the message, problem regex))
OTHER_CASES: dict[str, tuple[str, Row]] = {
    # a volume is really needed: slice dropout of a 2D image
    "2d-slice-dropout-corrupt": ("corrupt", lambda ws, tmp, out: (
        ["corrupt", write_nifti(tmp / "flat_t1.nii.gz", phantom((20, 16, 1))[:, :, 0], np.eye(4)), "--kind", "mask",
         "--mask-type", "slices", "--out", out], "flat_t1.nii.gz", "at least 2 slices")),
    "2d-slice-dropout-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", write_nifti(tmp / "flat_t1.nii.gz", phantom((20, 16, 1))[:, :, 0], np.eye(4)),
         "--corruption", "mask:slices", "--model", "random", "--out", out, *FAST], "flat_t1.nii.gz",
        "at least 2 slices")),
    # observations
    "malformed-observation-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", _broken_sidecar(ws, tmp), "--model", "random", "--out", out, *FAST],
        "vol_t1_observation.json", "not valid JSON")),
    "malformed-observation-invert": ("invert", lambda ws, tmp, out: (
        ["invert", ws.volume, "--condition", _broken_sidecar(ws, tmp), "--model", "random", "--steps", "3",
         "--out", out / "l.npz"], "vol_t1_observation.json", "not valid JSON")),
    "tampered-observation-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", _tampered_npz(ws, tmp), "--model", "random", "--out", out, *FAST],
        "vol_t1_observation.npz", "checksum mismatch")),
    "tampered-observation-invert": ("invert", lambda ws, tmp, out: (
        ["invert", ws.volume, "--condition", _tampered_npz(ws, tmp), "--model", "random", "--steps", "3",
         "--out", out / "l.npz"], "vol_t1_observation.npz", "checksum mismatch")),
    "mismatched-observation-invert": ("invert", lambda ws, tmp, out: (
        ["invert", ws.volume, "--condition", ws.other_observation, "--model", "random", "--steps", "3",
         "--out", out / "l.npz"], "other_t1_observation.json", "another volume")),
    "mismatched-reference-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", ws.observation, "--reference", ws.other, "--model", "random", "--out", out, *FAST],
        "other_t1.nii.gz", "differs from the input")),
    # masks
    "mask-wrong-shape-corrupt": ("corrupt", lambda ws, tmp, out: (
        ["corrupt", ws.volume, "--kind", "mask", "--mask-type", "file", "--mask-file", _small_mask(ws, tmp),
         "--out", out], "small_mask.nii.gz", "does not match the volume shape")),
    "mask-wrong-shape-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", ws.volume, "--corruption", f"mask:file:{_small_mask(ws, tmp)}", "--model", "random",
         "--out", out, *FAST], "small_mask.nii.gz", "does not match the volume shape")),
    "mask-wrong-shape-edit": ("edit", lambda ws, tmp, out: (
        ["edit", ws.volume, "--mask", _small_mask(ws, tmp), "--op", "shift:0.1", "--model", "random", "--steps", "3",
         "--out", out / "e.nii.gz"], "small_mask.nii.gz", "shape")),
    "mask-wrong-geometry-corrupt": ("corrupt", lambda ws, tmp, out: (
        ["corrupt", ws.volume, "--kind", "mask", "--mask-type", "file", "--mask-file", _moved_mask(ws, tmp),
         "--out", out], "moved_mask.nii.gz", "geometry")),
    "mask-wrong-geometry-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", ws.volume, "--corruption", f"mask:file:{_moved_mask(ws, tmp)}", "--model", "random",
         "--out", out, *FAST], "moved_mask.nii.gz", "geometry")),
    "mask-wrong-geometry-edit": ("edit", lambda ws, tmp, out: (
        ["edit", ws.volume, "--mask", _moved_mask(ws, tmp), "--op", "shift:0.1", "--model", "random", "--steps",
         "3", "--out", out / "e.nii.gz"], "moved_mask.nii.gz", "geometry")),
    # parameters
    "acceleration-below-1-corrupt": ("corrupt", lambda ws, tmp, out: (
        ["corrupt", ws.volume, "--kind", "kspace", "--acceleration", "0.5", "--out", out], None, "acceleration")),
    "acceleration-below-1-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", ws.volume, "--corruption", "kspace:0.5", "--model", "random", "--out", out], None,
        "acceleration")),
    "steps-0-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", ws.volume, "--corruption", "kspace:4", "--model", "random", "--steps", "0", "--out", out],
        None, "--steps")),
    "steps-negative-invert": ("invert", lambda ws, tmp, out: (
        ["invert", ws.volume, "--model", "random", "--steps", "-2", "--out", out / "l.npz"], None, "--steps")),
    "steps-0-edit": ("edit", lambda ws, tmp, out: (
        ["edit", ws.volume, "--mask", ws.mask, "--op", "shift:0.1", "--model", "random", "--steps", "0",
         "--out", out / "e.nii.gz"], None, "steps")),
    "unknown-method-reconstruct": ("reconstruct", lambda ws, tmp, out: (
        ["reconstruct", ws.volume, "--corruption", "kspace:4", "--model", "random", "--method", "magic",
         "--out", out], None, "invalid choice: 'magic'")),
    "unknown-method-invert": ("invert", lambda ws, tmp, out: (
        ["invert", ws.volume, "--model", "random", "--method", "magic", "--out", out / "l.npz"], None,
        "invalid choice: 'magic'")),
    "unknown-method-edit": ("edit", lambda ws, tmp, out: (
        ["edit", ws.volume, "--mask", ws.mask, "--op", "shift:0.1", "--method", "magic", "--out",
         out / "e.nii.gz"], None, "invalid choice: 'magic'")),
    "unknown-kind-corrupt": ("corrupt", lambda ws, tmp, out: (
        ["corrupt", ws.volume, "--kind", "magic", "--out", out], None, "invalid choice: 'magic'")),
    # a folder with two DICOM series where one volume is needed
    "two-series-invert": ("invert", lambda ws, tmp, out: (
        ["invert", _two_series(ws, tmp), "--model", "random", "--steps", "3", "--out", out / "l.npz"],
        "two_series", "2 DICOM series")),
}
# checkpoints, through every command that takes a model
for _command in ("reconstruct", "invert", "edit"):
    for _case, (_build, _name, _problem) in {
        "wrong-modality": (lambda ws, tmp: ws.flair_model, "tiny_flair.pt", "trained on flair"),
        "truncated-checkpoint": (_checkpoint_truncated, "cut.pt", "truncated"),
        "corrupted-checkpoint": (_checkpoint_corrupted, "damaged.pt", "corrupted"),
        "pickled-code-checkpoint": (_checkpoint_with_code, "code.pt", "pickled code"),
    }.items():
        OTHER_CASES[f"{_case}-{_command}"] = (_command, (
            lambda ws, tmp, out, c=_command, b=_build, n=_name, p=_problem:
            (_argv(ws, c, ws.volume, out, model=b(ws, tmp)), n, p)))


#: rows known to fail, with the reason (strict xfail: a fix must remove the entry)
PENDING: dict[str, str] = {}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=PENDING[c], strict=True))
                                  if c in PENDING else c for c in sorted(OTHER_CASES)])
def test_bad_input_is_refused_with_one_line(capsys, ws, tmp_path, case):
    command, row = OTHER_CASES[case]
    if command == "edit" and not EDIT_REGISTERED:
        pytest.skip("`medinvert edit` is not registered in medinvert.cli.COMMANDS yet")
    argv, name, problem = row(ws, tmp_path, tmp_path / "out")
    _assert_refused(capsys, ws, tmp_path, argv, command, name, problem)
    assert not (tmp_path / "PWNED").exists()  # pickled code never ran


def test_modality_mismatch_can_be_allowed(capsys, ws, tmp_path):
    """The refusal is a safety default, not a dead end: ``--allow-modality-mismatch`` runs it."""
    out = tmp_path / "out"
    code, _, err = _cli(capsys, ["invert", ws.volume, "--model", ws.flair_model, "--steps", "3",
                                 "--allow-modality-mismatch", "--out", out / "l.npz"])
    assert code == 0, err
    code, _, err = _cli(capsys, ["reconstruct", ws.volume, "--corruption", "kspace:4", "--model", ws.flair_model,
                                 "--allow-modality-mismatch", "--out", out, *FAST])
    assert code == 0, err
    assert (out / "vol_t1_recon.nii.gz").is_file()


def test_a_2d_image_is_a_valid_slice_wise_input(capsys, ws, tmp_path):
    """A single 2D image loads as (X, Y, 1): corrupt, reconstruct and invert work on it."""
    flat = write_nifti(tmp_path / "flat_t1.nii.gz", phantom((20, 16, 1))[:, :, 0], np.eye(4))
    for argv in (["corrupt", flat, "--kind", "kspace", "--out", tmp_path / "c"],
                 ["reconstruct", flat, "--corruption", "kspace:4", "--model", "random", "--out", tmp_path / "r",
                  *FAST],
                 ["invert", flat, "--model", "random", "--steps", "3", "--out", tmp_path / "i" / "l.npz"]):
        code, _, err = _cli(capsys, argv)
        assert code == 0, err
    assert nib.load(tmp_path / "r" / "flat_t1_recon.nii.gz").shape == (20, 16, 1)


def test_pickled_code_payload_is_live_but_never_runs(capsys, ws, tmp_path):
    """The payload really runs when unpickled unsafely (so the test can fail), yet no command runs it,
    neither from a torch zip checkpoint nor from a legacy plain pickle."""
    marker = tmp_path / "PWNED"
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"state_dict": _Code(marker)}, protocol=2))
    zipped = _checkpoint_with_code(ws, tmp_path)
    for model in (legacy, zipped):
        for command in ("reconstruct", "invert") + (("edit",) if EDIT_REGISTERED else ()):
            code, _, err = _cli(capsys, _argv(ws, command, ws.volume, tmp_path / "out", model=model))
            assert code == 2 and "pickled code" in err and err.count("\n") == 1, err
            assert not marker.exists()
    from medinvert.errors import MedinvertError
    from medinvert.models import load_model

    with pytest.raises(MedinvertError, match="pickled code"):
        load_model(legacy)
    assert not marker.exists()
    pickle.loads(legacy.read_bytes())  # the unsafe way: the payload fires
    assert marker.exists()


# ---------------------------------------------------------------------------- process level
def _process(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDINVERT_THREADS": "1"}
    env.pop("MEDINVERT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "medinvert", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["random-bytes", "pickled-code"])
def test_process_exit_code_and_one_line_without_traceback(ws, tmp_path, case):
    out = tmp_path / "out"
    if case == "random-bytes":
        source = _random_bytes(tmp_path)
        argv, name, problem = ["corrupt", source, "--kind", "kspace", "--out", out], source.name, "not a readable"
    else:
        model = _checkpoint_with_code(ws, tmp_path)
        argv, name, problem = _argv(ws, "reconstruct", ws.volume, out, model=model), model.name, "pickled code"
    before = _digests(ws.root, tmp_path)
    done = _process(argv, tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert name in done.stderr and problem in done.stderr
    assert not out.exists() and not (tmp_path / "PWNED").exists()
    assert _digests(ws.root, tmp_path) == before


def test_a_worker_of_a_multi_process_launch_keeps_its_output_and_exit_code(tmp_path):
    """Under torchrun (``WORLD_SIZE`` > 1) a finished worker leaves through ``os._exit`` (see
    `medinvert.cli.exit_process`): its buffered stdout / stderr must still arrive, with its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": "1"}
    env.pop("PYTHONUNBUFFERED", None)  # piped output is block-buffered, as it is under torchrun
    listed = subprocess.run([sys.executable, "-m", "medinvert", "models"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    alone = _process(["models"], tmp_path)
    assert listed.returncode == 0 and listed.stdout == alone.stdout and "t1" in listed.stdout
    missing = subprocess.run([sys.executable, "-m", "medinvert", "info", str(tmp_path / "absent.nii.gz")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "absent.nii.gz" in missing.stderr
