"""Weights files: ``.caffemodel`` (a binary NetParameter) and ``.binaryproto`` (one BlobProto, e.g. a mean image).

Blob data moves as whole packed fields: ``np.array(field, np.float32)`` to read, raw little-endian float32 bytes
merged into the message to write, never a Python loop over values. ``write_caffemodel`` streams one layer at a
time, and given arrays it writes them straight from their memory without building BlobProto messages, so that
writing a model costs little memory beyond the arrays themselves.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from caffeinit.errors import CaffeinitError, layer_error
from caffeinit.fileio import PathLike, atomic_output, check_output_path
from caffeinit.proto import caffe_pb2
from caffeinit.upgrade import upgrade_net_as_needed

# Protobuf messages (and Caffe's reader, util/io.cpp) stop at 2 GiB - 1 bytes.
MAX_MESSAGE_BYTES = 2**31 - 1

_LEGACY_DIMS = ("num", "channels", "height", "width")
_BLOBS_FIELD = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number  # 7
_LAYER_FIELD = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number  # 100
_LEN = 2  # wire type of length-delimited fields


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field_number: int) -> bytes:
    return _varint(field_number << 3 | _LEN)


_DATA_KEY = _key(caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number)  # 0x2a
_SHAPE_KEY = _key(caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["shape"].number)  # 0x3a
_DIM_KEY = _key(caffe_pb2.BlobShape.DESCRIPTOR.fields_by_name["dim"].number)  # 0x0a


# -- reading ------------------------------------------------------------------------------------------------

def _read_file(path: PathLike, what: str) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CaffeinitError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if size > MAX_MESSAGE_BYTES:
        raise CaffeinitError(f"{path}: {what} is {size:,} bytes; protobuf messages (and Caffe itself) are limited "
                             f"to 2 GiB ({MAX_MESSAGE_BYTES:,} bytes)")
    try:
        with open(path, "rb") as f:  # bounded: a device or pipe (/dev/zero) has no size to check beforehand
            data = f.read(MAX_MESSAGE_BYTES + 1)
    except OSError as e:
        raise CaffeinitError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise CaffeinitError(f"{path}: {what} is larger than {MAX_MESSAGE_BYTES:,} bytes, the limit of protobuf "
                             "messages (and of Caffe itself)")
    return data


def read_caffemodel(path: PathLike) -> caffe_pb2.NetParameter:
    """Parse a binary NetParameter and upgrade it as Caffe's ReadNetParamsFromBinaryFileOrDie does."""
    if is_hdf5_weights(path):
        raise CaffeinitError(f"{path}: HDF5 weights (.caffemodel.h5) hold the blobs only, not the net; this needs a "
                             "binary .caffemodel")
    data = _read_file(path, "caffemodel")
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError:
        raise CaffeinitError(f"{path}: not a valid caffemodel (truncated or corrupt protobuf data)"
                             f"{_text_hint(data)}") from None
    if not net.layer and not net.layers:
        raise CaffeinitError(f"{path}: not a valid caffemodel (no layers){_text_hint(data)}")
    del data
    upgrade_net_as_needed(net, str(path))
    return net


