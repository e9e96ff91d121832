import pytest
from google.protobuf import text_format

from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2
from caffeinit.splits import insert_splits
from tests.conftest import shared_path


def net_from_text(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def wiring(net):
    return [(lp.name, lp.type, list(lp.bottom), list(lp.top), list(lp.loss_weight)) for lp in net.layer]


def test_unused_twice_means_no_split():
    net = net_from_text('layer { name: "in" type: "Input" top: "data" }'
                        'layer { name: "a" type: "ReLU" bottom: "data" top: "a" }')
    assert insert_splits(net) == net


def test_fan_out_after_in_place_layer():
    # conv1's final writer is the in-place relu1, so the split is named after relu1.
    net = net_from_text("""
        name: "n"
        layer { name: "in" type: "Input" top: "data" }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" }
        layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
        layer { name: "a" type: "Pooling" bottom: "conv1" top: "a" }
        layer { name: "b" type: "Pooling" bottom: "conv1" top: "b" }
        layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" bottom: "conv1" top: "cat" }
    """)
    out = insert_splits(net)
    assert out.name == "n"
    assert wiring(out) == [
        ("in", "Input", [], ["data"], []),
        ("conv1", "Convolution", ["data"], ["conv1"], []),
        ("relu1", "ReLU", ["conv1"], ["conv1"], []),
        ("conv1_relu1_0_split", "Split", ["conv1"],
         ["conv1_relu1_0_split_0", "conv1_relu1_0_split_1", "conv1_relu1_0_split_2"], []),
        ("a", "Pooling", ["conv1_relu1_0_split_0"], ["a"], []),
        ("b", "Pooling", ["conv1_relu1_0_split_1"], ["b"], []),
        ("cat", "Concat", ["a", "b", "conv1_relu1_0_split_2"], ["cat"], []),
    ]
    assert not any(lp.HasField("phase") for lp in out.layer)
    assert net.layer[3].bottom[0] == "conv1"  # the input is not modified


def test_second_top_index_and_phase():
    net = net_from_text("""
        layer { name: "in" type: "Input" top: "x" top: "y" phase: TEST }
        layer { name: "p" type: "Eltwise" bottom: "y" bottom: "y" top: "z" phase: TEST }
    """)
    out = insert_splits(net, phase=caffe_pb2.TEST)
    assert wiring(out)[1:] == [
        ("y_in_1_split", "Split", ["y"], ["y_in_1_split_0", "y_in_1_split_1"], []),
        ("p", "Eltwise", ["y_in_1_split_0", "y_in_1_split_1"], ["z"], []),
    ]
    assert [lp.phase for lp in out.layer] == [caffe_pb2.TEST] * 3


def test_loss_weight_counts_as_a_use():
    net = net_from_text("""
        layer { name: "in" type: "Input" top: "x" }
        layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "x" top: "loss" loss_weight: 2 }
        layer { name: "s" type: "Power" bottom: "loss" top: "s" }
    """)
    out = insert_splits(net)
    assert wiring(out) == [
        ("in", "Input", [], ["x"], []),
        ("x_in_0_split", "Split", ["x"], ["x_in_0_split_0", "x_in_0_split_1"], []),
        ("l", "EuclideanLoss", ["x_in_0_split_0", "x_in_0_split_1"], ["loss"], []),
        # The loss moves to the split's first top; the consumer gets the second.
        ("loss_l_0_split", "Split", ["loss"], ["loss_l_0_split_0", "loss_l_0_split_1"], [2.0, 0.0]),
        ("s", "Power", ["loss_l_0_split_1"], ["s"], []),
    ]


def test_zero_loss_weight_is_not_a_use():
    net = net_from_text("""
        layer { name: "in" type: "Input" top: "x" }
        layer { name: "l" type: "Power" bottom: "x" top: "y" loss_weight: 0 }
        layer { name: "s" type: "Power" bottom: "y" top: "s" }
    """)
    assert insert_splits(net) == net


def test_legacy_net_inputs():
    net = net_from_text('input: "data" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2 '
                        'layer { name: "a" type: "ReLU" bottom: "data" top: "a" }'
                        'layer { name: "b" type: "ReLU" bottom: "data" top: "b" }')
    out = insert_splits(net)
    assert list(out.input) == ["data"] and list(out.input_dim) == [1, 1, 2, 2]
    assert wiring(out) == [
        ("data_input_0_split", "Split", ["data"], ["data_input_0_split_0", "data_input_0_split_1"], []),
        ("a", "ReLU", ["data_input_0_split_0"], ["a"], []),
        ("b", "ReLU", ["data_input_0_split_1"], ["b"], []),
    ]


def test_unknown_bottom():
    net = net_from_text('layer { name: "a" type: "ReLU" bottom: "ghost" top: "a" }')
    with pytest.raises(CaffeinitError, match="layer 'a' \\(ReLU\\): unknown bottom blob 'ghost'"):
        insert_splits(net)


def test_matches_caffe_written_split_layers():
    # Caffe's net.save() wrote the split layers it inserted into this model.
    case = shared_path("conformance", "unary_ops")
    net = net_from_text((case / "net.prototxt").read_text())
    saved = caffe_pb2.NetParameter.FromString((case / "weights.caffemodel").read_bytes())
    out = insert_splits(net, phase=caffe_pb2.TEST)
    assert [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in out.layer] == \
        [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in saved.layer]
    assert any(lp.type == "Split" for lp in saved.layer)


def test_resnet50_layer_count():
    # Caffe builds ResNet-50 with 245 layers: its Input layer (made from the `input:` fields) plus splits.
    net = net_from_text(shared_path("corpus", "kaiming__ResNet-50-deploy.prototxt").read_text())
    assert len(net.input) == 1 and len(net.layer) < 245 - 1
    assert len(insert_splits(net).layer) == 245 - 1
