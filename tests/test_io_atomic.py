"""Atomic writes and the output guards (`ensure_not_input`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medinvert.errors import MedinvertError
from medinvert.io import atomic_write_bytes, atomic_write_path, atomic_write_text, ensure_not_input
from medinvert.io.atomic import split_suffix


def test_temp_file_is_hidden_in_same_folder_with_suffix(tmp_path: Path) -> None:
    target = tmp_path / "volume.nii.gz"
    with atomic_write_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".volume.tmp-") and tmp.name.endswith(".nii.gz")
        assert not target.exists()
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["volume.nii.gz"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_nothing_written_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(MedinvertError, match="nothing was written"):
        with atomic_write_path(target) as tmp:
            tmp.unlink()
    assert not target.exists()


def test_final_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "hello\n")
    finally:
        os.umask(old)
    assert path.read_text() == "hello\n"
    assert (path.stat().st_mode & 0o777) == 0o644


def test_bytes_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"
    atomic_write_bytes(target, b"1")
    atomic_write_bytes(target, b"22")
    assert target.read_bytes() == b"22"


def test_missing_folder_and_folder_target(tmp_path: Path) -> None:
    with pytest.raises(MedinvertError, match="output folder does not exist"):
        with atomic_write_path(tmp_path / "missing" / "x.txt"):
            pass
    with pytest.raises(MedinvertError, match="is a folder"):
        with atomic_write_path(tmp_path):
            pass


def test_split_suffix() -> None:
    assert split_suffix("brain.nii.gz") == ("brain", ".nii.gz")
    assert split_suffix("obs.npz") == ("obs", ".npz")
    assert split_suffix("README") == ("README", "")


def test_ensure_not_input(tmp_path: Path) -> None:
    source = tmp_path / "in.nii.gz"
    source.write_bytes(b"x")
    with pytest.raises(MedinvertError, match="overwrite the input"):
        ensure_not_input(source, [source])
    with pytest.raises(MedinvertError, match="overwrite the input"):
        ensure_not_input(tmp_path / "sub" / ".." / "in.nii.gz", [source])
    link = tmp_path / "link.nii.gz"
    link.symlink_to(source)
    with pytest.raises(MedinvertError, match="overwrite the input"):
        ensure_not_input(link, [source])
    ensure_not_input(tmp_path / "out.nii.gz", [source])  # a different file is fine
