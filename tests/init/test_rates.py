"""Measuring change rates (caffeinit/init/rates.py): the layout of the gradient passes, LRN's scale probes, the
InnerProduct gradient norms from Gram matrices."""
import numpy as np
import pytest
import torch

from caffeinit.init import InitConfig, initialize
from caffeinit.init.scale_model import build_scale_model
from tests.init.nets import DAG, HEAD, conv, images, ip, layer, model, pool, relu


POOLED_LRN_NET = (HEAD.format(name="pooled_lrn") + conv("conv1", "data", 8) + relu("relu1", "conv1")
                  + pool("pool1", "conv1")
                  + layer("norm1", "LRN", "pool1", extra="lrn_param { local_size: 3 alpha: 3 beta: 0.75 } ")
                  + conv("conv2", "norm1", 8) + relu("relu2", "conv2") + ip("fc", "conv2", 5))


def _initialized(text, seed):
    """A model of ``text`` after the within-layer step on 2 batches, those batches as feeds, its scale model."""
    m = model(text)
    init = images(2, seed=seed)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    return m, [{"data": torch.from_numpy(b["data"])} for b in init], build_scale_model(m.module)


@pytest.mark.parametrize("text", [POOLED_LRN_NET, DAG], ids=["lrn", "dag"])
def test_measured_rates_do_not_depend_on_the_layout_of_the_gradient_passes(monkeypatch, text):
    """The gradient passes run channels-last on the CPU (faster convolutions and pooling); the rates are those of
    the plain NCHW passes up to float rounding."""
    from caffeinit.init import rates
    m, feeds, sm = _initialized(text, seed=3)
    layouts = []
    monkeypatch.setattr(rates, "fast_layout",
                        lambda feed, original=rates.fast_layout: (layouts.append(1), original(feed))[1])
    fast = rates.measure_rates(m.module, sm, feeds, 2, 7)
    monkeypatch.setattr(rates, "fast_layout", lambda feed: feed)
    plain = rates.measure_rates(m.module, sm, feeds, 2, 7)
    assert len(layouts) == len(feeds) and np.isfinite(plain).all()
    np.testing.assert_allclose(fast, plain, rtol=2e-5)


def _bn_scale(name, bottom, relu_too):
    text = (layer(f"{name}_bn", "BatchNorm", bottom, bottom)
            + layer(f"{name}_sc", "Scale", bottom, bottom, 'scale_param { bias_term: true } '))
    return text + (relu(f"{name}_relu", bottom) if relu_too else "")


# ResNet's blocks: BatchNorm + Scale + ReLU after a convolution, BatchNorm + Scale into an Eltwise sum, and an
# InnerProduct whose input the Gram tap needs
RESIDUAL_BN = (HEAD.format(name="residual_bn") + conv("conv1", "data", 8) + _bn_scale("c1", "conv1", True)
               + conv("a", "conv1", 8) + _bn_scale("a", "a", True) + conv("b", "a", 8) + _bn_scale("b", "b", False)
               + layer("sum", "Eltwise", ["conv1", "b"]) + relu("relu_s", "sum")
               + conv("c", "sum", 8) + _bn_scale("c", "c", True) + ip("fc", "c", 5))


def test_fused_batchnorm_scale_relu_gives_the_rates_of_the_layers_one_by_one(monkeypatch):
    """Gradient passes run BatchNorm + Scale (+ ReLU) as one autograd node (executor.fuse_gradients): every fusible
    chain is fused, and the rates (the Scales' gammas among them) are those of the layers one by one."""
    from caffeinit.executor import TorchNet
    from caffeinit.layers import normalization
    from caffeinit.init import rates
    m, feeds, sm = _initialized(RESIDUAL_BN, seed=4)
    chains = []
    monkeypatch.setattr("caffeinit.executor.batchnorm_scale",
                        lambda *a, **k: (chains.append(k["relu"]), normalization.batchnorm_scale(*a, **k))[1])
    fused = rates.measure_rates(m.module, sm, feeds, 2, 7)
    assert chains == [True, True, False, True] * len(feeds)
    monkeypatch.setattr(TorchNet, "fuse_gradients", False)
    plain = rates.measure_rates(m.module, sm, feeds, 2, 7)
    assert len(chains) == 4 * len(feeds) and np.isfinite(plain).all() and len(plain) == 9  # 4 convs, 4 gammas, fc
    np.testing.assert_allclose(fused, plain, rtol=2e-5)


