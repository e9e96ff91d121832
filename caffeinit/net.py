"""Net assembly: filter a NetParameter by state, wire bottoms to tops as Caffe's Net::Init does, infer shapes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from caffeinit.errors import CaffeinitError, layer_error
from caffeinit.layers import Layer, Shape, layer_class
from caffeinit.layers.loss import LossLayer
from caffeinit.netstate import filter_net
from caffeinit.proto import caffe_pb2
from caffeinit.weights import MAX_BLOB_COUNT  # Caffe's Blob::Reshape: "blob size exceeds INT_MAX"

LABEL_FOLLOWS_BATCH = ("Data", "ImageData")  # data layers whose label top Caffe shapes (batch size,)
ANONYMOUS_TOP = "(automatic)"  # the name Caffe gives the top it adds to a loss layer without one (AppendTop)

PHASES = {"train": caffe_pb2.TRAIN, "test": caffe_pb2.TEST}


@dataclass
class LayerNode:
    """One layer of a built net. ``bottoms``/``tops`` are Caffe blob names; ``*_values`` are SSA value names
    (an in-place top gets ``blob@layer`` so the value before the in-place layer stays readable)."""
    index: int
    name: str
    type: str
    param: caffe_pb2.LayerParameter
    layer: Layer
    bottoms: list[str]
    tops: list[str]
    bottom_values: list[str]
    top_values: list[str]
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]


@dataclass
class Net:
    """A net ready to run: layers in execution order plus blob bookkeeping (see docs/ARCHITECTURE.md)."""
    name: str
    phase: int
    param: caffe_pb2.NetParameter  # the filtered, upgraded definition (each layer's phase set)
    layers: list[LayerNode]
    inputs: dict[str, Shape]  # Input-layer tops (Caffe's net.inputs)
    feeds: dict[str, Shape]  # every top of a data layer (Input, Data, ImageData, ...): filled from outside
    outputs: list[str]  # unconsumed blobs, sorted by name (Caffe's net.outputs)
    blob_shapes: dict[str, Shape]  # every blob after its last writer, in creation order
    value_shapes: dict[str, Shape] = field(default_factory=dict)
    value_of: dict[str, str] = field(default_factory=dict)  # blob -> its final value name
    feed_values: dict[str, str] = field(default_factory=dict)  # data-layer top blob -> the value it feeds

    def layer(self, name: str) -> LayerNode:
        for node in self.layers:
            if node.name == name:
                return node
        import difflib
        close = difflib.get_close_matches(name, [node.name for node in self.layers], n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise CaffeinitError(f"net '{self.name}' has no layer '{name}'{hint}")

    def consumers(self) -> dict[str, list[int]]:
        """value name -> indices of the layers that read it."""
        users: dict[str, list[int]] = {}
        for node in self.layers:
            for v in node.bottom_values:
                users.setdefault(v, []).append(node.index)
        return users


def parse_phase(phase: str | int) -> int:
    if isinstance(phase, int):
        return phase
    try:
        return PHASES[phase.lower()]
    except KeyError:
        raise CaffeinitError(f"unknown phase '{phase}' (use train or test)") from None


def build_net(net_param: caffe_pb2.NetParameter, phase: str | int = "test", stages: Sequence[str] = (),
              level: int = 0, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Net:
    """Filter ``net_param`` (already upgraded) for the state, wire it and infer every blob's shape.

    ``phase`` chooses the layers (include/exclude rules) and is the phase of every layer that does not set its
    own ``phase``; a layer that does runs in its own, as in Caffe's Net::Init.

    ``input_shapes`` overrides the shapes of data-layer tops (e.g. another batch size); Caffe reshapes the same way.
    """
    phase = parse_phase(phase)
    filtered = filter_net(net_param, phase, level=level, stages=tuple(stages))
    overrides = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}

    nodes: list[LayerNode] = []
    value_of: dict[str, str] = {}
    value_shapes: dict[str, Shape] = {}
    blob_shapes: dict[str, Shape] = {}
    available: set[str] = set()
    inputs: dict[str, Shape] = {}
    feeds: dict[str, Shape] = {}
    feed_values: dict[str, str] = {}
    used_values: set[str] = set()

    uses: dict[str, list[str]] = {}  # value -> what used it so far: its readers' names, a loss weight on it
    shared_multipliers: dict[tuple[str, str], tuple[float, str]] = {}  # (param name, field) -> (value, layer)

    for index, lp in enumerate(filtered.layer):
        if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
            raise layer_error(lp.name, lp.type, f"has {len(lp.propagate_down)} propagate_down for {len(lp.bottom)} "
                              "bottoms: Caffe takes none or one per bottom")
        layer = layer_class(lp.type, lp.name)(lp, lp.phase)  # filter_net gave the net's phase to layers without one
        tops = list(lp.top)
        if isinstance(layer, LossLayer) and len(tops) < layer.min_tops:
            # Caffe's LossLayer::AutoTopBlobs: the loss gets an anonymous top that no layer can read
            tops += [ANONYMOUS_TOP] * (layer.min_tops - len(tops))
        layer.check_counts(len(lp.bottom), len(tops))
        _check_loss_weights(layer, lp, len(tops))
        bottom_values, bottom_shapes = [], []
        for blob in lp.bottom:
            if blob not in value_of:
                raise layer_error(lp.name, lp.type, f"unknown bottom blob '{blob}'")
            bottom_values.append(value_of[blob])
            bottom_shapes.append(value_shapes[value_of[blob]])
            uses.setdefault(value_of[blob], []).append(f"layer '{lp.name}' also reads")
            available.discard(blob)
        _check_tops(layer, lp, value_of, uses)

        if layer.is_data and lp.type in LABEL_FOLLOWS_BATCH and len(lp.top) == 2 and lp.top[0] in overrides \
                and lp.top[1] not in overrides:  # their label top is (batch,), as Caffe reshapes it
            overrides[lp.top[1]] = overrides[lp.top[0]][:1]
        if layer.is_data and lp.top and all(t in overrides for t in lp.top):
            top_shapes = [overrides[t] for t in lp.top]  # no need to open the layer's source
        elif layer.is_data:
            top_shapes = [overrides.get(t, s) for t, s in zip(lp.top, layer.setup(bottom_shapes))]
        else:
            top_shapes = layer.setup(bottom_shapes)
        if len(top_shapes) != len(tops):
            raise layer_error(lp.name, lp.type, f"produces {len(top_shapes)} tops, {len(tops)} named")
        _check_blob_sizes(layer, lp, top_shapes)
        if len(lp.param) > len(layer.blob_shapes or ()):
            raise layer.error(f"has {len(lp.param)} param specs but {len(layer.blob_shapes or ())} parameter blobs "
                              "(Caffe: too many params specified)")
        _check_shared_multipliers(layer, lp, shared_multipliers)
        if len(lp.blobs) and layer.blob_shapes:
            _check_prototxt_blobs(layer, lp)

        top_values = []
        for j, blob in enumerate(tops):
            if j >= len(lp.top):  # an anonymous top: a value only, as Caffe keeps it out of the blobs by name
                top_values.append(_fresh(blob, used_values))
                value_shapes[top_values[-1]] = tuple(top_shapes[j])
                continue
            if j < len(lp.bottom) and lp.bottom[j] == blob:
                problem = layer.in_place_problem(j, bottom_shapes[j], tuple(top_shapes[j]))
                if problem:
                    raise layer.error(f"works in place on blob '{blob}', where {problem}: Caffe's numbers would "
                                      f"differ from the layer's; give it its own top")
                value = _fresh(f"{blob}@{lp.name}", used_values)
            else:
                value = _fresh(blob, used_values)
            if j < len(lp.loss_weight) and lp.loss_weight[j]:
                uses.setdefault(value, []).append(f"layer '{lp.name}' also takes as a loss (loss_weight)")
            value_of[blob] = value
            value_shapes[value] = tuple(top_shapes[j])
            blob_shapes[blob] = tuple(top_shapes[j])
            available.add(blob)
            top_values.append(value)
            if layer.is_data:
                feeds[blob] = tuple(top_shapes[j])
                feed_values[blob] = value
                if lp.type == "Input":
                    inputs[blob] = tuple(top_shapes[j])
        nodes.append(LayerNode(index, lp.name, lp.type, lp, layer, list(lp.bottom), tops, bottom_values,
                               top_values, bottom_shapes, [tuple(s) for s in top_shapes]))

    return Net(name=filtered.name, phase=phase, param=filtered, layers=nodes, inputs=inputs, feeds=feeds,
               outputs=sorted(available), blob_shapes=blob_shapes, value_shapes=value_shapes, value_of=value_of,
               feed_values=feed_values)


def shapes_at_batch(net: Net, declared: int, batch: int, fed: Mapping[str, int] | None = None) -> dict[str, Shape]:
    """Data-layer top shapes for batches of ``batch``: tops whose first dim is ``declared`` take ``batch``, the others
    (a 1x3 image-info blob) keep theirs; ``fed`` {top: first dim} gives some outright (what was fed)."""
    fed = fed or {}
    return {blob: (fed[blob] if blob in fed else batch if s[0] == declared else s[0],) + tuple(s[1:])
            for blob, s in net.feeds.items() if s}


def reshaped(net: Net, input_shapes: Mapping[str, Sequence[int]]) -> Net:
    """``net`` (its definition and state: phase, stages, level) set up for other input shapes, as Caffe's
    Net::Reshape."""
    return build_net(net.param, net.phase, level=net.param.state.level, input_shapes=input_shapes)


def changed_parameters(net: Net, declared: Net) -> tuple[LayerNode, LayerNode] | None:
    """The first layer of ``net`` (the same definition set up for other input shapes) whose parameter shapes differ
    from those in ``declared``, with its declared twin; None where all are the same (Caffe CHECKs them when it
    reshapes a net: a Reshape fixing the first dim ties the next layer's weights to the declared batch)."""
    for node, twin in zip(net.layers, declared.layers):
        if [tuple(s) for s in node.layer.blob_shapes] != [tuple(s) for s in twin.layer.blob_shapes]:
            return node, twin
    return None


def shapes_text(shapes) -> str:
    """Shapes as Caffe's logs write them: 5x288, 5."""
    return ", ".join("x".join(map(str, s)) for s in shapes)


def _check_tops(layer: Layer, lp: caffe_pb2.LayerParameter, value_of: Mapping[str, str],
                uses: Mapping[str, list[str]]) -> None:
    """Caffe's AppendTop: a top may name an existing blob only in place (top j = bottom j), and Net::Init sees the
    net after InsertSplits, which gives each reader of a blob used twice (a loss weight counts as a use) its own
    copy: an in-place layer reading a value that something else used too then writes a second blob of that name."""
    for j, blob in enumerate(lp.top):
        if blob in lp.top[:j]:
            raise layer.error(f"names top blob '{blob}' twice")
        if j < len(lp.bottom) and lp.bottom[j] == blob:
            others = [u for u in uses.get(value_of[blob], []) if u != f"layer '{lp.name}' also reads"]
            if others or list(lp.bottom).count(blob) > 1:
                other = others[0] if others else "it reads twice"
                raise layer.error(f"works in place on blob '{blob}', which {other}: Caffe's automatic "
                                  f"split of '{blob}' then makes this layer a second producer of '{blob}' (\"Duplicate "
                                  "blobs produced by multiple sources\"); give it its own top")
        elif blob in value_of:
            raise layer.error(f"top blob '{blob}' is produced by multiple sources")


def _check_loss_weights(layer: Layer, lp: caffe_pb2.LayerParameter, n_tops: int) -> None:
    """Layer::SetLossWeights: none or one loss_weight per top; a loss layer without any has one (1, LossLayer's
    LayerSetUp), so a second top needs them spelled out."""
    if len(lp.loss_weight) and len(lp.loss_weight) != n_tops:
        raise layer.error(f"has {len(lp.loss_weight)} loss_weight for {n_tops} tops: Caffe takes none or one per top")
    if not len(lp.loss_weight) and isinstance(layer, LossLayer) and n_tops > 1:
        raise layer.error(f"has {n_tops} tops and no loss_weight: Caffe gives a loss layer one loss_weight (1), "
                          "which must be one per top; give them all (e.g. loss_weight: 1 loss_weight: 0)")


def _check_shared_multipliers(layer: Layer, lp: caffe_pb2.LayerParameter,
                              seen: dict[tuple[str, str], tuple[float, str]]) -> None:
    """Net::AppendParam: the layers sharing a parameter by name that set its lr_mult (decay_mult) set the same."""
    for spec in lp.param:
        for attr in ("lr_mult", "decay_mult") if spec.name else ():
            if spec.HasField(attr):
                value, first = seen.setdefault((spec.name, attr), (getattr(spec, attr), lp.name))
                if value != getattr(spec, attr):
                    raise layer.error(f"shared parameter '{spec.name}' has {attr} {getattr(spec, attr):g} here but "
                                      f"{value:g} in layer '{first}': Caffe takes one {attr} per shared parameter")


def _check_blob_sizes(layer: Layer, lp: caffe_pb2.LayerParameter, top_shapes) -> None:
    """Caffe's checks on every blob it reshapes: no negative dimension, at most INT_MAX elements."""
    named = [(f"top '{blob}'", tuple(shape)) for blob, shape in zip(lp.top, top_shapes)]
    named += [(f"parameter blob {k}", tuple(shape)) for k, shape in enumerate(layer.blob_shapes or ())]
    for what, shape in named:
        size = "x".join(map(str, shape)) or "scalar"
        if any(d < 0 for d in shape):
            raise layer.error(f"{what} would have shape {size}: a negative dimension")
        if math.prod(shape) > MAX_BLOB_COUNT:
            raise layer.error(f"{what} would have shape {size}, {math.prod(shape):,} elements: Caffe's blobs hold "
                              f"at most {MAX_BLOB_COUNT:,}")


def _check_prototxt_blobs(layer: Layer, lp: caffe_pb2.LayerParameter) -> None:
    """The blobs written in a layer's definition, which Caffe uses instead of its fillers, must fit the layer as a
    caffemodel's blobs must (their values are read when the net runs: ``executor.TorchNet``)."""
    from caffeinit.weights import blob_shape, check_blob_shape

    if len(lp.blobs) != len(layer.blob_shapes):
        raise layer.error(f"{len(lp.blobs)} blobs in the prototxt, but the layer has {len(layer.blob_shapes)}")
    for k, (blob, shape) in enumerate(zip(lp.blobs, layer.blob_shapes)):
        check_blob_shape(blob_shape(blob), shape, lp.name, k, "in the prototxt", lp.type)


def _fresh(name: str, used: set[str]) -> str:
    value, k = name, 1
    while value in used:
        k += 1
        value = f"{name}#{k}"
    used.add(value)
    return value
