"""Where images come from: ``--images`` (list, folder, glob) and a net's own data layer (LMDB/LevelDB Datums,
ImageData lists, HDF5 files, DummyData fillers).

A source has ``tops`` (the blob names it fills), ``tasks(seed)`` (an endless, cheap, sequential stream of records in
Caffe's order, wrapping around at the end as Caffe does) and ``decode(task, rng)`` (the expensive part: decoding and
transforming one record into one array per top; run in a thread pool by :func:`caffeinit.data.batches`).
Randomness (ImageData's shuffle and rand_skip, crops, mirrors) comes from ``seed`` only, so a run is reproducible.
"""
from __future__ import annotations

import fnmatch
import glob
import itertools
import os
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from caffeinit.data.images import (ImageDecodeError, decode_image, is_image_path, is_truncated_jpeg, read_image,
                                   why_not_a_file)
from caffeinit.data.transform import Preprocess
from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2

Shape = tuple[int, ...]


class SkipItem(Exception):
    """A bad record that ``skip_bad`` allows to drop; the message names it."""


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for the ``index``-th item of a stream: independent of which thread decodes it."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 1, index])


class Source:
    """Base class; see the module docstring."""
    tops: tuple[str, ...] = ()
    skip_bad: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def tasks(self, seed: int) -> Iterator:
        raise NotImplementedError

    def decode(self, task, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def samples(self, num_images: int | None = None, seed: int = 0) -> Iterator[tuple[np.ndarray, ...]]:
        """Single-threaded: one tuple per item (data, label) in order; one pass by default."""
        count = len(self) if num_images is None else num_images
        for index, task in enumerate(itertools.islice(self.tasks(seed), count)):
            yield self.decode(task, sample_rng(seed, index))

    def _bad(self, where: str, message: str) -> Exception:
        return SkipItem(f"{where}: {message}") if self.skip_bad else CaffeinitError(f"{where}: {message}")


# -- image lists, folders, globs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageEntry:
    path: str
    label: int
    where: str  # "list.txt:12" or the path itself


def parse_image_list(list_path: str, root_folder: str | None = None, relative_to_list: bool = True) -> list[ImageEntry]:
    """Caffe's ImageData list: ``path [label]`` a line, split at the last whitespace (paths may hold spaces).

    The label is read as Caffe's atoi does (its leading integer: "3.0" is 3); a last field that does not start
    with one means label 0 and the whole line is the path. Blank lines and surrounding
    whitespace (including Windows line ends) are ignored, where Caffe would keep them and then fail on the path.
    ``root_folder`` is prepended by plain concatenation, as Caffe does; without it relative paths are taken
    against the list's own folder (``relative_to_list``) or the working directory (Caffe).
    """
    try:
        with open(list_path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CaffeinitError(f"image list '{list_path}': {e.strerror}") from None
    base = os.path.dirname(os.path.abspath(list_path))
    entries = []
    for line_no, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        path, label = text, 0
        head, sep, tail = text.replace("\t", " ").rpartition(" ")
        number = _LABEL.match(tail)
        if sep and number:  # Caffe's atoi: the leading integer ("3.0" and "3abc" are 3)
            path, label = text[:len(head)].rstrip(), int(number.group())
        if root_folder:
            path = root_folder + path
        elif relative_to_list and not os.path.isabs(path):
            path = os.path.join(base, path)
        entries.append(ImageEntry(path, label, f"{list_path}:{line_no}"))
    if not entries:
        raise CaffeinitError(f"image list '{list_path}' is empty")
    return entries


_LABEL = re.compile(r"[+-]?[0-9]+")  # what atoi reads at the start of a label


def find_images(spec: str, root_folder: str | None = None) -> list[ImageEntry]:
    """Entries for ``--images``: a list file, a directory (recursive, image extensions) or a glob."""
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        paths = sorted(os.path.join(d, name) for d, _, names in os.walk(spec) for name in names if is_image_path(name))
        if not paths:
            raise CaffeinitError(f"--images: no image files ({', '.join(('jpg', 'png', 'bmp', '...'))}) "
                                 f"under directory '{spec}'")
        return [ImageEntry(p, 0, p) for p in paths]
    if os.path.isfile(spec):
        if is_image_path(spec):
            return [ImageEntry(spec, 0, spec)]
        return parse_image_list(spec, root_folder=root_folder)
    if any(ch in spec for ch in "*?["):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise CaffeinitError(f"--images: no files match '{spec}'")
        return [ImageEntry(p, 0, p) for p in paths]
    raise CaffeinitError(f"--images: '{spec}' is not a file, a directory or a glob that matches files")


def lists_as_image(spec: str, path: str | os.PathLike) -> bool:
    """Whether ``find_images(spec)`` would list the file ``path`` (existing or not) as an image once it is there:
    an image-named file anywhere under a directory ``spec`` (``os.walk``: symbolic links to folders not followed),
    any file a glob ``spec`` matches. A list file or a single image lists no new file."""
    spec, path = os.fspath(spec), os.fspath(path)
    if os.path.isdir(spec):
        if not is_image_path(os.path.basename(path)):
            return False
        top = os.stat(spec)
        folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        while True:
            try:
                if os.path.samestat(os.stat(folder), top):
                    return True
            except OSError:
                pass
            parent = os.path.dirname(folder)
            if parent == folder:
                return False
            folder = parent
    if os.path.isfile(spec) or not glob.has_magic(spec):
        return False
    # the folders glob looks in for the pattern's last component, found by glob itself (links, '**')
    folder, name = os.path.split(spec)
    if name == "**":  # every file under the folders the rest matches, at any depth
        folders = glob.glob(os.path.join(spec, ""), recursive=True)  # a trailing separator: folders only
    elif glob.has_magic(folder):
        folders = glob.glob(os.path.join(folder, ""), recursive=True)
    else:
        folders = [folder or os.curdir]
    own = os.path.basename(path)
    hidden = own.startswith(".") and not name.startswith(".")  # glob's wildcards skip names with a leading dot
    if not name or hidden and glob.has_magic(name) or not (fnmatch.fnmatch(own, name) or name == "**"):
        return False
    try:
        target = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    for found in folders:
        try:
            if os.path.samestat(os.stat(found), target):
                return True
        except OSError:
            pass
    return False


class ImageSource(Source):
    """Image files read with OpenCV and transformed by ``preprocess``; yields (C x H x W float32, label).

    ``entries`` comes from :func:`find_images` (``--images``) or :func:`parse_image_list` (ImageData).
    """

    def __init__(self, entries: Sequence[ImageEntry] | str, preprocess: Preprocess, data_top: str = "data",
                 label_top: str | None = None, color: bool | None = None, shuffle: bool = False, rand_skip: int = 0,
                 skip_bad: bool = False, root_folder: str | None = None, name: str | None = None):
        if isinstance(entries, (str, os.PathLike)):
            name = name or os.fspath(entries)
            entries = find_images(entries, root_folder)
        self.entries = list(entries)
        if not self.entries:
            raise CaffeinitError(f"image source '{name}' is empty")
        self.preprocess = preprocess
        self.color = preprocess.color if color is None else color
        self.tops = (data_top,) if label_top is None else (data_top, label_top)
        self.shuffle, self.rand_skip, self.skip_bad = shuffle, rand_skip, skip_bad
        self.name = name or "images"
        self.truncated: dict[str, str] = {}  # path -> where, of JPEGs decoded only in part (said once, at the end)
        self._checked: set[str] = set()  # paths looked at for truncation (cycled lists repeat them)

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self) -> str:
        return f"{len(self.entries)} images from {self.name}"

    def tasks(self, seed: int) -> Iterator[ImageEntry]:
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2])
        skip = int(rng.integers(self.rand_skip)) if self.rand_skip else 0
        for epoch in itertools.count():
            order = rng.permutation(len(self.entries)) if self.shuffle else range(len(self.entries))
            for i in order:
                if skip:
                    skip -= 1
                    continue
                yield self.entries[i]

    def load_pixels(self, entry: ImageEntry) -> np.ndarray:
        try:
            pixels = read_image(entry.path, self.color, self.preprocess.resize)
        except ImageDecodeError as e:
            raise self._bad(entry.where, f"cannot read image '{entry.path}': {e}") from None
        if entry.path not in self._checked:
            self._checked.add(entry.path)
            if is_truncated_jpeg(entry.path):
                self.truncated[entry.path] = entry.where
        return pixels

    def first_truncated(self) -> tuple[str, str]:
        """(path, where) of the truncated JPEG met first in the list's order (the decoding threads race)."""
        position: dict[str, int] = {}
        for i, entry in enumerate(self.entries):
            position.setdefault(entry.path, i)
        path = min(self.truncated, key=lambda p: position.get(p, len(position)))
        return path, self.truncated[path]

    def decode(self, entry: ImageEntry, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        pixels = self.load_pixels(entry)
        try:
            image = self.preprocess.apply(pixels, rng)
        except ValueError as e:
            raise self._bad(entry.where, f"image '{entry.path}': {e}") from None
        if len(self.tops) == 1:
            return (image,)
        return image, np.float32(entry.label)


# -- LMDB / LevelDB of Datum records --------------------------------------------------------------------------
@dataclass(frozen=True)
class DatumRecord:
    key: bytes
    value: bytes
    where: str


class DatumDBSource(Source):
    """A Data layer's database of Datum records (raw uint8 C x H x W, float_data, or encoded JPEG/PNG) in key order."""

    def __init__(self, path: str, backend: int, preprocess: Preprocess, tops: Sequence[str] = ("data",),
                 skip_bad: bool = False, expected_shape: Shape | None = None):
        self.path, self.preprocess, self.tops = path, preprocess, tuple(tops)
        self.skip_bad = skip_bad
        self.kind = _db_kind(path, backend)
        self.expected_shape = expected_shape  # one transformed item (C, h, w); set from the first record if None
        self._count = None

    def __len__(self) -> int:
        if self._count is None:
            if self.kind == "lmdb":
                with _open_lmdb(self.path) as env:
                    self._count = env.stat()["entries"]
            else:
                self._count = sum(1 for _ in self._records())
        return self._count

    def describe(self) -> str:
        return f"{self.kind.upper()} '{self.path}'"

    def _records(self) -> Iterator[DatumRecord]:
        if self.kind == "lmdb":
            with _open_lmdb(self.path) as env, env.begin(buffers=False) as txn:
                for key, value in txn.cursor():
                    yield DatumRecord(key, value, self._where(key))
        else:
            db = _open_leveldb(self.path)
            try:
                for key, value in db.iterator():
                    yield DatumRecord(key, value, self._where(key))
            finally:
                db.close()

    def _where(self, key: bytes) -> str:
        return f"{self.kind.upper()} '{self.path}' record '{key.decode('utf-8', 'replace')}'"

    def first(self) -> DatumRecord:
        for record in self._records():
            return record
        raise CaffeinitError(f"{self.describe()} is empty")

    def tasks(self, seed: int) -> Iterator[DatumRecord]:
        while True:  # from the first record, wrapping around, whatever the seed (as Caffe's cursor)
            found = False
            for record in self._records():
                found = True
                yield record
            if not found:
                raise CaffeinitError(f"{self.describe()} is empty")

    def pixels(self, record: DatumRecord) -> tuple[np.ndarray, bool, float]:
        """(pixels, is_hwc, label) of one record, decoded as Caffe's DataTransformer would."""
        datum = caffe_pb2.Datum()
        try:
            datum.ParseFromString(record.value)
        except Exception:
            raise self._bad(record.where, "is not a Datum") from None
        if datum.encoded:
            mode = "color" if self.preprocess.force_color else "gray" if self.preprocess.force_gray else "native"
            try:
                return decode_image(datum.data, mode), True, float(datum.label)
            except ImageDecodeError as e:
                raise self._bad(record.where, f"encoded image: {e}") from None
        shape = (datum.channels, datum.height, datum.width)
        count = int(np.prod(shape))
        if datum.data:
            if len(datum.data) != count:
                raise self._bad(record.where, f"Datum says {_fmt(shape)} but holds {len(datum.data)} bytes")
            return np.frombuffer(datum.data, np.uint8).reshape(shape), False, float(datum.label)
        if len(datum.float_data) != count or count == 0:
            raise self._bad(record.where, f"Datum says {_fmt(shape)} but holds {len(datum.float_data)} floats")
        return np.asarray(datum.float_data, np.float32).reshape(shape), False, float(datum.label)

    def decode(self, record: DatumRecord, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        pixels, hwc, label = self.pixels(record)
        try:
            image = self.preprocess.apply(pixels, rng, hwc=hwc)
        except ValueError as e:
            raise self._bad(record.where, str(e)) from None
        if self.expected_shape is not None and image.shape != tuple(self.expected_shape):
            raise self._bad(record.where, f"Datum gives {_fmt(image.shape)} after the transform, but the net's "
                                          f"input '{self.tops[0]}' takes {_fmt(self.expected_shape)}")
        return (image,) if len(self.tops) == 1 else (image, np.float32(label))


def _fmt(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def _db_kind(path: str, backend: int) -> str:
    """'lmdb' or 'leveldb': what the directory holds, else what ``backend`` says (Caffe's default is LevelDB)."""
    if not os.path.exists(path):
        name = "LMDB" if backend == caffe_pb2.DataParameter.LMDB else "LevelDB"
        raise CaffeinitError(f"{name} '{path}' does not exist")
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, "data.mdb")):
        return "lmdb"
    if os.path.isfile(os.path.join(path, "CURRENT")):
        return "leveldb"
    return "lmdb" if backend == caffe_pb2.DataParameter.LMDB else "leveldb"


def _open_lmdb(path: str):
    import lmdb
    try:
        return lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=os.path.isdir(path),
                         max_readers=4)
    except lmdb.Error as e:
        raise CaffeinitError(f"LMDB '{path}' cannot be opened: {e}") from None


