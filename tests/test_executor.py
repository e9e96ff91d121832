"""The torch executor: taps, partial runs from a frontier, autograd, shared parameters, CPU/CUDA agreement."""
import numpy as np
import pytest
import torch

from caffeinit.api import load
from caffeinit.errors import CaffeinitError
from caffeinit.executor import TorchNet, fast_layout, frontier
from caffeinit.fillers import scaled_random_blobs
from caffeinit.net import build_net
from caffeinit.proto import caffe_pb2
from caffeinit.prototxt import parse_net_text, read_net
from tests.conftest import ROOT, shared_path
from tests.layers.helpers import ONEDNN_POINTWISE

SMALL = '''name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


def small_net():
    net = build_net(parse_net_text(SMALL))
    return net, TorchNet(net, seed=1)


def x():
    return torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32))


def test_tap_sees_pre_activation_of_in_place_layers():
    net, module = small_net()
    seen = {}
    module({"data": x()}, tap=lambda node, tops: seen.update({node.name: tops[0].clone()}))
    assert (seen["conv1"] < 0).any()  # before relu1 overwrote it in Caffe
    assert torch.equal(seen["relu1"], seen["conv1"].clamp_min(0))


def test_resume_from_frontier_equals_full_run():
    net, module = small_net()
    full = module({"data": x()})
    start = next(n.index for n in net.layers if n.name == "conv2")
    need = frontier(net, start)
    assert need == ["pool1"]
    part = module({v: full[v] for v in need}, start=start)
    assert torch.equal(part["prob"], full["prob"])


def test_keep_returns_only_requested_values():
    net, module = small_net()
    out = module({"data": x()}, keep={"prob"})
    assert set(out) == {"prob"}


def test_autograd_reaches_every_learnable_blob():
    net, module = small_net()
    out = module({"data": x().requires_grad_()})
    out["fc"].pow(2).sum().backward()
    for node in net.layers:
        for p in module.layer_blobs[node.index]:
            assert p.grad is not None and torch.isfinite(p.grad).all(), node.name


def test_shared_parameters_are_one_tensor():
    text = SMALL.replace('layer { name: "conv2"', 'layer { name: "conv1b" type: "Convolution" bottom: "data" '
                         'top: "conv1b" param { name: "w" } param { name: "b" } convolution_param { num_output: 6 '
                         'kernel_size: 3 } }\nlayer { name: "conv2"')
    text = text.replace('top: "conv1"\n  convolution_param', 'top: "conv1"\n  param { name: "w" } param { name: "b" }\n'
                        '  convolution_param')
    net = build_net(parse_net_text(text))
    module = TorchNet(net)
    a = module.layer_blobs[net.layer("conv1").index]
    b = module.layer_blobs[net.layer("conv1b").index]
    assert a[0] is b[0] and a[1] is b[1]


SHARED_FC = '''name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fa" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" MODE_A}
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 }
                        bias_filler { type: "constant" value: 5 } } }
layer { name: "fb" type: "InnerProduct" bottom: "data" top: "b" param { name: "w" MODE_B}
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 2 }
                        bias_filler { type: "constant" value: 7 } } }
