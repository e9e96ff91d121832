"""LRN, BatchNorm, Scale, Bias and MVN against float64 numpy transcriptions of Caffe's CPU code and the
conformance goldens."""
import numpy as np
import pytest
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.layers import normalization  # noqa: F401  (registers the layers)
from caffeinit.proto import caffe_pb2
from tests.layers.helpers import make, rand, run, run_case


def close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=rtol, atol=atol)


# -- LRN ------------------------------------------------------------------------------------------------------

def caffe_channel_window(t, size):
    """The sum over the ``size`` channels centred on each channel (zero beyond the edges), as lrn_layer.cpp's
    running sums over the padded channel axis."""
    half = (size - 1) // 2
    channels = t.shape[1]
    total = np.zeros(t.shape)
    for c in range(channels):
        for cc in range(max(0, c - half), min(channels, c + half + 1)):
            total[:, c] += t[:, cc]
    return total


def caffe_lrn_across(x, size, alpha, beta, k):
    """lrn_layer.cpp CrossChannelForward_cpu: scale = k + alpha/size * window sum of x^2 over channels."""
    x = x.astype(np.float64)
    return x * (k + alpha / size * caffe_channel_window(x ** 2, size)) ** -beta


def caffe_lrn_within(x, size, alpha, beta):
    """WITHIN_CHANNEL: square, AVE pool (size, stride 1, pad (size-1)/2), Power(-beta, alpha, 1), product."""
    x = x.astype(np.float64)
    half = (size - 1) // 2
    height, width = x.shape[2:]
    sq = np.pad(x ** 2, [(0, 0), (0, 0), (half, half), (half, half)])
    pooled = np.zeros(x.shape)
    for h in range(height):
        for w in range(width):
            pooled[:, :, h, w] = sq[:, :, h:h + size, w:w + size].sum(axis=(2, 3)) / (size * size)
    return x * (1 + alpha * pooled) ** -beta


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-2, 0.75, 2.0), (3, 0.5, 0.6, 1.5), (1, 0.3, 1.0, 0.7)])
def test_lrn_across_channels(size, alpha, beta, k):
    x = rand(2, 7, 3, 4) * 2
    layer = make("LRN", f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}")
    close(run(layer, x)[0], caffe_lrn_across(x, size, alpha, beta, k))


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 0.2, 0.5, 2.0), (3, 1.0, 0.75, 3.0)])
def test_lrn_within_channel_ignores_k(size, alpha, beta, k):
    x = rand(2, 3, 6, 5) * 2
    text = f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} norm_region: WITHIN_CHANNEL }}"
    close(run(make("LRN", text), x)[0], caffe_lrn_within(x, size, alpha, beta))


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_in_place_is_refused_where_caffe_computes_otherwise(region):
    """lrn_layer.cpp in place (top = bottom): CrossChannelForward_cpu writes scale^-beta into the top, then
    multiplies it by the bottom, now that same memory; WITHIN_CHANNEL ends with Eltwise PROD of the bottom and the
    power output, element by element. The layer names a problem exactly where the two results differ."""
    x = rand(2, 5, 3, 3) * 2
    size, alpha, beta, k = 3, 1.0, 0.75, 2.0
    if region == "ACROSS_CHANNELS":
        apart = caffe_lrn_across(x, size, alpha, beta, k)
        shared = x.astype(np.float64)
        scale = k + alpha / size * caffe_channel_window(shared ** 2, size)
        shared[...] = scale ** -beta
        shared *= shared  # caffe_mul(top, bottom, top) with bottom == top
        in_place = shared
    else:
        apart = in_place = caffe_lrn_within(x, size, alpha, beta)
    layer = make("LRN", f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} norm_region: {region} }}")
    layer.setup([x.shape])
    problem = layer.in_place_problem(0, x.shape, x.shape)
    assert (problem is not None) == (not np.allclose(in_place, apart)), problem


