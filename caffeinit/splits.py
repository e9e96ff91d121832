"""Caffe's automatic Split layers (``src/caffe/util/insert_splits.cpp``).

Where one top feeds several bottoms (a top used as a loss counts as one more use), Caffe's Net::Init inserts a
``Split`` layer right after the producer: layer ``<blob>_<layer>_<idx>_split`` with tops
``<blob>_<layer>_<idx>_split_<j>``, and each consumer reads its own copy, in layer order. Caffe's
``net.save()`` writes these layers, so they are needed to reproduce its caffemodels.
"""
from __future__ import annotations

from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2

# Caffe's name for the producer of the deprecated NetParameter.input blobs.
_INPUT_PRODUCER = "input"
_INPUT = -1


def split_layer_name(layer_name: str, blob_name: str, top_index: int) -> str:
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name: str, blob_name: str, top_index: int, split_index: int) -> str:
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def _split_layer(layer_name: str, blob_name: str, top_index: int, count: int, loss_weight: float,
                 phase: int | None) -> caffe_pb2.LayerParameter:
    split = caffe_pb2.LayerParameter(name=split_layer_name(layer_name, blob_name, top_index), type="Split")
    split.bottom.append(blob_name)
    for j in range(count):
        split.top.append(split_blob_name(layer_name, blob_name, top_index, j))
        if loss_weight:
            split.loss_weight.append(loss_weight if j == 0 else 0.0)
    if phase is not None:
        split.phase = phase
    return split


def insert_splits(net: caffe_pb2.NetParameter, phase: int | None = None) -> caffe_pb2.NetParameter:
    """A copy of ``net`` (already filtered and upgraded) with Caffe's Split layers inserted.

    Caffe's InsertSplits leaves the split layers without a phase; Net::Init then gives every layer without one
    the net's phase. Pass ``phase`` to set it on the split layers here (when ``net``'s own layers already have
    theirs). A bottom that no earlier layer produces is an error, as in Caffe.
    """
    # A "top slot" is (layer index, top index); (-1, i) is net.input[i].
    last_producer: dict[str, tuple[int, int]] = {}
    source_of_bottom: dict[tuple[int, int], tuple[int, int]] = {}
    use_count: dict[tuple[int, int], int] = {}
    loss_weight_of: dict[tuple[int, int], float] = {}
    for i, blob in enumerate(net.input):
        last_producer[blob] = (_INPUT, i)
    for i, layer in enumerate(net.layer):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_producer:
                raise CaffeinitError(f"layer '{layer.name}' ({layer.type}): unknown bottom blob '{blob}' "
                                     f"(bottom {j}); no earlier layer produces it")
            slot = last_producer[blob]
            source_of_bottom[(i, j)] = slot
            use_count[slot] = use_count.get(slot, 0) + 1
        for j, blob in enumerate(layer.top):
            last_producer[blob] = (i, j)
        # A top used as a loss counts as one more use of that top.
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            slot = last_producer[layer.top[j]]
            loss_weight_of[slot] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                use_count[slot] = use_count.get(slot, 0) + 1

    def producer_name(layer_index: int) -> str:
        return _INPUT_PRODUCER if layer_index == _INPUT else net.layer[layer_index].name

    result = caffe_pb2.NetParameter()
    result.CopyFrom(net)
    result.ClearField("layer")
    for i, blob in enumerate(net.input):
        count = use_count.get((_INPUT, i), 0)
        if count > 1:
            result.layer.append(_split_layer(_INPUT_PRODUCER, blob, i, count, 0.0, phase))
    next_split_index: dict[tuple[int, int], int] = {}
    for i, original in enumerate(net.layer):
        layer = result.layer.add()
        layer.CopyFrom(original)
        for j, blob in enumerate(layer.bottom):
            slot = source_of_bottom[(i, j)]
            if use_count.get(slot, 0) > 1:
                k = next_split_index.get(slot, 0)
                next_split_index[slot] = k + 1
                layer.bottom[j] = split_blob_name(producer_name(slot[0]), blob, slot[1], k)
        for j, blob in enumerate(layer.top):
            slot = (i, j)
            count = use_count.get(slot, 0)
            if count > 1:
                loss_weight = loss_weight_of.get(slot, 0.0)
                result.layer.append(_split_layer(layer.name, blob, j, count, loss_weight, phase))
                if loss_weight:
                    # The loss now sits on the split's first top, which no consumer takes.
                    layer.ClearField("loss_weight")
                    next_split_index[slot] = next_split_index.get(slot, 0) + 1
    return result