'''


def caffe_shared_fc(layers, weights, fillers):
    """Caffe's view of SHARED_FC: Net::Init lets fb share fa's weight memory (ShareWeights), then
    CopyTrainedLayersFrom copies the weights' layers in their order into that memory; biases stay per layer.
    ``fillers`` {layer: [weight, bias]} are the values before any copy. Returns {layer: (weight, bias)}."""
    shared = fillers["fa"][0]
    biases = {name: fillers[name][1] for name in layers}
    for name, arrays in weights.items():  # the caffemodel's order
        if name in layers:
            shared, biases[name] = arrays
    return {name: (shared, biases[name]) for name in layers}


@pytest.mark.parametrize("order", [("fa", "fb"), ("fb", "fa"), ("fb",), ("fa",), ()])
def test_a_shared_blob_holds_what_the_weights_copy_last(order):
    """The last layer in the weights' (file) order that holds the shared blob sets it for every sharer; a sharer
    alone in the weights sets it too; without weights the owner's filler holds."""
    rng = np.random.default_rng(0)
    given = {name: [rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)]
             for name in order}
    model = load(parse_net_text(SHARED_FC.replace("MODE_A", "").replace("MODE_B", "")), given)
    fillers = {"fa": [np.ones((2, 3)), np.full(2, 5.0)], "fb": [np.full((2, 3), 2.0), np.full(2, 7.0)]}
    want = caffe_shared_fc(["fa", "fb"], given, fillers)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    out = model.forward({"data": x})
    for name, top in (("fa", "a"), ("fb", "b")):
        weight, bias = want[name]
        np.testing.assert_allclose(out[top], x @ np.asarray(weight, np.float64).T + bias, rtol=1e-5, atol=1e-5)
    assert sorted(model.module.missing) == sorted(set(["fa", "fb"]) - set(order))


def test_shared_blob_order_follows_the_caffemodel_file(tmp_path):
    """Read from a caffemodel, the order is the file's: fb written first, fa last, so fa's weight is shared."""
    from caffeinit.weights import array_to_blob

    model = caffe_pb2.NetParameter()
    values = {"fb": np.full((2, 3), 3, np.float32), "fa": np.full((2, 3), -1, np.float32)}
    for name in ("fb", "fa"):
        layer = model.layer.add(name=name, type="InnerProduct")
        layer.blobs.extend([array_to_blob(values[name]), array_to_blob(np.zeros(2, np.float32))])
    path = tmp_path / "w.caffemodel"
    path.write_bytes(model.SerializeToString())
    loaded = load(parse_net_text(SHARED_FC.replace("MODE_A", "").replace("MODE_B", "")), weights=path)
    out = loaded.forward({"data": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(out["a"], np.full((2, 2), -3, np.float32))
    np.testing.assert_array_equal(out["b"], np.full((2, 2), -3, np.float32))


def two_fc(mode, inputs_b, outputs_b):
    """fa: 3 inputs -> 2 outputs (weight [2, 3]) and fb: ``inputs_b`` -> ``outputs_b``, sharing weight 'w'."""
    return (f'layer {{ name: "in" type: "Input" top: "x" top: "x2" input_param {{ shape {{ dim: 1 dim: 3 }} '
            f'shape {{ dim: 1 dim: {inputs_b} }} }} }}\n'
            'layer { name: "fa" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } '
            'inner_product_param { num_output: 2 } }\n'
            f'layer {{ name: "fb" type: "InnerProduct" bottom: "x2" top: "b" param {{ name: "w" {mode} }} '
            f'inner_product_param {{ num_output: {outputs_b} }} }}\n')


def test_permissive_sharing():
    """share_mode PERMISSIVE: equal shapes share as STRICT does; another shape of the same count (which Caffe lets
    see the owner's values in its own shape) is refused, one tensor holding each shared blob here; unequal counts
    fail Caffe's CHECK, and so does any other shape under STRICT."""
    module = load(parse_net_text(two_fc("share_mode: PERMISSIVE", 3, 2))).module
    assert module.layer_blobs[1][0] is module.layer_blobs[2][0]
    with pytest.raises(CaffeinitError, match=r"^layer 'fb' \(InnerProduct\): shared parameter 'w' has shape \[2, 3\] "
                       r"in its owner 'fa' but \[3, 2\] here: share_mode PERMISSIVE between shapes of equal count is "
                       "not supported; give both layers the same shape$"):
        load(parse_net_text(two_fc("share_mode: PERMISSIVE", 2, 3)))
    with pytest.raises(CaffeinitError, match=r"but \[2, 2\] here: share_mode PERMISSIVE needs equal counts$"):
        load(parse_net_text(two_fc("share_mode: PERMISSIVE", 2, 2)))
    with pytest.raises(CaffeinitError, match=r"shared parameter 'w' has shape \[2, 3\] in its owner 'fa' but \[3, 2\] "
                       "here$"):
        load(parse_net_text(two_fc("", 2, 3)))


EMBEDDED = '''name: "embedded"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "y" inner_product_param { num_output: 2 }
  blobs { WEIGHT data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 }
  blobs { shape { dim: 2 } data: 100 data: 200 } }
