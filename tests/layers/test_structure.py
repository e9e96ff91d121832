"""Structural layers, Softmax, ArgMax and Reduction against numpy transcriptions of Caffe's CPU code and the
conformance goldens written by real Caffe."""
import numpy as np
import pytest
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.layers import structure  # noqa: F401  (registers the layers)
from tests.layers.helpers import make, rand, run, run_case


@pytest.mark.parametrize("case", ["argmax", "concat_axis1", "crop", "eltwise_sum_coeff", "reshape_flatten",
                                  "slice_points", "softmax"])
def test_conformance(case):
    run_case(case)


# -- Concat / Slice / Split ---------------------------------------------------------------------------------

def test_concat_axes_and_legacy_concat_dim():
    a, b = rand(2, 3, 4), rand(2, 5, 4, seed=1)
    np.testing.assert_array_equal(run(make("Concat", n_bottoms=2), a, b)[0], np.concatenate([a, b], 1))
    c, d = rand(2, 3, 4), rand(2, 3, 1, seed=1)
    np.testing.assert_array_equal(run(make("Concat", "concat_param { axis: -1 }", 2), c, d)[0],
                                  np.concatenate([c, d], 2))
    e = rand(4, 3, 4, seed=2)
    np.testing.assert_array_equal(run(make("Concat", "concat_param { concat_dim: 0 }", 2), c, e)[0],
                                  np.concatenate([c, e], 0))


@pytest.mark.parametrize("text, shapes, message", [
    ("concat_param { axis: 1 concat_dim: 1 }", [(2, 3), (2, 3)], "not both"),
    ("", [(2, 3), (3, 3)], "axis 0"),
    ("", [(2, 3), (2, 3, 1)], "same number of axes"),
    ("concat_param { axis: 2 }", [(2, 3), (2, 3)], "out of range"),
])
def test_concat_checks(text, shapes, message):
    with pytest.raises(CaffeinitError, match=f"layer 'L' \\(Concat\\).*{message}"):
        make("Concat", text, len(shapes)).setup(shapes)


def test_slice_points_and_equal_split():
    x = rand(2, 7, 3)
    tops = run(make("Slice", "slice_param { slice_point: 1 slice_point: 4 }", 1, 3), x)
    for top, want in zip(tops, np.split(x, [1, 4], axis=1)):
        np.testing.assert_array_equal(top, want)
    y = rand(6, 2)
    tops = run(make("Slice", "slice_param { slice_dim: 0 }", 1, 3), y)
    for top, want in zip(tops, np.split(y, 3, axis=0)):
        np.testing.assert_array_equal(top, want)
    tops = run(make("Slice", "slice_param { axis: -1 slice_point: 1 }", 1, 2), y)
    np.testing.assert_array_equal(tops[1], y[:, 1:])


@pytest.mark.parametrize("text, n_tops, message", [
    ("slice_param { slice_point: 2 }", 3, "need 2"),
    ("slice_param { slice_point: 3 slice_point: 2 }", 3, "increase strictly"),
    ("slice_param { slice_point: 7 }", 2, "increase strictly"),
    ("", 2, "split equally"),
    ("slice_param { axis: 1 slice_dim: 1 }", 2, "not both"),
])
def test_slice_checks(text, n_tops, message):
    with pytest.raises(CaffeinitError, match=f"\\(Slice\\).*{message}"):
        make("Slice", text, 1, n_tops).setup([(2, 7)])


def test_split_copies_bottom_to_every_top():
    x = rand(2, 3)
    tops = run(make("Split", n_tops=3), x)
    assert len(tops) == 3 and all(np.array_equal(t, x) for t in tops)


def test_split_refuses_in_place():
    """split_layer.cpp Reshape CHECKs that no top is the bottom blob."""
    layer = make("Split", n_tops=2)
    layer.param.top[0] = "b0"
    with pytest.raises(CaffeinitError, match="\\(Split\\).*in place"):
        layer.setup([(2, 3)])


