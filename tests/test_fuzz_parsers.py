"""Property-based fuzzing of every file parser (issue #8, item 5), bounded so the file runs in seconds.

Valid small files -- NIfTI (``.nii`` and ``.nii.gz``), a DICOM slice, an observation pair, a latent,
a checkpoint -- are written once; hypothesis then overwrites a few bytes (often inside the header,
where parsers branch the most) and/or truncates them.  Each parser must either succeed or raise
`medinvert.errors.MedinvertError` -- never another exception type, never a hang (per-example
deadline), and never print to stderr (a CLI promises one line per bad file).

Observation and latent files carry SHA-256 checksums, so mutating their bytes alone would only test
the checksum; the structured cases below also re-seal the checksum (observation) or mutate the
metadata JSON itself (latent), to reach the parsers behind it.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _recon_helpers import write_tiny_model
from conftest import write_dicom_series, write_nifti
from medinvert.errors import MedinvertError

FUZZ = settings(max_examples=60, deadline=timedelta(seconds=5), database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: a mutation: a few (position, byte) overwrites, optionally focused on the first ``head`` bytes, and
#: an optional truncation
Mutation = tuple[list[tuple[int, int]], "int | None", bool]
mutations = st.tuples(st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=8),
                      st.one_of(st.none(), st.integers(0, 2**20)), st.booleans())


def mutate(raw: bytes, mutation: Mutation, head: int | None = None) -> bytes:
    """``raw`` with the mutation's bytes overwritten (inside ``raw[:head]`` when focused) and cut."""
    edits, cut, focused = mutation
    data = bytearray(raw)
    span = min(len(data), head) if focused and head else len(data)
    for position, value in edits:
        data[position % span] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    return bytes(data)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    """One valid small file of each format."""
    import medinvert
    from medinvert.io import load_volume
    from medinvert.transforms.corrupt import apply_transform, make_transform

    root = tmp_path_factory.mktemp("fuzz_samples")
    rng = np.random.default_rng(0)
    nii = write_nifti(root / "v.nii", rng.random((6, 5, 3)).astype(np.float32), np.diag([1.0, 1.2, 2.0, 1.0]))
    niigz = write_nifti(root / "v.nii.gz", rng.random((6, 5, 3)).astype(np.float32))
    dicom = write_dicom_series(root / "series", n_slices=1, rows=6, cols=5).files[0]
    volume = load_volume(niigz)
    observation = apply_transform(make_transform("kspace"), volume, seed=0, name="v")
    observation.save(root / "v")
    latent = medinvert.invert(volume, "random", steps=2)
    latent.save(root / "v_latent.npz")
    model = write_tiny_model(root / "tiny.pt")
    return {"nii": nii, "niigz": niigz, "dicom": dicom, "obs_json": root / "v_observation.json",
            "obs_npz": root / "v_observation.npz", "latent": root / "v_latent.npz", "model": model}


def _only_medinvert_errors(call, capfd) -> None:
    try:
        call()
    except MedinvertError:
        pass
    assert capfd.readouterr().err == "", "a parser printed to stderr"


@pytest.mark.parametrize("kind,suffix,head", [("nii", ".nii", 352), ("niigz", ".nii.gz", None),
                                              ("dicom", ".dcm", 1024)])
def test_volume_readers_raise_only_medinvert_errors(samples, tmp_path, capfd, kind, suffix, head):
    from medinvert.io import load_volume

    raw = samples[kind].read_bytes()
    target = tmp_path / f"fuzzed{suffix}"

    @FUZZ
    @given(mutations)
    @example(([(254, 7)], None, True))  # NIfTI sform_code 7: nibabel repairs it and logs a line
    @example(([(70, 0xFF), (71, 0x7F)], None, True))  # unknown NIfTI datatype code
    @example(([(0, 0x5D)], None, True))  # sizeof_hdr wrong
    def run(mutation):
        target.write_bytes(mutate(raw, mutation, head))
        _only_medinvert_errors(lambda: load_volume(target), capfd)

    run()


def test_dicom_folder_scan_raises_only_medinvert_errors(samples, tmp_path, capfd):
    """`find_cases` / `info` listing read DICOM headers of every file in a folder."""
    from medinvert.io import find_cases, list_dicom_series

    raw = samples["dicom"].read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()

    @FUZZ
    @given(mutations)
    def run(mutation):
        (folder / "IM0001.dcm").write_bytes(mutate(raw, mutation, 1024))
        _only_medinvert_errors(lambda: (find_cases(folder), list_dicom_series(folder)), capfd)

    run()


def test_observation_sidecar_raises_only_medinvert_errors(samples, tmp_path, capfd):
    from medinvert.operators import Observation

    text = samples["obs_json"].read_bytes()
    (tmp_path / "f_observation.npz").write_bytes(samples["obs_npz"].read_bytes())

    @FUZZ
    @given(mutations)
    def run(mutation):
        (tmp_path / "f_observation.json").write_bytes(mutate(text, mutation))
        _only_medinvert_errors(lambda: Observation.load(tmp_path / "f_observation.json"), capfd)

    run()


def test_observation_archive_raises_only_medinvert_errors(samples, tmp_path, capfd):
    """The archive is mutated *and* its checksum re-sealed, so the npz / npy parsers are reached."""
    from medinvert.operators import Observation

    raw = samples["obs_npz"].read_bytes()
    header = json.loads(samples["obs_json"].read_text())

    @FUZZ
    @given(mutations)
    def run(mutation):
        data = mutate(raw, mutation, 512)
        (tmp_path / "f_observation.npz").write_bytes(data)
        sealed = {**header, "npz_sha256": hashlib.sha256(data).hexdigest()}
        (tmp_path / "f_observation.json").write_text(json.dumps(sealed))
        _only_medinvert_errors(lambda: Observation.load(tmp_path / "f_observation.json"), capfd)

    run()


def test_latent_archive_raises_only_medinvert_errors(samples, tmp_path, capfd):
    from medinvert.latent import Latent

    raw = samples["latent"].read_bytes()
    target = tmp_path / "f_latent.npz"

    @FUZZ
    @given(mutations)
    def run(mutation):
        target.write_bytes(mutate(raw, mutation, 2048))
        _only_medinvert_errors(lambda: Latent.load(target), capfd)

    run()


def test_latent_metadata_raises_only_medinvert_errors(samples, tmp_path, capfd):
    """The latent's JSON metadata itself is mutated (arrays intact), reaching the metadata checks."""
    from medinvert.latent import Latent

    with np.load(samples["latent"], allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    text = str(arrays.pop("meta_json")).encode()
    target = tmp_path / "f_latent.npz"

    @FUZZ
    @given(mutations)
    def run(mutation):
        meta = mutate(text, mutation).decode("utf-8", errors="replace")
        buffer = io.BytesIO()
        np.savez(buffer, meta_json=np.array(meta), **arrays)
        target.write_bytes(buffer.getvalue())
        _only_medinvert_errors(lambda: Latent.load(target), capfd)

    run()


def test_checkpoint_reader_raises_only_medinvert_errors(samples, tmp_path, capfd):
    from medinvert.models.checkpoint import load_checkpoint

    raw = samples["model"].read_bytes()
    target = tmp_path / "f.pt"

    @FUZZ
    @given(mutations)
    def run(mutation):
        target.write_bytes(mutate(raw, mutation))
        _only_medinvert_errors(lambda: load_checkpoint(target), capfd)

    run()