def caffe_lrn_across_backward(x, top_diff, size, alpha, beta, k):
    """lrn_layer.cpp CrossChannelBackward_cpu: bottom_diff = top_diff * scale^-beta - 2 alpha beta / size * x *
    (window sum over channels of top_diff * top / scale)."""
    x, top_diff = x.astype(np.float64), top_diff.astype(np.float64)
    scale = k + alpha / size * caffe_channel_window(x ** 2, size)
    top = x * scale ** -beta
    return top_diff * scale ** -beta - 2 * alpha * beta / size * x * caffe_channel_window(top_diff * top / scale, size)


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-2, 0.75, 2.0), (3, 3.0, 0.75, 1.0), (1, 0.3, 1.0, 0.7)])
def test_lrn_backward_matches_caffe(size, alpha, beta, k):
    """The closed-form backward (autograd.Function) against Caffe's CrossChannelBackward; its forward under
    autograd is the plain forward's, bit for bit."""
    x, top_diff = rand(2, 7, 3, 4) * 2, rand(2, 7, 3, 4, seed=1)
    layer = make("LRN", f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}")
    layer.setup([x.shape])
    xt = torch.from_numpy(x).requires_grad_()
    top = layer.forward([xt], [])[0]
    (grad,) = torch.autograd.grad(top, xt, torch.from_numpy(top_diff))
    close(grad.numpy(), caffe_lrn_across_backward(x, top_diff, size, alpha, beta, k), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(top.detach().numpy(), run(layer, x)[0])


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_backward_passes_gradcheck(region):
    layer = make("LRN", f"lrn_param {{ local_size: 3 alpha: 2.0 beta: 0.75 k: 1.5 norm_region: {region} }}")
    layer.setup([(2, 5, 4, 3)])
    x = torch.from_numpy(rand(2, 5, 4, 3).astype(np.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: layer.forward([t], [])[0], (x,))


def test_lrn_errors():
    with pytest.raises(CaffeinitError, match="odd"):
        make("LRN", "lrn_param { local_size: 4 }")
    with pytest.raises(CaffeinitError, match="4 axes"):
        make("LRN").setup([(2, 3, 4)])


# -- BatchNorm ------------------------------------------------------------------------------------------------

def caffe_batchnorm_global(x, mean_sum, var_sum, factor, eps=1e-5):
    scale = 0.0 if factor == 0 else 1.0 / np.float32(factor)
    channels = 1 if x.ndim == 1 else x.shape[1]
    shape = (1, channels) + (1,) * (x.ndim - 2) if x.ndim > 1 else (1,)
    mean = (mean_sum.astype(np.float64) * scale).reshape(shape)
    var = (var_sum.astype(np.float64) * scale).reshape(shape)
    return (x.astype(np.float64) - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("factor", [999.98, 1.0, 0.0])
def test_batchnorm_global_stats(factor):
    x = rand(3, 4, 2, 5) * 3 + 1
    mean_sum = rand(4, seed=1) * factor
    var_sum = (np.abs(rand(4, seed=2)) + 0.5) * factor
    blobs = [mean_sum, var_sum, np.array([factor], np.float32)]
    layer = make("BatchNorm")
    top = run(layer, x, blobs=blobs)[0]
    assert layer.blob_shapes == [(4,), (4,), (1,)] and layer.learnable_blobs() == []
    close(top, caffe_batchnorm_global(x, mean_sum, var_sum, factor), rtol=2e-5, atol=2e-5)
    if factor == 0:
        close(top, x / np.sqrt(1e-5), rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("shape, channels_last", [((3, 4, 2, 5), False), ((3, 4, 2, 5), True), ((6, 4), False)])
def test_batchnorm_in_place_is_the_forward_in_any_layout(shape, channels_last):
    """forward_inplace overwrites its bottom with bitwise forward's numbers, also on a channels-last bottom (the
    within-layer step runs channels-last)."""
    channels = shape[1]
    blobs = [rand(channels, seed=1), np.abs(rand(channels, seed=2)) + 0.5, np.array([2.0], np.float32)]
    layer = make("BatchNorm")
    layer.setup([shape])
    x = torch.from_numpy(rand(*shape) * 3 + 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = layer.forward([x], [torch.from_numpy(b) for b in blobs])[0]
    got = layer.forward_inplace([x], [torch.from_numpy(b) for b in blobs])[0]
    assert got is x and torch.equal(got, want)


@pytest.mark.parametrize("shape", [(4, 3, 5), (6, 2), (2, 3, 2, 2, 2)])
def test_batchnorm_batch_stats_in_train(shape):
    x = rand(*shape) * 2 + 3
    layer = make("BatchNorm", "batch_norm_param { eps: 1e-3 }", phase=caffe_pb2.TRAIN)
    blobs = [np.zeros(shape[1], np.float32)] * 2 + [np.array([0], np.float32)]
    top = run(layer, x, blobs=blobs)[0]
    channels = shape[1]
    grouped = x.astype(np.float64).reshape(shape[0], channels, -1)
    mean = grouped.mean(axis=(0, 2), keepdims=True)
    var = ((grouped - mean) ** 2).mean(axis=(0, 2), keepdims=True)  # biased, as Caffe normalizes
    close(top, ((grouped - mean) / np.sqrt(var + 1e-3)).reshape(shape), rtol=1e-5, atol=1e-5)


def test_batchnorm_use_global_stats_overrides_phase():
    x = rand(2, 3, 4)
    blobs = [rand(3, seed=1), np.abs(rand(3, seed=2)) + 1, np.array([1], np.float32)]
    top = run(make("BatchNorm", "batch_norm_param { use_global_stats: true }", phase=caffe_pb2.TRAIN), x,
              blobs=blobs)[0]
    close(top, caffe_batchnorm_global(x, blobs[0], blobs[1], 1.0))
    top = run(make("BatchNorm", "batch_norm_param { use_global_stats: false }"), x, blobs=blobs)[0]
    close(top.mean(axis=(0, 2)), np.zeros(3), atol=1e-5)


@pytest.mark.parametrize("shape", [(8,), ()])
def test_batchnorm_needs_two_axes(shape):
    """batch_norm_layer.cpp: LayerSetUp takes 1 channel for a 1-D bottom, but Reshape then checks bottom
    shape(1), which fails for fewer than 2 axes."""
    with pytest.raises(CaffeinitError, match="\\(BatchNorm\\).*at least 2 axes"):
        make("BatchNorm").setup([shape])


def test_batchnorm_rejects_learned_statistics():
    with pytest.raises(CaffeinitError, match="lr_mult"):
        make("BatchNorm", "param { lr_mult: 1 }")


# -- Scale / Bias ---------------------------------------------------------------------------------------------

def lined_up(operand, axis, rank):
    return operand.astype(np.float64).reshape((1,) * axis + operand.shape + (1,) * (rank - axis - operand.ndim))


X = rand(2, 3, 4, 5)
SCALE_FORMS = [  # scale_param text, scale shape, axis where it lines up
    ("", (3,), 1),
    ("axis: 0 num_axes: 2", (2, 3), 0),
    ("axis: -2 num_axes: -1", (4, 5), 2),
    ("axis: 1 num_axes: -1", (3, 4, 5), 1),
    ("num_axes: 0", (), 0),
    ("axis: 3", (5,), 3),
]


@pytest.mark.parametrize("text, shape, axis", SCALE_FORMS)
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_learned(text, shape, axis, bias_term):
    layer = make("Scale", f"scale_param {{ {text} bias_term: {str(bias_term).lower()} }}")
    scale, bias = rand(*shape, seed=1), rand(*shape, seed=2)
    top = run(layer, X, blobs=[scale, bias] if bias_term else [scale])[0]
    want = X * lined_up(scale, axis, 4) + (lined_up(bias, axis, 4) if bias_term else 0)
    assert layer.blob_shapes == [shape] * (2 if bias_term else 1)
    close(top, want)


@pytest.mark.parametrize("second, axis_text, axis", [((3, 4), "", 1), ((4, 5), "axis: -2", 2), ((), "axis: 2", 0),
                                                     ((2, 3, 4, 5), "axis: 0", 0)])
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_two_bottoms(second, axis_text, axis, bias_term):
    layer = make("Scale", f"scale_param {{ {axis_text} num_axes: 3 bias_term: {str(bias_term).lower()} }}",
                 n_bottoms=2)
    scale, bias = rand(*second, seed=1), rand(*second, seed=2)
    top = run(layer, X, scale, blobs=[bias] if bias_term else [])[0]
    assert layer.blob_shapes == ([second] if bias_term else [])
    close(top, X * lined_up(scale, axis, 4) + (lined_up(bias, axis, 4) if bias_term else 0))


@pytest.mark.parametrize("text, shape, axis", SCALE_FORMS)
def test_bias_learned_and_two_bottoms(text, shape, axis):
    bias = rand(*shape, seed=1)
    close(run(make("Bias", f"bias_param {{ {text} }}"), X, blobs=[bias])[0], X + lined_up(bias, axis, 4))
    axis_text = "axis: 0" if not shape else f"axis: {axis}"
    close(run(make("Bias", f"bias_param {{ {axis_text} }}", n_bottoms=2), X, bias)[0], X + lined_up(bias, axis, 4))


def test_scale_bias_fillers():
    layer = make("Scale", "scale_param { bias_term: true }")
    layer.setup([X.shape])
    scale, bias = layer.fill_blobs(np.random.default_rng(0))
    assert (scale == 1).all() and (bias == 0).all() and scale.shape == bias.shape == (3,)
    layer = make("Scale", 'scale_param { filler { type: "constant" value: 3 } bias_term: true '
                          'bias_filler { type: "constant" value: -2 } }')
    layer.setup([X.shape])
    scale, bias = layer.fill_blobs(np.random.default_rng(0))
    assert (scale == 3).all() and (bias == -2).all()
    layer = make("Bias", 'bias_param { filler { type: "constant" value: 4 } }')
    layer.setup([X.shape])
    assert (layer.fill_blobs(np.random.default_rng(0))[0] == 4).all()


@pytest.mark.parametrize("type_name, text, shapes, message", [
    ("Scale", "scale_param { axis: 4 }", [(2, 3, 4, 5)], "axis"),
    ("Scale", "scale_param { axis: 2 num_axes: 3 }", [(2, 3, 4, 5)], "extends past"),
    ("Scale", "scale_param { num_axes: -2 }", [(2, 3, 4, 5)], "num_axes"),
    ("Scale", "", [(2, 3, 4, 5), (4,)], "mismatch"),
    ("Bias", "bias_param { axis: 2 }", [(2, 3, 4, 5), (4, 5, 6)], "extends past"),
    ("Bias", "", [(2, 3, 4, 5), (3, 5)], "mismatch"),
])
def test_scale_bias_errors(type_name, text, shapes, message):
    layer = make(type_name, text, n_bottoms=len(shapes))
    with pytest.raises(CaffeinitError, match=message) as info:
        layer.setup(shapes)
    assert f"({type_name})" in str(info.value)


# -- MVN ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize_variance", [True, False])
@pytest.mark.parametrize("across_channels", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4), (2, 3, 6)])
def test_mvn(normalize_variance, across_channels, shape):
    x = rand(*shape) * 2 + 1
    eps = 1e-3
    text = (f"mvn_param {{ normalize_variance: {str(normalize_variance).lower()} "
            f"across_channels: {str(across_channels).lower()} eps: {eps} }}")
    rows = x.astype(np.float64).reshape(shape[0] if across_channels else shape[0] * shape[1], -1)
    want = rows - rows.mean(axis=1, keepdims=True)
    if normalize_variance:
        want = want / (np.sqrt((want ** 2).mean(axis=1, keepdims=True)) + eps)  # eps on the std
    top = run(make("MVN", text), x)[0]
    assert top.shape == shape + (1,) * (4 - len(shape))  # mvn_layer.cpp Reshape: num, channels, height, width
    close(top, want.reshape(top.shape))


def test_mvn_top_is_four_dimensional_also_in_place():
    """Caffe reshapes MVN's top to (num, channels, height, width), a 2-D bottom too, and in place keeps the data
    (same count): the next layer sees 4 axes."""
    from caffeinit.net import build_net
    from caffeinit.prototxt import parse_net_text
    for top in ("m", "x"):
        net = build_net(parse_net_text(
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 5 } } }\n'
            f'layer {{ name: "mvn" type: "MVN" bottom: "x" top: "{top}" }}\n'
            f'layer {{ name: "sm" type: "Softmax" bottom: "{top}" top: "p" softmax_param {{ axis: -1 }} }}'))
        assert net.blob_shapes[top] == (3, 5, 1, 1) and net.blob_shapes["p"] == (3, 5, 1, 1)