# -- Flatten / Reshape --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("", (2, 60)), ("flatten_param { axis: 2 }", (2, 3, 20)), ("flatten_param { axis: 0 end_axis: 1 }", (6, 4, 5)),
    ("flatten_param { axis: -3 end_axis: -2 }", (2, 12, 5)),
    # end_axis = axis - 1: Caffe's top shape holds count(axis, axis) = 1 there
    ("flatten_param { axis: 2 end_axis: 1 }", (2, 3, 1, 4, 5)),
    ("flatten_param { axis: -1 end_axis: -2 }", (2, 3, 4, 1, 5)),
])
def test_flatten(text, want):
    x = rand(2, 3, 4, 5)
    top = run(make("Flatten", text), x)[0]
    np.testing.assert_array_equal(top, x.reshape(want))


def test_flatten_end_axis_before_axis_minus_one_is_refused():
    """Blob::count(start, end) CHECKs start <= end: end_axis 0 with axis 2 fails Caffe's set-up."""
    with pytest.raises(CaffeinitError, match=r"layer 'L' \(Flatten\).*end_axis 0"):
        make("Flatten", "flatten_param { axis: 2 end_axis: 0 }").setup([(2, 3, 4, 5)])


def test_flatten_and_reshape_refuse_in_place():
    for type_name in ("Flatten", "Reshape"):
        layer = make(type_name, "")
        layer.param.top[0] = "b0"
        with pytest.raises(CaffeinitError, match="in place"):
            layer.setup([(2, 3)])


@pytest.mark.parametrize("dims, axis, num_axes, want", [
    ([0, -1], 0, -1, (2, 60)),
    ([-1], 0, -1, (120,)),
    ([0, 0, -1, 5], 0, -1, (2, 3, 4, 5)),
    ([6, -1], 1, 2, (2, 6, 2, 5)),          # replaces axes 1 and 2
    ([5, 1], -2, 1, (2, 3, 4, 5, 1)),      # axis -2 starts at num_axes + axis + 1 = 3
    ([1, 1], 0, 0, (1, 1, 2, 3, 4, 5)),    # inserts leading axes
    ([1], 4, 0, (2, 3, 4, 5, 1)),          # appends a trailing axis
])
def test_reshape_special_values(dims, axis, num_axes, want):
    x = rand(2, 3, 4, 5)
    text = "reshape_param { shape { " + " ".join(f"dim: {d}" for d in dims) + f" }} axis: {axis} " \
        f"num_axes: {num_axes} }}"
    top = run(make("Reshape", text), x)[0]
    np.testing.assert_array_equal(top, x.reshape(want))


def test_a_reshape_that_fixes_the_first_axis_refuses_another_batch_size():
    """Caffe's Reshape keeps a fixed first dim at any batch size, so the images would no longer lie along the first
    axis: refused with the remedy; dim 0 (copy) and -1 (infer) follow the batch."""
    fixed = make("Reshape", "reshape_param { shape { dim: 2 dim: -1 } }")
    fixed.setup([(2, 3, 4, 5)])
    np.testing.assert_array_equal(run(fixed, rand(2, 3, 4, 5))[0].shape, (2, 60))
    with pytest.raises(CaffeinitError, match=r"^layer '.*' \(Reshape\): reshape_param.shape fixes the first axis at "
                                             r"2, so the net runs only with batches of exactly 2 images, not 3 "
                                             r"\(--batch-size 2 and a --num-images that is a multiple of it; or make "
                                             r"that dim 0, which copies the batch\)$"):
        fixed.forward([torch.zeros(3, 3, 4, 5)], [])
    for dims in ("dim: 0 dim: -1", "dim: -1 dim: 60"):
        follows = make("Reshape", f"reshape_param {{ shape {{ {dims} }} }}")
        follows.setup([(2, 3, 4, 5)])
        assert tuple(follows.forward([torch.zeros(3, 3, 4, 5)], [])[0].shape) == (3, 60)


