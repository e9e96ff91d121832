"""The inference part of a train/val net, as a deploy net: what ONNX export (and any runtime) needs.

A train_val prototxt's TEST phase still reads a database and ends in loss and accuracy layers, which need labels
and mean nothing at inference. ``deploy_param`` keeps the TEST-phase layers but those (and any layer reading what
they compute, as one removes by hand a Silence of the accuracy), turns each data layer into an
Input layer declaring the tops that a kept layer reads (so a label read only by a loss disappears), and leaves the
rest as it is: the net's outputs become what the removed layers read (fc8 instead of loss and accuracy).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from caffeinit.errors import CaffeinitError
from caffeinit.layers import layer_class
from caffeinit.netstate import filter_net
from caffeinit.proto import caffe_pb2


def losses_in_test_phase(net_param: caffe_pb2.NetParameter, stages: Iterable[str] = (), level: int = 0) -> bool:
    """Whether the TEST phase of a (not yet built) net ends in loss or accuracy layers: not a deploy net."""
    test = filter_net(net_param, caffe_pb2.TEST, level, stages)
    return any(layer_class(lp.type, lp.name).is_loss for lp in test.layer)


def deploy_param(net_param: caffe_pb2.NetParameter, input_shapes: Mapping[str, Sequence[int]],
                 stages: Iterable[str] = (), level: int = 0, peek=None) -> caffe_pb2.NetParameter:
    """The TEST-phase layers of ``net_param`` without loss/accuracy layers (nor the layers reading what those
    compute), data layers replaced by Input layers. The include/exclude rules, applied, are left out: building the
    result in another level or stages (``build_net(deploy, "test")``) gives the same net.

    ``input_shapes``: the shape of each data top a kept layer reads, by blob name (the shapes the net was run
    with: a database that is not here cannot say them). ``peek(layer)``, where given, supplies the shapes of a data
    layer's tops that ``input_shapes`` lacks (e.g. ``data.peek_top_shapes`` from its source)."""
    test = filter_net(net_param, caffe_pb2.TEST, level, stages)
    kept, gone = [], set()  # gone: blobs of the removed layers, whose readers go too (a Silence of the accuracy)
    for lp in test.layer:
        if layer_class(lp.type, lp.name).is_loss or gone.intersection(lp.bottom):
            gone.update(lp.top)
        else:
            kept.append(lp)
    read = {b for lp in kept if not layer_class(lp.type, lp.name).is_data for b in lp.bottom}
    deploy = caffe_pb2.NetParameter()
    deploy.CopyFrom(test)
    del deploy.layer[:]
    del deploy.input[:], deploy.input_shape[:], deploy.input_dim[:]
    for lp in kept:
        if not layer_class(lp.type, lp.name).is_data:
            layer = deploy.layer.add()
            layer.CopyFrom(lp)
            layer.ClearField("include")  # applied: the deploy net is the same net in any state it is built in
            layer.ClearField("exclude")
            continue
        tops = [t for t in lp.top if t in read]
        if not tops:
            continue
        missing = [t for t in tops if t not in input_shapes]
        if missing and peek is not None:
            input_shapes = {**dict(zip(lp.top, peek(lp))), **input_shapes}
            missing = []
        if missing:
            raise CaffeinitError(f"layer '{lp.name}' ({lp.type}) of the TEST phase feeds '{missing[0]}', whose "
                                 "shape is not known here (the net was run without it)")
        layer = deploy.layer.add(name=lp.name, type="Input", top=tops)
        layer.phase = caffe_pb2.TEST
        for t in tops:
            layer.input_param.shape.add(dim=[int(d) for d in input_shapes[t]])
    if all(lp.type == "Input" for lp in deploy.layer):
        raise CaffeinitError(f"net '{net_param.name}' has no inference part: its TEST phase holds only data and "
                             "loss/accuracy layers")
    return deploy
