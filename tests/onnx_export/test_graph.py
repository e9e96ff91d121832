"""Graph building: names, graph inputs/outputs, dynamic and static batch, opsets, shapes, and every blob of the
conformance nets against the goldens written by real Caffe (run in ONNX Runtime)."""
import json

import numpy as np
import onnx
import pytest

import caffeinit
from caffeinit.errors import CaffeinitError
from caffeinit.net import build_net
from caffeinit.onnx_export import build_model
from caffeinit.prototxt import parse_net_text
from tests.conftest import SHARED, conformance_cases
from tests.onnx_export.common import (assert_blobs_match_goldens, export_and_compare, input_layer, layer,
                                      random_blobs, rel_err, session)

NET = (input_layer(shape=(4, 3, 8, 8))
       + layer("Convolution", tops=("conv1",), params="convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
       + layer("ReLU", ("conv1",), ("conv1",), name="relu1")
       + layer("Pooling", ("conv1",), ("pool1",), "pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
       + layer("InnerProduct", ("pool1",), ("fc",), "inner_product_param { num_output: 5 }")
       + layer("Softmax", ("fc",), ("prob",))
       + layer("Flatten", ("pool1",), ("flat",)))


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_names_and_dynamic_batch():
    net = build_net(parse_net_text(NET), "test")
    model = build_model(net, random_blobs(net)).model
    assert [i.name for i in model.graph.input] == ["data"]
    assert [o.name for o in model.graph.output] == ["flat", "prob"]  # Caffe's net.outputs, sorted
    assert dims(model.graph.input[0]) == ["N", 3, 8, 8]
    assert dims(model.graph.output[0]) == ["N", 4 * 4 * 4]
    assert dims(model.graph.output[1]) == ["N", 5]
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes = {v.name: dims(v) for v in inferred.graph.value_info}
    assert shapes["pool1"] == ["N", 4, 4, 4]  # Caffe's ceil size (floor would give 3)
    assert shapes["conv1"] == ["N", 4, 8, 8] and shapes["conv1@relu1"] == ["N", 4, 8, 8]


def test_static_batch():
    net = build_net(parse_net_text(NET), "test")
    model = build_model(net, random_blobs(net), static_batch=True).model
    assert dims(model.graph.input[0]) == [4, 3, 8, 8]
    assert dims(model.graph.output[1]) == [4, 5]


def test_a_net_that_runs_only_at_its_declared_batch_gets_a_static_one(tmp_path):
    """A Reshape fixing the first dim makes fc's weight depend on the batch: a dynamic 'N' would let ONNX Runtime
    accept other batches and fail inside the graph (Caffe refuses them): the batch is static, and the result says
    why."""
    text = (input_layer(shape=(2, 3, 8, 8))
            + layer("Convolution", tops=("conv1",), params="convolution_param { num_output: 4 kernel_size: 3 }")
            + layer("Reshape", ("conv1",), ("r",), "reshape_param { shape { dim: 1 dim: -1 } }")
            + layer("InnerProduct", ("r",), ("fc",), "inner_product_param { num_output: 5 }"))
    net = build_net(parse_net_text(text), "test")
    graph = build_model(net, random_blobs(net))
    assert dims(graph.model.graph.input[0]) == [2, 3, 8, 8]
    assert graph.fixed_batch_by == ("layer 'fc' (InnerProduct)'s parameters would change shape at another batch "
                                    "size (a fixed first dim before it)")
    result = caffeinit.export_onnx(caffeinit.load(parse_net_text(text)), tmp_path / "fixed.onnx")
    assert result.summary().endswith("; static batch 2: layer 'fc' (InnerProduct)'s parameters would change shape "
                                     "at another batch size (a fixed first dim before it)")
    following = build_net(parse_net_text(NET), "test")
    assert build_model(following, random_blobs(following)).fixed_batch_by is None


def test_the_batch_check_keeps_the_nets_level_and_inputs_with_their_own_first_dim():
    """Whether the batch can be dynamic is decided on the net as built (its level: a min_level layer stays) and
    with the batch changed only where an input follows it (a 1 x 3 info blob keeps its 1; changing it would change
    the InnerProduct's weight over axis 0 and wrongly pin the batch)."""
    text = (input_layer(shape=(2, 3, 4, 4)) + input_layer("info", (1, 3))
            + layer("ReLU", tops=("a",), params="include { min_level: 1 }")
            + layer("InnerProduct", ("a",), ("fc",), "inner_product_param { num_output: 5 }")
            + layer("InnerProduct", ("info",), ("scale",), "inner_product_param { num_output: 2 axis: 0 }"))
    net = build_net(parse_net_text(text), "test", level=1)
    graph = build_model(net, random_blobs(net))
    assert graph.fixed_batch_by is None
    assert dims(graph.model.graph.input[0]) == ["N", 3, 4, 4] and dims(graph.model.graph.input[1]) == [1, 3]


@pytest.mark.parametrize("run_batch", [1, 3])
def test_other_batch_size_than_the_prototxt(run_batch):
    net = NET + layer("Reshape", ("pool1",), ("r",), "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }") \
        + layer("Reduction", ("r",), ("total",), "reduction_param { axis: 1 }") \
        + layer("ArgMax", ("prob",), ("top",), "argmax_param { top_k: 2 }") \
        + layer("Pooling", ("conv1",), ("ave",), "pooling_param { pool: AVE kernel_size: 2 stride: 3 pad: 1 }") \
        + layer("BatchNorm", ("ave",), ("bn",), "batch_norm_param { use_global_stats: false }")
    errors, _, results = export_and_compare(net, run_batch=run_batch)
    assert results["prob"].shape == (run_batch, 5)


def test_opset_range():
    net = build_net(parse_net_text(NET), "test")
    for opset in (18, 19, 22):
        model = build_model(net, random_blobs(net), opset=opset).model
        assert model.opset_import[0].version == opset
        onnx.checker.check_model(model, full_check=True)
    with pytest.raises(CaffeinitError, match="opset 11 is not supported"):
        build_model(net, random_blobs(net), opset=11)


def test_in_place_output_keeps_blob_name_and_unused_label_is_no_input():
    text = (input_layer(shape=(2, 3, 4, 4)) + input_layer("label", (2,))
            + layer("Convolution", tops=("conv",), params="convolution_param { num_output: 2 kernel_size: 1 }")
            + layer("ReLU", ("conv",), ("conv",), name="relu"))
    net = build_net(parse_net_text(text), "test")
    graph = build_model(net, {"conv": [np.ones((2, 3, 1, 1), np.float32), np.zeros(2, np.float32)]})
    assert list(graph.inputs) == ["data"]
    assert graph.outputs == ["conv"]
    assert graph.value_names["conv"] == "conv@conv"  # the pre-activation value, renamed
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    out = session(graph.model).run(["conv"], {"data": x})[0]
    assert rel_err(out, np.maximum(x.sum(axis=1, keepdims=True).repeat(2, axis=1), 0)) <= 1e-6


def test_missing_weights_blob_is_an_error():
    net = build_net(parse_net_text(NET), "test")
    with pytest.raises(CaffeinitError, match=r"layer 'conv1' \(Convolution\): has 1 weight blobs, needs 2"):
        build_model(net, {"conv1": [np.zeros((4, 3, 3, 3), np.float32)]})


CASES = conformance_cases()


@pytest.mark.parametrize("case", CASES)
def test_conformance_every_blob_matches_caffe_in_ort(case):
    """Export with Caffe's own weights; every blob computed by ONNX Runtime matches real Caffe's golden blob."""
    folder = SHARED / "conformance" / case
    meta = json.loads((folder / "meta.json").read_text())
    model = caffeinit.load(folder / "net.prototxt", weights=folder / "weights.caffemodel")
    graph = build_model(model.net, model.module.blobs_numpy(), debug_outputs=True)
    assert_blobs_match_goldens(model, graph, session(graph.model), folder, meta["inputs"])
    assert sorted(o for o in graph.outputs if o in meta["outputs"]) == \
        sorted(o for o in meta["outputs"] if o not in model.net.feeds)


def test_train_phase_net_is_refused():
    net = build_net(parse_net_text(NET), "train")
    with pytest.raises(CaffeinitError, match="built for the TRAIN phase; ONNX export needs the TEST phase"):
        build_model(net, random_blobs(net))


def test_a_layer_with_its_own_train_phase():
    """In a TEST net, a BatchNorm with phase TRAIN normalizes with the batch's statistics (exported as such); a
    Dropout with phase TRAIN drops at random and is refused."""
    bn = input_layer() + layer("BatchNorm", params="phase: TRAIN")
    _, graph, _ = export_and_compare(bn)
    assert "ReduceMean" in {n.op_type for n in graph.model.graph.node}
    drop = input_layer() + layer("Dropout", params="phase: TRAIN")
    with pytest.raises(CaffeinitError, match=r"layer 'out' \(Dropout\): sets its own phase TRAIN"):
        build_model(build_net(parse_net_text(drop), "test"), {})


def test_scalar_constants_keep_a_rank_0_value_rank_0():
    """A Reduction over every axis gives Caffe a 0-axis top; its coeff, a MEAN's divisor and a Power after it are
    scalar constants, which must not give it a dimension (an initializer of shape [1] would)."""
    text = (input_layer(shape=(2, 3)) + layer("Reduction", tops=("mean",), params="reduction_param { operation: MEAN }")
            + layer("Power", ("mean",), ("p",), "power_param { scale: 2 shift: 1 }"))
    _, _, results = export_and_compare(text)
    assert results["mean"].shape == () and results["p"].shape == ()


def test_output_names_when_a_blob_is_named_like_an_ssa_value():
    """Blob 'x', made in place by layer 'r', has the SSA value 'x@r'; a blob literally named 'x@r' is a second
    output. Each graph output carries its own Caffe blob's name and values."""
    text = (input_layer(shape=(2, 3)) + layer("ReLU", tops=("x",), name="a")
            + layer("Sigmoid", ("x",), ("x",), name="r") + layer("TanH", tops=("x@r",), name="q"))
    net = build_net(parse_net_text(text), "test")
    graph = build_model(net, {})
    assert sorted(graph.outputs) == ["x", "x@r"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    results = dict(zip(graph.outputs, session(graph.model).run(graph.outputs, {"data": x})))
    assert rel_err(results["x"], 1 / (1 + np.exp(-np.maximum(x, 0)))) <= 1e-6
    assert rel_err(results["x@r"], np.tanh(x)) <= 1e-6


def test_an_input_changed_in_place_is_an_output():
    """Caffe's output 'data' is the input after the in-place ReLU; the graph input keeps the name 'data', the
    output its SSA name."""
    net = build_net(parse_net_text(input_layer(shape=(2, 3)) + layer("ReLU", ("data",), ("data",), name="relu")),
                    "test")
    graph = build_model(net, {})
    assert list(graph.inputs) == ["data"] and graph.outputs == ["data@relu"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    assert rel_err(session(graph.model).run(["data@relu"], {"data": x})[0], np.maximum(x, 0)) == 0


def test_a_blob_with_an_empty_name_is_refused():
    """Caffe takes top: "" as a blob name; ONNX reads an empty name as an omitted value (an invalid graph)."""
    text = input_layer(shape=(2, 3)) + layer("ReLU", tops=("",), name="relu") + layer("Sigmoid", ("",), ("s",))
    with pytest.raises(CaffeinitError, match=r"^layer 'relu' \(ReLU\): has a top with an empty name"):
        build_model(build_net(parse_net_text(text), "test"), {})
