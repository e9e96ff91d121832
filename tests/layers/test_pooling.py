"""Pooling and SPP against a float64 numpy transcription of Caffe's pooling_layer.cpp / spp_layer.cpp and the
conformance goldens written by real Caffe."""
import math

import numpy as np
import pytest
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.layers import pooling  # noqa: F401  (registers the layers)
from caffeinit.proto import caffe_pb2
from tests.layers.helpers import make, rand, run, run_case

FLT_MAX = float(np.finfo(np.float32).max)


def caffe_pooled(in_hw, k, s, p, ceil):
    """pooling_layer.cpp Reshape: ceil/floor of a float division per axis, then, if pad_h or pad_w is non-zero,
    the clip rule on both axes. All arguments but ``ceil`` are (h, w) pairs."""
    out = []
    for size, kk, ss, pp in zip(in_hw, k, s, p):
        span = (size + 2 * pp - kk) / ss
        out.append(int(math.ceil(span) if ceil else math.floor(span)) + 1)
    if p[0] or p[1]:
        for axis in (0, 1):
            if (out[axis] - 1) * s[axis] >= in_hw[axis] + p[axis]:
                out[axis] -= 1
    return tuple(out)


def square_pooled(size, k, s, p, ceil):
    return caffe_pooled((size, size), (k, k), (s, s), (p, p), ceil)[0]


def caffe_pool(x, method, k, s, p, ceil=True):
    """Forward_cpu of Caffe's Pooling for MAX (value and mask) and AVE, windows written out as in the C++ loops.
    k, s, p are (h, w) pairs."""
    n, c, height, width = x.shape
    oh, ow = caffe_pooled((height, width), k, s, p, ceil)
    top = np.zeros((n, c, oh, ow))
    mask = np.full((n, c, oh, ow), -1.0)
    x = x.astype(np.float64)
    for ph in range(oh):
        for pw in range(ow):
            hs, ws = ph * s[0] - p[0], pw * s[1] - p[1]
            if method == "MAX":
                he, we = min(hs + k[0], height), min(ws + k[1], width)
                hs, ws = max(hs, 0), max(ws, 0)
                best = np.full((n, c), -FLT_MAX)
                where = np.full((n, c), -1.0)
                for h in range(hs, he):
                    for w in range(ws, we):
                        better = x[:, :, h, w] > best
                        best = np.where(better, x[:, :, h, w], best)
                        where = np.where(better, h * width + w, where)
                top[:, :, ph, pw], mask[:, :, ph, pw] = best, where
            else:
                he, we = min(hs + k[0], height + p[0]), min(ws + k[1], width + p[1])
                pool_size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, height), min(we, width)
                total = np.zeros((n, c))
                for h in range(hs, he):
                    for w in range(ws, we):
                        total = total + x[:, :, h, w]
                with np.errstate(invalid="ignore", divide="ignore"):
                    top[:, :, ph, pw] = total / pool_size
    return top, mask


def pool_layer(method, k, s, p, ceil=True, n_tops=1, extra=""):
    mode = "" if ceil else "round_mode: FLOOR"
    return make("Pooling", f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} {mode} {extra} }}",
                n_tops=n_tops)


def sweep_configs():
    return [(h, k, s, p) for h in range(1, 13) for k in range(1, 6) for s in range(1, 5) for p in range(k)
            if square_pooled(h, k, s, p, True) >= 1]


def test_sweep_covers_the_documented_grid():
    assert sum(h + 2 * p >= k for h, k, s, p in sweep_configs()) * 2 == 1336


@pytest.mark.parametrize("ceil", [True, False])
def test_pooling_sweep_matches_caffe(ceil):
    """H 1-12, k 1-5, s 1-4, pad 0..k-1, MAX (value + mask) and AVE: shapes and values."""
    checked = 0
    for height, k, s, p in sweep_configs():
        if not ceil and square_pooled(height, k, s, p, False) < 1:
            continue
        x = rand(2, 2, height, height, seed=height * 100 + k * 10 + s)
        for method in ("MAX", "AVE"):
            want, want_mask = caffe_pool(x, method, (k, k), (s, s), (p, p), ceil)
            tops = run(pool_layer(method, k, s, p, ceil, n_tops=2 if method == "MAX" else 1), x)
            assert tops[0].shape == want.shape, (method, height, k, s, p)
            np.testing.assert_allclose(tops[0], want, rtol=1e-6, atol=1e-6, err_msg=str((method, height, k, s, p)))
            assert (np.isnan(tops[0]) == np.isnan(want)).all()
            if method == "MAX":
                np.testing.assert_array_equal(tops[1], want_mask, err_msg=str((height, k, s, p)))
            checked += 1
    assert checked >= 1336