@pytest.mark.parametrize("text, message", [
    ("reshape_param { shape { dim: -1 dim: -1 } }", "more than one -1"),
    ("reshape_param { shape { dim: 7 dim: -1 } }", "not divisible"),
    ("reshape_param { shape { dim: 5 dim: 5 } }", "does not match"),
    ("reshape_param { shape { dim: 0 dim: 0 dim: 0 } axis: 1 }", "no axis 2"),
    ("reshape_param { shape { dim: 6 } axis: 3 }", "out of range"),
    ("reshape_param { shape { dim: 6 } num_axes: -2 }", "num_axes"),
    ("reshape_param { shape { dim: 6 } axis: 1 num_axes: 2 }", "exceed"),
])
def test_reshape_checks(text, message):
    with pytest.raises(CaffeinitError, match=f"\\(Reshape\\).*{message}"):
        make("Reshape", text).setup([(2, 3)])


# -- Crop ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("", (slice(None), slice(None), slice(0, 3), slice(0, 2))),
    ("crop_param { offset: 1 }", (slice(None), slice(None), slice(1, 4), slice(1, 3))),
    ("crop_param { offset: 2 offset: 3 }", (slice(None), slice(None), slice(2, 5), slice(3, 5))),
    ("crop_param { axis: 1 offset: 0 offset: 2 offset: 1 }",
     (slice(None), slice(0, 2), slice(2, 5), slice(1, 3))),
    ("crop_param { axis: -1 offset: 4 }", (slice(None), slice(None), slice(None), slice(4, 6))),
])
def test_crop_offsets(text, want):
    big, ref = rand(2, 4, 6, 6), np.zeros((2, 2, 3, 2), np.float32)
    top = run(make("Crop", text, 2), big, ref)[0]
    np.testing.assert_array_equal(top, big[want])


@pytest.mark.parametrize("text, shapes, message", [
    ("crop_param { offset: 4 }", [(1, 1, 6, 6), (1, 1, 3, 3)], "invalid crop in axis 2"),
    ("crop_param { offset: 1 offset: 1 offset: 1 }", [(1, 1, 6, 6), (1, 1, 3, 3)], "1 or 2 values"),
    ("", [(1, 1, 6, 6), (1, 3, 3)], "same number of axes"),
])
def test_crop_checks(text, shapes, message):
    with pytest.raises(CaffeinitError, match=f"\\(Crop\\).*{message}"):
        make("Crop", text, 2).setup(shapes)


# -- Eltwise ------------------------------------------------------------------------------------------------

def test_eltwise_operations_and_coefficients():
    a, b, c = rand(2, 3, seed=1), rand(2, 3, seed=2), rand(2, 3, seed=3)
    np.testing.assert_allclose(run(make("Eltwise", "", 3), a, b, c)[0], a + b + c, rtol=1e-6)
    top = run(make("Eltwise", "eltwise_param { coeff: 0.5 coeff: -2 coeff: 3 }", 3), a, b, c)[0]
    np.testing.assert_allclose(top, 0.5 * a - 2 * b + 3 * c, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run(make("Eltwise", "eltwise_param { operation: PROD }", 3), a, b, c)[0],
                               a * b * c, rtol=1e-6)
    np.testing.assert_array_equal(run(make("Eltwise", "eltwise_param { operation: MAX }", 3), a, b, c)[0],
                                  np.maximum(np.maximum(a, b), c))


FLT_MAX = float(np.finfo(np.float32).max)


def caffe_eltwise_cpu(op, bottoms, top, coeffs):
    """eltwise_layer.cpp Forward_cpu writing into ``top``, which may be ``bottoms[0]`` itself (in place)."""
    if op == "PROD":
        np.multiply(bottoms[0], bottoms[1], out=top)
        for b in bottoms[2:]:
            np.multiply(top, b, out=top)
    elif op == "SUM":
        top[...] = 0
        for c, b in zip(coeffs, bottoms):
            top += np.float32(c) * b
    else:
        top[...] = -FLT_MAX
        top[...] = np.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
        for b in bottoms[2:]:
            top[...] = np.where(b > top, b, top)
    return top


