"""Convolution, Deconvolution and Im2col against float64 numpy transcriptions of Caffe's im2col-based
conv_layer.cpp / deconv_layer.cpp (written out per kernel offset) and the conformance goldens."""
import itertools

import numpy as np
import pytest
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.layers import conv  # registers the layers
from tests.layers.helpers import ONEDNN_POINTWISE, make, rand, run, run_case


def caffe_out_size(size, k, s, p, d):
    """conv_layer.cpp compute_output_shape: (size + 2p - extent) / s + 1 with C++'s division toward zero."""
    return int((size + 2 * p - (d * (k - 1) + 1)) / s) + 1


def caffe_conv(x, w, b, stride, pad, dilation, group):
    """y[n, o, p...] = sum over c, kernel offsets of x_padded[n, g*C/G + c, p*s + k*d] * w[o, c, k] (+ b[o]);
    im2col reads 0 outside the input, so x is padded with zeros as far as the last window reaches."""
    n_spatial = x.ndim - 2
    out = [caffe_out_size(x.shape[2 + i], w.shape[2 + i], stride[i], pad[i], dilation[i]) for i in range(n_spatial)]
    reach = [(out[i] - 1) * stride[i] + dilation[i] * (w.shape[2 + i] - 1) + 1 for i in range(n_spatial)]
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p, max(p, r - n - p))
                                                          for p, r, n in zip(pad, reach, x.shape[2:])])
    n, channels = x.shape[:2]
    cin, cout = channels // group, w.shape[0] // group
    y = np.zeros((n, w.shape[0], *out))
    for offset in itertools.product(*[range(k) for k in w.shape[2:]]):
        index = tuple(slice(o * dilation[i], o * dilation[i] + (out[i] - 1) * stride[i] + 1, stride[i])
                      for i, o in enumerate(offset))
        patch = xp[(slice(None), slice(None)) + index]
        for g in range(group):
            wk = w[(slice(g * cout, (g + 1) * cout), slice(None)) + offset].astype(np.float64)
            y[:, g * cout:(g + 1) * cout] += np.einsum("nc...,oc->no...", patch[:, g * cin:(g + 1) * cin], wk)
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n_spatial)
    return y


def caffe_deconv(x, w, b, stride, pad, dilation, group):
    """col2im scatter: each input pixel adds x * w[c, o, k] at output position i*s + k*d - p."""
    n_spatial = x.ndim - 2
    n, channels = x.shape[:2]
    cin, cout = channels // group, w.shape[1]
    full = [stride[i] * (x.shape[2 + i] - 1) + dilation[i] * (w.shape[2 + i] - 1) + 1 for i in range(n_spatial)]
    y = np.zeros((n, cout * group, *full))
    for offset in itertools.product(*[range(k) for k in w.shape[2:]]):
        index = tuple(slice(o * dilation[i], o * dilation[i] + (x.shape[2 + i] - 1) * stride[i] + 1, stride[i])
                      for i, o in enumerate(offset))
        for g in range(group):
            wk = w[(slice(g * cin, (g + 1) * cin), slice(None)) + offset].astype(np.float64)
            y[(slice(None), slice(g * cout, (g + 1) * cout)) + index] += np.einsum(
                "nc...,co->no...", x[:, g * cin:(g + 1) * cin].astype(np.float64), wk)
    y = y[(slice(None), slice(None)) + tuple(slice(p, f - p) for p, f in zip(pad, full))]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n_spatial)
    return y


def conv_text(num_output, kernel, stride=(), pad=(), dilation=(), group=1, bias=True, extra=""):
    fields = [f"num_output: {num_output}", f"group: {group}", f"bias_term: {str(bias).lower()}", extra]
    for name, values in (("kernel_size", kernel), ("stride", stride), ("pad", pad), ("dilation", dilation)):
        fields += [f"{name}: {v}" for v in values]
    return "convolution_param { " + " ".join(fields) + " }"


def per_axis(values, n, default):
    return [default] * n if not values else (list(values) * n if len(values) == 1 else list(values))