def test_padding_on_one_axis_clips_both_axes():
    """Caffe's clip rule runs on both axes when either pad is non-zero: kernel 1x3, stride 2x1, pad 0x1 on 4x4
    gives 2 rows (the third window would start at row 4, outside the image), not 3 rows with a -FLT_MAX one."""
    x = rand(1, 1, 4, 4)
    text = "pooling_param { pool: MAX kernel_h: 1 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1 }"
    layer = make("Pooling", text)
    top = run(layer, x)[0]
    assert top.shape == (1, 1, 2, 4)
    np.testing.assert_array_equal(top, caffe_pool(x, "MAX", (1, 3), (2, 1), (0, 1))[0].astype(np.float32))
    assert layer.geometry.torch_exact  # torch's ceil rule drops that row too


@pytest.mark.parametrize("ceil", [True, False])
def test_one_axis_padding_sweep_matches_caffe(ceil):
    """4x5 and 5x4, kernels 1-3, strides 1-3, padding on the height or the width only: shapes and values."""
    checked = clipped_unpadded = 0
    for hw in [(4, 5), (5, 4)]:
        for k in [(a, b) for a in range(1, 4) for b in range(1, 4)]:
            for s in [(a, b) for a in range(1, 4) for b in range(1, 4)]:
                pads = [(ph, 0) for ph in range(1, k[0])] + [(0, pw) for pw in range(1, k[1])]
                for p in pads:
                    shape = caffe_pooled(hw, k, s, p, ceil)
                    if min(shape) < 1:
                        continue
                    unpadded = 1 if p[0] else 0
                    per_axis = caffe_pooled((hw[unpadded],) * 2, (k[unpadded],) * 2, (s[unpadded],) * 2, (0, 0),
                                            ceil)[0]
                    clipped_unpadded += per_axis != shape[unpadded]
                    x = rand(1, 2, *hw, seed=checked)
                    mode = "CEIL" if ceil else "FLOOR"
                    for method in ("MAX", "AVE"):
                        text = (f"pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} "
                                f"stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} round_mode: {mode} }}")
                        want, want_mask = caffe_pool(x, method, k, s, p, ceil)
                        tops = run(make("Pooling", text, n_tops=2 if method == "MAX" else 1), x)
                        where = str((method, hw, k, s, p))
                        assert tops[0].shape == want.shape, where
                        np.testing.assert_allclose(tops[0], want, rtol=1e-6, atol=1e-6, err_msg=where)
                        if method == "MAX":
                            np.testing.assert_array_equal(tops[1], want_mask, err_msg=where)
                        checked += 1
    assert checked > 300
    assert clipped_unpadded > 20 if ceil else clipped_unpadded == 0  # floor never reaches the clip


def test_window_outside_image_keeps_caffe_values():
    """pad 0, k 1, s 3, H 5: Caffe keeps a 3rd window wholly outside: -FLT_MAX for MAX, 0 / negative size for AVE."""
    x = rand(1, 1, 5, 5)
    top, mask = run(pool_layer("MAX", 1, 3, 0, n_tops=2), x)
    assert top.shape == (1, 1, 3, 3)
    assert (top[0, 0, 2, :] == np.float32(-FLT_MAX)).all() and (mask[0, 0, 2, :] == -1).all()
    np.testing.assert_array_equal(top[0, 0, :2, :2], x[0, 0, ::3, ::3])
    ave = run(pool_layer("AVE", 1, 3, 0), x)[0]
    assert ave[0, 0, 2, 0] == 0 and np.signbit(ave[0, 0, 2, 0])  # 0 / -1 = -0.0
    assert ave[0, 0, 2, 2] == 0 and not np.signbit(ave[0, 0, 2, 2])  # 0 / (-1 * -1)