def _open_leveldb(path: str):
    try:
        import plyvel
    except ImportError:
        raise CaffeinitError(f"LevelDB '{path}': reading LevelDB needs the 'plyvel' package (pip install plyvel); "
                             "or convert the data to LMDB (e.g. convert_imageset -backend lmdb) and set "
                             "'backend: LMDB'") from None
    try:
        return plyvel.DB(path, create_if_missing=False)
    except Exception as e:
        raise CaffeinitError(f"LevelDB '{path}' cannot be opened: {e}") from None


# -- HDF5 ---------------------------------------------------------------------------------------------------------
class HDF5Source(Source):
    """HDF5Data: ``source`` lists .h5 files (separated by any whitespace, as Caffe reads them with ``>>``: a name
    with a space is two); each top is a dataset of that name, rows are items.

    Files are read whole when first needed, as Caffe does; ``shuffle`` permutes files and rows (from the seed).
    """

    def __init__(self, list_path: str, tops: Sequence[str], shuffle: bool = False):
        self.list_path, self.tops, self.shuffle = list_path, tuple(tops), shuffle
        try:
            with open(list_path, encoding="utf-8") as f:
                names = [(n, name) for n, line in enumerate(f, 1) for name in line.split()]
        except OSError as e:
            raise CaffeinitError(f"HDF5 list '{list_path}': {e.strerror}") from None
        self.files = []
        for line_no, name in names:
            path = _hdf5_path(name, list_path)
            if not os.path.isfile(path):
                why = "does not exist" if not os.path.exists(path) else why_not_a_file(path)
                raise CaffeinitError(f"{list_path}:{line_no}: HDF5 file '{name}' {why}")
            self.files.append((path, f"{list_path}:{line_no}"))
        if not self.files:
            raise CaffeinitError(f"HDF5 list '{list_path}' is empty")
        self._cache: dict[int, list[np.ndarray]] = {}
        self._rows = None

    @staticmethod
    def listed_files(list_path: str) -> list[str]:
        """The paths of the files an HDF5 list names (as ``HDF5Source`` resolves them)."""
        with open(list_path, encoding="utf-8") as f:
            return [_hdf5_path(name, list_path) for name in f.read().split()]

    def load(self, file_index: int) -> list[np.ndarray]:
        """The tops' datasets of one file as float32 arrays (Caffe loads HDF5 data as float)."""
        if file_index not in self._cache:
            import h5py
            path, where = self.files[file_index]
            try:
                with h5py.File(path, "r") as f:
                    arrays = []
                    for top in self.tops:
                        if top not in f:
                            raise CaffeinitError(f"{where}: HDF5 file '{path}' has no dataset '{top}' "
                                                 f"(it has: {', '.join(sorted(f.keys())) or 'none'})")
                        arrays.append(np.asarray(f[top], np.float32))
            except OSError as e:
                raise CaffeinitError(f"{where}: HDF5 file '{path}' cannot be read: {e}") from None
            rows = {a.shape[0] if a.ndim else 0 for a in arrays}
            if len(rows) != 1 or 0 in rows:
                raise CaffeinitError(f"{where}: datasets {', '.join(self.tops)} in '{path}' have different or "
                                     "no rows")
            self._cache = {file_index: arrays}  # keep one file in memory, as Caffe does
        return self._cache[file_index]

    def __len__(self) -> int:
        if self._rows is None:
            import h5py
            self._rows = []
            for path, where in self.files:
                with h5py.File(path, "r") as f:
                    self._rows.append(f[self.tops[0]].shape[0] if self.tops[0] in f else 0)
        return sum(self._rows)

    def describe(self) -> str:
        return f"HDF5 files listed in '{self.list_path}'"

    def tasks(self, seed: int):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 4])
        while True:
            order = rng.permutation(len(self.files)) if self.shuffle else range(len(self.files))
            for file_index in order:
                arrays = self.load(int(file_index))
                rows = rng.permutation(arrays[0].shape[0]) if self.shuffle else range(arrays[0].shape[0])
                for row in rows:
                    yield tuple(a[row] for a in arrays)

    def decode(self, task, rng):
        return tuple(np.array(a, np.float32) for a in task)