def _text_hint(data: bytes) -> str:
    """A note for a text file given where a binary one belongs (a prototxt passed as the weights)."""
    head = data[:4096]
    try:
        text = head.decode("utf-8", "strict" if len(data) <= len(head) else "ignore")
    except UnicodeDecodeError:
        return ""
    if head and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "; it is text, a .prototxt? (weights are a binary .caffemodel)"
    return ""


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The shape Caffe's Blob::FromProto gives: legacy num/channels/height/width when any is set, else ``shape``
    (no shape and no legacy dims: a 0-axis blob holding one value)."""
    if any(blob.HasField(name) for name in _LEGACY_DIMS):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(blob.shape.dim)


# Blob::Reshape's limits: at most kMaxBlobAxes axes, each >= 0, and at most INT_MAX values.
MAX_BLOB_AXES = 32
MAX_BLOB_COUNT = 2**31 - 1


def blob_to_array(blob: caffe_pb2.BlobProto, where: str = "blob") -> np.ndarray:
    """A BlobProto's values as a float32 array (``double_data`` when non-empty, as Caffe prefers). Shapes that
    Caffe's Blob::Reshape refuses (a negative dimension, more than 32 axes or 2**31 - 1 values) are refused."""
    shape = blob_shape(blob)
    if len(shape) > MAX_BLOB_AXES:
        raise CaffeinitError(f"{where}: shape has {len(shape)} axes; Caffe's blobs have at most {MAX_BLOB_AXES}")
    if any(d < 0 for d in shape):
        raise CaffeinitError(f"{where}: shape {list(shape)} has a negative dimension")
    if math.prod(shape) > MAX_BLOB_COUNT:
        raise CaffeinitError(f"{where}: shape {list(shape)} holds {math.prod(shape):,} values; Caffe's blobs hold "
                             f"at most {MAX_BLOB_COUNT:,}")
    if len(blob.double_data):
        with np.errstate(over="ignore"):  # out-of-range doubles become +-inf, as Caffe's cast gives
            values = np.array(blob.double_data, np.float64).astype(np.float32)
    else:
        values = np.array(blob.data, np.float32)
    count = int(np.prod(shape, dtype=np.int64))
    if values.size != count:
        raise CaffeinitError(f"{where}: shape {list(shape)} needs {count} values but the blob holds {values.size}")
    return values.reshape(shape)