def test_max_ties_keep_the_first_index():
    x = np.ones((1, 1, 4, 4), np.float32)
    top, mask = run(pool_layer("MAX", 2, 2, 1, n_tops=2), x)
    want_mask = caffe_pool(x, "MAX", (2, 2), (2, 2), (1, 1))[1]
    np.testing.assert_array_equal(mask, want_mask)
    assert mask[0, 0, 1, 1] == 1 * 4 + 1


def test_rectangular_windows():
    x = rand(2, 3, 9, 7)
    text = "pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 2 pad_w: 1 }"
    want = caffe_pool(x, "AVE", (3, 2), (2, 3), (2, 1))[0]
    np.testing.assert_allclose(run(make("Pooling", text), x)[0], want, rtol=1e-6, atol=1e-6)
    text = text.replace("AVE", "MAX")
    want = caffe_pool(x, "MAX", (3, 2), (2, 3), (2, 1))[0]
    np.testing.assert_array_equal(run(make("Pooling", text), x)[0], want.astype(np.float32))


def test_global_pooling():
    x = rand(2, 3, 5, 4)
    top = run(make("Pooling", "pooling_param { pool: AVE global_pooling: true }"), x)[0]
    np.testing.assert_allclose(top, x.astype(np.float64).mean(axis=(2, 3), keepdims=True), rtol=1e-6, atol=1e-7)
    top = run(make("Pooling", "pooling_param { pool: MAX global_pooling: true }"), x)[0]
    np.testing.assert_array_equal(top, x.max(axis=(2, 3), keepdims=True))