CONV_CASES = [  # spatial shape, channels, num_output, kernel, stride, pad, dilation, group
    ((7, 8), 4, 6, (3,), (), (), (), 1),
    ((9, 9), 4, 8, (3,), (2,), (1,), (), 2),
    ((10, 10), 2, 3, (3,), (), (), (3,), 1),
    ((8, 11), 6, 6, (3, 2), (2, 1), (2, 0), (1, 2), 3),
    ((6, 7), 3, 4, (1,), (3,), (0,), (), 1),
    ((12,), 4, 2, (5,), (2,), (3,), (2,), 2),
    ((5, 6, 4), 2, 4, (3, 2, 2), (1, 2, 1), (1,), (1, 1, 2), 2),
    # the window exceeds the padded input by less than the stride: one output reading zeros past the end
    ((2, 2), 2, 3, (3,), (2,), (), (), 1),
    ((2, 5), 2, 2, (3, 2), (3, 2), (0, 1), (1, 2), 1),
    ((4,), 3, 3, (3,), (4,), (0,), (3,), 3),
]


@pytest.mark.parametrize("spatial, channels, num_output, kernel, stride, pad, dilation, group", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_convolution(spatial, channels, num_output, kernel, stride, pad, dilation, group, bias):
    n = len(spatial)
    layer = make("Convolution", conv_text(num_output, kernel, stride, pad, dilation, group, bias))
    x = rand(2, channels, *spatial)
    k = per_axis(kernel, n, None)
    w = rand(num_output, channels // group, *k, seed=1)
    b = rand(num_output, seed=2) if bias else None
    top = run(layer, x, blobs=[w] + ([b] if bias else []))[0]
    want = caffe_conv(x, w, b, per_axis(stride, n, 1), per_axis(pad, n, 0), per_axis(dilation, n, 1), group)
    assert layer.blob_shapes == [tuple(w.shape)] + ([(num_output,)] if bias else [])
    np.testing.assert_allclose(top, want, rtol=1e-5, atol=1e-5)


DECONV_CASES = [  # spatial shape, channels, num_output, kernel, stride, pad, dilation, group
    ((4, 4), 3, 2, (3,), (2,), (), (), 1),
    ((5, 4), 4, 6, (4,), (2,), (1,), (), 2),
    ((3, 5), 2, 3, (3, 2), (1, 3), (1, 0), (2, 1), 1),
    ((6,), 4, 4, (3,), (3,), (1,), (), 4),
    ((3, 3, 2), 2, 2, (2,), (2,), (), (), 1),
    ((4, 4), 2, 3, (2,), (3,), (2,), (), 1),  # pad beyond the kernel
]


@pytest.mark.parametrize("spatial, channels, num_output, kernel, stride, pad, dilation, group", DECONV_CASES)
def test_deconvolution(spatial, channels, num_output, kernel, stride, pad, dilation, group):
    n = len(spatial)
    layer = make("Deconvolution", conv_text(num_output, kernel, stride, pad, dilation, group))
    x = rand(2, channels, *spatial)
    w = rand(channels, num_output // group, *per_axis(kernel, n, None), seed=1)
    b = rand(num_output, seed=2)
    top = run(layer, x, blobs=[w, b])[0]
    want = caffe_deconv(x, w, b, per_axis(stride, n, 1), per_axis(pad, n, 0), per_axis(dilation, n, 1), group)
    assert layer.blob_shapes == [tuple(w.shape), (num_output,)]
    np.testing.assert_allclose(top, want, rtol=1e-5, atol=1e-5)


def test_hw_fields_and_axis():
    """kernel_h/w, stride_h/w, pad_h/w; axis 2 folds the leading axes into the batch."""
    text = ("convolution_param { num_output: 3 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 "
            "axis: 2 }")
    x = rand(2, 3, 2, 7, 5)
    w, b = rand(3, 2, 3, 1, seed=1), rand(3, seed=2)
    top = run(make("Convolution", text), x, blobs=[w, b])[0]
    want = caffe_conv(x.reshape(6, 2, 7, 5), w, b, (2, 1), (1, 0), (1, 1), 1).reshape(2, 3, 3, 4, 5)
    np.testing.assert_allclose(top, want, rtol=1e-5, atol=1e-5)


def test_several_bottoms_share_the_weight():
    layer = make("Convolution", conv_text(4, (3,), pad=(1,)), n_bottoms=2, n_tops=2)
    x0, x1 = rand(1, 2, 5, 5), rand(1, 2, 5, 5, seed=3)
    w, b = rand(4, 2, 3, 3, seed=1), rand(4, seed=2)
    tops = run(layer, x0, x1, blobs=[w, b])
    for x, top in zip((x0, x1), tops):
        np.testing.assert_allclose(top, caffe_conv(x, w, b, (1, 1), (1, 1), (1, 1), 1), rtol=1e-5, atol=1e-5)


def test_im2col():
    x = rand(2, 3, 6, 5)
    text = "convolution_param { kernel_size: 3 stride: 2 pad: 1 dilation: 1 }"
    top = run(make("Im2col", text), x)[0]
    assert top.shape == (2, 27, 3, 3)
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
    for c, kh, kw in itertools.product(range(3), range(3), range(3)):
        np.testing.assert_array_equal(top[:, c * 9 + kh * 3 + kw], xp[:, c, kh:kh + 5:2, kw:kw + 5:2][:, :3, :3])


def test_output_sizes_follow_cpp_division():
    """Shapes for windows larger than the padded input, the three kinds of layers (Caffe's truncating division)."""
    for size, k, s, p, d in itertools.product(range(1, 5), range(1, 5), range(1, 4), range(2), range(1, 3)):
        want = caffe_out_size(size, k, s, p, d)
        text = conv_text(2, (k,), (s,), (p,), (d,))
        for type_name in ("Convolution", "Im2col"):
            layer = make(type_name, text.replace("num_output: 2", "") if type_name == "Im2col" else text)
            if want <= 0:
                with pytest.raises(CaffeinitError, match="exceeds"):
                    layer.setup([(1, 2, size, size)])
                continue
            top, = layer.setup([(1, 2, size, size)])
            assert top[2:] == (want, want), (type_name, size, k, s, p, d)


def test_im2col_reads_zeros_past_the_end():
    """2x3 input, kernel 3, stride 2: one 1x1 column whose window reads zeros below and right of the input."""
    x = rand(1, 2, 2, 3)
    top = run(make("Im2col", "convolution_param { kernel_size: 3 stride: 2 }"), x)[0]
    assert top.shape == (1, 18, 1, 1)
    window = np.zeros((2, 3, 3), np.float32)
    window[:, :2, :3] = x[0]
    np.testing.assert_array_equal(top[0, :, 0, 0], window.reshape(-1))


def test_convolution_in_place():
    """conv_layer.cpp Forward_cpu, image by image: im2col copies image n into the column buffer before the product
    writes top image n, so a 3x3 pad-1 convolution keeping the shape gives its out-of-place numbers in place; the
    1x1 path multiplies the bottom itself into the top (refused), and a top of another shape reshapes the blob."""
    x, w, b = rand(2, 3, 5, 5), rand(3, 3, 3, 3, seed=1), rand(3, seed=2)
    shared = x.astype(np.float64)
    for n in range(2):
        shared[n] = caffe_conv(shared[n:n + 1].copy(), w, b, (1, 1), (1, 1), (1, 1), 1)[0]
    layer = make("Convolution", conv_text(3, (3,), pad=(1,)))
    top = run(layer, x, blobs=[w, b])[0]
    assert layer.in_place_problem(0, x.shape, top.shape) is None
    np.testing.assert_allclose(top, shared, rtol=1e-5, atol=1e-5)
    one = make("Convolution", conv_text(3, (1,)))
    assert one.in_place_problem(0, x.shape, one.setup([x.shape])[0])
    strided = make("Convolution", conv_text(3, (3,), (2,), (1,)))
    assert strided.in_place_problem(0, x.shape, strided.setup([x.shape])[0])


def test_fill_blobs_uses_fillers_and_default_zero_bias():
    layer = make("Convolution", conv_text(4, (3,), extra='weight_filler { type: "constant" value: 2 }'))
    layer.setup([(1, 2, 5, 5)])
    w, b = layer.fill_blobs(np.random.default_rng(0))
    assert w.shape == (4, 2, 3, 3) and (w == 2).all() and w.dtype == np.float32
    assert b.shape == (4,) and (b == 0).all()
    layer = make("Deconvolution", conv_text(4, (4,), (2,), extra='weight_filler { type: "bilinear" }', group=4))
    layer.setup([(1, 4, 5, 5)])
    assert layer.fill_blobs(np.random.default_rng(0))[0].shape == (4, 1, 4, 4)


@pytest.mark.parametrize("text, shape, message", [
    (conv_text(4, (3,), group=3), (1, 4, 5, 5), "group"),
    (conv_text(5, (3,), group=2), (1, 4, 5, 5), "group"),
    (conv_text(4, (3, 3, 3)), (1, 4, 5, 5), "kernel_size"),
    (conv_text(4, (3,), extra="kernel_h: 3 kernel_w: 3"), (1, 4, 5, 5), "kernel_size"),
    ("convolution_param { num_output: 4 kernel_h: 3 kernel_w: 3 }", (1, 4, 5, 5, 5), "2-D"),
    (conv_text(4, ()), (1, 4, 5, 5), "kernel_size"),
    (conv_text(4, (0,)), (1, 4, 5, 5), "kernel"),
    (conv_text(4, (7,)), (1, 4, 5, 5), "exceeds"),
    (conv_text(4, (3,), stride=(1,)), (1, 4, 2, 2), "exceeds"),  # (2 - 3) / 1 + 1 = 0
    (conv_text(4, (4,), stride=(2,)), (1, 4, 2, 2), "exceeds"),  # (2 - 4) / 2 + 1 = 0
    (conv_text(0, (3,)), (1, 4, 5, 5), "num_output"),
    (conv_text(4, (3,), extra="axis: 4"), (1, 4, 5, 5), "axis"),
    (conv_text(4, (3,), stride=(0,)), (1, 4, 5, 5), "stride"),
])
def test_bad_parameters_name_the_layer(text, shape, message):
    layer = make("Convolution", text)
    with pytest.raises(CaffeinitError, match=message) as info:
        layer.setup([shape])
    assert "layer 'L' (Convolution)" in str(info.value)


def test_bottoms_must_match():
    layer = make("Convolution", conv_text(4, (3,)), n_bottoms=2, n_tops=2)
    with pytest.raises(CaffeinitError, match="same shape"):
        layer.setup([(1, 2, 5, 5), (1, 2, 6, 5)])
    layer = make("Convolution", conv_text(4, (3,)), n_bottoms=2, n_tops=1)
    with pytest.raises(CaffeinitError, match="as many tops"):
        layer.setup([(1, 2, 5, 5), (1, 2, 5, 5)])


@pytest.mark.parametrize("case", ["conv_dilated", "conv_group_stride", "deconv"])
def test_conformance(case):
    run_case(case)


def caffe_relu(y, negative_slope):
    """relu_layer.cpp: max(y, 0) + negative_slope * min(y, 0)."""
    return np.maximum(y, 0) + negative_slope * np.minimum(y, 0)


@pytest.mark.parametrize("spatial, channels, num_output, kernel, stride, pad, dilation, group",
                         [case for case in CONV_CASES if len(case[0]) == 2])
@pytest.mark.parametrize("bias, negative_slope", [(True, 0.0), (False, 0.0), (True, 0.1), (True, -2.0)])
def test_inference_forward_fuses_relu(spatial, channels, num_output, kernel, stride, pad, dilation, group, bias,
                                      negative_slope):
    """The oneDNN inference path with Caffe's ReLU (leaky included) fused: the numpy conv then relu_layer.cpp."""
    if not ONEDNN_POINTWISE:
        pytest.skip("this torch build has no oneDNN pointwise convolution")
    layer = make("Convolution", conv_text(num_output, kernel, stride, pad, dilation, group, bias))
    x = rand(2, channels, *spatial)
    w = rand(num_output, channels // group, *per_axis(kernel, 2, None), seed=1)
    b = rand(num_output, seed=2) if bias else None
    shape, = layer.setup([x.shape])
    blobs = [torch.from_numpy(w)] + ([torch.from_numpy(b)] if bias else [])
    with torch.no_grad():
        top, = layer.forward_inference([torch.from_numpy(x)], blobs, negative_slope)
    want = caffe_relu(caffe_conv(x, w, b, per_axis(stride, 2, 1), per_axis(pad, 2, 0), per_axis(dilation, 2, 1),
                                 group), negative_slope)
    assert tuple(top.shape) == tuple(shape)
    np.testing.assert_allclose(top.numpy(), want, rtol=1e-5, atol=1e-5)


def test_inference_forward_declines_what_it_cannot_run():
    """None (the executor then runs ``forward``): no ReLU to fuse, autograd on, float64, 3-D, Deconvolution."""
    layer = make("Convolution", conv_text(4, (3,)))
    layer.setup([(1, 2, 5, 5)])
    blobs = [torch.from_numpy(rand(4, 2, 3, 3, seed=1)), torch.from_numpy(rand(4, seed=2))]
    x = torch.from_numpy(rand(1, 2, 5, 5))
    with torch.no_grad():
        assert layer.forward_inference([x], blobs, None) is None
        assert layer.forward_inference([x.double()], [b.double() for b in blobs], 0.0) is None
    assert layer.forward_inference([x], blobs, 0.0) is None  # grad mode on
    layer3d = make("Convolution", conv_text(2, (2,)))
    layer3d.setup([(1, 2, 3, 3, 3)])
    deconv = make("Deconvolution", conv_text(2, (2,)))
    deconv.setup([(1, 2, 3, 3)])
    with torch.no_grad():
        assert layer3d.forward_inference([torch.zeros(1, 2, 3, 3, 3)], [torch.zeros(2, 2, 2, 2, 2), torch.zeros(2)],
                                         0.0) is None
        assert deconv.forward_inference([torch.zeros(1, 2, 3, 3)], [torch.zeros(2, 2, 2, 2), torch.zeros(2)],
                                        0.0) is None


def _rejecting_op(*args):
    raise TypeError("_convolution_pointwise() takes 9 positional arguments but 10 were given")


@pytest.mark.parametrize("op", [None, _rejecting_op], ids=["missing", "rejects the call"])
def test_inference_forward_without_a_working_onednn_op_falls_back(monkeypatch, op):
    """A torch build without the oneDNN op, or whose internal signature differs: the layer declines (the executor's
    plain path then gives the values) and a rejecting op switches itself off."""
    monkeypatch.setattr(conv._CONV_POINTWISE, "op", op)
    layer = make("Convolution", conv_text(4, (3,)))
    layer.setup([(1, 2, 5, 5)])
    with torch.no_grad():
        assert layer.forward_inference([torch.zeros(1, 2, 5, 5)], [torch.zeros(4, 2, 3, 3), torch.zeros(4)],
                                       0.0) is None
    assert not conv._CONV_POINTWISE.available


def test_inference_forward_sees_weights_changed_in_place():
    """Each call reads the weight as it is now: writes through ``.data`` (the initialization's way) do not bump the
    version counter, so nothing derived from the weight may be cached on it; a new input shape works too."""
    layer = make("Convolution", conv_text(4, (3,), group=2))
    x = rand(2, 4, 6, 6)
    w, b = rand(4, 2, 3, 3, seed=1), rand(4, seed=2)
    weight = torch.nn.Parameter(torch.from_numpy(w.copy()))
    blobs = [weight, torch.from_numpy(b)]
    layer.setup([x.shape])
    with torch.no_grad():
        first, = layer.forward_inference([torch.from_numpy(x)], blobs, 0.0)
        weight.data.mul_(-0.5)
        version = weight._version
        second, = layer.forward_inference([torch.from_numpy(x)], blobs, 0.0)
        layer.setup([(1, 4, 5, 7)])
        third, = layer.forward_inference([torch.from_numpy(x[:1, :, :5, :7])], blobs, 0.0)
    assert weight._version == version
    np.testing.assert_allclose(first.numpy(), caffe_relu(caffe_conv(x, w, b, (1, 1), (0, 0), (1, 1), 2), 0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second.numpy(), caffe_relu(caffe_conv(x, -0.5 * w, b, (1, 1), (0, 0), (1, 1), 2), 0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(third.numpy(), caffe_relu(caffe_conv(x[:1, :, :5, :7], -0.5 * w, b, (1, 1), (0, 0),
                                                                    (1, 1), 2), 0), rtol=1e-5, atol=1e-5)
