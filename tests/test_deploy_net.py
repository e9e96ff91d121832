"""The inference part of a train/val net (caffeinit.deploy_net), and its ONNX export against the original net."""
import numpy as np
import pytest

from caffeinit.api import load
from caffeinit.deploy_net import deploy_param, losses_in_test_phase
from caffeinit.errors import CaffeinitError
from caffeinit.net import build_net
from caffeinit.prototxt import read_net
from tests.conftest import shared_path


def test_alexnet_train_val_keeps_its_test_layers_without_loss_and_accuracy():
    param = read_net(shared_path("corpus", "bvlc__models_bvlc_alexnet_train_val.prototxt"))
    deploy = deploy_param(param, {"data": (10, 3, 227, 227), "label": (10,)})
    types = [lp.type for lp in deploy.layer]
    assert types[0] == "Input" and "Data" not in types
    assert not {"SoftmaxWithLoss", "Accuracy"} & set(types)
    data = deploy.layer[0]
    assert list(data.top) == ["data"]  # the label was read by the loss and accuracy only
    assert [list(s.dim) for s in data.input_param.shape] == [[10, 3, 227, 227]]
    # the rest are the TEST-phase layers of the train_val, unchanged, in order
    test = build_net(param, "test", input_shapes={"data": (10, 3, 227, 227), "label": (10,)})
    kept = [node.param for node in test.layers if not node.layer.is_data and not node.layer.is_loss]
    for lp in kept:
        lp.ClearField("include"), lp.ClearField("exclude")  # applied
    assert list(deploy.layer[1:]) == kept
    assert build_net(deploy, "test").outputs == ["fc8"]
    assert losses_in_test_phase(param) and not losses_in_test_phase(deploy)


def test_a_data_top_whose_shape_is_unknown_is_named():
    param = read_net(shared_path("corpus", "bvlc__models_bvlc_alexnet_train_val.prototxt"))
    with pytest.raises(CaffeinitError, match=r"^layer 'data' \(Data\) of the TEST phase feeds 'data', whose shape "
                                             r"is not known here"):
        deploy_param(param, {"label": (10,)})


def test_onnx_of_a_train_val_net_computes_what_the_net_computes(tmp_path):
    """LeNet's train_test, exported through its inference part: ONNX Runtime's ip2 equals the original TEST net's
    ip2 (the net with its Data layer, loss and accuracy, fed a label)."""
    import onnxruntime as ort
    from caffeinit.onnx_export import export_onnx

    param = read_net(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))
    shapes = {"data": (4, 1, 28, 28), "label": (4,)}
    original = load(param, phase="test", input_shapes=shapes, seed=3)
    deploy = load(deploy_param(param, shapes), original.blobs(), phase="test")
    export_onnx(deploy, tmp_path / "lenet.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 28, 28)).astype(np.float32)
    want = original.forward({"data": x, "label": np.zeros(4, np.float32)}, blobs=["ip2"])["ip2"]
    session = ort.InferenceSession(str(tmp_path / "lenet.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]
    got = session.run(["ip2"], {"data": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_layers_reading_what_a_loss_or_accuracy_computes_go_with_it():
    """A Power scaling the loss and a Silence of the accuracy read blobs the inference part no longer has: they go
    too, as one removes them by hand (before, the deploy net named an unknown bottom 'loss')."""
    from caffeinit.prototxt import parse_net_text
    param = parse_net_text(
        'name: "tv"\n'
        'layer { name: "data" type: "Input" top: "data" top: "label" '
        'input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 5 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n'
        'layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }\n'
        'layer { name: "scaled" type: "Power" bottom: "loss" top: "scaled" power_param { scale: 2 } }\n'
        'layer { name: "sil" type: "Silence" bottom: "acc" }\n')
    deploy = deploy_param(param, {"data": (2, 3, 4, 4), "label": (2,)})
    assert [lp.name for lp in deploy.layer] == ["data", "ip"]
    assert build_net(deploy).outputs == ["ip"]


def test_the_deploy_net_is_the_same_in_any_level_it_is_built_in():
    """Its layers were chosen by the level (min_level 1): built again at the default level 0 (as the CLI checks it
    for export), it keeps them (before, ip2 silently went)."""
    from caffeinit.prototxt import parse_net_text
    param = parse_net_text(
        'name: "tv"\n'
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 5 } }\n'
        'layer { name: "ip2" type: "InnerProduct" bottom: "ip" top: "ip2" inner_product_param { num_output: 5 } '
        'include { min_level: 1 } }\n')
    deploy = deploy_param(param, {"data": (2, 3)}, level=1)
    assert build_net(deploy, "test").outputs == ["ip2"]
