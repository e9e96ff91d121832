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


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755])
def test_a_replaced_output_keeps_its_permissions(tmp_path, mode):
    """As an editor saving a file: an output written over an existing one keeps that file's mode (a private
    caffemodel does not become world-readable)."""
    out = tmp_path / "model.caffemodel"
    out.write_bytes(b"old")
    out.chmod(mode)
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(out, b"new")
    finally:
        os.umask(umask)
    assert out.read_bytes() == b"new" and out.stat().st_mode & 0o777 == mode


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
        with atomic_output(out):
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


def test_an_input_is_found_by_any_name_and_only_looked_at_when_the_output_exists(tmp_path):
    """InputFiles compares (st_dev, st_ino): other spellings, symlinks and hard links of an input are refused; the
    images of a list (add_later) are looked at only when an output exists, once."""
    from caffeinit.fileio import InputFiles, check_output_path
    image = tmp_path / "a.jpg"
    image.write_bytes(b"pixels")
    os.symlink(image, tmp_path / "link.jpg")
    calls = []

    def listed():
        calls.append(1)
        return [(str(image), "an image of --images list.txt")]

    files = InputFiles([tmp_path / "net.prototxt"], "the net")
    files.add_later(listed)
    check_output_path(tmp_path / "new.caffemodel", files)  # nothing there: nothing to destroy, nothing looked at
    assert calls == []
    for out in (image, tmp_path / "link.jpg", tmp_path / "." / "a.jpg"):
        with pytest.raises(CaffeinitError, match=r"refusing to overwrite input file '.*a\.jpg' \(an image of --images "
                                                 r"list\.txt\)"):
            atomic_write_bytes(out, b"clobbered", inputs=files)
    assert calls == [1] and image.read_bytes() == b"pixels"
    (tmp_path / "other.jpg").write_bytes(b"other")
    atomic_write_bytes(tmp_path / "other.jpg", b"replaced", inputs=files)  # an existing file that is no input
    assert (tmp_path / "other.jpg").read_bytes() == b"replaced" and leftovers(tmp_path) == []


def test_a_list_that_cannot_be_read_protects_nothing_more(tmp_path):
    from caffeinit.fileio import InputFiles
    files = InputFiles()
    files.add_later(lambda: open(tmp_path / "missing.txt"))
    (tmp_path / "out.bin").write_bytes(b"old")
    atomic_write_bytes(tmp_path / "out.bin", b"new", inputs=files)
    assert (tmp_path / "out.bin").read_bytes() == b"new"


def test_nothing_is_written_inside_an_input_folder(tmp_path):
    """A database folder (LMDB, LevelDB) is read whole: no output goes inside it, new file or not."""
    from caffeinit.fileio import InputFiles
    db = tmp_path / "train_lmdb"
    db.mkdir()
    (db / "data.mdb").write_bytes(b"records")
    os.symlink(db, tmp_path / "alias")
    files = InputFiles()
    files.add_folder(db, "the database of layer 'data'")
    for out in (db / "data.mdb", db / "new.bin", tmp_path / "alias" / "data.mdb"):
        with pytest.raises(CaffeinitError, match=r"refusing to write inside input folder '.*train_lmdb' \(the "
                                                 r"database of layer 'data'\)"):
            atomic_write_bytes(out, b"x", inputs=files)
    assert (db / "data.mdb").read_bytes() == b"records" and sorted(os.listdir(db)) == ["data.mdb"]
    atomic_write_bytes(tmp_path / "beside.bin", b"x", inputs=files)


def test_outputs_that_name_the_same_file_are_refused_naming_both_options(tmp_path):
    from caffeinit.fileio import check_outputs
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "sub", tmp_path / "alias")
    cases = [({"-o": tmp_path / "x.caffemodel", "--onnx": tmp_path / "x.caffemodel"}, "-o and --onnx"),
             ({"-o": tmp_path / "a", "--report": tmp_path / "sub" / ".." / "a"}, "-o and --report"),
             ({"-o": tmp_path / "a", "--report": None, "--plot": tmp_path / "alias" / "p",
               "--onnx": tmp_path / "sub" / "p"}, "--plot and --onnx")]
    for outputs, options in cases:
        with pytest.raises(CaffeinitError, match=f"^{options} name the same file"):
            check_outputs(outputs)
    (tmp_path / "w").write_bytes(b"")
    os.link(tmp_path / "w", tmp_path / "hard")
    with pytest.raises(CaffeinitError, match="^-o and --weights-out name the same file"):
        check_outputs({"-o": tmp_path / "w", "--weights-out": tmp_path / "hard"})
    check_outputs({"-o": tmp_path / "a", "--report": tmp_path / "b", "--plot": None})
    assert sorted(os.listdir(tmp_path)) == ["alias", "hard", "sub", "w"]  # checking writes nothing