layer { name: "fc2" type: "InnerProduct" bottom: "y" top: "z" inner_product_param { num_output: 1 } }
'''


@pytest.mark.parametrize("weight", ["shape { dim: 2 dim: 3 }", "num: 1 channels: 1 height: 2 width: 3"])
def test_blobs_written_in_the_prototxt_replace_the_fillers(weight):
    """Caffe's Layer constructor copies layer_param.blobs and set-up skips the fillers (legacy 4-D dims accepted as
    in a caffemodel): y = x W^T + b with the prototxt's values; the layer is not missing; --weights overrides."""
    text = EMBEDDED.replace("WEIGHT", weight)
    x = np.array([[1, -1, 2]], np.float32)
    w, b = np.arange(1, 7, dtype=np.float64).reshape(2, 3), np.array([100.0, 200.0])
    model = load(parse_net_text(text))
    np.testing.assert_allclose(model.forward({"data": x}, blobs="y")["y"], x @ w.T + b, rtol=1e-6)
    assert model.module.missing == ["fc2"]
    given = {"fc": [np.full((2, 3), 0.5, np.float32), np.zeros(2, np.float32)]}
    overridden = load(parse_net_text(text), given)
    np.testing.assert_allclose(overridden.forward({"data": x}, blobs="y")["y"], x @ np.full((3, 2), 0.5),
                               rtol=1e-6)


def test_blobs_of_a_v1_prototxt_layer_are_used():
    """UpgradeV1LayerParameter copies a layer's blobs: a V1 InnerProduct with legacy 1x1x2x3 blobs runs with them."""
    text = ('layers { name: "fc" type: INNER_PRODUCT bottom: "data" top: "y" inner_product_param { num_output: 2 } '
            'blobs { num: 1 channels: 1 height: 2 width: 3 data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 } '
            'blobs { num: 1 channels: 1 height: 1 width: 2 data: -1 data: 1 } }\n'
            'input: "data" input_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1\n')
    x = np.array([1, 0, 2], np.float32).reshape(1, 3, 1, 1)
    want = x.reshape(1, 3) @ np.arange(1, 7, dtype=np.float64).reshape(2, 3).T + np.array([-1, 1])
    np.testing.assert_allclose(load(parse_net_text(text)).forward({"data": x})["y"], want, rtol=1e-6)


@pytest.mark.parametrize("blobs, message", [
    ("blobs { shape { dim: 3 dim: 2 } data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 } blobs { shape { dim: 2 } "
     "data: 0 data: 0 }",
     r"^layer 'fc' \(InnerProduct\): blob 0 has shape \[3, 2\] in the prototxt but the net needs \[2, 3\]$"),
    ("blobs { shape { dim: 2 dim: 3 } data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 }",
     r"^layer 'fc' \(InnerProduct\): 1 blobs in the prototxt, but the layer has 2$"),
])
def test_prototxt_blobs_that_do_not_fit_are_refused_at_build(blobs, message):
    text = EMBEDDED.replace('blobs { WEIGHT data: 1 data: 2 data: 3 data: 4 data: 5 data: 6 }\n  '
                            'blobs { shape { dim: 2 } data: 100 data: 200 }', blobs)
    with pytest.raises(CaffeinitError, match=message):
        build_net(parse_net_text(text))


def test_prototxt_blob_with_too_few_values_is_refused():
    text = EMBEDDED.replace("WEIGHT", "shape { dim: 2 dim: 3 }").replace(" data: 6 }", " }")
    with pytest.raises(CaffeinitError, match=r"layer 'fc' blob 0 in the prototxt: shape \[2, 3\] needs 6 values"):
        load(parse_net_text(text))


def test_batch_size_may_differ_from_the_prototxt():
    model = load(ROOT / "models" / "lenet" / "deploy.prototxt", device="cpu")
    out = model.forward({"data": np.zeros((3, 1, 28, 28), np.float32)})
    assert out["prob"].shape == (3, 10)
    np.testing.assert_allclose(out["prob"].sum(1), 1, rtol=1e-5)


FIXED_BATCH = SMALL.replace('layer { name: "fc" type: "InnerProduct" bottom: "conv2"',
                            'layer { name: "rows" type: "Reshape" bottom: "conv2" top: "rows" '
                            'reshape_param { shape { dim: 2 dim: -1 } } }\n'
                            'layer { name: "fc" type: "InnerProduct" bottom: "rows"')


def test_a_net_whose_shapes_do_not_follow_the_batch_size_is_refused_naming_the_layer():
    """A Reshape with a fixed first dim before an InnerProduct: at another batch size its weight would need another
    shape (Caffe's CHECK fails there too); a clear error instead of a torch one, before any work."""
    from caffeinit.errors import CaffeinitError
    net = build_net(parse_net_text(FIXED_BATCH))
    module = TorchNet(net, seed=1)
    assert module({"data": x()}, keep={"fc"})["fc"].shape == (2, 5)
    three = {"data": torch.zeros(3, 3, 12, 12)}
    with pytest.raises(CaffeinitError, match=r"^layer 'fc' \(InnerProduct\): with batches of 3 its parameters would "
                                             r"have to be 5x54, 5, not 5x36, 5: a layer before it does not follow the "
                                             r"batch size \(a fixed first dim\), so the net runs only with batches of "
                                             r"exactly 2 images \(--batch-size 2 and a --num-images that is a "
                                             r"multiple of it\)$"):
        module.check_batch(three)
    with pytest.raises(CaffeinitError, match="^layer 'fc'"):
        module(three)


def test_another_batch_size_keeps_the_nets_level():
    """The net set up for another batch size is the same net: a layer kept by the level (min_level 1) stays."""
    net = build_net(parse_net_text(SMALL.replace('top: "prob"', 'top: "prob" include { min_level: 1 }')), level=1)
    module = TorchNet(net, seed=1)
    assert module({"data": torch.zeros(3, 3, 12, 12)}, keep={"prob"})["prob"].shape == (3, 5)


def test_an_input_with_its_own_first_dim_fed_as_declared_does_not_change_the_batch():
    """An image-info input of shape 1x3 beside the data: fed first, as declared, it is not the batch (the net with
    a fixed batch of 2 runs at 2, and at 3 the data's batch is the one named)."""
    text = FIXED_BATCH + 'layer { name: "info" type: "Input" top: "info" input_param { shape { dim: 1 dim: 3 } } }\n'
    module = TorchNet(build_net(parse_net_text(text)), seed=1)
    info = torch.zeros(1, 3)
    assert module({"info": info, "data": x()}, keep={"fc"})["fc"].shape == (2, 5)
    with pytest.raises(CaffeinitError, match=r"^layer 'fc' \(InnerProduct\): with batches of 3 .* exactly 2 images"):
        module({"info": info, "data": torch.zeros(3, 3, 12, 12)})


def test_weights_go_to_the_first_layer_of_their_name_as_caffe_copies_them():
    """CopyTrainedLayersFrom copies a layer's blobs into the first layer of that name: a second InnerProduct of the
    name keeps its fillers, and a first one without blobs is Caffe's "Incompatible number of blobs" (before, the
    weights silently went to the second)."""
    head = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
    ip = 'layer {{ name: "fc" type: "InnerProduct" bottom: "{}" top: "{}" inner_product_param {{ num_output: 4 }} }}\n'
    weights = {"fc": [np.ones((4, 3), np.float32), np.zeros(4, np.float32)]}
    module = TorchNet(build_net(parse_net_text(head + ip.format("data", "a") + ip.format("data", "b"))), weights)
    assert module.missing == ["fc"] and (module.layer_blobs[1][0].detach().numpy() == 1).all()
    assert not (module.layer_blobs[2][0].detach().numpy() == 1).all()
    relu_first = head + 'layer { name: "fc" type: "ReLU" bottom: "data" top: "r" }\n' + ip.format("r", "fc")
    with pytest.raises(CaffeinitError, match=r"^w.caffemodel: layer 'fc' \(ReLU\): 2 blobs in the weights, but the "
                                             r"layer has 0$"):
        TorchNet(build_net(parse_net_text(relu_first)), weights, source="w.caffemodel")


@pytest.mark.parametrize("down, conv1_has_gradient",
                         [("", True), ("propagate_down: false", False), ("propagate_down: true", True)])
def test_propagate_down_false_stops_the_gradient_at_that_bottom(down, conv1_has_gradient):
    """Net::Init's bottom_need_backward: conv2 reading conv1 with propagate_down false passes it no gradient, so
    conv1's weights get none (conv2's still do)."""
    text = SMALL.replace('bottom: "pool1" top: "conv2"', f'bottom: "pool1" top: "conv2" {down}')
    module = TorchNet(build_net(parse_net_text(text)), seed=1)
    out = module({"data": x()}, keep={"prob"})
    conv1, conv2 = module.layer_blobs[1][0], module.layer_blobs[4][0]
    grads = torch.autograd.grad(out["prob"][:, 0].sum(), [conv1, conv2], allow_unused=True)
    assert (grads[0] is not None) == conv1_has_gradient and grads[1] is not None


def test_real_caffe_model_gives_finite_outputs():
    model = load(shared_path("corpus", "htshinichi__resnet50_stem.prototxt"),
                 weights=shared_path("corpus", "htshinichi__resnet50_stem.caffemodel"))
    assert not model.module.missing
    shapes = model.net.feeds
    feeds = {k: np.random.default_rng(0).standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    for blob, value in model.forward(feeds, "all").items():
        assert np.isfinite(value).all(), blob


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree_on_every_corpus_net():
    paths = sorted(shared_path("corpus").glob("*deploy*.prototxt"))
    assert len(paths) >= 10
    for path in paths:
        if "ssd__" in path.name:
            continue
        # sane random weights: the prototxts' own fillers overflow to inf in deep nets (MobileNet's conv5_2/dw)
        weights = scaled_random_blobs(load(path).net, np.random.default_rng(0))
        cpu = load(path, weights=weights, device="cpu")
        feeds = {k: np.random.default_rng(0).standard_normal((2,) + s[1:]).astype(np.float32)
                 for k, s in cpu.net.feeds.items()}
        gpu = load(path, weights=weights, device="cuda")
        a, b = cpu.forward(feeds, "all"), gpu.forward(feeds, "all")
        for blob in a:
            assert np.isfinite(a[blob]).all(), (path.name, blob)
            scale = max(np.abs(a[blob]).max(), 1e-12)
            assert np.abs(a[blob] - b[blob]).max() / scale <= 1e-5, (path.name, blob)


def test_layers_follow_the_runtime_batch_size():
    # The init feeds a smaller last batch straight to the module: no layer may bake in the prototxt's batch.
    cases = sorted(p for p in shared_path("conformance").iterdir() if p.is_dir())
    assert len(cases) >= 20
    for case in cases:
        if case.name == "reshape_flatten":  # its Reshape spells out the batch dimension: Caffe needs that batch too
            continue
        model = load(case / "net.prototxt", weights=case / "weights.caffemodel")
        golden = np.load(case / "golden.npz")
        feeds = {name: torch.from_numpy(np.load(case / f"in_{name}.npy")[:1]) for name in model.net.feeds}
        with torch.no_grad():
            values = model.module({model.net.feed_values[b]: t for b, t in feeds.items()})
        for blob in golden.files:
            want = golden[blob][:1]
            got = values[model.net.value_of[blob]].numpy()
            assert got.shape == want.shape, (case.name, blob)
            assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30), (case.name, blob)


def test_smaller_batch_through_a_train_net_with_loss():
    param = read_net(str(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt")))
    net = build_net(param, "train", input_shapes={"data": (4, 1, 28, 28), "label": (4,)})
    module = TorchNet(net, seed=0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((4, 1, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 4).astype(np.float32))
    full = module({"data": x, "label": y}, keep={"loss"})["loss"]
    halves = [module({"data": x[i:i + 2], "label": y[i:i + 2]}, keep={"loss"})["loss"] for i in (0, 2)]
    # SoftmaxWithLoss normalizes by the valid count (VALID): the mean of the two halves is the full loss.
    assert torch.allclose((halves[0] + halves[1]) / 2, full, rtol=1e-5)


# -- in-place inference --------------------------------------------------------------------------------------------

def count_inplace_calls(module):
    """Wrap every layer's forward_inplace to record the types of the layers that really ran in place. Switches the
    oneDNN fusion off: these tests are about in place alone (fusion has its own tests below)."""
    module.fuse_inference = False
    calls = []
    for node in module.net.layers:
        def spy(bottoms, blobs, _layer=node.layer, _original=node.layer.forward_inplace):
            tops = _original(bottoms, blobs)
            if tops is not None:
                calls.append(_layer.type_name)
            return tops
        node.layer.forward_inplace = spy
    return calls


def out_of_place(module, feeds, keep):
    """The reference: the same module with the in-place path (and the oneDNN fusion) switched off."""
    saved, module._can_run_inplace = module._can_run_inplace, set()
    saved_fuse, module.fuse_inference = module.fuse_inference, False
    try:
        with torch.no_grad():
            return module(feeds, keep=keep)
    finally:
        module._can_run_inplace, module.fuse_inference = saved, saved_fuse


def random_batchnorm_stats(net, module, rng):
    for node in net.layers:
        if node.type == "BatchNorm":
            mean, var, factor = module.layer_blobs[node.index]
            mean.data.copy_(torch.from_numpy(rng.normal(0, 1, mean.shape).astype(np.float32)))
            var.data.copy_(torch.from_numpy(rng.uniform(0.5, 2, var.shape).astype(np.float32)))
            factor.data.fill_(float(rng.uniform(0.5, 2)))


ELEMENTWISE = '''name: "inplace"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
layer { name: "side" type: "Input" top: "side" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 1 }
                      bias_filler { type: "gaussian" std: 1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" param { lr_mult: 1 } param { lr_mult: 1 }
  scale_param { bias_term: true filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "leaky" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layer { name: "bias" type: "Bias" bottom: "conv" top: "conv" bias_param { filler { type: "gaussian" std: 1 } } }
layer { name: "sig" type: "Sigmoid" bottom: "conv" top: "conv" }
layer { name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 2 } } }
layer { name: "tanh" type: "TanH" bottom: "conv2" top: "conv2" }
layer { name: "scale2" type: "Scale" bottom: "conv2" bottom: "side" top: "conv2" scale_param { axis: 0 } }
layer { name: "bias2" type: "Bias" bottom: "conv2" bottom: "side" top: "conv2" bias_param { axis: 0 } }
layer { name: "abs" type: "AbsVal" bottom: "conv2" top: "conv2" }
layer { name: "drop" type: "Dropout" bottom: "conv2" top: "conv2" }
layer { name: "relu" type: "ReLU" bottom: "conv2" top: "conv2" }
'''


def elementwise_net():
    net = build_net(parse_net_text(ELEMENTWISE))
    module = TorchNet(net, seed=3)
    random_batchnorm_stats(net, module, np.random.default_rng(4))
    rng = np.random.default_rng(5)
    feeds = {"data": torch.from_numpy(rng.standard_normal((2, 4, 5, 5)).astype(np.float32)),
             "side": torch.from_numpy(rng.standard_normal((2, 4)).astype(np.float32))}
    return net, module, feeds


def test_every_in_place_layer_gives_bitwise_the_out_of_place_numbers():
    net, module, feeds = elementwise_net()
    keep = {net.value_of["conv2"]}
    want = out_of_place(module, feeds, keep)
    calls = count_inplace_calls(module)
    with torch.no_grad():
        got = module(feeds, keep=keep)
    assert sorted(calls) == sorted(["BatchNorm", "Scale", "ReLU", "Bias", "Sigmoid", "TanH", "Scale", "Bias",
                                    "AbsVal", "ReLU"])
    assert torch.equal(got[net.value_of["conv2"]], want[net.value_of["conv2"]])
    # The oracle for the chain, in numpy from Caffe's formulas (float32 throughout).
    p = {node.name: [b.detach().numpy() for b in module.layer_blobs[node.index]] for node in net.layers}
    x, side = feeds["data"].numpy(), feeds["side"].numpy()
    w, b = p["conv"]
    y = np.einsum("oc,nchw->nohw", w.reshape(4, 4), x) + b[None, :, None, None]
    mean, var, factor = p["bn"]
    y = (y - (mean / factor[0])[None, :, None, None]) / np.sqrt(var / factor[0] + 1e-5)[None, :, None, None]
    y = y * p["scale"][0][None, :, None, None] + p["scale"][1][None, :, None, None]
    y = np.maximum(y, 0) + 0.1 * np.minimum(y, 0)
    y = 1 / (1 + np.exp(-(y + p["bias"][0][None, :, None, None])))
    y = np.einsum("oc,nchw->nohw", p["conv2"][0].reshape(4, 4), y) + p["conv2"][1][None, :, None, None]
    y = np.abs(np.tanh(y) * side[:, :, None, None] + side[:, :, None, None])
    np.testing.assert_allclose(got[net.value_of["conv2"]].numpy(), y, rtol=1e-4, atol=1e-5)


def test_in_place_never_touches_inputs_kept_values_or_parameters():
    text = '''name: "guarded"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "relu_in" type: "ReLU" bottom: "data" top: "data" }
