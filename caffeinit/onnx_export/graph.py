"""Build an ONNX graph from a built Caffe net: naming, initializers, graph inputs/outputs and their shapes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from caffeinit.errors import CaffeinitError, layer_error
from caffeinit.net import Net
from caffeinit.onnx_export.registry import converter_for
from caffeinit.proto import caffe_pb2

DEFAULT_OPSET = 21
MIN_OPSET = 18  # Reduce* ops take their axes as an input from 18 on; Softmax is per-axis from 13, BN 14
BATCH_DIM = "N"
FLT_MAX = float(np.finfo(np.float32).max)


class GraphBuilder:
    """Collects nodes and initializers; hands out unique value names."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def reserve(self, names: Sequence[str]) -> None:
        self._names.update(names)

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._names:
            k += 1
            name = f"{hint}#{k}"
        self._names.add(name)
        return name

    def constant(self, array, hint: str, dtype=np.float32) -> str:
        """An initializer holding ``array`` (float32 unless ``dtype`` says otherwise); returns its name."""
        name = self.fresh(hint)
        # np.array, not np.ascontiguousarray, which makes a 0-d array 1-d: a scalar stays rank 0 so that it
        # cannot give a rank-0 value (a Reduction over all axes) a dimension
        self.initializers.append(numpy_helper.from_array(np.array(array, dtype, order="C"), name))
        return name

    def ints(self, values: Sequence[int], hint: str) -> str:
        """A 1-D int64 initializer (shapes, axes, pads)."""
        return self.constant(np.asarray(list(values), np.int64).reshape(-1), hint, np.int64)

    def op(self, op_type: str, inputs: Sequence[str], hint: str, out: str | Sequence[str] | None = None,
           n_out: int = 1, **attrs):
        """Add one node. ``out`` names its outputs (else fresh names from ``hint``); returns the output name
        (or the list of names when there are several)."""
        if out is None:
            outs = [self.fresh(hint if n_out == 1 else f"{hint}:{i}") for i in range(n_out)]
        else:
            outs = [out] if isinstance(out, str) else list(out)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"{hint}/{op_type}"),
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs


@dataclass
class ExportGraph:
    """An ONNX model built from a net, with the naming needed to compare it blob by blob."""
    model: onnx.ModelProto
    value_names: dict[str, str]  # SSA value name (net.value_shapes keys) -> ONNX value name
    inputs: dict[str, tuple]  # graph input name -> declared shape ('N' for a dynamic batch)
    outputs: list[str] = field(default_factory=list)  # graph output names
    fixed_batch_by: str | None = None  # why the batch is static although a dynamic one was asked for


def build_model(net: Net, blobs: Mapping[str, Sequence[np.ndarray]], *, opset: int = DEFAULT_OPSET,
                static_batch: bool = False, debug_outputs: bool = False) -> ExportGraph:
    """The ONNX model of ``net`` (TEST-phase semantics) with ``blobs`` ({layer: [arrays]}) as initializers.

    Graph inputs are the consumed data-layer tops, graph outputs Caffe's net outputs, both under their Caffe blob
    names; other values keep their SSA names. ``debug_outputs`` makes every layer top a graph output too.
    """
    check_opset(opset)
    check_exportable(net)
    consumers = net.consumers()
    input_values = [v for node in net.layers if node.layer.is_data for v in node.top_values if v in consumers]
    batch = _batch_size(net, input_values)
    dynamic = not static_batch and batch is not None
    fixed_by = _batch_pinned_by(net, batch) if dynamic else None
    dynamic = dynamic and fixed_by is None

    # a fed blob is an output only where an in-place layer changed it (keeping its SSA name, as the input has
    # the blob's)
    output_blobs = [b for b in net.outputs if b not in net.feeds or net.value_of[b] != net.feed_values.get(b, b)]
    names = _value_names(net, output_blobs, set(input_values))
    g = GraphBuilder(opset)
    g.reserve(list(names.values()))

    depends_on_input = set(input_values)
    for node in net.layers:
        if node.layer.is_data:
            continue
        if any(v in depends_on_input for v in node.bottom_values):
            depends_on_input.update(node.top_values)
        arrays = [np.asarray(a, np.float32) for a in blobs.get(node.name, [])]
        if len(arrays) != len(node.layer.blob_shapes):
            raise layer_error(node.name, node.type, f"has {len(arrays)} weight blobs, needs "
                              f"{len(node.layer.blob_shapes)}")
        convert = converter_for(node)
        convert(g, node, [names[v] for v in node.bottom_values], [names[v] for v in node.top_values], arrays)

    def declared(value):
        shape = tuple(net.value_shapes[value])
        if dynamic and value in depends_on_input and shape and shape[0] == batch:
            return (BATCH_DIM,) + shape[1:]
        return shape

    graph_inputs = {names[v]: declared(v) for v in input_values}
    out_values = [net.value_of[b] for b in output_blobs]
    if debug_outputs:
        out_values += [v for node in net.layers if not node.layer.is_data for v in node.top_values
                       if v not in out_values]
    graph = helper.make_graph(
        g.nodes, net.name or "caffe_net",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in graph_inputs.items()],
        [helper.make_tensor_value_info(names[v], TensorProto.FLOAT, list(declared(v))) for v in out_values],
        initializer=g.initializers)
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opset_ids, producer_name="caffeinit",
                              ir_version=helper.find_min_ir_version_for(opset_ids))
    return ExportGraph(model, names, graph_inputs, [names[v] for v in out_values], fixed_by)