def _hdf5_path(name: str, list_path: str) -> str:
    """Where a file an HDF5 list names is: as given (Caffe's rule: relative to the working directory), else beside
    the list."""
    if os.path.isabs(name) or os.path.exists(name):
        return name
    return os.path.join(os.path.dirname(os.path.abspath(list_path)), name)


# -- DummyData -----------------------------------------------------------------------------------------------------
class DummySource(Source):
    """DummyData: each top filled batch by batch with its filler (Caffe's fillers, seeded per batch)."""

    def __init__(self, layer_param: caffe_pb2.LayerParameter, shapes: Sequence[Shape]):
        self.name = layer_param.name
        self.tops = tuple(layer_param.top)
        self.shapes = [tuple(s) for s in shapes]
        fillers = list(layer_param.dummy_data_param.data_filler)
        if not fillers:
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = fillers * len(self.tops) if len(fillers) == 1 else fillers

    def __len__(self) -> int:
        return self.shapes[0][0] if self.shapes[0] else 1

    def describe(self) -> str:
        return "DummyData fillers"

    def batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from caffeinit.fillers import fill
        out = {}
        for top, shape, filler in zip(self.tops, self.shapes, self.fillers):
            shape = (batch_size,) + shape[1:] if shape else shape
            where = f"layer '{self.name}' (DummyData), top '{top}'"
            out[top] = np.asarray(fill(filler, shape, rng, where=where), np.float32)
        return out


