"""Atomic file output: write a temporary file next to the target, rename it over the target on success.

A reader never sees a half-written file, a failed write leaves an existing output untouched, and an output path
that names one of the command's inputs is refused before anything is written.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterable, Iterator

from caffeinit.errors import CaffeinitError

PathLike = str | os.PathLike


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_output_path(path: PathLike, inputs: Iterable[PathLike] = ()) -> Path:
    """The output path, after checking that its folder exists, it is not a folder and it is none of ``inputs``."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise CaffeinitError(f"{path}: output folder '{folder}' does not exist")
    if path.is_dir():
        raise CaffeinitError(f"{path}: is a folder, not a file")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise CaffeinitError(f"{path}: refusing to overwrite input file '{source}'")
    return path


def _new_temp_file(path: Path) -> Path:
    """Create an empty, uniquely named file in the target's folder (mode 0666 minus the umask, like open())."""
    for _ in range(100):
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise CaffeinitError(f"{path}: cannot write: {e.strerror or e}") from None
        os.close(fd)
        return temp
    raise CaffeinitError(f"{path}: cannot create a temporary file in '{path.parent}'")


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` when the block succeeds.

    On any failure the temporary file is removed and an existing ``path`` is left as it was; an ``OSError``
    raised while writing becomes a CaffeinitError naming ``path``.
    """
    path = check_output_path(path, inputs)
    temp = _new_temp_file(path)
    try:
        try:
            yield temp
            os.replace(temp, path)
        except OSError as e:
            raise CaffeinitError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes, inputs: Iterable[PathLike] = ()) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_output``)."""
    with atomic_output(path, inputs) as temp:
        with open(temp, "wb") as f:
            f.write(data)