def _lrn_numpy(x, size, alpha, beta, k):
    """Caffe's LRN ACROSS_CHANNELS (lrn_layer.cpp) in float64: scale = k + alpha/size * sum of x^2 over the size
    channels centred on c (zero-padded), y = x scale^-beta. Returns (y, scale)."""
    pad = (size - 1) // 2
    sq = np.pad(x ** 2, ((0, 0), (pad, pad), (0, 0), (0, 0)))
    scale = k + alpha / size * sum(sq[:, i:i + x.shape[1]] for i in range(size))
    return x * scale ** -beta, scale


def _rms(a):
    return np.sqrt(np.mean(a ** 2))


@pytest.mark.parametrize("gain", [0.3, 1.0, 3.0])
def test_lrn_probe_exponents_match_the_formula(gain):
    from google.protobuf import text_format

    from caffeinit.init.rates import ScaleProbe
    from caffeinit.layers.registry import layer_class
    from caffeinit.proto import caffe_pb2
    rng = np.random.default_rng(12)
    x = (gain * rng.standard_normal((2, 7, 5, 5))).astype(np.float32)
    param = text_format.Parse('name: "n" type: "LRN" lrn_param { local_size: 5 alpha: 1 beta: 0.75 k: 2 }',
                              caffe_pb2.LayerParameter())
    lrn = layer_class("LRN")(param)
    lrn.setup([x.shape])
    probe = ScaleProbe(lrn, torch.from_numpy(x), [], torch.Generator().manual_seed(0))
    x64 = x.astype(np.float64)
    # local: d log RMS(y(s x)) / d log s = sum y^2 (1 - 2 beta (scale - k) / scale) / sum y^2
    y, scale = _lrn_numpy(x64, 5, 1.0, 0.75, 2.0)
    local = float(np.sum(y ** 2 * (1 - 2 * 0.75 * (scale - 2) / scale)) / np.sum(y ** 2))
    g, h = probe.exponents(0.0)
    assert abs(g - local) < 0.01, (g, local)
    assert 0 < h < 1.05
    # secant to a level L: log(RMS y(e^L x) / RMS y(x)) / L
    for level in (-1.0, 2.0):
        secant = np.log(_rms(_lrn_numpy(np.exp(level) * x64, 5, 1.0, 0.75, 2.0)[0]) / _rms(y)) / level
        assert abs(probe.exponents(level)[0] - secant) < 1e-4, level
    # off the probe's grid the response is interpolated: still close to the exact secant
    for level in (-0.73, 1.234, 2.46):
        secant = np.log(_rms(_lrn_numpy(np.exp(level) * x64, 5, 1.0, 0.75, 2.0)[0]) / _rms(y)) / level
        assert abs(probe.exponents(level)[0] - secant) < 2e-3, level


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_probe_closed_form_matches_autograd(region):
    """The probe's closed-form LRN responses (no autograd) are the RMS of f(s x) and of J(s x)^T u that autograd
    gives through the layer's own forward, at every scale of the grid."""
    from google.protobuf import text_format

    from caffeinit.init.rates import EXPONENT_STEP, ScaleProbe
    from caffeinit.layers.registry import layer_class
    from caffeinit.proto import caffe_pb2
    x = torch.from_numpy(3 * np.random.default_rng(5).standard_normal((2, 7, 6, 6)))
    param = text_format.Parse(f'name: "n" type: "LRN" lrn_param {{ local_size: 3 alpha: 0.5 beta: 0.75 k: 2 '
                              f'norm_region: {region} }}', caffe_pb2.LayerParameter())
    lrn = layer_class("LRN")(param)
    lrn.setup([tuple(x.shape)])
    probe = ScaleProbe(lrn, x, [], torch.Generator().manual_seed(0))
    for index in (-20, -3, 0, 4, 25):
        out, grad = probe._response_at(index)
        xs = (x * np.exp(index * EXPONENT_STEP)).requires_grad_(True)
        y = lrn.forward([xs], [])[0]
        (g,) = torch.autograd.grad(y, xs, grad_outputs=probe.u)
        assert abs(out - np.log(float(y.detach().pow(2).mean().sqrt()))) < 1e-9, index
        assert abs(grad - np.log(float(g.pow(2).mean().sqrt()))) < 1e-9, index