def load_weights(source: PathLike | caffe_pb2.NetParameter) -> dict[str, list[np.ndarray]]:
    """Blob arrays by layer name from a caffemodel path or a parsed NetParameter, in the file's order (the order in
    which Caffe's CopyTrainedLayersFrom copies them); layers without blobs are left out. When names repeat, the later
    layer wins and takes its place in that order. A path ending in ``.h5`` (or an HDF5 file) is read as Caffe's
    ``.caffemodel.h5`` (``snapshot_format: HDF5``), as CopyTrainedLayersFrom does."""
    if not isinstance(source, caffe_pb2.NetParameter) and is_hdf5_weights(source):
        return load_hdf5_weights(source)
    net = source if isinstance(source, caffe_pb2.NetParameter) else read_caffemodel(source)
    label = "" if isinstance(source, caffe_pb2.NetParameter) else f"{source}: "
    weights: dict[str, list[np.ndarray]] = {}
    for layer in net.layer:
        if len(layer.blobs):
            weights.pop(layer.name, None)
            weights[layer.name] = [blob_to_array(blob, f"{label}layer '{layer.name}' blob {i}")
                                   for i, blob in enumerate(layer.blobs)]
    return weights


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5_weights(path: PathLike) -> bool:
    """Whether Caffe reads ``path`` as HDF5 weights: its name ends in ``.h5`` (Caffe's rule), or it holds HDF5
    data (a ``.caffemodel.h5`` renamed)."""
    if str(path).endswith(".h5"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
    except OSError:
        return False


def load_hdf5_weights(path: PathLike) -> dict[str, list[np.ndarray]]:
    """Blob arrays by layer name from Caffe's HDF5 weights (Net::ToHDF5: group ``data``, one group per layer, one
    dataset per blob named by its index), in name order as CopyTrainedLayersFromHDF5 visits them; layers without
    datasets are left out. Caffe leaves out the blobs a layer shares from another (``param { name }``); a layer
    holding only some of its blobs is refused here, as the arrays are a list."""
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError as e:
        if e.errno:  # the file system's refusal (missing, a folder, no permission), not HDF5's
            raise CaffeinitError(f"{path}: cannot read caffemodel: {os.strerror(e.errno)}") from None
        raise CaffeinitError(f"{path}: not a valid HDF5 caffemodel ({e})") from None
    weights: dict[str, list[np.ndarray]] = {}
    with file:
        data = file.get("data")
        if not isinstance(data, h5py.Group):
            raise CaffeinitError(f"{path}: an HDF5 file without Caffe's 'data' group: not a .caffemodel.h5")
        for name, group in data.items():
            where = f"{path}: layer '{name}'"
            if not isinstance(group, h5py.Group):
                raise CaffeinitError(f"{where}: a dataset where Caffe writes a group of blobs")
            names = sorted(group, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
            if names != [str(k) for k in range(len(names))]:
                raise CaffeinitError(f"{where}: blobs {', '.join(names)}; Caffe names them 0, 1, ... (a layer "
                                     "holding only some of its blobs, the others shared, is not supported)")
            arrays = []
            for k in range(len(names)):
                dataset = group[str(k)]
                if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiu":
                    raise CaffeinitError(f"{where} blob {k}: not a numeric dataset")
                if dataset.ndim > MAX_BLOB_AXES:
                    raise CaffeinitError(f"{where} blob {k}: {dataset.ndim} axes; Caffe's blobs have at most "
                                         f"{MAX_BLOB_AXES}")
                if dataset.size > MAX_BLOB_COUNT:
                    raise CaffeinitError(f"{where} blob {k}: {dataset.size:,} values; Caffe's blobs hold at most "
                                         f"{MAX_BLOB_COUNT:,}")
                with np.errstate(over="ignore"):  # doubles beyond float32 become +-inf, as Caffe's read gives
                    arrays.append(np.asarray(dataset[()], dtype=np.float32).reshape(dataset.shape))
            if arrays:
                weights[name] = arrays
    return weights


def check_blob_shape(shape: Sequence[int], expected_shape: Sequence[int], layer_name: str, index: int,
                     where: str = "in the weights", layer_type: str | None = None) -> None:
    """Raise unless Caffe's Blob::ShapeEquals accepts a blob of ``shape`` for ``expected_shape``: the same shape,
    or a 4-D legacy blob whose dims match the expected shape from the end (IP weight 1x1xNxK for (N, K)). The
    message names the layer's type where it is given."""
    shape, expected = tuple(int(d) for d in shape), tuple(int(d) for d in expected_shape)
    if shape == expected or (len(shape) == 4 and len(expected) <= 4 and (1,) * (4 - len(expected)) + expected == shape):
        return
    message = f"blob {index} has shape {list(shape)} {where} but the net needs {list(expected)}"
    if layer_type is None:
        raise CaffeinitError(f"layer '{layer_name}': {message}")
    raise layer_error(layer_name, layer_type, message)


def fit_blob(array: np.ndarray, expected_shape: Sequence[int], layer_name: str, index: int,
             where: str = "in the weights", layer_type: str | None = None) -> np.ndarray:
    """``array`` reshaped to ``expected_shape`` where ``check_blob_shape`` accepts it."""
    check_blob_shape(array.shape, expected_shape, layer_name, index, where, layer_type)
    expected = tuple(int(d) for d in expected_shape)
    return array if array.shape == expected else array.reshape(expected)


def read_mean_binaryproto(path: PathLike) -> np.ndarray:
    """A mean file (one BlobProto, as written by compute_image_mean) as a (C, H, W) float32 array."""
    data = _read_file(path, "binaryproto")
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except DecodeError:
        raise CaffeinitError(f"{path}: not a valid binaryproto (truncated or corrupt protobuf data)") from None
    array = blob_to_array(blob, str(path))
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]  # compute_image_mean writes 1 x C x H x W
    if array.ndim != 3:
        raise CaffeinitError(f"{path}: a mean file needs a 1xCxHxW or CxHxW blob, found shape {list(blob_shape(blob))}")
    return array


# -- writing ------------------------------------------------------------------------------------------------

def _blob_parts(array: np.ndarray) -> tuple[list[bytes | memoryview], int]:
    """The serialized BlobProto of ``array`` as Caffe's Blob::ToProto writes it (packed float data, then the
    shape, which a 0-axis blob lacks), as a list of byte chunks (the data chunk is a view of the array), and the
    total length."""
    values = np.asarray(array, dtype="<f4")
    if not values.flags.c_contiguous:
        values = values.copy(order="C")  # (np.ascontiguousarray would turn a 0-axis array into 1-D)
    parts: list[bytes | memoryview] = []
    if values.size:
        parts += [_DATA_KEY + _varint(values.nbytes), memoryview(values).cast("B")]
    if values.ndim:
        dims = b"".join(_varint(int(d)) for d in values.shape)
        shape = _DIM_KEY + _varint(len(dims)) + dims
        parts += [_SHAPE_KEY + _varint(len(shape)) + shape]
    return parts, sum(len(p) for p in parts)


def array_to_blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    """A BlobProto holding ``array`` as float32, as Caffe's Blob::ToProto writes it (shape + packed data)."""
    parts, total = _blob_parts(array)
    buffer = bytearray(total)
    offset = 0
    for part in parts:
        buffer[offset:offset + len(part)] = part
        offset += len(part)
    blob = caffe_pb2.BlobProto()
    blob.MergeFromString(buffer)
    return blob


def _check_blobs(blobs: Mapping[str, Sequence[np.ndarray]], net_param: caffe_pb2.NetParameter) -> None:
    names = {layer.name for layer in net_param.layer}
    unknown = sorted(set(blobs) - names)
    if unknown:
        raise CaffeinitError(f"weights given for layer '{unknown[0]}', which is not in net '{net_param.name}'")


def _layer_as_saved(layer: caffe_pb2.LayerParameter, n_blobs: int, phase: int | None) -> caffe_pb2.LayerParameter:
    """A copy of ``layer`` without blobs plus what Caffe's set-up adds to its own copy of the parameters."""
    saved = caffe_pb2.LayerParameter()
    saved.CopyFrom(layer)
    saved.ClearField("blobs")
    if phase is not None and not saved.HasField("phase"):
        saved.phase = phase
    if saved.type == "BatchNorm":
        # BatchNormLayer::LayerSetUp adds a ParamSpec with lr_mult 0 for each blob that has none.
        while len(saved.param) < n_blobs:
            saved.param.add().lr_mult = 0.0
    return saved


def net_to_proto(net_param: caffe_pb2.NetParameter, blobs: Mapping[str, Sequence[np.ndarray]],
                 phase: int | None = None) -> caffe_pb2.NetParameter:
    """What Caffe's Net::ToProto writes: the net's name, then each layer's parameters with its blobs replaced by
    ``blobs[layer.name]`` (layers missing from ``blobs`` get none).

    ``net_param`` is the net as Caffe's Net::Init holds it: filtered, upgraded, splits inserted, each layer's
    phase set (``phase`` sets it on the layers that lack one).
    """
    _check_blobs(blobs, net_param)
    out = caffe_pb2.NetParameter(name=net_param.name)
    for layer in net_param.layer:
        arrays = blobs.get(layer.name, ())
        saved = out.layer.add()
        saved.CopyFrom(_layer_as_saved(layer, len(arrays), phase))
        for array in arrays:
            saved.blobs.append(array_to_blob(array))
    return out


def _layer_chunks(layer: caffe_pb2.LayerParameter, arrays: Sequence[np.ndarray] | None,
                  phase: int | None) -> Iterable[bytes | memoryview]:
    """The serialized NetParameter.layer entry for one layer: its own blobs, or ``arrays`` written in place of
    them. Fields are in field-number order (as protobuf writes them), so the blobs go between fields 1-6 and
    fields 8 and up."""
    if arrays is None:
        body = layer.SerializeToString()
        return [_key(_LAYER_FIELD) + _varint(len(body)), body]
    saved = _layer_as_saved(layer, len(arrays), phase)
    before = caffe_pb2.LayerParameter()
    after = caffe_pb2.LayerParameter()
    before.CopyFrom(saved)
    after.CopyFrom(saved)
    for field, _ in saved.ListFields():
        (after if field.number < _BLOBS_FIELD else before).ClearField(field.name)
    head, tail = before.SerializeToString(), after.SerializeToString()
    chunks: list[bytes | memoryview] = [head]
    for array in arrays:
        parts, size = _blob_parts(array)
        chunks += [_key(_BLOBS_FIELD) + _varint(size), *parts]
    chunks.append(tail)
    size = sum(len(c) for c in chunks)
    return [_key(_LAYER_FIELD) + _varint(size), *chunks]


def write_caffemodel(path: PathLike, net_param: caffe_pb2.NetParameter,
                     blobs: Mapping[str, Sequence[np.ndarray]] | None = None, phase: int | None = None,
                     inputs: Iterable[PathLike] = ()) -> None:
    """Write ``net_param`` as a binary caffemodel, atomically, never over one of ``inputs``.

    With ``blobs``, write what ``net_to_proto(net_param, blobs, phase)`` would give (byte for byte) straight from
    the arrays (``phase`` only applies then). The layers are streamed one at a time.
    """
    check_output_path(path, inputs)
    if blobs is not None:
        _check_blobs(blobs, net_param)
        if len(net_param.layers):
            raise CaffeinitError(f"net '{net_param.name}' has V1 'layers'; upgrade it before writing new weights")
        head = caffe_pb2.NetParameter(name=net_param.name)
    else:
        head = caffe_pb2.NetParameter()
        head.CopyFrom(net_param)
        head.ClearField("layer")
    with atomic_output(path, inputs) as temp, open(temp, "wb") as f:
        f.write(head.SerializeToString())
        for layer in net_param.layer:
            arrays = None if blobs is None else blobs.get(layer.name, ())
            _check_finite(layer, arrays)
            for chunk in _layer_chunks(layer, arrays, phase):
                f.write(chunk)
            if f.tell() > MAX_MESSAGE_BYTES:
                raise CaffeinitError(f"{path}: the caffemodel would exceed 2 GiB ({MAX_MESSAGE_BYTES:,} bytes), "
                                     "which neither protobuf nor Caffe can read")


def _check_finite(layer: caffe_pb2.LayerParameter, arrays: Sequence[np.ndarray] | None) -> None:
    """No NaN or infinity ever reaches a written file."""
    if arrays is None:
        arrays = [blob_to_array(b, f"layer '{layer.name}' blob {k}") for k, b in enumerate(layer.blobs)]
    for k, array in enumerate(arrays):
        bad = count_non_finite(np.asarray(array, np.float32))
        if bad:
            raise CaffeinitError(f"layer '{layer.name}' blob {k} has {bad} non-finite values (NaN or inf); "
                                 "nothing was written")


_FINITE_CHUNK = 1 << 16  # values checked at a time: a small reused mask instead of one the size of the blob


def count_non_finite(array: np.ndarray) -> int:
    """How many values of ``array`` are NaN or infinite, without a temporary as large as the array."""
    flat = array.reshape(-1)  # a view unless the array is not contiguous
    mask = np.empty(min(flat.size, _FINITE_CHUNK), bool)
    bad = 0
    for start in range(0, flat.size, _FINITE_CHUNK):
        chunk = flat[start:start + _FINITE_CHUNK]
        finite = np.isfinite(chunk, out=mask[:chunk.size])
        if not finite.all():
            bad += chunk.size - int(np.count_nonzero(finite))
    return bad


def write_binaryproto(path: PathLike, array: np.ndarray, inputs: Iterable[PathLike] = ()) -> None:
    """Write ``array`` as one BlobProto (a (C, H, W) mean is written 1 x C x H x W, as compute_image_mean does)."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[np.newaxis]
    parts, _ = _blob_parts(array)
    with atomic_output(path, inputs) as temp, open(temp, "wb") as f:
        for part in parts:
            f.write(part)