@pytest.mark.parametrize("op", ["SUM", "MAX", "PROD"])
def test_eltwise_in_place_is_refused_where_caffe_computes_otherwise(op):
    """Caffe's in-place result (top = bottom 0) against its out-of-place one: a layer that differs says why (the net
    then refuses it); one that agrees runs and gives Caffe's numbers."""
    a, b, c = rand(2, 3, 4), rand(2, 3, 4, seed=1), rand(2, 3, 4, seed=2)
    coeffs = [1.5, -1.0, 2.0] if op == "SUM" else [1.0] * 3
    apart = caffe_eltwise_cpu(op, [a, b, c], np.empty_like(a), coeffs)
    shared = a.copy()
    in_place = caffe_eltwise_cpu(op, [shared, b, c], shared, coeffs)
    coeff_text = "".join(f" coeff: {v}" for v in coeffs) if op == "SUM" else ""
    layer = make("Eltwise", f"eltwise_param {{ operation: {op}{coeff_text} }}", n_bottoms=3)
    top = run(layer, a, b, c)[0]
    problem = layer.in_place_problem(0, a.shape, a.shape)
    assert (problem is not None) == (not np.array_equal(in_place, apart)), problem
    if problem is None:
        np.testing.assert_allclose(top, in_place, rtol=1e-6)


def test_batch_reindex_in_place_is_refused():
    """batch_reindex_layer.cpp copies top[i] = bottom[permut[i]] item by item: in place, a permutation reads items
    it has already overwritten."""
    x, permut = rand(3, 2), np.array([2, 0, 1], np.float32)
    shared = x.copy()
    for i, j in enumerate(permut.astype(int)):
        shared[i] = shared[j]
    assert not np.array_equal(shared, x[permut.astype(int)])
    layer = make("BatchReindex", n_bottoms=2)
    layer.setup([x.shape, permut.shape])
    assert layer.in_place_problem(0, x.shape, x.shape)


@pytest.mark.parametrize("text, shapes, message", [
    ("eltwise_param { coeff: 1 }", [(2, 3), (2, 3)], "one value per bottom"),
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2, 3), (2, 3)], "only allowed with operation SUM"),
    ("", [(2, 3), (3, 2)], "identical shapes"),
])
def test_eltwise_checks(text, shapes, message):
    with pytest.raises(CaffeinitError, match=f"\\(Eltwise\\).*{message}"):
        make("Eltwise", text, len(shapes)).setup(shapes)


def test_eltwise_needs_two_bottoms():
    with pytest.raises(CaffeinitError, match="at least 2 bottoms"):
        make("Eltwise", "", 1).check_counts(1, 1)


# -- Tile / Silence / HDF5Output / BatchReindex / Filter / Parameter ----------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_tile(axis):
    x = rand(2, 3, 4)
    top = run(make("Tile", f"tile_param {{ axis: {axis} tiles: 3 }}"), x)[0]
    # Caffe copies the whole block of axes [axis:] `tiles` times for every outer index
    outer = int(np.prod(x.shape[:axis % 3]))
    want = np.concatenate([x.reshape(outer, -1)] * 3, axis=1).reshape(top.shape)
    np.testing.assert_array_equal(top, want)


def test_tile_checks():
    with pytest.raises(CaffeinitError, match="tiles is required"):
        make("Tile", "tile_param { axis: 1 }").setup([(2, 3)])
    with pytest.raises(CaffeinitError, match="must be positive"):
        make("Tile", "tile_param { tiles: 0 }").setup([(2, 3)])


def test_sinks_have_no_tops():
    assert run(make("Silence", n_bottoms=2, n_tops=0), rand(2), rand(3)) == []
    assert run(make("HDF5Output", "hdf5_output_param { file_name: 'x.h5' }", 2, 0), rand(2), rand(2)) == []
    with pytest.raises(CaffeinitError, match="exactly 0 tops"):
        make("Silence", n_tops=1).check_counts(1, 1)