GRAM_NET = (HEAD.format(name="gram") + conv("left", "data", 6) + conv("right", "data", 10)
            + layer("cat", "Concat", ["left", "right"]) + ip("fc1", "cat", 20) + relu("relu1", "fc1")
            + 'layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 30 '
              'transpose: true weight_filler { type: "gaussian" std: 0.1 } } }\n'
            + ip("fc3", "fc2", 5))


def test_inner_product_gradient_norms_from_gram_matrices_equal_the_formed_gradients(monkeypatch):
    """The squared gradient norms (and per-input-channel sums of a Concat-split fc1) that the Gram matrices give
    equal those of the gradients autograd forms, draw for draw."""
    from caffeinit.init import rates
    from caffeinit.init.scale_model import InputChannels

    m = model(GRAM_NET)
    sm = build_scale_model(m.module)
    sm.input_channels = {k: InputChannels(node, tuple(sm.groups[k].shape))
                         for k, node in sm.linearize().split_groups().items()}
    names = [nodes[0].name for nodes in sm.group_nodes]
    assert names.index("fc1") in sm.input_channels  # its input is split into the two branches' blocks
    feed = {"data": torch.from_numpy(images(1, seed=3)[0]["data"])}

    def measure():
        sums = {k: np.zeros(r.channels) for k, r in sm.input_channels.items()}
        with rates.GradsOnly(m.module, sm.groups):
            total = rates.square_grads(m.module, sm, feed, 0, 2, 7, sm.groups, channel_sums=sums)
        return total, sums

    taps = []
    original = rates._GramTap.__init__
    monkeypatch.setattr(rates._GramTap, "__init__",
                        lambda self, *a, **k: (original(self, *a, **k), taps.append(self))[0])
    gram, gram_sums = measure()
    assert {sm.group_nodes[k][0].name for k in taps[0].readers} == {"fc1", "fc2"}  # fc3: forming it is cheaper

    def no_grams(self, *a, **k):
        original(self, *a, **k)
        self.readers, self.key_of, self.wanted = {}, {}, set()
    monkeypatch.setattr(rates._GramTap, "__init__", no_grams)
    formed, formed_sums = measure()
    np.testing.assert_allclose(gram, formed, rtol=1e-5)
    for k in formed_sums:
        np.testing.assert_allclose(gram_sums[k], formed_sums[k], rtol=1e-5)


@pytest.mark.parametrize("text", [GRAM_NET, RESIDUAL_BN], ids=["gram", "residual_bn"])
def test_gradient_passes_split_into_chunks_give_the_same_sums(text):
    """Chunks of 3 images (the last one shorter) with each draw's noise over the whole batch: the summed gradients,
    and so every squared norm and per-input-channel sum (Gram ones included), are those of one pass."""
    from caffeinit.init import rates
    from caffeinit.init.scale_model import InputChannels

    m = model(text)
    sm = build_scale_model(m.module)
    sm.input_channels = {k: InputChannels(node, tuple(sm.groups[k].shape))
                         for k, node in sm.linearize().split_groups().items()}
    feed = {"data": torch.from_numpy(images(1, batch=8, seed=5)[0]["data"])}

    def measure(chunk):
        sums = {k: np.zeros(r.channels) for k, r in sm.input_channels.items()}
        with rates.GradsOnly(m.module, sm.groups):
            total = rates.square_grads(m.module, sm, feed, 1, 2, 7, sm.groups, channel_sums=sums, chunk=chunk)
        return total, sums

    whole, whole_sums = measure(None)
    split, split_sums = measure(3)
    assert np.isfinite(whole).all() and (whole > 0).all()
    np.testing.assert_allclose(split, whole, rtol=1e-5)
    assert whole_sums.keys() == split_sums.keys() and bool(whole_sums) == (text == GRAM_NET)  # fc1's split input
    for k in whole_sums:
        np.testing.assert_allclose(split_sums[k], whole_sums[k], rtol=1e-5)
    other_draws = rates.square_grads(m.module, sm, feed, 2, 2, 7, sm.groups, chunk=3)  # another batch's draws
    assert not np.allclose(other_draws, whole, rtol=1e-3)