def test_autograd_through_scale_and_batchnorm():
    layer = make("Scale", "scale_param { bias_term: true }")
    layer.setup([X.shape])
    scale = torch.ones(3, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    layer.forward([torch.from_numpy(X)], [scale, bias])[0].sum().backward()
    close(scale.grad.numpy(), X.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)


def _batchnorm_scale_case(gamma, beta, mean, channels_last=True, shape=(4, 3, 5, 6)):
    bn, scale = make("BatchNorm"), make("Scale", "scale_param { bias_term: true }")
    bn.setup([shape]), scale.setup([shape])
    var = np.abs(rand(shape[1], seed=3)) + 0.5
    bn_blobs = [torch.tensor(mean, dtype=torch.float32), torch.from_numpy(var), torch.ones(1)]
    x = torch.from_numpy(rand(*shape) * np.sqrt(var)[:, None, None] + np.asarray(mean, np.float32)[:, None, None])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return bn, scale, bn_blobs, gamma, beta, x


def _three_layers_and_fused(bn, scale, bn_blobs, gamma, beta, x, relu):
    """(values, dx, dgamma, dbeta, saved bytes) of the layers one by one and of batchnorm_scale, under one gradient."""
    from caffeinit.layers.activation import ReLU  # noqa: F401  (registers ReLU)
    grad = torch.from_numpy(rand(*x.shape, seed=9))
    results = []
    for fused in (False, True):
        xs = x.clone().requires_grad_(True)
        params = [torch.tensor(gamma, dtype=torch.float32, requires_grad=True),
                  torch.tensor(beta, dtype=torch.float32, requires_grad=True)]
        saved = []
        # activations kept for backward (per-channel vectors aside)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * (t.dim() > 1)) or t,
                                                      lambda t: t):
            if fused:
                y = normalization.batchnorm_scale(bn, bn_blobs, scale, params, xs, relu)
            else:
                y = scale.forward(bn.forward([xs], bn_blobs), params)[0]
                y = torch.relu(y) if relu else y
        results.append((y.detach(), *torch.autograd.grad(y, [xs] + params, grad), sum(saved)))
    return results


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("case", ["plain", "zero_gamma", "large_beta", "far_mean"])
def test_batchnorm_scale_fused_matches_the_three_layers(relu, case):
    """The gradient passes' fused BatchNorm + Scale (+ ReLU): the same values and gradients as the layers one by
    one, also where gamma's gradient cannot come from the output (a zero gamma, |beta / gamma| > 100) and for
    inputs whose mean is 1000 times their spread."""
    gamma, beta, mean = [1.5, -0.7, 0.4], [0.3, 0.1, -0.2], [0.5, -1.0, 2.0]
    if case == "zero_gamma":
        gamma[1] = 0.0
    elif case == "large_beta":
        beta[2] = 500 * gamma[2]
    elif case == "far_mean":
        mean = [1000.0, -2000.0, 3000.0]
    plain, fused = _three_layers_and_fused(*_batchnorm_scale_case(gamma, beta, mean), relu=relu)
    for want, got in zip(plain[:4], fused[:4]):
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= 2e-5 * scale + 1e-6
    assert fused[0].is_contiguous(memory_format=torch.channels_last)  # keeps the gradient pass's layout
    # never more kept for backward than the layers keep; with a ReLU, only the output: one tensor instead of two
    assert fused[4] <= (0.55 if relu and case in ("plain", "far_mean") else 1.0) * plain[4]