def test_staged_outputs_are_all_or_nothing(tmp_path):
    from caffeinit.fileio import staged_outputs
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"old a")
    with pytest.raises(CaffeinitError, match="b.bin: cannot write: No space left"):
        with staged_outputs():
            atomic_write_bytes(a, b"new a")
            assert a.read_bytes() == b"old a"  # written in full beside it, not yet in place
            with atomic_output(b) as temp:
                temp.write_bytes(b"half")
                raise OSError(28, "No space left on device")
    assert a.read_bytes() == b"old a" and not b.exists() and leftovers(tmp_path) == []

    with pytest.raises(KeyboardInterrupt):
        with staged_outputs():
            atomic_write_bytes(a, b"new a")
            raise KeyboardInterrupt
    assert a.read_bytes() == b"old a" and leftovers(tmp_path) == []

    with staged_outputs():
        atomic_write_bytes(a, b"first")
        with staged_outputs():  # a nested block joins the outer one
            atomic_write_bytes(b, b"new b")
        assert not b.exists()
        atomic_write_bytes(a, b"new a")  # written twice: the last one counts
    assert a.read_bytes() == b"new a" and b.read_bytes() == b"new b" and leftovers(tmp_path) == []


def test_a_rename_that_fails_says_what_was_written(tmp_path, monkeypatch):
    from caffeinit import fileio
    from caffeinit.fileio import staged_outputs
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("b.bin"):
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(CaffeinitError, match=r"b\.bin: cannot write: Input/output error \(already written: .*a\.bin\)"):
        with staged_outputs():
            atomic_write_bytes(tmp_path / "a.bin", b"a")
            atomic_write_bytes(tmp_path / "b.bin", b"b")
            atomic_write_bytes(tmp_path / "c.bin", b"c")
    assert sorted(os.listdir(tmp_path)) == ["a.bin"]


def test_an_unwritable_folder_is_found_by_the_check_not_by_the_write(tmp_path, monkeypatch):
    """check_output_path creates (and removes) a file where the output goes, so a read-only file system (which
    refuses even root) is found before any work; simulated here, as making one needs privileges."""
    from caffeinit import fileio
    from caffeinit.fileio import check_output_path
    real = os.open

    def read_only(path, flags, *mode):
        if flags & os.O_CREAT:
            raise OSError(30, "Read-only file system")
        return real(path, flags, *mode)

    monkeypatch.setattr(fileio.os, "open", read_only)
    with pytest.raises(CaffeinitError, match=r"^.*out\.bin: cannot write in output folder '.*': Read-only file "
                                             r"system$"):
        check_output_path(tmp_path / "out.bin")
    monkeypatch.undo()
    assert check_output_path(tmp_path / "out.bin") == tmp_path / "out.bin"
    assert os.listdir(tmp_path) == []


@pytest.fixture
def send_sigint():
    """A function sending SIGINT to this process through the main thread, or through another one (the kernel may
    hand a process's signal to any of its threads, torch's included)."""
    import signal
    import threading
    import time
    idle = threading.Event()
    other = threading.Thread(target=idle.wait)
    other.start()

    def through_other():
        signal.pthread_kill(other.ident, signal.SIGINT)
        time.sleep(0.2)  # delivered there, Python's handler runs as soon as the main thread allows it

    yield {"main": lambda: os.kill(os.getpid(), signal.SIGINT), "other": through_other}
    idle.set()
    other.join()


@pytest.mark.parametrize("thread", ["main", "other"])
def test_ctrl_c_while_outputs_are_renamed_into_place_waits_until_all_are(tmp_path, monkeypatch, send_sigint, thread):
    """A SIGINT that arrives between two renames takes effect once every output is in place, not half-way."""
    from caffeinit import fileio
    from caffeinit.fileio import staged_outputs
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith("a.bin"):
            send_sigint[thread]()

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs():
            atomic_write_bytes(tmp_path / "a.bin", b"a")
            atomic_write_bytes(tmp_path / "b.bin", b"b")
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]


@pytest.mark.parametrize("thread", ["main", "other"])
@pytest.mark.parametrize("staged", [False, True])
def test_ctrl_c_as_the_temporary_file_is_made_leaves_none_behind(tmp_path, monkeypatch, send_sigint, thread, staged):
    from caffeinit import fileio
    from caffeinit.fileio import staged_outputs
    real = fileio._new_temp_file

    def new_temp_file(path):
        temp = real(path)
        send_sigint[thread]()
        return temp

    monkeypatch.setattr(fileio, "_new_temp_file", new_temp_file)
    (tmp_path / "out.bin").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs() if staged else open(os.devnull):
            atomic_write_bytes(tmp_path / "out.bin", b"new")
    assert os.listdir(tmp_path) == ["out.bin"] and (tmp_path / "out.bin").read_bytes() == b"old"


@pytest.mark.parametrize("char", ["a", "\u00e9"])  # 1 and 2 bytes in UTF-8
def test_an_output_name_as_long_as_the_file_system_allows_is_written(tmp_path, char):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    name = char * ((name_max - len(".bin")) // len(char.encode())) + ".bin"
    assert len(os.fsencode(name)) <= name_max
    (tmp_path / name).write_bytes(b"old")  # the file system takes the name
    atomic_write_bytes(tmp_path / name, b"new")
    assert os.listdir(tmp_path) == [name] and (tmp_path / name).read_bytes() == b"new"
