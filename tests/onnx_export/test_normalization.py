"""LRN, BatchNorm, Scale, Bias and MVN exported to ONNX: ORT CPU vs the torch graph on every blob, and the LRN/BN
formulas against numpy transcriptions of Caffe's lrn_layer.cpp / batch_norm_layer.cpp."""
import numpy as np
import pytest

from caffeinit.net import build_net
from caffeinit.onnx_export import build_model
from caffeinit.prototxt import parse_net_text
from tests.onnx_export.common import export_and_compare, input_layer, layer, rel_err, session

NETS = {
    "LRN": ["lrn_param { local_size: 5 alpha: 0.001 beta: 0.75 k: 2 }",
            "lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 1.5 norm_region: WITHIN_CHANNEL }"],
    "BatchNorm": ["", "batch_norm_param { eps: 0.001 }", "batch_norm_param { use_global_stats: false }"],
    "Scale": ["", "scale_param { bias_term: true }", "scale_param { axis: 2 num_axes: 2 bias_term: true }",
              "scale_param { num_axes: 0 }", "scale_param { axis: -1 num_axes: -1 }"],
    "Bias": ["", "bias_param { axis: 0 num_axes: 2 }", "bias_param { num_axes: 0 }"],
    "MVN": ["", "mvn_param { normalize_variance: false }", "mvn_param { across_channels: true eps: 0.01 }"],
}
CASES = [pytest.param(input_layer(shape=(2, 6, 5, 4)) + layer(t, params=p), id=f"{t}-{i}")
         for t, params in NETS.items() for i, p in enumerate(params)]
CASES += [
    pytest.param(input_layer() + input_layer("s", (2, 3)) + layer("Scale", ("data", "s"), params="scale_param { "
                 "axis: 0 bias_term: true }"), id="Scale-2-bottoms"),
    pytest.param(input_layer() + input_layer("s", (6, 6)) + layer("Scale", ("data", "s"), params="scale_param { "
                 "axis: 2 }"), id="Scale-2-bottoms-axis2"),
    pytest.param(input_layer() + input_layer("b", (3,)) + layer("Bias", ("data", "b")), id="Bias-2-bottoms"),
    pytest.param(input_layer(shape=(4, 5)) + layer("BatchNorm"), id="BatchNorm-2d"),
    pytest.param(input_layer(shape=(4, 5)) + layer("MVN"), id="MVN-2d"),
]


@pytest.mark.parametrize("net", CASES)
def test_normalization_matches_torch(net):
    export_and_compare(net)


@pytest.mark.parametrize("shape", [(4, 5), (4,), (4, 3, 5)])
def test_mvn_gives_a_4d_top_at_any_batch(shape):
    """Caffe's MVN top is (num, channels, height, width) whatever the bottom's axes; the batch stays dynamic."""
    export_and_compare(input_layer(shape=shape) + layer("MVN"), run_batch=3)


def test_batchnorm_scale_factor_zero_gives_x_over_sqrt_eps():
    """Caffe: a stored scale factor of 0 means mean = var = 0, so y = x / sqrt(eps)."""
    text = input_layer(shape=(2, 3, 2, 2)) + layer("BatchNorm", params="batch_norm_param { eps: 0.01 }")
    net = build_net(parse_net_text(text), "test")
    rng = np.random.default_rng(0)
    blobs = {"out": [rng.standard_normal(3).astype(np.float32), np.ones(3, np.float32), np.zeros(1, np.float32)]}
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    out = session(build_model(net, blobs).model).run(["out"], {"data": x})[0]
    assert rel_err(out, x / np.sqrt(0.01)) <= 1e-6
    export_and_compare(text, blobs=blobs)


def caffe_lrn_across(x, size, alpha, beta, k):
    """lrn_layer.cpp CrossChannelForward_cpu: scale = k + alpha/size * sum of zero-padded squares."""
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    padded = np.zeros((n, c + size - 1, h, w))
    padded[:, pre:pre + c] = x.astype(np.float64) ** 2
    scale = k + alpha / size * np.stack([padded[:, i:i + size].sum(axis=1) for i in range(c)], axis=1)
    return x * scale ** -beta


def caffe_lrn_within(x, size, alpha, beta):
    """WithinChannelForward: x * (1 + alpha * mean of squares over a size x size window, zero-padded)^-beta."""
    n, c, h, w = x.shape
    pad = (size - 1) // 2
    sq = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    sq[:, :, pad:pad + h, pad:pad + w] = x.astype(np.float64) ** 2
    mean = np.zeros((n, c, h, w))
    for i in range(size):
        for j in range(size):
            mean += sq[:, :, i:i + h, j:j + w]
    return x * (1 + alpha * mean / size ** 2) ** -beta


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_against_caffe_transcription(region):
    """k = 3 is honoured across channels and ignored within a channel."""
    params = f"lrn_param {{ local_size: 5 alpha: 0.3 beta: 0.75 k: 3 norm_region: {region} }}"
    text = input_layer(shape=(2, 7, 5, 5)) + layer("LRN", params=params)
    net = build_net(parse_net_text(text), "test")
    x = np.random.default_rng(0).standard_normal((2, 7, 5, 5)).astype(np.float32) * 3
    out = session(build_model(net, {}).model).run(["out"], {"data": x})[0]
    expected = caffe_lrn_across(x, 5, 0.3, 0.75, 3) if region == "ACROSS_CHANNELS" else \
        caffe_lrn_within(x, 5, 0.3, 0.75)
    assert rel_err(out, expected) <= 1e-6
