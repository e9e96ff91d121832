"""Element-wise layers against numpy transcriptions of Caffe's CPU formulas and the conformance goldens."""
import numpy as np
import pytest
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.layers import activation  # noqa: F401  (registers the layers)
from caffeinit.proto import caffe_pb2
from tests.conftest import shared_path
from tests.layers.helpers import close, make, rand, run, run_case

X = np.concatenate([rand(40) * 4, np.array([0, -0, 1e-8, -60, 60, 88], np.float32)]).reshape(2, 23)


def sigmoid_oracle(x):
    return 0.5 * np.tanh(0.5 * x.astype(np.float64)) + 0.5  # sigmoid_layer.cpp


@pytest.mark.parametrize("slope", [0.0, 0.2, -1.5])
def test_relu(slope):
    text = f"relu_param {{ negative_slope: {slope} }}"
    close(run(make("ReLU", text), X)[0], np.maximum(X, 0) + slope * np.minimum(X, 0))


@pytest.mark.parametrize("slope", [0.0, 0.2, -1.5])
def test_relu_gradient_and_in_place(slope):
    """relu_layer.cpp Backward: top_diff * ((x > 0) + slope * (x <= 0)), so x = 0 gets the slope; the in-place form
    (where the executor may use it) computes the same values."""
    layer = make("ReLU", f"relu_param {{ negative_slope: {slope} }}")
    x = torch.from_numpy(X).requires_grad_(True)
    upstream = torch.from_numpy(rand(*X.shape))
    (layer.forward([x], [])[0] * upstream).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), upstream.numpy() * ((X > 0) + slope * (X <= 0)).astype(np.float32))
    inplace = layer.forward_inplace([torch.from_numpy(X.copy())], [])
    if inplace is not None:
        np.testing.assert_array_equal(inplace[0].numpy(), np.maximum(X, 0) + slope * np.minimum(X, 0))


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_elu(alpha):
    close(run(make("ELU", f"elu_param {{ alpha: {alpha} }}"), X)[0],
          np.maximum(X, 0) + alpha * (np.exp(np.minimum(X, 0).astype(np.float64)) - 1))


def test_sigmoid_tanh_absval():
    close(run(make("Sigmoid"), X)[0], sigmoid_oracle(X))
    close(run(make("TanH"), X)[0], np.tanh(X.astype(np.float64)))
    close(run(make("AbsVal"), X)[0], np.abs(X))


def test_sigmoid_is_computed_in_double():
    """sigmoid_layer.cpp's 0.5 * tanh(0.5 * x) + 0.5 uses double literals: the double result rounded to float (in
    float, tiny values are lost); Swish runs that Sigmoid layer."""
    x = np.array([-20, -15, -10, -5, -1e-3, 0, 2, 30], np.float32)
    want = sigmoid_oracle(x)
    for layer in (make("Sigmoid"), make("Swish")):
        close(run(layer, x)[0], want * (x if layer.type_name == "Swish" else 1), rtol=1e-6, atol=0)
    inplace = make("Sigmoid").forward_inplace([torch.from_numpy(x.copy())], [])[0].numpy()
    np.testing.assert_array_equal(inplace, run(make("Sigmoid"), x)[0])


def test_sigmoid_is_bitwise_caffes_in_the_conformance_case():
    golden = np.load(shared_path("conformance", "unary_ops", "golden.npz"))
    np.testing.assert_array_equal(run(make("Sigmoid"), golden["data"])[0], golden["sg"])


def test_bnll_stable_form():
    x = X.astype(np.float64)
    want = np.where(x > 0, x + np.log(1 + np.exp(-np.maximum(x, 0))), np.log(1 + np.exp(np.minimum(x, 0))))
    got = run(make("BNLL"), X)[0]
    assert np.isfinite(got).all()
    close(got, want, rtol=1e-6, atol=1e-6)