# -- a layer's own source ----------------------------------------------------------------------------------------
def layer_source(layer_param: caffe_pb2.LayerParameter, phase: int = caffe_pb2.TEST,
                 root_folder: str | None = None, skip_bad: bool = False) -> Source:
    """The source of a net's own data layer. ``root_folder`` overrides an ImageData layer's ``root_folder``.

    Paths in the layer (LMDB, lists, HDF5 lists) are relative to the working directory, as in Caffe.
    """
    kind, name, tops = layer_param.type, layer_param.name, tuple(layer_param.top)
    where = f"layer '{name}' ({kind})"
    if kind == "Data":
        dp = layer_param.data_param
        if not dp.source:
            raise CaffeinitError(f"{where}: data_param.source is not set")
        preprocess = Preprocess.from_transform_param(layer_param.transform_param, phase, where=where)
        shapes = peek_top_shapes(layer_param, phase)
        # data_param.rand_skip is not read: Caffe's Data layer stopped skipping records when it dropped its
        # DataReader (BVLC master reads from the first record)
        return DatumDBSource(dp.source, dp.backend, preprocess, tops, skip_bad=skip_bad,
                             expected_shape=shapes[0][1:])
    if kind == "ImageData":
        ip = layer_param.image_data_param
        entries = _image_data_entries(layer_param, root_folder)
        preprocess = Preprocess.from_transform_param(layer_param.transform_param, phase,
                                                     resize=_image_data_resize(layer_param), where=where)
        return ImageSource(entries, preprocess, tops[0], tops[1] if len(tops) > 1 else None, color=ip.is_color,
                           shuffle=ip.shuffle, rand_skip=ip.rand_skip, skip_bad=skip_bad, name=ip.source)
    if kind == "HDF5Data":
        if layer_param.HasField("transform_param"):
            raise CaffeinitError(f"{where}: HDF5Data does not transform data (Caffe refuses transform_param)")
        hp = layer_param.hdf5_data_param
        if not hp.source:
            raise CaffeinitError(f"{where}: hdf5_data_param.source is not set")
        return HDF5Source(hp.source, tops, shuffle=hp.shuffle)
    if kind == "DummyData":
        return DummySource(layer_param, peek_top_shapes(layer_param, phase))
    if kind == "Input":
        raise CaffeinitError(f"{where} has no data of its own: pass images with --images")
    if kind == "MemoryData":
        raise CaffeinitError(f"{where} gets its data from the calling program: pass images with --images")
    raise CaffeinitError(f"{where}: reading this layer's data is not supported; pass images with --images")


