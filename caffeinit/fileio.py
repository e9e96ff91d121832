"""Atomic file output: write a temporary file next to the target, rename it over the target on success.

A reader never sees a half-written file, a failed write leaves an existing output untouched, and an output path
that names one of the command's inputs (``InputFiles``: every file it reads, database folders included) is refused
before anything is written. ``staged_outputs`` makes several outputs all-or-nothing: the temporary files are renamed
into place only once every one of them was written.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import signal
import stat
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from caffeinit.errors import CaffeinitError

PathLike = str | os.PathLike


def _file_id(path: PathLike) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what ``path`` names (links followed), None where nothing is there."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class InputFiles:
    """The files and folders a command reads, which no output may replace.

    ``add`` a file (with what it is, for the message), ``add_folder`` a folder whose contents are read (an LMDB or
    LevelDB: no output is written inside it), ``add_later`` a function giving more files (the images a list names)
    that is called only when needed. Each path is looked at once (``os.stat``, so links and other spellings of the
    same file are found), and only when an output that already exists is checked: a new file cannot replace an
    input, so a run that writes new files never looks at a list's images.
    """

    def __init__(self, paths: Iterable[PathLike | None] = (), what: str | None = None):
        self._files: list[tuple[str, str | None]] = []
        self._later: list[Callable[[], Iterable[tuple[PathLike, str | None]]]] = []
        self._folders: list[tuple[str, str | None]] = []
        self._ids: dict[tuple[int, int], tuple[str, str | None]] = {}
        self._seen = 0  # how many of _files are in _ids
        self._folder_ids: dict[tuple[int, int], tuple[str, str | None]] | None = None
        for path in paths:
            self.add(path, what)

    @classmethod
    def of(cls, inputs: "InputFiles | Iterable[PathLike | None]") -> "InputFiles":
        return inputs if isinstance(inputs, InputFiles) else cls(inputs)

    def add(self, path: PathLike | None, what: str | None = None) -> None:
        if path is not None and os.fspath(path) != "":
            self._files.append((os.fspath(path), what))

    def add_later(self, files: Callable[[], Iterable[tuple[PathLike, str | None]]]) -> None:
        """``files()`` gives (path, what) pairs; it is called at most once, when an existing output is checked. An
        exception from it (a list that cannot be read: the command fails on it anyway) protects nothing more."""
        self._later.append(files)

    def add_folder(self, path: PathLike | None, what: str | None = None) -> None:
        if path is not None and os.fspath(path) != "":
            self._folders.append((os.fspath(path), what))
            self._folder_ids = None

    def __iter__(self) -> Iterator[str]:
        """The files' paths (those ``add_later`` gives included)."""
        self._resolve_later()
        return iter([path for path, _ in self._files])

    def _resolve_later(self) -> None:
        while self._later:
            files = self._later.pop(0)
            try:
                for path, what in files():
                    self.add(path, what)
            except Exception:  # noqa: BLE001 — unreadable: the command says so when it reads it
                pass

    def culprit(self, output: PathLike) -> str | None:
        """Why writing ``output`` would destroy an input (a phrase naming it), or None where it would not."""
        if self._folders:
            if self._folder_ids is None:
                self._folder_ids = {}
                for path, what in self._folders:
                    key = _file_id(path)
                    if key is not None:
                        self._folder_ids.setdefault(key, (path, what))
            folder = Path(os.path.realpath(Path(output).parent))
            for ancestor in (folder, *folder.parents):
                hit = self._folder_ids.get(_file_id(ancestor))
                if hit is not None:
                    return f"refusing to write inside input folder '{hit[0]}'" + (f" ({hit[1]})" if hit[1] else "")
        key = _file_id(output)
        if key is None or os.path.isdir(output):
            return None  # nothing there: writing it destroys nothing
        self._resolve_later()
        for path, what in self._files[self._seen:]:
            found = _file_id(path)
            if found is not None:
                self._ids.setdefault(found, (path, what))
        self._seen = len(self._files)
        hit = self._ids.get(key)
        if hit is None:
            return None
        return f"refusing to overwrite input file '{hit[0]}'" + (f" ({hit[1]})" if hit[1] else "")