def test_batch_reindex():
    x = rand(4, 2, 3)
    index = np.array([3, 0, 0, 2, 1.9], np.float32)  # 1.9 truncates to 1 as static_cast<int>
    np.testing.assert_array_equal(run(make("BatchReindex", n_bottoms=2), x, index)[0], x[[3, 0, 0, 2, 1]])
    with pytest.raises(CaffeinitError, match="index out of range"):
        run(make("BatchReindex", n_bottoms=2), x, np.array([4], np.float32))


@pytest.mark.parametrize("value", [-0.5, float("nan"), 3.5])
def test_batch_reindex_checks_the_float_indices(value):
    """batch_reindex_layer.cpp checks 0 <= index < N on the float values before static_cast<int>: -0.5 (which
    truncates to 0) and NaN fail, 3.5 with N = 4 passes and gives item 3."""
    x = rand(4, 2)
    layer = make("BatchReindex", n_bottoms=2)
    if value == 3.5:
        np.testing.assert_array_equal(run(layer, x, np.array([value], np.float32))[0], x[[3]])
        return
    with pytest.raises(CaffeinitError, match="\\(BatchReindex\\).*index out of range"):
        run(layer, x, np.array([1, value], np.float32))
    with pytest.raises(CaffeinitError, match="exactly 1 axis"):
        make("BatchReindex", n_bottoms=2).setup([(4, 2), (2, 1)])


def test_filter_keeps_selected_items():
    a, b = rand(5, 3), rand(5, 2, 2, seed=1)
    selector = np.array([0, 1, 0, 2, 1], np.float32).reshape(5, 1)
    layer = make("Filter", n_bottoms=3, n_tops=2)
    assert layer.setup([a.shape, b.shape, selector.shape]) == [a.shape, b.shape]  # upper bound
    tops = layer.forward([torch.from_numpy(v) for v in (a, b, selector)], [])
    np.testing.assert_array_equal(tops[0].numpy(), a[[1, 3, 4]])
    np.testing.assert_array_equal(tops[1].numpy(), b[[1, 3, 4]])
    with pytest.raises(CaffeinitError, match="one top per filtered bottom"):
        make("Filter", n_bottoms=3, n_tops=1).setup([a.shape, b.shape, selector.shape])
    with pytest.raises(CaffeinitError, match="differ in axis 0"):
        make("Filter", n_bottoms=2, n_tops=1).setup([(4, 3), (5,)])


def test_parameter_exposes_its_blob():
    layer = make("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", 0, 1)
    value = rand(2, 3)
    assert run(layer, blobs=[value])[0].tolist() == value.tolist()
    assert layer.blob_shapes == [(2, 3)]


# -- Reduction ----------------------------------------------------------------------------------------------

def reduction_oracle(x, op, axis, coeff):
    """reduction_layer.cpp: each of the count(0, axis) rows of count(axis) values is reduced, then scaled."""
    axis %= x.ndim
    rows = x.reshape(int(np.prod(x.shape[:axis])), -1).astype(np.float64)
    value = {"SUM": rows.sum(1), "ASUM": np.abs(rows).sum(1), "SUMSQ": (rows * rows).sum(1),
             "MEAN": rows.sum(1)}[op]
    if op == "MEAN":
        coeff = coeff / rows.shape[1]
    return (value * coeff).reshape(x.shape[:axis])


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis, coeff", [(0, 1.0), (1, -2.0), (-1, 0.5), (2, 1.0)])
def test_reduction(op, axis, coeff):
    x = rand(2, 3, 4)
    top = run(make("Reduction", f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}"), x)[0]
    np.testing.assert_allclose(top, reduction_oracle(x, op, axis, coeff), rtol=1e-5, atol=1e-5)


# -- ArgMax -------------------------------------------------------------------------------------------------

def argmax_oracle(x, top_k, out_max_val, axis=None):
    """argmax_layer.cpp: sort (value, index) pairs descending, so equal values put the larger index first."""
    if axis is None:
        rows = x.reshape(x.shape[0], -1)
        top = np.ones((x.shape[0], 2 if out_max_val else 1, top_k) + (1,) * max(x.ndim - 3, 0), np.float32)
        for i, row in enumerate(rows):
            pairs = sorted(((float(v), j) for j, v in enumerate(row)), reverse=True)[:top_k]
            top[i, 0, :, ...] = np.array([j for _, j in pairs]).reshape((top_k,) + (1,) * (top.ndim - 3))
            if out_max_val:
                top[i, 1, :, ...] = np.array([v for v, _ in pairs]).reshape((top_k,) + (1,) * (top.ndim - 3))
        return top
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,), np.float32)
    for idx in np.ndindex(moved.shape[:-1]):
        pairs = sorted(((float(v), j) for j, v in enumerate(moved[idx])), reverse=True)[:top_k]
        out[idx] = [v if out_max_val else j for v, j in pairs]
    return np.moveaxis(out, -1, axis)