def add_layer_inputs(files, layer_param: caffe_pb2.LayerParameter, root_folder: str | None = None) -> None:
    """Add to ``files`` (a ``caffeinit.fileio.InputFiles``) what a layer reads: its transform_param's mean file,
    its database folder (LMDB/LevelDB), its image or HDF5 list and, looked at only when an output that exists is
    checked, the files such a list names. ``root_folder`` as ``layer_source`` takes it. Paths as Caffe reads them
    (relative to the working directory)."""
    where = f"of layer '{layer_param.name}'"
    tp = layer_param.transform_param
    if tp.HasField("mean_file"):
        files.add(tp.mean_file, f"the mean_file {where}")
    if layer_param.data_param.source:
        source = layer_param.data_param.source
        if os.path.isdir(source):
            files.add_folder(source, f"the database {where}")
        else:
            files.add(source, f"the database {where}")
    if layer_param.image_data_param.source:
        source = layer_param.image_data_param.source
        files.add(source, f"the image list {where}")
        files.add_later(lambda: [(e.path, f"an image listed in {e.where}")
                                 for e in _image_data_entries(layer_param, root_folder)])
    if layer_param.hdf5_data_param.source:
        source = layer_param.hdf5_data_param.source
        files.add(source, f"the HDF5 list {where}")
        files.add_later(lambda source=source: [(p, f"a file listed in '{source}'")
                                               for p in HDF5Source.listed_files(source)])
    if layer_param.window_data_param.source:
        files.add(layer_param.window_data_param.source, f"the window file {where}")
        if layer_param.window_data_param.HasField("mean_file"):
            files.add(layer_param.window_data_param.mean_file, f"the mean_file {where}")