def _target(path: PathLike, inputs) -> Path:
    """``check_output_path`` without the writability probe (``atomic_output`` creates its temporary file anyway)."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise CaffeinitError(f"{path}: output folder '{folder}' does not exist")
    if path.is_dir():
        raise CaffeinitError(f"{path}: is a folder, not a file")
    why = InputFiles.of(inputs).culprit(path)
    if why is not None:
        raise CaffeinitError(f"{path}: {why}")
    return path


def check_output_path(path: PathLike, inputs: InputFiles | Iterable[PathLike | None] = ()) -> Path:
    """The output path, after checking that its folder exists and can be written to, it is not a folder and it
    would replace none of ``inputs`` (an ``InputFiles`` or paths)."""
    path = _target(path, inputs)
    with signals_deferred():
        os.unlink(_new_temp_file(path))  # a folder we cannot write to is found now, not after the work
    return path


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: InputFiles | Iterable[PathLike | None] = ()
                  ) -> None:
    """``check_output_path`` for each output of a command ({option: path}, None for options not given), and that
    no two of them name the same file (one would silently replace the other)."""
    inputs = InputFiles.of(inputs)
    seen: dict[object, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_output_path(path, inputs)
        keys = {os.path.realpath(path)}
        found = _file_id(path)
        if found is not None:
            keys.add(found)  # hard links, bind mounts
        for key in keys:
            if key in seen:
                raise CaffeinitError(f"{seen[key]} and {option} name the same file '{path}': give each output its "
                                     "own path")
        seen.update(dict.fromkeys(keys, option))


_DEFERRED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back Ctrl-C and the termination signals the CLI catches for the block: a temporary file is never
    created without its name being kept for clean-up, and outputs are renamed into place all or none. A signal that
    arrives meanwhile takes effect when the block ends.

    The Python handlers are swapped, not the thread's signal mask: the kernel may hand a signal to any thread (one
    of torch's, say), and Python then runs the handler in the main thread whatever its mask.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs handlers in the main thread only: nothing interrupts this one
        return
    caught: list[int] = []
    old = {}
    for signum in _DEFERRED:
        if callable(signal.getsignal(signum)):  # a handler that raises (KeyboardInterrupt, the CLI's Terminated)
            old[signum] = signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        if caught:
            old[caught[0]](caught[0], None)


TEMP_STEM_BYTES = 200  # of the output's name in its temporary file's: 15 bytes more stay within 255 (NAME_MAX)


def _new_temp_file(path: Path) -> Path:
    """Create an empty, uniquely named file in the target's folder: with the mode of the file it will replace, or
    0666 minus the umask (as open() makes a new one)."""
    stem = path.name
    while len(os.fsencode(stem)) > TEMP_STEM_BYTES:  # an output name near the file system's limit still gets one
        stem = stem[:-1]
    for _ in range(100):
        temp = path.with_name(f".{stem}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise CaffeinitError(f"{path}: cannot write in output folder '{path.parent}': {e.strerror or e}") \
                from None
        os.close(fd)
        with contextlib.suppress(OSError):  # an existing output keeps its permissions (a private 0600 file stays so)
            mode = path.stat().st_mode
            if stat.S_ISREG(mode):
                os.chmod(temp, stat.S_IMODE(mode))
        return temp
    raise CaffeinitError(f"{path}: cannot create a temporary file in '{path.parent}'")


class _Stage:
    """Finished temporary files waiting to be renamed over their targets (``staged_outputs``)."""

    def __init__(self):
        self.pending: dict[Path, Path] = {}  # target -> its finished temporary file, in the order written

    def add(self, path: Path, temp: Path) -> None:
        old = self.pending.pop(path, None)
        if old is not None:  # written twice: the last one counts
            with contextlib.suppress(OSError):
                os.unlink(old)
        self.pending[path] = temp

    def discard(self) -> None:
        for temp in self.pending.values():
            with contextlib.suppress(OSError):
                os.unlink(temp)
        self.pending.clear()

    def commit(self) -> None:
        done: list[str] = []
        items = list(self.pending.items())
        self.pending.clear()
        for i, (path, temp) in enumerate(items):
            try:
                os.replace(temp, path)
            except OSError as e:
                for _, rest in items[i:]:
                    with contextlib.suppress(OSError):
                        os.unlink(rest)
                written = f" (already written: {', '.join(done)})" if done else ""
                raise CaffeinitError(f"{path}: cannot write: {e.strerror or e}{written}") from None
            done.append(os.fspath(path))


_STAGE: contextvars.ContextVar[_Stage | None] = contextvars.ContextVar("caffeinit_stage", default=None)


@contextlib.contextmanager
def staged_outputs() -> Iterator[None]:
    """Make every ``atomic_output`` in the block (and every writer built on it: caffemodels, ONNX, JSON, plots)
    part of one all-or-nothing write: each output is written in full to its temporary file, and only when the
    whole block succeeds are they all renamed into place; when anything fails, all the temporary files are removed
    and every existing output is left as it was. Nested blocks join the outermost one."""
    if _STAGE.get() is not None:
        yield
        return
    stage = _Stage()
    token = _STAGE.set(stage)
    try:
        yield
        with signals_deferred():
            stage.commit()
    except BaseException:
        with signals_deferred():
            stage.discard()
        raise
    finally:
        _STAGE.reset(token)


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: InputFiles | Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` when the block succeeds (inside
    ``staged_outputs``: when that block succeeds).

    On any failure the temporary file is removed and an existing ``path`` is left as it was; an ``OSError``
    raised while writing becomes a CaffeinitError naming ``path``.
    """
    path = _target(path, inputs)
    stage = _STAGE.get()
    temp = None
    try:
        with signals_deferred():
            temp = _new_temp_file(path)
        try:
            yield temp
            with signals_deferred():
                if stage is None:
                    os.replace(temp, path)
                else:
                    stage.add(path, temp)
        except OSError as e:
            raise CaffeinitError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        if temp is not None and (stage is None or stage.pending.get(path) != temp):
            with contextlib.suppress(OSError):
                os.unlink(temp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes, inputs: InputFiles | Iterable[PathLike | None] = ()) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_output``)."""
    with atomic_output(path, inputs) as temp:
        with open(temp, "wb") as f:
            f.write(data)