def test_argmax_ties_go_to_the_larger_index():
    x = np.array([[1, 3, 3, 0]], np.float32)
    assert run(make("ArgMax"), x)[0].reshape(-1).tolist() == [2.0]
    top = run(make("ArgMax", "argmax_param { top_k: 2 out_max_val: true }"), x.reshape(1, 4, 1, 1))[0]
    assert top.shape == (1, 2, 2, 1) and top.reshape(-1).tolist() == [2, 1, 3, 3]


@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("out_max_val", [False, True])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_argmax_sweep(top_k, out_max_val, axis):
    x = np.random.default_rng(top_k).integers(0, 4, (3, 4, 5)).astype(np.float32)  # many ties
    text = f"argmax_param {{ top_k: {top_k} out_max_val: {str(out_max_val).lower()} " + \
        ("" if axis is None else f"axis: {axis}") + " }"
    top = run(make("ArgMax", text), x)[0]
    np.testing.assert_array_equal(top, argmax_oracle(x, top_k, out_max_val, axis))


def test_argmax_shapes_pad_to_three_axes():
    assert make("ArgMax").setup([(5, 7)]) == [(5, 1, 1)]
    assert make("ArgMax", "argmax_param { out_max_val: true top_k: 3 }").setup([(5, 7, 2, 2, 2)]) == \
        [(5, 2, 3, 1, 1)]
    assert make("ArgMax", "argmax_param { axis: 1 top_k: 2 }").setup([(5, 7, 2)]) == [(5, 2, 2)]


@pytest.mark.parametrize("text, shape, message", [
    ("argmax_param { top_k: 0 }", (2, 3), "at least 1"),
    ("argmax_param { top_k: 4 }", (2, 3), "exceeds"),
    ("argmax_param { top_k: 3 axis: 0 }", (2, 3), "exceeds the size 2"),
    ("argmax_param { axis: 2 }", (2, 3), "out of range"),
])
def test_argmax_checks(text, shape, message):
    with pytest.raises(CaffeinitError, match=f"\\(ArgMax\\).*{message}"):
        make("ArgMax", text).setup([shape])


# -- Softmax ------------------------------------------------------------------------------------------------

def softmax_oracle(x, axis):
    """softmax_layer.cpp: subtract the max over the axis, exponentiate, divide by the sum."""
    e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("text, axis", [("", 1), ("softmax_param { axis: 0 }", 0), ("softmax_param { axis: -1 }", 2)])
def test_softmax_axis(text, axis):
    x = rand(2, 3, 4) * 30
    np.testing.assert_allclose(run(make("Softmax", text), x)[0], softmax_oracle(x, axis), rtol=1e-5, atol=1e-7)


def test_softmax_axis_out_of_range():
    with pytest.raises(CaffeinitError, match="\\(Softmax\\).*out of range"):
        make("Softmax", "softmax_param { axis: 3 }").setup([(2, 3, 4)])
