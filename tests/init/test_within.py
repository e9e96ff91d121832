import warnings

import numpy as np
import pytest
import torch

from caffeinit.init import InitConfig, initialize
from tests.init.nets import MIXED, PLAIN, conv, HEAD, images, ip, layer, model, pool, relu

BETA = 0.1
AFFINE = ("conv1", "conv2", "fc1", "fc2")


def _channel_stats(m, batches, values, axes):
    out = {v: [] for v in values}
    with torch.no_grad():
        for b in batches:
            got = m.module({"data": torch.from_numpy(b["data"])}, keep=set(values))
            for v in values:
                out[v].append(got[v].double().numpy())
    stats = {}
    for v in values:
        x = np.moveaxis(np.concatenate(out[v]), axes.get(v, 1), 0).reshape(out[v][0].shape[axes.get(v, 1)], -1)
        stats[v] = (x.mean(1), x.std(1))
    return stats


@pytest.mark.parametrize("method", ["gaussian", "orthogonal", "pca", "zca", "kmeans", "rand"])
def test_every_method_normalizes_each_channel(method):
    m = model(PLAIN)
    init = images(16, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough samples everywhere: no fallback warning
        report = initialize(m, init, InitConfig(method=method, between=False, measure_before=False), progress=False)
    for name in AFFINE:
        assert report.layer(name).method == method
    # exact on the init images: the one-pass affine update equals a second forward
    for name, (mean, std) in _channel_stats(m, init, AFFINE, {}).items():
        np.testing.assert_allclose(mean, BETA, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)
    # fresh images: within sampling tolerance (128 init + 256 fresh images, 4 sigma)
    tol = 4 * np.sqrt(1 / 128 + 1 / 256)
    for name, (mean, std) in _channel_stats(m, images(32, seed=2), AFFINE, {}).items():
        assert np.abs(mean - BETA).max() < tol, (name, mean)
        assert np.abs(std - 1).max() < tol, (name, std)


def test_fewer_samples_than_outputs_falls_back_to_gaussian_with_a_warning():
    m = model(PLAIN.replace("num_output: 16", "num_output: 40"))  # fc1: 40 outputs, 16 images
    with pytest.warns(UserWarning, match="fc1.*16 input samples for 40 outputs"):
        report = initialize(m, images(2), InitConfig(method="kmeans", between=False, measure_before=False),
                            progress=False)
    assert report.layer("fc1").method == "gaussian" and report.layer("conv1").method == "kmeans"


GROUPED_ON_DATA = ('name: "grouped"\nlayer { name: "data" type: "Input" top: "data" '
                   'input_param { shape { dim: 8 dim: 4 dim: 12 dim: 12 } } }\n'
                   + conv("conv1", "data", 8, group=2) + conv("dw", "conv1", 8, group=8))


def test_a_group_whose_input_does_not_vary_alone_falls_back_to_gaussian():
    """Input channels 2-3 (conv1's second group) are zero: that group's filters are Gaussian, the first group's
    still come from its patches (one dead group used to turn the whole layer Gaussian under a wrong note)."""
    m = model(GROUPED_ON_DATA)
    batches = images(4, seed=3)
    for b in batches:
        b["data"] = np.concatenate([b["data"][:, :2], np.zeros_like(b["data"][:, :2])], axis=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = initialize(m, batches, InitConfig(method="kmeans", between=False, measure_before=False),
                            progress=False)
    assert [str(w.message) for w in caught] == [
        "layer 'conv1': kmeans: 1 of 2 groups' input patches do not vary enough: gaussian for those",
        "layer 'conv1': 4 of 8 output channels are constant on the init images (dead); they keep their draw and get "
        "bias 0.1"]
    assert report.layer("conv1").method == "kmeans" and "1 of 2 groups" in report.layer("conv1").note
    assert report.layer("conv1").dead == 4  # Gaussian filters on a zero input: constant, as they must be


@pytest.mark.parametrize("method", ["pca", "zca", "kmeans", "rand"])
def test_a_depthwise_group_whose_input_does_not_vary_alone_falls_back_to_gaussian(method):
    text = GROUPED_ON_DATA.replace(conv("conv1", "data", 8, group=2) + conv("dw", "conv1", 8, group=8),
                                   conv("dw", "data", 4, group=4))
    batches = images(4, seed=3)
    for b in batches:
        b["data"] = np.concatenate([b["data"], np.zeros_like(b["data"][:, :1])], axis=1)  # channel 3: zero
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = initialize(model(text), batches, InitConfig(method=method, between=False, measure_before=False),
                            progress=False)
    assert str(caught[0].message) == (f"layer 'dw': {method}: 1 of 4 groups' input patches do not vary enough: "
                                      "gaussian for those")
    assert report.layer("dw").method == method and report.layer("dw").dead == 1  # the zero channel's output


def test_depthwise_convolutions_whiten_from_enough_patches(monkeypatch):
    """A depthwise 3x3 layer has 9 inputs and 1 output per group: the old 2 x fan-in rule gathered 18 patches, so
    the n/4 cap whitened 4 of 9 directions."""
    from caffeinit.init import draws
    shapes = []
    original = draws.single_filters

    def spy(method, patches, gen):
        shapes.append(tuple(patches.shape))
        return original(method, patches, gen)
    monkeypatch.setattr(draws, "single_filters", spy)
    batches = [{"data": np.concatenate([b["data"], b["data"][:, :1]], axis=1)} for b in images(4, seed=3)]
    config = InitConfig(method="zca", between=False, measure_before=False)
    report = initialize(model(GROUPED_ON_DATA), batches, config, progress=False)
    assert len(shapes) == 1 and shapes[0][0] == 8 and shapes[0][1] >= 256 and shapes[0][2] == 9  # dw, all groups
    assert report.layer("dw").method == "zca"


@pytest.mark.parametrize("outputs, expected", [(8, 40), (50, 52)])  # per batch, rounded up: 4 x 13
def test_more_inputs_than_samples_whiten_at_most_gram_samples(monkeypatch, outputs, expected):
    """Fan-ins above max_samples / 2 are whitened through the samples' Gram matrix, cubic in their count: at most
    GRAM_SAMPLES of them (here made 40, with max_samples 96 for a fan-in of 3 x 7 x 7 = 147: 96 without the cap),
    or one per output."""
    from caffeinit.init import draws, within
    monkeypatch.setattr(within, "GRAM_SAMPLES", 40)
    counts = []
    original = draws.from_patches

    def spy(method, patches, n_out, gen, kmeans_iters=20):
        counts.append(patches.shape[0])
        return original(method, patches, n_out, gen, kmeans_iters)
    monkeypatch.setattr(draws, "from_patches", spy)
    net = HEAD.format(name="wide") + conv("wide", "data", outputs, k=7) + relu("relu", "wide")
    report = initialize(model(net), images(4, seed=2), InitConfig(method="kmeans", between=False, max_samples=96,
                                                                  measure_before=False), progress=False)
    assert counts == [expected] and report.layer("wide").method == "kmeans"


def test_a_scale_after_batchnorm_counts_the_dead_channels_it_inherits_without_a_second_warning():
    m = model(MIXED)
    black = [{"data": np.zeros((8, 3, 12, 12), np.float32)} for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = initialize(m, black, InitConfig(between=False, measure_before=False), progress=False)
    warned = [str(w.message).split("'")[1] for w in caught]
    assert "conv1" in warned and "sc1" not in warned
    assert report.layer("conv1").dead == report.layer("sc1").dead == 8  # the table still shows both


def test_a_fallback_to_gaussian_is_the_draw_gaussian_makes():
    text = HEAD.format(name="fc_on_data") + ip("fc", "data", 40)  # 16 images: 16 samples for 40 outputs
    weights = {}
    for method in ("gaussian", "kmeans"):
        m = model(text)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = initialize(m, images(2), InitConfig(method=method, between=False), progress=False)
        assert report.layer("fc").method == "gaussian"
        assert [str(w.message) for w in caught] == (
            [] if method == "gaussian" else ["layer 'fc': kmeans: only 16 input samples for 40 outputs: gaussian"])
        weights[method] = m.blobs()["fc"]
    for a, b in zip(weights["gaussian"], weights["kmeans"]):
        np.testing.assert_array_equal(a, b)


def test_dead_channels_keep_their_draw_and_get_the_bias():
    m = model(PLAIN)
    black = [{"data": np.zeros((8, 3, 12, 12), np.float32)} for _ in range(2)]
    with pytest.warns(UserWarning, match="conv1': 8 of 8 output channels are constant"):
        report = initialize(m, black, InitConfig(between=False, measure_before=False), progress=False)
    blobs = m.blobs()
    assert all(np.isfinite(a).all() for v in blobs.values() for a in v)
    np.testing.assert_array_equal(blobs["conv1"][1], np.full(8, BETA, np.float32))
    assert report.layer("conv1").dead == 8 and np.abs(blobs["conv1"][0]).max() > 0


def test_batchnorm_statistics_make_test_equal_train_and_scale_is_normalized():
    init = images(4, seed=3)
    m = model(MIXED)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    blobs = m.blobs()
    assert blobs["bn1"][2][0] == 1.0
    everything = {"data": np.concatenate([b["data"] for b in init])}
    test_out = m.forward(everything, ["fc"])["fc"]
    train = model(MIXED, blobs, phase="train")  # BatchNorm uses the batch's own statistics
    np.testing.assert_allclose(train.forward(everything, ["fc"])["fc"], test_out, rtol=1e-4, atol=1e-4)
    # Scale after BatchNorm: its output has mean beta and std 1 per channel on the init images
    mean, std = _channel_stats(m, init, ["conv1@sc1"], {})["conv1@sc1"]
    np.testing.assert_allclose(mean, BETA, atol=1e-3)
    np.testing.assert_allclose(std, 1.0, rtol=1e-3)
    # BatchNorm's statistics follow from conv1's normalization (not measured again): they equal conv1's output's
    mean, std = _channel_stats(m, init, ["conv1"], {})["conv1"]
    np.testing.assert_allclose(blobs["bn1"][0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blobs["bn1"][1], std ** 2, rtol=1e-5)
    # the later layers were normalized on conv1's outputs as mapped through BatchNorm and Scale without running
    # them: a real forward agrees
    for name, (mean, std) in _channel_stats(m, init, ["conv2", "fc"], {}).items():
        np.testing.assert_allclose(mean, BETA, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)


def _bn_scale_relu(name, bottom):
    return (layer(f"{name}_bn", "BatchNorm", bottom, f"{name}_bn") + layer(f"{name}_sc", "Scale", f"{name}_bn",
            f"{name}_bn", 'scale_param { bias_term: true } ') + relu(f"{name}_relu", f"{name}_bn"))


# DenseNet's dense block: every layer's output is concatenated onto a growing stack that BatchNorm reads
DENSE = (HEAD.format(name="dense") + conv("conv0", "data", 6) + pool("pool0", "conv0")
         + _bn_scale_relu("x1", "pool0") + conv("c1", "x1_bn", 4) + layer("cat1", "Concat", ["pool0", "c1"])
         + _bn_scale_relu("x2", "cat1") + conv("c2", "x2_bn", 4) + layer("cat2", "Concat", ["cat1", "c2"])
         + _bn_scale_relu("x3", "cat2") + conv("c3", "x3_bn", 4) + layer("cat3", "Concat", ["c3", "cat2"])
         + _bn_scale_relu("x4", "cat3") + ip("fc", "x4_bn", 5))


def test_a_concat_of_normalized_outputs_keeps_their_maps_and_statistics(monkeypatch):
    """A Concat of normalized outputs (and a pooled input) is kept as its inputs' stored tensors under their
    per-channel maps, its statistics theirs: the BatchNorm reading it neither measures nor runs, and what the
    layers after it were normalized on is what a real forward computes."""
    from caffeinit.init import within
    measured = []
    original = within.ChannelStats.update
    monkeypatch.setattr(within.ChannelStats, "update",
                        lambda self, x, axis=1: (measured.append(x.shape[1]), original(self, x, axis))[1])
    init = images(4, seed=3)
    m = model(DENSE)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    # per batch: conv0, pool0 (once, for x1_bn), c1, c2, c3 and fc; never a BatchNorm or Scale input after that
    assert sorted(set(measured)) == [4, 5, 6] and len(measured) == 6 * len(init)
    blobs = m.blobs()
    stats = _channel_stats(m, init, ["cat1", "cat2", "cat3"], {})
    for bn, cat in (("x2_bn", "cat1"), ("x3_bn", "cat2"), ("x4_bn", "cat3")):
        mean, std = stats[cat]
        np.testing.assert_allclose(blobs[bn][0], mean, rtol=1e-5, atol=1e-6, err_msg=bn)
        np.testing.assert_allclose(blobs[bn][1], std ** 2, rtol=1e-5, atol=1e-7, err_msg=bn)
    for name, (mean, std) in _channel_stats(m, init, ["c2", "c3", "fc", "x4_bn@x4_sc"], {}).items():
        np.testing.assert_allclose(mean, BETA, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)


# an explicit Split: both tops are the same tensors; the ReLU on one of them must not run in place
SPLIT = (HEAD.format(name="split") + conv("conv1", "data", 6)
         + layer("split", "Split", "conv1", extra='top: "b" ').replace('top: "split" top: "b"', 'top: "a" top: "b"')
         + relu("relu_a", "a") + conv("conv_a", "a", 4) + conv("conv_b", "b", 4)
         + layer("cat", "Concat", ["conv_a", "conv_b"]) + relu("relu_c", "cat") + ip("fc", "cat", 5))


def test_layers_run_in_place_only_on_what_no_one_else_holds():
    """The within step overwrites a dying input (ReLU in place, each batch dropped once used) only where no other
    value and not the caller hold its memory: the Split's other top and the caller's batches stay intact, and every
    layer was normalized on what a real forward computes."""
    init = images(3, seed=4)
    originals = [b["data"].copy() for b in init]
    m = model(SPLIT)
    assert m.net.layer("split").tops == ["a", "b"]
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    for before, b in zip(originals, init):
        np.testing.assert_array_equal(before, b["data"])
    for name, (mean, std) in _channel_stats(m, init, ["conv_a", "conv_b", "fc"], {}).items():
        np.testing.assert_allclose(mean, BETA, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)


def test_the_callers_batches_are_not_overwritten_by_a_layer_on_the_input():
    text = ('name: "flat"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 20 } } }\n'
            + relu("relu0", "data") + ip("fc1", "data", 6) + relu("relu1", "fc1") + ip("fc2", "fc1", 3))
    rng = np.random.default_rng(2)
    init = [{"data": rng.standard_normal((8, 20)).astype(np.float32)} for _ in range(40)]
    originals = [b["data"].copy() for b in init]
    initialize(model(text), init, InitConfig(between=False, measure_before=False), progress=False)
    for before, b in zip(originals, init):
        np.testing.assert_array_equal(before, b["data"])


def test_deconvolution_and_transposed_inner_product():
    text = (HEAD.format(name="deconv") + conv("conv1", "data", 6, group=3)
            + 'layer { name: "up" type: "Deconvolution" bottom: "conv1" top: "up" convolution_param { num_output: 4 '
              'kernel_size: 2 stride: 2 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }\n'
            + ip("fc", "up", 5).replace("num_output: 5", "num_output: 5 transpose: true"))
    m = model(text)
    init = images(4, seed=4)
    report = initialize(m, init, InitConfig(method="pca", between=False, measure_before=False), progress=False)
    assert report.layer("conv1").method == "pca" and report.layer("fc").method == "pca"
    assert report.layer("up").method == "gaussian" and "Deconvolution" in report.layer("up").note
    stats = _channel_stats(m, init, ["conv1", "up", "fc"], {})
    for name, (mean, std) in stats.items():
        np.testing.assert_allclose(mean, BETA, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)


def test_a_large_gaussian_draw_is_the_same_for_any_thread_count(monkeypatch):
    from caffeinit import fillers
    from caffeinit.init.within import _standard_normal_
    n = 2 * fillers.CHUNK + 12345
    draws = []
    for cpus in (1, 3):
        monkeypatch.setattr(fillers, "_usable_cpus", lambda: cpus)
        draws.append(_standard_normal_(torch.empty(n), torch.Generator().manual_seed(5)).numpy())
    np.testing.assert_array_equal(draws[0], draws[1])
    chunks = [draws[0][i:i + fillers.CHUNK] for i in range(0, n, fillers.CHUNK)]
    for chunk in chunks:  # every chunk N(0, 1), each from its own generator
        assert abs(chunk.mean()) < 5 / np.sqrt(chunk.size) and abs(chunk.std() - 1) < 5 / np.sqrt(chunk.size)
    assert not np.array_equal(chunks[0][:100], chunks[1][:100])
    other = _standard_normal_(torch.empty(n), torch.Generator().manual_seed(6)).numpy()
    assert not np.array_equal(other[:100], draws[0][:100])


# InnerProducts over the last axis of a (N, T, D) blob (a sequence model's per-step projection): their channels are
# axis 2, the map to apply to a later layer's input is not along axis 1
SEQUENCE = ('name: "sequence"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 6 '
            'dim: 10 } } }\n'
            + ip("ip1", "data", 7).replace("inner_product_param {", "inner_product_param { axis: 2")
            + relu("relu1", "ip1")
            + ip("ip2", "ip1", 5).replace("inner_product_param {", "inner_product_param { axis: 2"))


def test_inner_products_over_a_later_axis_normalize_that_axis():
    m = model(SEQUENCE)
    rng = np.random.default_rng(4)
    init = [{"data": (rng.standard_normal((8, 6, 10)) + rng.standard_normal(10)).astype(np.float32)}
            for _ in range(4)]
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    stats = _channel_stats(m, init, ["ip1", "ip2"], {"ip1": 2, "ip2": 2})
    assert [len(mean) for mean, _ in stats.values()] == [7, 5]
    for name, (mean, std) in stats.items():  # ip2 was normalized on ip1's mapped outputs without a second forward
        np.testing.assert_allclose(mean, BETA, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)


def test_a_train_phase_batchnorm_gets_the_statistics_of_all_images():
    """Initializing the TRAIN-phase net (`--phase train`: BatchNorm normalizes by each batch's statistics): the
    global statistics are set from all the images, so the TEST-phase net with these weights computes what the
    TRAIN-phase net computes on them as one batch, and every later layer is normalized as the TRAIN net runs it."""
    init = images(4, seed=3)
    m = model(MIXED, phase="train")
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    blobs = m.blobs()
    mean, std = _channel_stats(m, init, ["conv1"], {})["conv1"]
    np.testing.assert_allclose(blobs["bn1"][0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blobs["bn1"][1], std ** 2, rtol=1e-5)
    assert blobs["bn1"][2][0] == 1.0
    everything = {"data": np.concatenate([b["data"] for b in init])}
    test = model(MIXED, blobs)
    np.testing.assert_allclose(test.forward(everything, ["fc"])["fc"], m.forward(everything, ["fc"])["fc"],
                               rtol=1e-4, atol=1e-4)
    for name, (mean, std) in _channel_stats(m, init, ["conv2", "fc"], {}).items():
        np.testing.assert_allclose(mean, BETA, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)


def test_a_scale_over_two_axes_with_a_bias_is_normalized_per_channel():
    """A one-bottom Scale with num_axes 2 has a weight and a bias per (channel, row): each output channel still gets
    mean beta and std 1, its bias the same shift on every row."""
    text = (HEAD.format(name="scale2") + conv("conv1", "data", 8) + relu("relu1", "conv1")
            + layer("sc", "Scale", "conv1", "sc", "scale_param { axis: 1 num_axes: 2 bias_term: true }")
            + conv("conv2", "sc", 8) + relu("relu2", "conv2") + ip("fc", "conv2", 4))
    m = model(text)
    init = images(4, seed=5)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    blobs = m.blobs()
    assert blobs["sc"][0].shape == blobs["sc"][1].shape == (8, 12)
    np.testing.assert_array_equal(blobs["sc"][1], np.repeat(blobs["sc"][1][:, :1], 12, axis=1))
    for name, (mean, std) in _channel_stats(m, init, ["sc", "conv2", "fc"], {}).items():
        np.testing.assert_allclose(mean, BETA, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)


@pytest.mark.parametrize("method", ["gaussian", "kmeans"])
def test_non_finite_values_on_the_init_images_are_traced_to_where_they_start(method):
    """The log of a normalized output (negative values) is NaN: the next drawn layer cannot be normalized, and the
    error names the Log layer (it named a weight blob of NaNs when the caffemodel was written); NaN in the data
    itself is named as such."""
    from caffeinit.errors import CaffeinitError
    text = (HEAD.format(name="log") + conv("conv1", "data", 8) + layer("log", "Log", "conv1", "log")
            + conv("conv2", "log", 8) + ip("fc", "conv2", 4))
    with pytest.raises(CaffeinitError, match=r"^layer 'conv2' \(Convolution\): its input on the init images is not "
                                             r"finite \(NaN or infinity\), from layer 'log' \(Log\) on init batch 0: "
                                             r"nothing can be set from it$"):
        initialize(model(text), images(4), InitConfig(method=method), progress=False)
    batches = images(4)
    batches[2]["data"][1, 0, 3, 3] = np.nan
    with pytest.raises(CaffeinitError, match=r"^layer 'conv1' \(Convolution\): .* from the data itself \(input "
                                             r"'data'\) on init batch 2: nothing can be set from it$"):
        initialize(model(PLAIN), batches, InitConfig(method=method), progress=False)


@pytest.mark.parametrize("method", ["pca", "kmeans"])
def test_a_window_past_a_small_input_draws_from_its_patches(method):
    """conv1's 13 x 13 window is larger than the 12 x 12 input by less than the stride: Caffe gives one output per
    image (reading zeros past the end), so 64 images give 64 patches for 4 filters (no fallback to gaussian)."""
    net = (HEAD.format(name="small") + 'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
           'convolution_param { num_output: 4 kernel_size: 13 stride: 2 } }\n')
    m = model(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = initialize(m, images(8), InitConfig(method=method, between=False, measure_before=False),
                            progress=False)
    assert report.layer("conv1").method == method
    mean, std = _channel_stats(m, images(8), ["conv1"], {})["conv1"]
    np.testing.assert_allclose(mean, BETA, atol=1e-4)
    np.testing.assert_allclose(std, 1.0, rtol=1e-4)


def test_a_small_spread_around_a_large_mean_is_normalized_not_dead():
    """Only a constant output (std within float rounding of its mean) is dead: outputs whose std is 1e-3 of their
    mean (images with a large offset) are normalized like any others."""
    m = model(HEAD.format(name="offset") + ip("fc", "data", 6))
    init = [{"data": (1000 + 0.5 * b["data"]).astype(np.float32)} for b in images(2, seed=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dead-channel warning
        report = initialize(m, init, InitConfig(method="gaussian", between=False, measure_before=False),
                            progress=False)
    assert report.layer("fc").dead == 0
    # b = beta - mean / std: the outputs' std / |mean| before the init was 1 / |beta - b|, well below 1e-2 here
    assert (1 / np.abs(BETA - m.blobs()["fc"][1]) < 1e-2).all()
    out = np.concatenate([m.forward(b)["fc"] for b in init]).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=0), BETA, atol=1e-3)
    np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=1e-3)
