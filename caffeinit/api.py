"""The documented Python API: load a net (with weights), run it, read blobs, save it."""
from __future__ import annotations

import difflib
import math
import operator
import os
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from caffeinit.device import select_device
from caffeinit.errors import CaffeinitError
from caffeinit.executor import TorchNet
from caffeinit.init.config import FLOAT32_MAX
from caffeinit.net import Net, build_net, changed_parameters, parse_phase, shapes_text
from caffeinit.proto import caffe_pb2


INT32_MAX = 2**31 - 1
SEED_MAX = 2**63 - 1  # as the CLI's --seed


def read_net_param(net: str | os.PathLike | caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A net definition from a prototxt (any historic format, upgraded), a solver prototxt, or a NetParameter
    (a V0/V1 or ``input_dim`` one upgraded in a copy, as a prototxt in that format is)."""
    if isinstance(net, caffe_pb2.NetParameter):
        from caffeinit.upgrade import upgrade_net_as_needed
        upgraded = caffe_pb2.NetParameter()
        upgraded.CopyFrom(net)
        return upgraded if upgrade_net_as_needed(upgraded, f"net '{net.name}'") else net
    from caffeinit.prototxt import read_net
    return read_net(_path(net, "net", "a prototxt path or a caffe_pb2.NetParameter"))


def _path(value, what: str, expected: str = "a path") -> str:
    """``value`` as a path string; anything else is refused naming ``what``."""
    if isinstance(value, (str, os.PathLike, bytes)):
        return os.fsdecode(os.fspath(value))
    raise CaffeinitError(f"{what} must be {expected}, not {type(value).__name__}")


class CaffeModel:
    """A Caffe net with its weights, runnable on CPU or CUDA with Caffe's numbers.

    >>> model = caffeinit.load("deploy.prototxt", weights="net.caffemodel")
    >>> out = model.forward({"data": images})          # {"prob": array}
    >>> blobs = model.forward({"data": images}, blobs="all")

    ``net``: a prototxt path (any historic format, or a solver naming its net) or a ``caffe_pb2.NetParameter``.
    ``weights``: a .caffemodel (or HDF5 ``.h5``) path, or {layer name: [arrays in Caffe's blob order]}; layers the
    net does not have are ignored and layers without weights get their fillers' values (seeded by ``seed``), as
    Caffe's ``CopyTrainedLayersFrom`` and ``Net::Init`` do. ``phase`` ("test" or "train"), ``stages`` (a name or
    a list of names) and ``level`` are Caffe's NetState. ``input_shapes`` {data-layer top: shape} replaces the
    declared input shapes. ``device``: "cpu" (default), "auto" (CUDA when present), "cuda[:N]" or a torch.device.
    ``precision``: "ieee" (default: IEEE fp32 convolutions and matmuls, Caffe's numbers) or "tf32" (faster on
    Ampere+ GPUs, ~1e-3 relative error); torch's setting is process-wide, so the last model loaded decides it.

    Attributes: ``net`` (the built :class:`caffeinit.net.Net`: layers, blob shapes, inputs, outputs), ``module``
    (the ``torch.nn.Module`` running it), ``device``, ``phase``, ``net_param`` (the upgraded definition).
    Bad arguments raise :class:`caffeinit.CaffeinitError` naming the culprit.
    """

    def __init__(self, net: str | os.PathLike | caffe_pb2.NetParameter, weights=None, *, phase: str | int = "test",
                 stages: str | Sequence[str] = (), level: int = 0, device: str | torch.device = "cpu", seed: int = 0,
                 input_shapes: Mapping[str, Sequence[int]] | None = None, precision: str = "ieee"):
        self.net_param = read_net_param(net)
        self.phase = _phase(phase)
        self.stages, self.level = _stages(stages), _integer(level, "level", -INT32_MAX - 1, INT32_MAX)
        seed = _integer(seed, "seed", 0, SEED_MAX)
        input_shapes = _input_shapes(input_shapes)
        if isinstance(device, torch.device):
            device = str(device)  # checked as a string is: a CUDA device that is not there is refused
        elif not isinstance(device, str):
            raise CaffeinitError(f"device must be a string (auto, cpu, cuda or cuda:N) or a torch.device, not "
                                 f"{type(device).__name__}")
        self.device = select_device(device, precision)
        self.net: Net = build_net(self.net_param, self.phase, self.stages, self.level, input_shapes)
        _check_input_names(self.net, input_shapes)
        blobs = _read_weights(weights)
        # Arrays this call read from a file belong to nobody else: the parameters may keep their memory.
        self.module = TorchNet(self.net, blobs, seed=seed, device=self.device,
                               copy_blobs=isinstance(weights, Mapping),
                               source="" if weights is None or isinstance(weights, Mapping) else _path(weights, ""))

    # -- shapes -----------------------------------------------------------------------------------------------
    def reshape(self, input_shapes: Mapping[str, Sequence[int]]) -> None:
        """Re-infer every shape for new input shapes (Caffe's Net::Reshape); weights are kept, so every layer's
        parameters must keep their shapes (Caffe CHECKs them too). Inputs left out take their declared shapes."""
        if not isinstance(input_shapes, Mapping):
            raise CaffeinitError(f"reshape takes {{input blob: shape}}, not {type(input_shapes).__name__}")
        input_shapes = _input_shapes(input_shapes)
        net = build_net(self.net_param, self.phase, self.stages, self.level, input_shapes)
        _check_input_names(net, input_shapes)
        changed = changed_parameters(net, self.net)
        if changed is not None:
            node, twin = changed
            k, new, old = next((k, a, b) for k, (a, b) in enumerate(zip(node.layer.blob_shapes, twin.layer.blob_shapes))
                               if tuple(a) != tuple(b))
            given = ", ".join(f"{b} {shapes_text([s])}" for b, s in input_shapes.items())
            raise CaffeinitError(f"layer '{node.name}' ({node.type}): for inputs {given} its parameter blob {k} would "
                                 f"have to be {shapes_text([new])}, not {shapes_text([old])}: the net does not follow "
                                 "that input shape (e.g. a Reshape with a fixed first dim runs only at its declared "
                                 "batch)")
        self.net = self.module.net = net

    # -- running ------------------------------------------------------------------------------------------------
    def forward(self, inputs: Mapping[str, np.ndarray | torch.Tensor], blobs: str | Iterable[str] = "outputs",
                *, as_numpy: bool = True) -> dict:
        """One forward pass. ``inputs``: {data-layer top: array} for every input of the net (numpy arrays, torch
        tensors or nested lists of real numbers, finite and within float32's range: Caffe's blobs are float32);
        a batch size other than the declared one reshapes the net, as Caffe does. ``blobs``: "outputs" (Caffe's
        net.outputs), "all" (every blob of Caffe's net.blobs but its automatic Split copies and a loss's anonymous
        top; in-place blobs hold their final value), a blob name, comma-separated names or a list of names.
        Returns {blob: float32 numpy array}, or {blob: torch tensor on the device} with ``as_numpy=False``; the
        arrays are the caller's own (never views of the inputs or of the model's weights)."""
        names = self._blob_names(blobs)
        feeds, non_finite = self._feeds(inputs)
        if self.device.type == "cpu":
            _refuse_non_finite(non_finite)
        keep = {self.net.value_of[b] for b in names}
        with torch.no_grad():
            values = self.module(feeds, keep=keep)
        _refuse_non_finite(non_finite)  # on a GPU only now: its sum is read without stalling the launches
        shared = {_storage(t) for t in (*feeds.values(), *self.module.parameters())}
        out = {}
        for b in names:
            t = values[self.net.value_of[b]]
            if t.numel() and _storage(t) in shared:  # a fed input or a parameter (Parameter layer) passed through
                t = t.clone()
            out[b] = t.detach().cpu().numpy() if as_numpy else t
        return out

    def feeds_for(self, inputs) -> dict[str, torch.Tensor]:
        """Input arrays by blob name -> float32 tensors on the device keyed by value name, ready for
        ``module(...)``. Checks names, values and shapes; a different batch size reshapes the net (as Caffe does)."""
        feeds, non_finite = self._feeds(inputs)
        _refuse_non_finite(non_finite)
        return feeds

    def _feeds(self, inputs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``feeds_for``'s tensors, and per input (its tensor, its sum on the device) for ``_refuse_non_finite``."""
        if not isinstance(inputs, Mapping):
            raise CaffeinitError(f"inputs must be a dict {{input blob: array}}, not {type(inputs).__name__} (the "
                                 f"net's inputs: {', '.join(self.net.feeds) or 'none'})")
        missing = [b for b in self.net.feeds if b not in inputs]
        if missing:
            raise CaffeinitError(f"missing input '{missing[0]}' (the net's inputs: {', '.join(self.net.feeds)})")
        unknown = [b for b in inputs if b not in self.net.feeds]
        if unknown:
            raise CaffeinitError(f"unknown input '{unknown[0]}' (the net's inputs: {', '.join(self.net.feeds)})")
        tensors = {name: _input_tensor(name, array, self.device) for name, array in inputs.items()}
        new_shapes = {}
        for name, tensor in tensors.items():
            want = self.net.feeds[name]
            got = tuple(tensor.shape)
            if got != want:
                if len(got) != len(want) or got[1:] != want[1:]:
                    raise CaffeinitError(f"input '{name}' has shape {got}, the net expects {want} "
                                         "(only the batch size may differ)")
                new_shapes[name] = got
        if new_shapes:
            self.reshape({**self.net.feeds, **new_shapes})
        non_finite = {name: (tensor, tensor.sum()) for name, tensor in tensors.items()}
        return {self.net.feed_values[name]: tensor for name, tensor in tensors.items()}, non_finite

    def _blob_names(self, blobs) -> list[str]:
        if isinstance(blobs, str):
            if blobs == "outputs":
                return list(self.net.outputs)
            if blobs == "all":
                return list(self.net.blob_shapes)
            blobs = [b.strip() for b in blobs.split(",") if b.strip()]
        elif isinstance(blobs, Iterable) and not isinstance(blobs, (bytes, Mapping)):
            blobs = list(blobs)
        else:
            blobs = None
        if blobs is None or not all(isinstance(b, str) for b in blobs):
            raise CaffeinitError("blobs must be 'outputs', 'all', a blob name, comma-separated names or a list of "
                                 "names")
        if not blobs:
            raise CaffeinitError("blobs names no blob (use 'outputs', 'all' or blob names)")
        for b in blobs:
            if b not in self.net.blob_shapes:
                raise CaffeinitError(f"unknown blob '{b}' (the net's blobs: {', '.join(self.net.blob_shapes)})")
        return list(dict.fromkeys(blobs))

    # -- weights ------------------------------------------------------------------------------------------------
    def blobs(self) -> dict[str, list[np.ndarray]]:
        """Every layer's parameter blobs by layer name, as float32 numpy arrays (copies: changing them does not
        change the model; load them back with ``load(net, weights=blobs)``)."""
        return self.module.blobs_numpy()

    def saved_net_param(self) -> caffe_pb2.NetParameter:
        """The net as Caffe's Net::Init holds it: filtered, upgraded, automatic Split layers inserted."""
        from caffeinit.splits import insert_splits
        return insert_splits(self.net.param, phase=self.phase)

    def to_proto(self) -> caffe_pb2.NetParameter:
        """What Caffe's Net::ToProto writes for this net, weights included."""
        from caffeinit.weights import net_to_proto
        return net_to_proto(self.saved_net_param(), self.module.blobs_numpy(copy=False), phase=self.phase)

    def save_caffemodel(self, path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> None:
        """Write the weights as a .caffemodel that Caffe loads (atomically; never over one of ``inputs``)."""
        from caffeinit.weights import write_caffemodel
        path = _path(path, "the caffemodel path")
        inputs = [_path(p, "each of save_caffemodel's inputs") for p in inputs]
        write_caffemodel(path, self.saved_net_param(), self.module.blobs_numpy(copy=False), phase=self.phase,
                         inputs=inputs)


def load(net, weights=None, **options) -> CaffeModel:
    """Load a net definition (prototxt path, solver or NetParameter) and optional weights (.caffemodel or .h5
    path, or {layer: [arrays]}): ``CaffeModel(net, weights, **options)``. Layers without weights get their
    fillers' values. ``options``: phase, stages, level, device, seed, input_shapes, precision (see CaffeModel)."""
    unknown = [k for k in options if k not in LOAD_OPTIONS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], LOAD_OPTIONS + ("weights",), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise CaffeinitError(f"load() got an unknown keyword argument '{unknown[0]}' ({hint}it takes weights, "
                             f"{', '.join(LOAD_OPTIONS)})")
    return CaffeModel(net, weights, **options)


LOAD_OPTIONS = ("phase", "stages", "level", "device", "seed", "input_shapes", "precision")


def _check_input_names(net: Net, input_shapes) -> None:
    """Every name in ``input_shapes`` is a top of one of the net's data layers (another would be ignored)."""
    unknown = [b for b in input_shapes or {} if b not in net.feeds]
    if unknown:
        raise CaffeinitError(f"input shape for '{unknown[0]}', which is not a top of a data layer of net '{net.name}' "
                             f"(its inputs: {', '.join(net.feeds) or 'none'})")


def _phase(phase) -> int:
    """"train"/"test" (any case) or caffe_pb2.TRAIN/TEST."""
    if isinstance(phase, str):
        return parse_phase(phase)
    number = operator.index(phase) if hasattr(phase, "__index__") and not isinstance(phase, bool) else None
    if number in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        return number
    raise CaffeinitError(f"unknown phase {phase!r} (use 'train' or 'test')")


def _stages(stages) -> tuple[str, ...]:
    """Caffe's NetState stages: one name (a string is one stage, not its letters), a sequence of names or None."""
    if stages is None:
        return ()
    if isinstance(stages, str):
        return (stages,)
    if isinstance(stages, Iterable) and not isinstance(stages, (bytes, Mapping)):
        stages = tuple(stages)
        if all(isinstance(s, str) for s in stages):
            return stages
    raise CaffeinitError(f"stages must be a stage name or a list of names, not {stages!r}")


def _integer(value, what: str, low: int, high: int) -> int:
    """An int (numpy's too, not a bool or a float) within [low, high]."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise CaffeinitError(f"{what} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise CaffeinitError(f"{what} must be within {low} to {high}, got {number}")
    return number


def _input_shapes(input_shapes) -> dict[str, tuple[int, ...]] | None:
    """{blob: shape} with each shape a sequence of ints (a string such as "1,3,224,224" is refused)."""
    if input_shapes is None:
        return None
    if not isinstance(input_shapes, Mapping):
        raise CaffeinitError(f"input_shapes must be a dict {{input blob: shape}}, not {type(input_shapes).__name__}")
    shapes = {}
    for name, shape in input_shapes.items():
        try:
            if isinstance(shape, (str, bytes)):
                raise TypeError
            shapes[name] = tuple(_integer(d, "", -INT32_MAX - 1, INT32_MAX) for d in shape)
        except (TypeError, CaffeinitError):
            raise CaffeinitError(f"input shape for '{name}' must be a sequence of integers, not {shape!r}") from None
    return shapes


def _real_array(value, what: str) -> np.ndarray:
    """``value`` (numpy array, torch tensor, nested list, number) as a float32 numpy array; refused where it is not
    real numbers (complex, strings, objects, ragged lists) or where float32, Caffe's type, cannot hold a value."""
    if torch.is_tensor(value):
        value = value.detach()
        if value.is_complex():
            raise CaffeinitError(f"{what} holds complex numbers ({value.dtype}): Caffe's blobs are real")
        if value.dtype != torch.float32:
            value = value.double() if value.is_floating_point() else value
        value = value.cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise CaffeinitError(f"{what} is not an array of numbers ({e})") from None
    if array.dtype.kind == "c":
        raise CaffeinitError(f"{what} holds complex numbers ({array.dtype}): Caffe's blobs are real")
    if array.dtype.kind not in "biuf":
        raise CaffeinitError(f"{what} holds {array.dtype} values, not numbers")
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        with np.errstate(invalid="ignore"):
            over = int(np.count_nonzero(np.abs(array) > FLOAT32_MAX))
        if over:
            raise CaffeinitError(f"{what} has {over} values beyond float32's range (+-3.4e38), Caffe's blob type")
    return np.asarray(array, np.float32, order="C")


def _input_tensor(name: str, value, device: torch.device) -> torch.Tensor:
    """One forward input as a float32 tensor on ``device``: real numbers within float32's range."""
    what = f"input '{name}'"
    if torch.is_tensor(value) and value.dtype == torch.float32:
        tensor = value.detach().to(device)  # no host round trip for a tensor already on the device
    else:
        array = _real_array(value, what)
        with warnings.catch_warnings():  # a read-only array (np.load's mmap) is only read: the net never writes a feed
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array).to(device)
    return tensor


def _refuse_non_finite(checks: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Refuse an input holding NaN or infinity. A finite sum proves there is none (a NaN or an infinity makes the
    sum one) at a thirtieth of the cost of testing each value; only a sum that overflowed needs the count."""
    for name, (tensor, total) in checks.items():
        if not math.isfinite(float(total)):
            bad = int(tensor.numel() - torch.isfinite(tensor).sum())
            if bad:
                raise CaffeinitError(f"input '{name}' has {bad} non-finite values (NaN or inf)")


def _storage(t: torch.Tensor) -> tuple:
    return t.device, t.untyped_storage().data_ptr()


def _read_weights(weights) -> dict[str, list[np.ndarray]] | None:
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        blobs = {}
        for layer, arrays in weights.items():
            if not isinstance(layer, str):
                raise CaffeinitError(f"weights: layer names must be strings, not {layer!r}")
            if isinstance(arrays, (np.ndarray, torch.Tensor, str, bytes)) or not isinstance(arrays, Sequence):
                raise CaffeinitError(f"weights for layer '{layer}' must be a list of arrays (Caffe's blob order), "
                                     f"not {type(arrays).__name__}")
            blobs[layer] = [_real_array(a, f"weights of layer '{layer}' blob {k}") for k, a in enumerate(arrays)]
        return blobs
    from caffeinit.weights import load_weights
    return load_weights(_path(weights, "weights", "a .caffemodel or .h5 path or a dict {layer: [arrays]}"))