def check_exportable(net: Net) -> None:
    """Raise what ``build_model`` would raise for ``net``'s phase and layer types, without building anything (so a
    command can refuse before its work rather than after)."""
    if net.phase != caffe_pb2.TEST:
        raise CaffeinitError(f"net '{net.name}' was built for the TRAIN phase; ONNX export needs the TEST phase "
                             "(load it with phase='test')")
    consumers = net.consumers()
    if not any(v in consumers for node in net.layers if node.layer.is_data for v in node.top_values):
        raise CaffeinitError(f"net '{net.name}' has no consumed input blob to export")
    for node in net.layers:
        if "" in node.tops:  # every blob is some layer's top
            raise layer_error(node.name, node.type, "has a top with an empty name, which ONNX reserves for an "
                              "omitted value; give the blob a name")
        if not node.layer.is_data:
            converter_for(node)
        if node.type == "Dropout" and node.layer.phase == caffe_pb2.TRAIN:
            raise layer_error(node.name, node.type, "sets its own phase TRAIN, where it drops values at random, "
                              "which ONNX export cannot reproduce")


def check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise CaffeinitError(f"ONNX opset {opset} is not supported (use {MIN_OPSET} to {newest})")


def _batch_pinned_by(net: Net, batch: int) -> str | None:
    """Why the net runs only at its declared batch (the first layer whose parameters would change shape at another,
    after a Reshape fixing the first dim), so that its graph gets a static batch; None where it follows the batch."""
    from caffeinit.net import changed_parameters, reshaped, shapes_at_batch
    try:
        changed = changed_parameters(reshaped(net, shapes_at_batch(net, batch, batch + 1)), net)
    except CaffeinitError as e:
        return f"the net cannot be set up for batch {batch + 1} ({e})"
    if changed is None:
        return None
    node = changed[0]
    return (f"layer '{node.name}' ({node.type})'s parameters would change shape at another batch size (a fixed "
            "first dim before it)")


def _batch_size(net: Net, input_values: list[str]) -> int | None:
    for v in input_values:
        shape = net.value_shapes[v]
        if shape:
            return shape[0]
    return None


def _value_names(net: Net, output_blobs: list[str], input_values: set[str]) -> dict[str, str]:
    """SSA value -> ONNX name. A net output gets its Caffe blob name even when in-place layers renamed its final
    value (``conv1@relu1`` -> ``conv1``); the value that held that name before gets ``conv1@<producer>``."""
    names = {v: v for v in net.value_shapes}
    holder = {v: v for v in net.value_shapes}  # ONNX name -> the value that has it now
    taken = set(names)
    producer = {v: node.name for node in net.layers for v in node.top_values}
    for blob in output_blobs:
        final = net.value_of[blob]
        if names[final] == blob or blob in input_values:
            continue
        previous = holder.get(blob)
        if previous is not None:  # a value (the blob's first, or an SSA name equal to this blob's) gives it up
            alt, k = f"{blob}@{producer[previous]}", 1
            while alt in taken:
                k += 1
                alt = f"{blob}@{producer[previous]}#{k}"
            taken.add(alt)
            names[previous], holder[alt] = alt, previous
        del holder[names[final]]
        names[final], holder[blob] = blob, final
    return names