def _image_data_entries(layer_param, root_folder=None) -> list[ImageEntry]:
    ip = layer_param.image_data_param
    if not ip.source:
        raise CaffeinitError(f"layer '{layer_param.name}' (ImageData): image_data_param.source is not set")
    return parse_image_list(ip.source, root_folder=root_folder if root_folder is not None else ip.root_folder,
                            relative_to_list=False)


def _image_data_resize(layer_param) -> tuple[int, int] | None:
    ip = layer_param.image_data_param
    if (ip.new_height > 0) != (ip.new_width > 0):
        raise CaffeinitError(f"layer '{layer_param.name}' (ImageData): new_height and new_width must be set "
                             "together")
    return (ip.new_height, ip.new_width) if ip.new_height > 0 else None


def first_datum_shape(layer_param: caffe_pb2.LayerParameter) -> tuple[int, int, int]:
    """(C, H, W) of the first record of a Data layer's database, decoded as its transform_param says."""
    dp, tp = layer_param.data_param, layer_param.transform_param
    db = DatumDBSource(dp.source, dp.backend, Preprocess(force_color=tp.force_color, force_gray=tp.force_gray))
    pixels, hwc, _ = db.pixels(db.first())
    if not hwc:
        return tuple(int(d) for d in pixels.shape)
    return (pixels.shape[2] if pixels.ndim == 3 else 1, int(pixels.shape[0]), int(pixels.shape[1]))


