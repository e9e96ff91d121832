"""The documented Python API: load a net (with weights), run it, read blobs, save it."""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from caffeinit.device import select_device, set_precision
from caffeinit.errors import CaffeinitError
from caffeinit.executor import TorchNet
from caffeinit.net import Net, build_net, changed_parameters, parse_phase, shapes_text
from caffeinit.proto import caffe_pb2


def read_net_param(net: str | os.PathLike | caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A net definition from a prototxt (any historic format, upgraded), a solver prototxt, or a NetParameter."""
    if isinstance(net, caffe_pb2.NetParameter):
        return net
    from caffeinit.prototxt import read_net
    return read_net(os.fspath(net))


class CaffeModel:
    """A Caffe net with its weights, runnable on CPU or CUDA with Caffe's numbers.

    >>> model = caffeinit.load("deploy.prototxt", weights="net.caffemodel")
    >>> out = model.forward({"data": images})          # {"prob": array}
    >>> blobs = model.forward({"data": images}, blobs="all")

    ``device``: "auto", "cpu", "cuda[:N]" or a torch.device. ``precision``: "ieee" (default: IEEE fp32 convolutions
    and matmuls, Caffe's numbers) or "tf32" (faster on Ampere+ GPUs, ~1e-3 relative error); torch's setting is
    process-wide, so the last model loaded decides it.
    """

    def __init__(self, net: str | os.PathLike | caffe_pb2.NetParameter, weights=None, *, phase: str | int = "test",
                 stages: Sequence[str] = (), level: int = 0, device: str | torch.device = "cpu", seed: int = 0,
                 input_shapes: Mapping[str, Sequence[int]] | None = None, precision: str = "ieee"):
        self.net_param = read_net_param(net)
        self.phase = parse_phase(phase)
        self.stages, self.level = tuple(stages), level
        if isinstance(device, torch.device):
            set_precision(precision)
            self.device = device
        else:
            self.device = select_device(device, precision)
        self.net: Net = build_net(self.net_param, self.phase, self.stages, level, input_shapes)
        _check_input_names(self.net, input_shapes)
        blobs = _read_weights(weights)
        # Arrays this call read from a file belong to nobody else: the parameters may keep their memory.
        self.module = TorchNet(self.net, blobs, seed=seed, device=self.device,
                               copy_blobs=isinstance(weights, Mapping),
                               source="" if weights is None or isinstance(weights, Mapping) else os.fspath(weights))

    # -- shapes -----------------------------------------------------------------------------------------------
    def reshape(self, input_shapes: Mapping[str, Sequence[int]]) -> None:
        """Re-infer every shape for new input shapes (Caffe's Net::Reshape); weights are kept, so every layer's
        parameters must keep their shapes (Caffe CHECKs them too)."""
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
        """One forward pass. ``blobs``: "outputs" (Caffe's net.outputs), "all" (every blob of Caffe's net.blobs
        but its automatic Split copies and a loss's anonymous top; in-place blobs hold their final value) or blob
        names. Returns {blob: array}."""
        feeds = self.feeds_for(inputs)
        names = self._blob_names(blobs)
        keep = {self.net.value_of[b] for b in names}
        with torch.no_grad():
            values = self.module(feeds, keep=keep)
        out = {b: values[self.net.value_of[b]] for b in names}
        if as_numpy:
            out = {b: t.detach().cpu().numpy() for b, t in out.items()}
        return out

    def feeds_for(self, inputs) -> dict[str, torch.Tensor]:
        """Input arrays by blob name -> tensors on the device keyed by value name, ready for ``module(...)``.
        Checks names and shapes; a different batch size reshapes the net (as Caffe does)."""
        missing = [b for b in self.net.feeds if b not in inputs]
        if missing:
            raise CaffeinitError(f"missing input '{missing[0]}' (the net's inputs: {', '.join(self.net.feeds)})")
        unknown = [b for b in inputs if b not in self.net.feeds]
        if unknown:
            raise CaffeinitError(f"unknown input '{unknown[0]}' (the net's inputs: {', '.join(self.net.feeds)})")
        new_shapes = {}
        for name, array in inputs.items():
            want = self.net.feeds[name]
            got = tuple(array.shape)
            if got != want:
                if len(got) != len(want) or got[1:] != want[1:]:
                    raise CaffeinitError(f"input '{name}' has shape {got}, the net expects {want} "
                                         "(only the batch size may differ)")
                new_shapes[name] = got
        if new_shapes:
            self.reshape({**self.net.feeds, **new_shapes})
        return {self.net.feed_values[name]: torch.as_tensor(
                    np.asarray(a, np.float32) if not torch.is_tensor(a) else a, dtype=torch.float32,
                    device=self.device)
                for name, a in inputs.items()}

    def _blob_names(self, blobs) -> list[str]:
        if isinstance(blobs, str):
            if blobs == "outputs":
                return list(self.net.outputs)
            if blobs == "all":
                return list(self.net.blob_shapes)
            blobs = [b for b in blobs.split(",") if b]
        names = list(blobs)
        for b in names:
            if b not in self.net.blob_shapes:
                raise CaffeinitError(f"unknown blob '{b}' (the net's blobs: {', '.join(self.net.blob_shapes)})")
        return names

    # -- weights ------------------------------------------------------------------------------------------------
    def blobs(self) -> dict[str, list[np.ndarray]]:
        """Every layer's parameter blobs by layer name, as float32 numpy arrays."""
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
        write_caffemodel(path, self.saved_net_param(), self.module.blobs_numpy(copy=False), phase=self.phase,
                         inputs=inputs)


def load(net, weights=None, **kwargs) -> CaffeModel:
    """Load a net definition (prototxt, solver or NetParameter) and optional weights (.caffemodel path or
    {layer: [arrays]}). Layers without weights get their fillers' values. See CaffeModel for keyword arguments."""
    return CaffeModel(net, weights, **kwargs)


def _check_input_names(net: Net, input_shapes) -> None:
    """Every name in ``input_shapes`` is a top of one of the net's data layers (another would be ignored)."""
    unknown = [b for b in input_shapes or {} if b not in net.feeds]
    if unknown:
        raise CaffeinitError(f"input shape for '{unknown[0]}', which is not a top of a data layer of net '{net.name}' "
                             f"(its inputs: {', '.join(net.feeds) or 'none'})")


def _read_weights(weights) -> dict[str, list[np.ndarray]] | None:
    if weights is None or isinstance(weights, Mapping):
        return weights
    from caffeinit.weights import load_weights
    return load_weights(os.fspath(weights))