@pytest.mark.parametrize("relu, gamma", [(True, [1.5, -0.7, 0.4]), (True, [1.5, 0.0, 0.4]), (False, [1.5, -0.7, 0.4])])
def test_batchnorm_scale_passes_gradcheck(relu, gamma):
    """The fused node's backward against finite differences in float64: gamma's gradient from the output (a ReLU,
    gamma nonzero), from the centred input (a zero gamma; no ReLU)."""
    bn, scale = make("BatchNorm"), make("Scale", "scale_param { bias_term: true }")
    shape = (2, 3, 3, 4)
    bn.setup([shape]), scale.setup([shape])
    bn_blobs = [torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.7, 1.3, 2.0], dtype=torch.float64),
                torch.ones(1, dtype=torch.float64)]
    x = torch.from_numpy(rand(*shape).astype(np.float64)).requires_grad_(True)
    params = [torch.tensor(gamma, dtype=torch.float64, requires_grad=True),
              torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(
        lambda x, g, b: normalization.batchnorm_scale(bn, bn_blobs, scale, [g, b], x, relu), (x, *params))


def test_batchnorm_scale_is_not_fused_with_batch_statistics():
    bn = make("BatchNorm", phase=caffe_pb2.TRAIN)
    scale = make("Scale", "scale_param { bias_term: true }")
    shape = (2, 3, 4, 4)
    bn.setup([shape]), scale.setup([shape])
    blobs = [torch.zeros(3), torch.ones(3), torch.ones(1)]
    assert normalization.batchnorm_scale(bn, blobs, scale, [torch.ones(3), torch.zeros(3)],
                                         torch.from_numpy(rand(*shape)), relu=True) is None


# -- conformance ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["lrn_across", "lrn_within", "batchnorm_scale"])
def test_conformance(case):
    run_case(case)


def test_conformance_mvn():
    from caffeinit.layers import activation  # noqa: F401  (registers Dropout)
    run_case("mvn_dropout")
