"""The atomic writer: complete files under the final name, nothing left behind on failure."""

from __future__ import annotations

import threading
from pathlib import Path

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


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # finished and reaped: no such process now


def test_remove_leftovers_removes_only_temporaries_of_dead_writers(tmp_path):
    import os

    from bundle.utils.io import remove_leftovers

    dead = _dead_pid()
    leftovers = [
        tmp_path / f".last.pt{TEMP_MARK}-{dead}-0123abcd",
        tmp_path / "teacher_cache" / f".case_1.pt{TEMP_MARK}-{dead}-deadbeef.pt",
        tmp_path / f".overlays.png{TEMP_MARK}-{dead}-00ff00ff.png",
    ]
    kept = [
        tmp_path / "last.pt",
        tmp_path / f".last.pt{TEMP_MARK}-{os.getpid()}-0123abcd",  # a live writer's file (this process)
        tmp_path / f"notes{TEMP_MARK}-{dead}-0123abcd",  # no leading dot: not a name atomic_path writes
        tmp_path / f".last.pt{TEMP_MARK}-{dead}-xyz",  # not 8 hex digits
        tmp_path / f".last.pt{TEMP_MARK}-{dead}-0123abcd~",  # an editor's backup
        tmp_path / "notes.segone-tmp.txt",
    ]
    for p in leftovers + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    outside = tmp_path.parent / f".{tmp_path.name}-outside{TEMP_MARK}-{dead}-0123abcd"
    outside.write_text("x")
    link = tmp_path / f".link{TEMP_MARK}-{dead}-0123abcd"
    link.symlink_to(tmp_path / "last.pt")
    try:
        removed = remove_leftovers(tmp_path)
        assert sorted(removed) == sorted(leftovers)
        assert not any(p.exists() for p in leftovers)
        assert all(p.exists() for p in kept) and outside.exists() and link.is_symlink()
        assert remove_leftovers(tmp_path) == [] and remove_leftovers(tmp_path / "missing") == []
    finally:
        outside.unlink()


def test_a_killed_writer_leaves_a_temporary_that_remove_leftovers_finds(tmp_path):
    import subprocess
    import sys

    from bundle.utils.io import remove_leftovers

    target = tmp_path / "last.pt"
    code = (
        "import os, sys, signal\n"
        "from bundle.utils.io import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == -9
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and TEMP_MARK in left[0].name and not target.exists()
    assert remove_leftovers(tmp_path) == left and not list(tmp_path.iterdir())