def peek_top_shapes(layer_param: caffe_pb2.LayerParameter, phase: int = caffe_pb2.TEST) -> list[Shape]:
    """The shapes of a data layer's tops, reading only the first record or image (as Caffe's set-up does)."""
    kind, name, n_tops = layer_param.type, layer_param.name, len(layer_param.top)
    where = f"layer '{name}' ({kind})"
    crop = int(layer_param.transform_param.crop_size)

    def with_label(batch, item):
        if batch <= 0:
            raise CaffeinitError(f"{where}: batch_size must be positive, got {batch}")
        shapes = [(batch,) + tuple(item)]
        return shapes + [(batch,)] * (n_tops - 1)

    if kind == "Input":
        shapes = [tuple(int(d) for d in s.dim) for s in layer_param.input_param.shape]
        if not shapes:  # Caffe leaves the tops empty until a caller reshapes them
            raise CaffeinitError(f"{where}: no input_param shape: give the shape of "
                                 f"{', '.join(repr(t) for t in layer_param.top)} (--input-shape NAME=N,C,H,W)")
        if len(shapes) not in (1, n_tops):
            raise CaffeinitError(f"{where}: {len(shapes)} shapes for {n_tops} tops (give 1 or one per top)")
        return shapes * n_tops if len(shapes) == 1 else shapes
    if kind == "Data":
        dp = layer_param.data_param
        if not dp.source:
            raise CaffeinitError(f"{where}: data_param.source is not set")
        c, h, w = first_datum_shape(layer_param)
        return with_label(dp.batch_size, (c, crop, crop) if crop else (c, h, w))
    if kind == "ImageData":
        ip = layer_param.image_data_param
        entry = _image_data_entries(layer_param)[0]
        try:
            pixels = read_image(entry.path, ip.is_color, _image_data_resize(layer_param))
        except ImageDecodeError as e:
            raise CaffeinitError(f"{entry.where}: cannot read image '{entry.path}': {e}") from None
        h, w, c = pixels.shape
        return with_label(ip.batch_size, (c, crop, crop) if crop else (c, h, w))
    if kind == "HDF5Data":
        hp = layer_param.hdf5_data_param
        source = HDF5Source(hp.source, layer_param.top)
        arrays = source.load(0)
        if hp.batch_size <= 0:
            raise CaffeinitError(f"{where}: batch_size must be positive, got {hp.batch_size}")
        return [(hp.batch_size,) + a.shape[1:] for a in arrays]
    if kind == "MemoryData":
        mp = layer_param.memory_data_param
        if min(mp.batch_size, mp.channels, mp.height, mp.width) <= 0:
            raise CaffeinitError(f"{where}: batch_size, channels, height and width must be set and positive")
        return with_label(mp.batch_size, (mp.channels, mp.height, mp.width))
    if kind == "WindowData":
        wp = layer_param.window_data_param
        if crop <= 0:
            raise CaffeinitError(f"{where}: transform_param.crop_size must be set")
        return with_label(wp.batch_size, (3, crop, crop))
    if kind == "DummyData":
        return _dummy_shapes(layer_param)
    raise CaffeinitError(f"{where} is not a data layer")


def _dummy_shapes(layer_param) -> list[Shape]:
    dp, n_tops = layer_param.dummy_data_param, len(layer_param.top)
    where = f"layer '{layer_param.name}' (DummyData)"
    if len(dp.data_filler) not in (0, 1, n_tops):
        raise CaffeinitError(f"{where}: {len(dp.data_filler)} data_fillers for {n_tops} tops")
    legacy = [list(dp.num), list(dp.channels), list(dp.height), list(dp.width)]
    if any(legacy):
        if dp.shape:
            raise CaffeinitError(f"{where}: give either shape or num/channels/height/width, not both")
        for values in legacy:
            if len(values) not in (1, n_tops):
                raise CaffeinitError(f"{where}: num/channels/height/width need 1 or {n_tops} values each")
        return [tuple(int(v[0] if len(v) == 1 else v[i]) for v in legacy) for i in range(n_tops)]
    shapes = [tuple(int(d) for d in s.dim) for s in dp.shape]
    if len(shapes) not in (1, n_tops):
        raise CaffeinitError(f"{where}: {len(shapes)} shapes for {n_tops} tops (give 1 or one per top)")
    return shapes * n_tops if len(shapes) == 1 else shapes