def test_bnll_keeps_tiny_values_of_very_negative_inputs():
    """bnll_layer.cpp adds exp(x) to the double 1., so log(1. + exp(-20)) is 2.06e-9, not the 0 of float32 maths
    (and below x = -37 it is 0 again, as 1. + exp(x) rounds to 1): every value within float32 rounding of the double
    formula, relative to itself."""
    x = np.array([-87, -60, -30, -20, -17.5, -9, -1e-3, 0, 1e-3, 9, 17.5, 20, 60], np.float32)
    wide = x.astype(np.float64)
    want = np.where(wide > 0, wide + np.log(1. + np.exp(-wide)), np.log(1. + np.exp(wide)))
    got = run(make("BNLL"), x)[0]
    assert got.dtype == np.float32 and got[x == -20][0] > 2e-9
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)


@pytest.mark.parametrize("power, scale, shift", [(2, 1, 1), (0.5, 2, 3), (3, -1, 0), (1, 0.5, -1)])
def test_power(power, scale, shift):
    x = np.abs(X) if power == 0.5 else X
    text = f"power_param {{ power: {power} scale: {scale} shift: {shift} }}"
    close(run(make("Power", text), x)[0], (shift + scale * x.astype(np.float64)) ** power, rtol=2e-6)


@pytest.mark.parametrize("power, scale, shift, value", [(3, 0, 2, 8.0), (0, 5, 7, 1.0), (0, 0, -2, 1.0),
                                                        (2, 0, -3, 9.0)])
def test_power_constant_case(power, scale, shift, value):
    """power * scale == 0 makes the top constant: 1 if power == 0, else shift ^ power (power_layer.cpp)."""
    text = f"power_param {{ power: {power} scale: {scale} shift: {shift} }}"
    got = run(make("Power", text), X)[0]
    assert got.shape == X.shape and (got == value).all()


@pytest.mark.parametrize("base, scale, shift", [(-1, 1, 0), (-1, 0.5, 1), (2, 1, 0), (10, -0.5, 2)])
def test_exp(base, scale, shift):
    x = X / 4
    b = np.e if base == -1 else base
    want = b ** (shift + scale * x.astype(np.float64))
    close(run(make("Exp", f"exp_param {{ base: {base} scale: {scale} shift: {shift} }}"), x)[0], want, rtol=2e-6)


@pytest.mark.parametrize("base, scale, shift", [(-1, 1, 0), (10, 1, 0), (2, 0.5, 3)])
def test_log(base, scale, shift):
    x = np.abs(X) + 0.01
    b = np.e if base == -1 else base
    want = np.log(shift + scale * x.astype(np.float64)) / np.log(b)
    close(run(make("Log", f"log_param {{ base: {base} scale: {scale} shift: {shift} }}"), x)[0], want, rtol=2e-6)


@pytest.mark.parametrize("base, scale", [(10, 1), (7, 0.3), (1.5, -0.7), (20, 2.5)])
def test_exp_log_constants_are_computed_in_float(base, scale):
    """exp_layer.cpp / log_layer.cpp compute their constants in Dtype: log(base) is a float before Exp multiplies
    it by scale and before Log divides 1 by it (double arithmetic differs by an ulp, e.g. Log base 10)."""
    f = np.float32
    log_base = f(np.log(f(base).astype(np.float64)))
    exp = make("Exp", f"exp_param {{ base: {base} scale: {scale} }}")
    assert exp.inner_scale == log_base * f(scale) and exp.inner_scale.dtype == np.float32
    log = make("Log", f"log_param {{ base: {base} }}")
    assert log.base_scale == f(1) / log_base and log.base_scale.dtype == np.float32


@pytest.mark.parametrize("type_name, text", [("Exp", "exp_param { base: -2 }"), ("Log", "log_param { base: 0 }"),
                                             ("Log", "log_param { base: 1 }"), ("Exp", "exp_param { base: inf }"),
                                             ("Log", "log_param { base: inf }")])
def test_exp_log_base_checks(type_name, text):
    with pytest.raises(CaffeinitError, match=f"layer 'L' \\({type_name}\\).*base"):
        make(type_name, text)


@pytest.mark.parametrize("t", [0.0, 0.5, -1.0])
def test_threshold_is_strict(t):
    x = np.array([t, t + 1e-3, t - 1e-3, 5, -5], np.float32)
    assert run(make("Threshold", f"threshold_param {{ threshold: {t} }}"), x)[0].tolist() == [0, 1, 0, 1 if 5 > t
                                                                                              else 0, 0]


