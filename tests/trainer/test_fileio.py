"""trainer/fileio.py: writes are whole or not at all; the hash is sha256 of the bytes."""

import hashlib

import pytest

from trainer.fileio import atomic_write, atomic_write_bytes, atomic_write_text, file_sha256


def test_write_replaces_whole(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]  # no temp file left


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_file_sha256_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 1000
    path = atomic_write_bytes(tmp_path / "d", data)
    assert file_sha256(path, chunk=4096) == hashlib.sha256(data).hexdigest()


def test_written_file_gets_plain_open_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic_write_text(tmp_path / "p.txt", "x")  # not mkstemp's owner-only 0600
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
