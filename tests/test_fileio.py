import os

import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.fileio import atomic_output, atomic_write_bytes


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_new_and_replace_existing(tmp_path):
    out = tmp_path / "model.caffemodel"
    atomic_write_bytes(out, b"first")
    assert out.read_bytes() == b"first"
    atomic_write_bytes(out, b"second")
    assert out.read_bytes() == b"second"
    assert leftovers(tmp_path) == []


def test_new_file_mode_follows_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_temp_path_is_in_the_same_folder_and_renamed(tmp_path):
    out = tmp_path / "out.bin"
    with atomic_output(out) as temp:
        assert temp.parent == tmp_path and temp != out
        assert not out.exists()
        temp.write_bytes(b"abc")
    assert out.read_bytes() == b"abc" and not temp.exists()


def test_failure_keeps_old_output_and_removes_temp(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(out) as temp:
            temp.write_bytes(b"half-written")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_os_error_while_writing_names_the_output(tmp_path):
    out = tmp_path / "out.bin"
    with pytest.raises(CaffeinitError, match="out.bin: cannot write"):
        with atomic_output(out) as temp:
            raise OSError(28, "No space left on device")
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_output_folder(tmp_path):
    with pytest.raises(CaffeinitError, match="output folder .*nope.* does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "out.bin", b"x")


def test_output_that_is_a_folder(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(CaffeinitError, match="is a folder"):
        atomic_write_bytes(tmp_path / "d", b"x")


def test_refuses_to_overwrite_an_input(tmp_path, monkeypatch):
    source = tmp_path / "in.caffemodel"
    source.write_bytes(b"precious")
    (tmp_path / "sub").mkdir()
    os.link(source, tmp_path / "hardlink.caffemodel")
    os.symlink(source, tmp_path / "symlink.caffemodel")
    monkeypatch.chdir(tmp_path / "sub")
    for out in [source, "../in.caffemodel", tmp_path / "sub" / ".." / "in.caffemodel",
                tmp_path / "hardlink.caffemodel", tmp_path / "symlink.caffemodel"]:
        with pytest.raises(CaffeinitError, match="refusing to overwrite input file"):
            atomic_write_bytes(out, b"clobbered", inputs=[source])
    assert source.read_bytes() == b"precious"
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub") == []
    atomic_write_bytes(tmp_path / "other.caffemodel", b"fine", inputs=[source])
    assert (tmp_path / "other.caffemodel").read_bytes() == b"fine"