@pytest.mark.parametrize("chunk", [1, 3])
def test_probes_of_a_split_pass_see_the_images_of_a_whole_one(chunk):
    """The LRN probe gets its PROBE_IMAGES images gathered over the chunks of a split pass: its input and its
    exponents are those of the whole pass."""
    from caffeinit.init import rates
    m, feeds, sm = _initialized(POOLED_LRN_NET, seed=4)

    def probed(chunk):
        tap = rates.ProbeTap(m.module, sm, 7)
        with rates.GradsOnly(m.module, sm.groups):
            rates.square_grads(m.module, sm, feeds[0], 0, 1, 7, sm.groups, tap=tap, chunk=chunk)
        (probe,) = tap.probes().values()
        return probe

    whole, split = probed(None), probed(chunk)
    assert whole.x.shape[0] == rates.PROBE_IMAGES < feeds[0]["data"].shape[0]
    torch.testing.assert_close(split.x, whole.x, rtol=1e-5, atol=1e-6)
    for level in (0.0, 0.7):
        np.testing.assert_allclose(split.exponents(level), whole.exponents(level), rtol=1e-4)


@pytest.mark.parametrize("text", [GRAM_NET, RESIDUAL_BN, POOLED_LRN_NET], ids=["gram", "residual_bn", "lrn"])
def test_what_a_gradient_pass_keeps_grows_with_its_images(text):
    """Measured on two images, it is what a pass over 6 keeps per image (autograd's saved tensors, the end values,
    the Gram inputs), the parameters left out; and at most every value the net computes plus the input."""
    from caffeinit.init import rates
    from caffeinit.init.within import values_per_image
    m = model(text)
    sm = build_scale_model(m.module)
    feed = {"data": torch.from_numpy(images(1, batch=8, seed=5)[0]["data"])}
    one = rates.pass_bytes_per_image(m.module, sm, feed, sm.groups)  # two images
    six = rates.pass_bytes_per_image(m.module, sm, feed, sm.groups, images=6)
    assert 0 < one and six == pytest.approx(one, rel=1e-2)  # BatchNorm's few per-pass scalars aside
    assert one <= values_per_image(m.net)[0] + 4 * feed["data"][0].numel()
    assert one < sum(4 * p.numel() for p in m.module.parameters()) or text == POOLED_LRN_NET


def test_change_rates_are_the_expected_rms_gradient_over_the_rms_weight():
    """C_k = RMS(dL/dW_k) / RMS(W_k) with L = sum(u * y), u ~ N(0,1) at the end values, against its expectation in
    numpy: for a linear layer dL/dW = sum over images and positions of u x^T, so E mean(dL/dW^2) is the sum of the
    squared input patches over the fan-in (per batch, averaged over the batches). Sampling noise of 100 draws is
    about 1%; a convolution (direct gradient) and an InnerProduct (from Gram matrices) as two end values."""
    from caffeinit.init import rates
    m = model(HEAD.format(name="two") + conv("conv1", "data", 16) + ip("fc", "data", 40))
    sm = build_scale_model(m.module)
    assert [nodes[0].name for nodes in sm.group_nodes] == ["conv1", "fc"]
    batches = images(2, seed=4)
    x = np.concatenate([b["data"] for b in batches]).astype(np.float64)
    padded = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
    patch_squares = sum((padded[:, :, i:i + 12, j:j + 12] ** 2).sum() for i in range(3) for j in range(3))
    mean_square = np.array([patch_squares / (3 * 3 * 3), (x ** 2).sum() / x[0].size]) / len(batches)
    weight_rms = np.array([np.sqrt((m.blobs()[name][0].astype(np.float64) ** 2).mean()) for name in ("conv1", "fc")])
    got = rates.measure_rates(m.module, sm, [{"data": torch.from_numpy(b["data"])} for b in batches], 100, 1)
    np.testing.assert_allclose(got, np.sqrt(mean_square) / weight_rms, rtol=0.05)