def test_clip():
    close(run(make("Clip", "clip_param { min: -1 max: 0.5 }"), X)[0], np.clip(X, -1, 0.5))
    # Caffe's std::max(min, std::min(x, max)): min everywhere when min > max (np.clip would give max)
    close(run(make("Clip", "clip_param { min: 0.5 max: -1 }"), X)[0], np.maximum(0.5, np.minimum(X, -1)))
    with pytest.raises(CaffeinitError, match="\\(Clip\\).*required"):
        make("Clip")


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_swish(beta):
    close(run(make("Swish", f"swish_param {{ beta: {beta} }}"), X)[0], X * sigmoid_oracle(beta * X))


def test_prelu_channel_and_shared():
    x = rand(2, 3, 4, 5)
    slopes = np.array([0.1, -0.5, 2.0], np.float32)
    layer = make("PReLU")
    layer.setup([x.shape])
    assert layer.blob_shapes == [(3,)]
    want = np.maximum(x, 0) + slopes.reshape(1, 3, 1, 1) * np.minimum(x, 0)
    close(run(layer, x, blobs=[slopes])[0], want)
    shared = make("PReLU", "prelu_param { channel_shared: true }")
    shared.setup([x.shape])
    assert shared.blob_shapes == [()]
    close(run(shared, x, blobs=[np.array(0.3, np.float32)])[0], np.maximum(x, 0) + 0.3 * np.minimum(x, 0))
    with pytest.raises(CaffeinitError, match="\\(PReLU\\).*at least 2 axes"):
        make("PReLU").setup([(5,)])


def test_prelu_refuses_more_than_four_axes():
    """prelu_layer.cpp reads bottom[0]->channels(), a legacy accessor that CHECK-fails beyond 4 axes."""
    with pytest.raises(CaffeinitError, match="\\(PReLU\\).*at most 4 axes"):
        make("PReLU").setup([(2, 3, 4, 5, 6)])


def test_a_prelu_filler_error_names_the_layer():
    layer = make("PReLU", 'prelu_param { channel_shared: true filler { type: "xavier" } }')
    layer.setup([(2, 3, 4, 4)])
    with pytest.raises(CaffeinitError, match="^layer 'L' slopes: .*xavier"):
        layer.fill_blobs(np.random.default_rng(0))


def test_dropout_test_is_identity_and_train_scales():
    x = np.abs(rand(200, 50)) + 1
    assert np.array_equal(run(make("Dropout", "dropout_param { dropout_ratio: 0.3 }"), x)[0], x)
    torch.manual_seed(0)
    top = run(make("Dropout", "dropout_param { dropout_ratio: 0.3 }", phase=caffe_pb2.TRAIN), x)[0]
    kept = top != 0
    np.testing.assert_allclose(top[kept], x[kept] * np.float32(1 / 0.7), rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.02  # 10,000 draws: 5 standard deviations
    with pytest.raises(CaffeinitError, match="\\(Dropout\\).*dropout_ratio"):
        make("Dropout", "dropout_param { dropout_ratio: 1 }", phase=caffe_pb2.TRAIN)


def test_elementwise_layers_take_one_bottom():
    with pytest.raises(CaffeinitError, match="\\(ReLU\\): takes exactly 1 bottoms, got 2"):
        make("ReLU", n_bottoms=2).check_counts(2, 1)


@pytest.mark.parametrize("case", ["unary_ops", "prelu"])
def test_conformance(case):
    run_case(case)


def test_conformance_leaky_relu_in_place():
    def conv_1x1(param, bottoms, blobs):
        """The net's 1x1 convolution, as a channel matrix product (numpy oracle; Convolution is not ours)."""
        weight, bias = blobs
        out = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0].astype(np.float64), bottoms[0].astype(np.float64))
        return [(out + bias.reshape(1, -1, 1, 1)).astype(np.float32)]
    run_case("relu_leaky_inplace", oracles={"Convolution": conv_1x1})
