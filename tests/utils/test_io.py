"""The atomic writer: complete files under the final name, nothing left behind on failure."""

from __future__ import annotations

import threading

import pytest

from bundle.utils.io import TEMP_MARK, atomic_path, file_sha256, write_text_atomic


def test_the_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("half")
        assert not target.exists() and TEMP_MARK in tmp.name and tmp.parent == target.parent
    assert target.read_text() == "half"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_suffix_and_concurrent_writers_get_their_own_temporaries(tmp_path):
    names = []

    def write(i: int) -> None:
        with atomic_path(tmp_path / "out.nii.gz", suffix=".nii.gz", sync=True) as tmp:
            names.append(tmp.name)
            tmp.write_text(str(i))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8 and all(n.endswith(".nii.gz") for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_file_sha256(tmp_path):
    path = write_text_atomic(tmp_path / "x", "abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