layer { name: "flat_in" type: "Flatten" bottom: "data" top: "flat_in" }
layer { name: "sig_in" type: "Sigmoid" bottom: "flat_in" top: "flat_in" }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "flat" type: "Flatten" bottom: "conv" top: "flat" }
layer { name: "abs_view" type: "AbsVal" bottom: "flat" top: "flat" }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "dropped" }
layer { name: "tanh_alias" type: "TanH" bottom: "dropped" top: "dropped" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 } }
layer { name: "kept" type: "TanH" bottom: "pool" top: "kept" }
layer { name: "relu_kept" type: "ReLU" bottom: "kept" top: "kept" }
layer { name: "param" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } } }
layer { name: "relu_param" type: "ReLU" bottom: "w" top: "w" }
'''
    net = build_net(parse_net_text(text))
    module = TorchNet(net, seed=0)
    module.layer_blobs[net.layer("param").index][0].data.normal_(generator=torch.Generator().manual_seed(0))
    params = [p.detach().clone() for p in module.parameters()]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32))
    x_before = x.clone()
    keep = {net.value_of[b] for b in ("flat_in", "flat", "dropped", "kept", "w")} | {"kept"}
    want = out_of_place(module, {"data": x}, keep)
    calls = count_inplace_calls(module)
    with torch.no_grad():
        got = module({"data": x}, keep=keep)
    assert torch.equal(x, x_before)  # relu_in and sig_in (on a view of it) leave the caller's tensor alone
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), params))  # relu_param copies the blob
    assert (got["kept"] < 0).any()  # the kept pre-activation, not overwritten by relu_kept
    for v in keep:
        assert torch.equal(got[v], want[v]), v
    # flat (a view of conv) and dropped (conv itself) are read while conv is still alive for pool; "kept" is kept:
    # the one tensor that may be overwritten is pool, by the TanH that makes "kept".
    assert calls == ["TanH"]


def test_a_tap_or_autograd_switches_in_place_off():
    net, module = small_net()
    calls = count_inplace_calls(module)
    keep = {"prob"}
    with torch.no_grad():
        fast = module({"data": x()}, keep=keep)["prob"]
    assert calls == ["ReLU", "ReLU"]
    calls.clear()
    seen = {}
    with torch.no_grad():
        tapped = module({"data": x()}, keep=keep, tap=lambda node, tops: seen.update({node.name: tops[0].clone()}))
    assert calls == [] and torch.equal(tapped["prob"], fast)
    assert (seen["conv1"] < 0).any() and torch.equal(seen["relu1"], seen["conv1"].clamp_min(0))
    out = module({"data": x().requires_grad_()}, keep={"fc"})
    assert calls == []
    out["fc"].pow(2).sum().backward()
    for node in net.layers:
        for p in module.layer_blobs[node.index]:
            assert p.grad is not None and torch.isfinite(p.grad).all(), node.name


@pytest.mark.parametrize("name", ["htshinichi__resnet50_stem", "shicai__mobilenet_deploy",
                                  "squeeze__SqueezeNet_v1.1_deploy", "bvlc__models_bvlc_googlenet_deploy"])
def test_in_place_is_bitwise_identical_on_corpus_nets(name):
    param = read_net(str(shared_path("corpus", name + ".prototxt")))
    net = build_net(param)
    shapes = {b: (1,) + tuple(s[1:]) for b, s in net.feeds.items()}
    net = build_net(param, input_shapes=shapes)
    weights = shared_path("corpus", name + ".caffemodel")
    if weights.exists():
        from caffeinit.weights import load_weights
        module = TorchNet(net, load_weights(str(weights)))
    else:
        module = TorchNet(net, seed=0)
        random_batchnorm_stats(net, module, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    feeds = {net.feed_values[b]: torch.from_numpy(rng.standard_normal(s).astype(np.float32))
             for b, s in shapes.items()}
    inputs = {v: t.clone() for v, t in feeds.items()}
    keep = {net.value_of[b] for b in net.outputs}
    want = out_of_place(module, feeds, keep)
    calls = count_inplace_calls(module)
    with torch.no_grad():
        got = module(feeds, keep=keep)
    assert calls, name
    assert set(got) == keep
    for v in keep:
        assert torch.equal(got[v], want[v]), (name, v)
        assert torch.isfinite(got[v]).all(), (name, v)
    assert all(torch.equal(feeds[v], inputs[v]) for v in feeds)


def test_in_place_is_bitwise_identical_on_conformance_cases():
    used = []
    for case in sorted(p for p in shared_path("conformance").iterdir() if p.is_dir()):
        model = load(case / "net.prototxt", weights=case / "weights.caffemodel")
        module, net = model.module, model.net
        golden = np.load(case / "golden.npz")
        feeds = {net.feed_values[b]: torch.from_numpy(np.load(case / f"in_{b}.npy")) for b in net.feeds}
        keep = {net.value_of[b] for b in net.outputs}
        want = out_of_place(module, feeds, keep)
        calls = count_inplace_calls(module)
        with torch.no_grad():
            got = module(feeds, keep=keep)
        used += calls
        for blob in net.outputs:
            v = net.value_of[blob]
            assert torch.equal(got[v], want[v]), (case.name, blob)
            if blob in golden.files:
                expected = golden[blob]
                assert np.abs(got[v].numpy() - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1e-30), \
                    (case.name, blob)
    assert used  # the cases with in-place layers on computed values ran through the in-place path


# -- oneDNN fusion on the inference path ---------------------------------------------------------------------------

def count_fused_calls(module):
    """Wrap every forward_inference to record (layer name, ReLU slope or None) of the calls that ran through
    oneDNN."""
    calls = []
    for node in module.net.layers:
        if hasattr(node.layer, "forward_inference"):
            def spy(bottoms, blobs, relu_slope=None, _layer=node.layer, _original=node.layer.forward_inference):
                tops = _original(bottoms, blobs, relu_slope)
                if tops is not None:
                    calls.append((_layer.name, relu_slope))
                return tops
            node.layer.forward_inference = spy
    return calls


def unfused(module, feeds, keep):
    """The reference: every layer on its plain forward (in place still on)."""
    module.fuse_inference = False
    try:
        with torch.no_grad():
            return module(feeds, keep=keep)
    finally:
        module.fuse_inference = True


def assert_close(got, want, what):
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), what
    assert float((got - want).abs().max()) <= 1e-5 * max(float(want.abs().max()), 1e-30), what


@pytest.mark.parametrize("name", ["bvlc__models_bvlc_googlenet_deploy", "soeaver__deploy_vgg16-pytorch"])
def test_fused_path_matches_the_plain_path_on_corpus_nets(name):
    if not ONEDNN_POINTWISE:
        pytest.skip("this torch build has no oneDNN pointwise convolution")
    param = read_net(str(shared_path("corpus", name + ".prototxt")))
    net = build_net(param, input_shapes={b: (1,) + tuple(s[1:]) for b, s in build_net(param).feeds.items()})
    rng = np.random.default_rng(1)
    module = TorchNet(net, scaled_random_blobs(net, rng))  # activations stay O(1) through the deep nets
    feeds = {net.feed_values[b]: torch.from_numpy(rng.standard_normal(s).astype(np.float32))
             for b, s in net.feeds.items()}
    keep = {net.value_of[b] for b in net.outputs} | {net.value_of[net.layers[-1].bottoms[0]]}  # and the logits
    want = unfused(module, feeds, keep)
    calls = count_fused_calls(module)
    with torch.no_grad():
        got = module(feeds, keep=keep)
    relu_after = {node.name for node in net.layers if node.type in ("Convolution", "InnerProduct")
                  and any(r.type == "ReLU" and r.bottom_values == node.top_values for r in net.layers)}
    assert {layer for layer, slope in calls if slope is not None} == relu_after and relu_after
    assert set(got) == keep
    for v in keep:
        assert got[v].is_contiguous(), v
        assert_close(got[v], want[v], (name, v))


def test_non_finite_values_are_not_fused_away():
    """oneDNN's fused ReLU turns NaN into 0; Caffe's ReLU (max(x, 0) + slope min(x, 0)) keeps it: a NaN in the input
    or in a weight reaches the output as on the plain path, whichever blobs are asked for."""
    if not ONEDNN_POINTWISE:
        pytest.skip("this torch build has no oneDNN pointwise convolution")
    net, module = small_net()
    nan_input = x()
    nan_input[0, 0, 5, 5] = float("nan")
    calls = count_fused_calls(module)
    with torch.no_grad():
        got = module({"data": nan_input}, keep={"prob"})
    assert ("conv1", 0.0) not in calls and torch.isnan(got["prob"][0]).all()
    torch.testing.assert_close(got["prob"], unfused(module, {"data": nan_input}, {"prob"})["prob"], equal_nan=True)
    net, module = small_net()  # a NaN weight (a caffemodel's): no fusion anywhere
    module.layer_blobs[net.layer("conv1").index][0].data[0, 0, 0, 0] = float("nan")
    calls = count_fused_calls(module)
    with torch.no_grad():
        got = module({"data": x()}, keep={"prob"})
    assert not [call for call in calls if call[1] is not None]
    torch.testing.assert_close(got["prob"], unfused(module, {"data": x()}, {"prob"})["prob"], equal_nan=True)
    assert torch.isnan(got["prob"]).any()


def test_fusion_never_hides_a_kept_pre_activation():
    net, module = small_net()
    calls = count_fused_calls(module)
    want = unfused(module, {"data": x()}, None)
    with torch.no_grad():
        got = module({"data": x()}, keep={"conv1", "prob"})
    assert ("conv1", 0.0) not in calls and ("conv2", 0.0) in calls  # relu2 still fuses
    assert (got["conv1"] < 0).any() and torch.equal(got["conv1"], want["conv1"])
    assert_close(got["prob"], want["prob"], "prob")
    calls.clear()
    relu1 = net.value_of["conv1"]  # conv1@relu1, the activation: conv1 may fuse
    with torch.no_grad():
        got = module({"data": x()}, keep={relu1})
    assert ("conv1", 0.0) in calls
    assert got[relu1].is_contiguous()
    assert_close(got[relu1], want[relu1], relu1)
    calls.clear()
    with torch.no_grad():  # a tap sees every layer's own tops: no fusion
        module({"data": x()}, keep={"prob"}, tap=lambda node, tops: None)
    module({"data": x()}, keep={"prob"})  # nor with autograd
    assert calls == []


FUSIBLE = '''name: "fusible"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 6 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "gaussian" std: 1 } } }
layer { name: "leaky" type: "ReLU" bottom: "conv_a" top: "conv_a" relu_param { negative_slope: 0.1 } }
layer { name: "conv_b" type: "Convolution" bottom: "conv_a" top: "conv_b"
  convolution_param { num_output: 4 kernel_size: 1 group: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu_b" type: "ReLU" bottom: "conv_b" top: "relu_b" }
layer { name: "sig_b" type: "Sigmoid" bottom: "conv_b" top: "sig_b" }
layer { name: "fc" type: "InnerProduct" bottom: "relu_b" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.2 }
                        bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu_fc" type: "ReLU" bottom: "fc" top: "fc" relu_param { negative_slope: -0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "sig_b" top: "fc2"
  inner_product_param { num_output: 3 axis: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "fc_a" type: "InnerProduct" bottom: "conv_a" top: "fc_a"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.2 } } }