def test_stochastic_test_phase_formula():
    """GPU TEST formula: sum(x^2)/sum(x) over the (unpadded) window, 0 where the sum is not positive."""
    x = rand(1, 2, 5, 5)
    x[0, 0] = np.abs(x[0, 0])
    top = run(make("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }"), x)[0]
    assert top.shape == (1, 2, 3, 3)
    for ph in range(3):
        for pw in range(3):
            win = x[:, :, 2 * ph:2 * ph + 2, 2 * pw:2 * pw + 2].astype(np.float64)
            total, squares = win.sum(axis=(2, 3)), (win ** 2).sum(axis=(2, 3))
            want = np.where(total > 0, squares / np.where(total > 0, total, 1), 0)
            np.testing.assert_allclose(top[:, :, ph, pw], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(CaffeinitError, match="STOCHASTIC"):
        make("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 }", phase=caffe_pb2.TRAIN)


def test_torch_fast_path_is_used_where_exact():
    layer = pool_layer("MAX", 3, 2, 0)
    layer.setup([(1, 1, 112, 112)])
    assert layer.geometry.torch_exact and layer.geometry.out_hw == (56, 56)  # ResNet-50 pool1: ceil gives 56
    layer = pool_layer("AVE", 4, 2, 3)
    layer.setup([(1, 1, 6, 6)])
    assert not layer.geometry.torch_exact


def test_autograd_flows_through_padded_path():
    layer = pool_layer("MAX", 4, 2, 3)
    layer.setup([(1, 1, 6, 6)])
    x = torch.from_numpy(rand(1, 1, 6, 6)).requires_grad_()
    layer.forward([x], [])[0].sum().backward()
    assert x.grad is not None and x.grad.sum() > 0


def test_max_pooling_keeps_the_input_layout():
    """Channels-last in, channels-last out (the within step keeps that layout through the net); NCHW in, NCHW out;
    the values, and under autograd the gradients, are the same in both."""
    layer = pool_layer("MAX", 3, 2, 0)
    layer.setup([(2, 4, 9, 9)])
    x = torch.from_numpy(rand(2, 4, 9, 9))
    plain = layer.forward([x], [])[0]
    last = layer.forward([x.contiguous(memory_format=torch.channels_last)], [])[0]
    assert plain.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    assert torch.equal(plain, last)
    grads = []
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        t = t.clone().requires_grad_()
        with torch.enable_grad():
            (layer.forward([t], [])[0] * torch.arange(plain.numel()).reshape(plain.shape)).sum().backward()
        grads.append(t.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("text, message", [
    ("pool: MAX kernel_size: 2 pad: 2", "pad"),
    ("pool: MAX kernel_size: 3 kernel_h: 3 kernel_w: 3", "kernel_size"),
    ("pool: MAX kernel_h: 3", "kernel"),
    ("pool: MAX global_pooling: true kernel_size: 3", "global_pooling"),
    ("pool: MAX global_pooling: true stride: 2", "global_pooling"),
    ("pool: MAX kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1", "pad"),
    ("pool: MAX kernel_size: 3 stride_h: 2", "stride"),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", "padding"),
    ("pool: MAX kernel_size: 0", "kernel"),
])
def test_bad_parameters_name_the_layer(text, message):
    layer = make("Pooling", f"pooling_param {{ {text} }}")
    with pytest.raises(CaffeinitError, match=message) as info:
        layer.setup([(1, 1, 8, 8)])
    assert "layer 'L' (Pooling)" in str(info.value)


@pytest.mark.parametrize("lone", ["kernel_h: 1", "kernel_w: 5"])
def test_kernel_size_with_a_lone_kernel_h_or_w_uses_kernel_size(lone):
    """pooling_layer.cpp LayerSetUp: !has_kernel_size() != !(has_kernel_h() && has_kernel_w()) passes, and
    kernel_size sets both axes."""
    x = rand(1, 2, 7, 7)
    top = run(make("Pooling", f"pooling_param {{ pool: MAX kernel_size: 3 {lone} stride: 2 }}"), x)[0]
    np.testing.assert_array_equal(top, caffe_pool(x, "MAX", (3, 3), (2, 2), (0, 0))[0].astype(np.float32))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_in_place_is_refused(method):
    """Forward_cpu first sets the whole top to -FLT_MAX (MAX) or 0 (AVE); in place that is the bottom, so even a
    pooling that keeps the shape (kernel 3, stride 1, pad 1) reads only those values."""
    x = rand(1, 2, 4, 4)
    apart = caffe_pool(x, method, (3, 3), (1, 1), (1, 1))[0]
    shared = np.full(x.shape, -FLT_MAX if method == "MAX" else 0.0)
    in_place = caffe_pool(shared, method, (3, 3), (1, 1), (1, 1))[0]
    assert apart.shape == x.shape and not np.allclose(in_place, apart)
    layer = pool_layer(method, 3, 1, 1)
    layer.setup([x.shape])
    assert layer.in_place_problem(0, x.shape, x.shape)


def test_bad_shapes_and_tops():
    with pytest.raises(CaffeinitError, match="4 axes"):
        pool_layer("MAX", 2, 2, 0).setup([(1, 8, 8)])
    with pytest.raises(CaffeinitError, match="second"):
        pool_layer("AVE", 2, 2, 0, n_tops=2).check_counts(1, 2)
    with pytest.raises(CaffeinitError, match="not positive"):
        pool_layer("MAX", 3, 1, 0).setup([(1, 1, 1, 1)])


# -- SPP ------------------------------------------------------------------------------------------------------

def caffe_spp(x, height, method):
    """spp_layer.cpp: level i pools with kernel ceil(H/2^i), stride = kernel, pad (kernel*2^i - H + 1)/2."""
    parts = []
    for level in range(height):
        bins = 2 ** level
        k = [math.ceil(n / bins) for n in x.shape[2:]]
        p = [(kk * bins - n + 1) // 2 for kk, n in zip(k, x.shape[2:])]
        top = caffe_pool(x, method, k, k, p)[0]
        if height == 1:
            return top
        parts.append(top.reshape(x.shape[0], -1))
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("height, method, hw", [(3, "MAX", (13, 11)), (3, "AVE", (7, 9)), (1, "MAX", (5, 6)),
                                                (2, "AVE", (4, 4))])
def test_spp(height, method, hw):
    x = rand(2, 3, *hw)
    top = run(make("SPP", f"spp_param {{ pyramid_height: {height} pool: {method} }}"), x)[0]
    np.testing.assert_allclose(top, caffe_spp(x, height, method), rtol=1e-6, atol=1e-6)


def test_spp_too_small_input_is_an_error():
    with pytest.raises(CaffeinitError, match="SPP"):
        make("SPP", "spp_param { pyramid_height: 3 pool: MAX }").setup([(1, 1, 3, 3)])


# -- conformance ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["pool_ave_pad1", "pool_floor", "pool_global_max", "pool_max_ceil",
                                  "pool_max_pad_big"])
def test_conformance(case):
    run_case(case)
