"""The torch executor: taps, partial runs from a frontier, autograd, shared parameters, CPU/CUDA agreement."""
import numpy as np
import pytest
import torch

from caffeinit.api import load
from caffeinit.executor import TorchNet, frontier
from caffeinit.net import build_net
from caffeinit.prototxt import parse_net_text, read_net
from tests.conftest import ROOT, shared_path

SMALL = '''name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
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


def test_batch_size_may_differ_from_the_prototxt():
    model = load(ROOT / "models" / "lenet" / "deploy.prototxt", device="cpu")
    out = model.forward({"data": np.zeros((3, 1, 28, 28), np.float32)})
    assert out["prob"].shape == (3, 10)
    np.testing.assert_allclose(out["prob"].sum(1), 1, rtol=1e-5)


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
    for path in sorted(shared_path("corpus").glob("*deploy*.prototxt")):
        if "ssd__" in path.name:
            continue
        cpu = load(path, device="cpu", seed=0)
        feeds = {k: np.random.default_rng(0).standard_normal((2,) + s[1:]).astype(np.float32)
                 for k, s in cpu.net.feeds.items()}
        gpu = load(path, weights=cpu.blobs(), device="cuda")
        a, b = cpu.forward(feeds, "all"), gpu.forward(feeds, "all")
        for blob in a:
            scale = max(np.abs(a[blob]).max(), 1e-12)
            assert np.abs(a[blob] - b[blob]).max() / scale <= 1e-5, (path.name, blob)


def test_layers_follow_the_runtime_batch_size():
    # The init feeds a smaller last batch straight to the module: no layer may bake in the prototxt's batch.
    conformance = shared_path("conformance")
    for case in sorted(p for p in conformance.iterdir() if p.is_dir()):
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