'''


def test_leaky_relu_and_inner_products_fuse_like_caffe():
    """Against numpy transcriptions of Caffe's layers: a leaky ReLU fused into a convolution (whose channels-last top
    two layers read), a ReLU with a negative slope fused into an InnerProduct, InnerProducts alone (one on axis 2);
    conv_b has two readers and runs plain."""
    from tests.layers.test_conv import caffe_conv, caffe_relu
    net = build_net(parse_net_text(FUSIBLE))
    module = TorchNet(net, seed=2)
    calls = count_fused_calls(module)
    data = np.random.default_rng(3).standard_normal((2, 3, 7, 6)).astype(np.float32)
    keep = {net.value_of["fc"], "fc2", "fc_a"}
    with torch.no_grad():
        got = module({"data": torch.from_numpy(data)}, keep=keep)
    from caffeinit.layers import conv
    if conv._CONV_POINTWISE.available:
        slope = float(np.float32(0.1))  # relu_param.negative_slope is a proto float
        assert sorted(calls, key=str) == sorted([("conv_a", slope), ("fc", -0.5), ("fc2", None), ("fc_a", None)],
                                                key=str)
    p = {node.name: [b.detach().numpy().astype(np.float64) for b in module.layer_blobs[node.index]]
         for node in net.layers}
    a = caffe_relu(caffe_conv(data, *p["conv_a"], (1, 1), (1, 1), (1, 1), 1), 0.1)
    b = caffe_conv(a, p["conv_b"][0], p["conv_b"][1], (1, 1), (0, 0), (1, 1), 2)
    fc = caffe_relu(np.maximum(b, 0).reshape(2, -1) @ p["fc"][0].T + p["fc"][1], -0.5)
    fc2 = (1 / (1 + np.exp(-b))).reshape(2, 4, -1) @ p["fc2"][0].T + p["fc2"][1]
    np.testing.assert_allclose(got[net.value_of["fc"]].numpy(), fc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["fc2"].numpy(), fc2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["fc_a"].numpy(), a.reshape(2, -1) @ p["fc_a"][0].T + p["fc_a"][1], rtol=1e-5,
                               atol=1e-5)


def test_without_onednn_the_fused_path_is_the_plain_one(monkeypatch):
    from caffeinit.layers import conv, inner_product
    monkeypatch.setattr(conv._CONV_POINTWISE, "op", None)
    monkeypatch.setattr(inner_product._LINEAR_POINTWISE, "op", None)
    net, module = small_net()
    calls = count_fused_calls(module)
    want = unfused(module, {"data": x()}, {"prob", "conv1"})
    with torch.no_grad():
        got = module({"data": x()}, keep={"prob", "conv1"})
    assert calls == []
    assert all(torch.equal(got[v], want[v]) for v in want)


def test_fast_layout_makes_4d_cpu_feeds_channels_last_and_keeps_their_values():
    image = torch.randn(2, 3, 5, 4)
    flat = torch.randn(2, 7)
    out = fast_layout({"data": image, "extra": flat})
    assert out["data"].is_contiguous(memory_format=torch.channels_last) and not out["data"].is_contiguous()
    assert torch.equal(out["data"], image) and out["extra"] is flat


@pytest.mark.parametrize("given, message", [
    ([np.ones((4, 3), np.float32)], r"^w.caffemodel: layer 'fc' \(InnerProduct\): 1 blobs in the weights, but the "
                                    r"layer has 2$"),
    ([np.ones((3, 4), np.float32), np.zeros(4, np.float32)],
     r"^w.caffemodel: layer 'fc' \(InnerProduct\): blob 0 has shape \[3, 4\] in the weights but the net needs "
     r"\[4, 3\]$"),
    ([np.ones((4, 3), np.float32), np.zeros((1, 4), np.float32)],
     r"^w.caffemodel: layer 'fc' \(InnerProduct\): blob 1 has shape \[1, 4\] in the weights but the net needs \[4\]$"),
])
def test_weights_that_do_not_fit_name_the_layer_and_its_type_alike(given, message):
    """A wrong blob count and a wrong blob shape are worded alike: the layer's name and type (layer_error)."""
    text = ('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "y" inner_product_param { num_output: 4 } }\n')
    with pytest.raises(CaffeinitError, match=message):
        TorchNet(build_net(parse_net_text(text)), {"fc": given}, source="w.caffemodel")
