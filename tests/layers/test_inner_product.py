"""InnerProduct and Embed against float64 numpy transcriptions of Caffe's CPU code and the conformance goldens."""
import numpy as np
import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.layers import inner_product  # noqa: F401  (registers the layers)
from tests.layers.helpers import make, rand, run, run_case


def caffe_inner_product(x, w, b, axis, transpose):
    """M = count(0, axis) rows of K = count(axis) inputs; y = x W^T (W [N, K]) or x W (W [K, N]) with transpose."""
    rows = x.astype(np.float64).reshape(int(np.prod(x.shape[:axis])), -1)
    y = rows @ (w.astype(np.float64) if transpose else w.astype(np.float64).T)
    if b is not None:
        y = y + b
    return y.reshape(x.shape[:axis] + (y.shape[1],))


@pytest.mark.parametrize("shape, axis", [((2, 3, 4, 5), 1), ((2, 3, 4, 5), 3), ((2, 3, 4, 5), -2), ((6, 7), 1),
                                         ((2, 3, 4), 0), ((2, 3, 6), -1)])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_inner_product(shape, axis, transpose, bias):
    canonical = axis % len(shape)
    k = int(np.prod(shape[canonical:]))
    text = (f"inner_product_param {{ num_output: 4 axis: {axis} transpose: {str(transpose).lower()} "
            f"bias_term: {str(bias).lower()} }}")
    layer = make("InnerProduct", text)
    x = rand(*shape)
    w = rand(*((k, 4) if transpose else (4, k)), seed=1)
    b = rand(4, seed=2) if bias else None
    top = run(layer, x, blobs=[w] + ([b] if bias else []))[0]
    assert top.shape == shape[:canonical] + (4,)
    assert layer.blob_shapes == [w.shape] + ([(4,)] if bias else [])
    np.testing.assert_allclose(top, caffe_inner_product(x, w, b, canonical, transpose), rtol=1e-5, atol=1e-5)


def test_inner_product_fillers():
    layer = make("InnerProduct", 'inner_product_param { num_output: 3 weight_filler { type: "uniform" min: 2 max: 3 }'
                                 ' bias_filler { type: "constant" value: 0.5 } }')
    layer.setup([(2, 5)])
    w, b = layer.fill_blobs(np.random.default_rng(0))
    assert w.shape == (3, 5) and ((w >= 2) & (w <= 3)).all() and (b == 0.5).all()


@pytest.mark.parametrize("text, shape, message", [
    ("inner_product_param { num_output: 0 }", None, "num_output"),
    ("inner_product_param { num_output: 2 axis: 3 }", (2, 3, 4), "axis"),
    ("inner_product_param { num_output: 2 axis: -4 }", (2, 3, 4), "axis"),
])
def test_inner_product_errors(text, shape, message):
    with pytest.raises(CaffeinitError, match=message) as info:
        make("InnerProduct", text).setup([shape])
    assert "(InnerProduct)" in str(info.value)


@pytest.mark.parametrize("bias", [True, False])
def test_embed(bias):
    layer = make("Embed", f"embed_param {{ input_dim: 5 num_output: 3 bias_term: {str(bias).lower()} }}")
    x = np.array([[0, 4, 2.7], [1.0, 3.2, -0.5]], np.float32)  # Caffe truncates like static_cast<int>
    w, b = rand(5, 3), rand(3, seed=1)
    top = run(layer, x, blobs=[w, b] if bias else [w])[0]
    index = np.array([[0, 4, 2], [1, 3, 0]])
    np.testing.assert_allclose(top, w[index] + (b if bias else 0), rtol=1e-6, atol=1e-6)
    assert layer.blob_shapes == [(5, 3)] + ([(3,)] if bias else [])


@pytest.mark.parametrize("value", [5.0, -1.0, np.nan])
def test_embed_out_of_range_is_an_error_at_forward(value):
    layer = make("Embed", "embed_param { input_dim: 5 num_output: 3 bias_term: false }")
    with pytest.raises(CaffeinitError, match=r"layer 'L' \(Embed\).*index"):
        run(layer, np.array([1, value], np.float32), blobs=[rand(5, 3)])


def test_embed_needs_sizes():
    with pytest.raises(CaffeinitError, match="input_dim"):
        make("Embed", "embed_param { num_output: 3 }")


@pytest.mark.parametrize("case", ["ip_default", "ip_transpose_axis"])
def test_conformance(case):
    run_case(case)


def test_inner_product_in_place_is_refused():
    """In place, Caffe's product writes the top over the bottom it reads (same shape: axis -1 with num_output = K),
    or reshapes the shared blob first (another shape)."""
    for text, shape in [("num_output: 4 axis: -1", (2, 3, 4)), ("num_output: 4", (2, 3, 4))]:
        layer = make("InnerProduct", f"inner_product_param {{ {text} }}")
        top = layer.setup([shape])[0]
        assert layer.in_place_problem(0, shape, top)
