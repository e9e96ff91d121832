"""Fillers against the distributions of Caffe's filler.hpp: exact values where Caffe's are deterministic,
moments and supports (with generous sampling tolerances) where they are random."""
import math

import numpy as np
import pytest
from google.protobuf import text_format

from caffeinit.errors import CaffeinitError
from caffeinit.fillers import fill
from caffeinit.proto import caffe_pb2


def filler(text):
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def draw(text, shape, seed=0):
    values = fill(filler(text), shape, np.random.default_rng(seed))
    assert values.dtype == np.float32 and values.shape == tuple(shape)
    return values.astype(np.float64)


def test_default_is_constant_zero():
    assert (draw("", (3, 4)) == 0).all()
    assert (draw('type: "constant" value: -1.5', (2, 3)) == -1.5).all()


def test_zero_axis_blob():
    values = draw('type: "constant" value: 0.25', ())
    assert values.shape == () and values == 0.25


def test_uniform():
    values = draw('type: "uniform" min: -2 max: 3', (200, 100))
    assert values.min() >= -2 and values.max() <= 3
    assert abs(values.mean() - 0.5) < 0.05 and abs(values.var() - 25 / 12) < 0.1


def test_gaussian():
    values = draw('type: "gaussian" mean: 1 std: 0.5', (200, 100))
    assert abs(values.mean() - 1) < 0.02 and abs(values.std() - 0.5) < 0.02


def test_gaussian_sparse():
    """sparse s keeps each weight with probability s / shape[0] (Caffe's Bernoulli mask)."""
    values = draw('type: "gaussian" std: 1 sparse: 5', (20, 5000))
    kept = (values != 0).mean()
    assert abs(kept - 5 / 20) < 0.01


def test_positive_unitball_rows_sum_to_one():
    values = draw('type: "positive_unitball"', (6, 3, 2, 2))
    assert (values >= 0).all()
    np.testing.assert_allclose(values.reshape(6, -1).sum(axis=1), np.ones(6), rtol=1e-6)


SHAPE = (64, 16, 3, 3)  # fan_in = 16*9 = 144, fan_out = 64*9 = 576


@pytest.mark.parametrize("norm, n", [("FAN_IN", 144), ("FAN_OUT", 576), ("AVERAGE", 360)])
def test_xavier(norm, n):
    values = draw(f'type: "xavier" variance_norm: {norm}', SHAPE)
    bound = math.sqrt(3 / n)
    assert np.abs(values).max() <= bound * (1 + 1e-6) and np.abs(values).max() > 0.99 * bound
    assert abs(values.var() * n - 1) < 0.05  # uniform(-a, a) has variance a^2 / 3 = 1 / n


@pytest.mark.parametrize("norm, n", [("FAN_IN", 144), ("FAN_OUT", 576), ("AVERAGE", 360)])
def test_msra(norm, n):
    values = draw(f'type: "msra" variance_norm: {norm}', SHAPE)
    assert abs(values.mean()) < 0.05 * math.sqrt(2 / n)
    assert abs(values.var() * n / 2 - 1) < 0.05


def test_msra_one_axis_blob_uses_count_as_fan_out():
    values = draw('type: "msra" variance_norm: FAN_OUT', (20000,))
    assert abs(values.var() * 20000 / 2 - 1) < 0.05


def test_bilinear_hand_computed():
    """f = ceil(K/2), c = (K-1)/(2f), w(x, y) = (1 - |x/f - c|)(1 - |y/f - c|) per channel."""
    values = draw('type: "bilinear"', (2, 1, 4, 4))
    ramp = np.array([0.25, 0.75, 0.75, 0.25])
    for i in range(2):
        np.testing.assert_allclose(values[i, 0], np.outer(ramp, ramp), rtol=1e-7)
    values = draw('type: "bilinear"', (1, 2, 3, 3))
    np.testing.assert_allclose(values[0, 1], np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]), rtol=1e-7)


def caffe_bilinear(shape):
    """Caffe's BilinearFiller loop over the flat index, in float32 step by step as the C++ does (c from double)."""
    width, height = shape[3], shape[2]
    f = math.ceil(width / 2.0)
    c = np.float32((width - 1) / (2.0 * f))
    out = np.empty(int(np.prod(shape)), np.float32)
    one, ff = np.float32(1), np.float32(f)
    for i in range(out.size):
        x, y = np.float32(i % width), np.float32((i // width) % height)
        out[i] = (one - np.abs(x / ff - c)) * (one - np.abs(y / ff - c))
    return out.reshape(shape)


@pytest.mark.parametrize("size", list(range(1, 17)) + [32, 64])
def test_bilinear_is_bit_exact(size):
    """Caffe's float arithmetic, not a double one rounded at the end: they differ by an ulp for sizes 5, 6, 9, ..."""
    shape = (2, 3, size, size) if size <= 16 else (1, 1, size, size)
    values = fill(filler('type: "bilinear"'), shape, np.random.default_rng(0))
    np.testing.assert_array_equal(values, caffe_bilinear(shape))


def ks_distance(values, cdf):
    """Kolmogorov-Smirnov distance between a sample and a continuous cdf."""
    x = np.sort(values.ravel())
    f = cdf(x)
    n = x.size
    return max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max())


def normal_cdf(x, std):
    return 0.5 * (1 + np.vectorize(math.erf)(x / (std * math.sqrt(2))))


@pytest.mark.parametrize("text, shape, cdf", [  # (40, 10, 5, 10): fan_in 500, fan_out 2000
    ('type: "uniform" min: -0.5 max: 1.5', (50, 400), lambda x: (x + 0.5) / 2),
    ('type: "gaussian" mean: 0 std: 0.3', (50, 400), lambda x: normal_cdf(x, 0.3)),
    ('type: "xavier" variance_norm: AVERAGE', (40, 10, 5, 10), lambda x: (x / math.sqrt(3 / 1250) + 1) / 2),
    ('type: "msra" variance_norm: FAN_OUT', (40, 10, 5, 10), lambda x: normal_cdf(x, math.sqrt(2 / 2000))),
])
def test_distribution_shapes(text, shape, cdf):
    """The whole distribution, not only two moments: KS distance under its 0.1% critical value 1.95 / sqrt(n)."""
    values = draw(text, shape, seed=3)
    assert ks_distance(values, cdf) < 1.95 / math.sqrt(values.size)


def test_uniform_with_equal_bounds_is_constant():
    """caffe_rng_uniform only CHECKs min <= max: equal bounds give that value."""
    assert (draw('type: "uniform" min: 0.5 max: 0.5', (3, 4)) == 0.5).all()


@pytest.mark.parametrize("text, shape, message", [
    ('type: "nonsense"', (2, 2), "unknown filler type 'nonsense'"),
    ('type: "Gaussian"', (2, 2), "unknown filler type 'Gaussian'"),  # Caffe's names are case-sensitive
    ('type: "uniform" min: 2 max: 1', (4, 4), "min 2 exceeds max 1"),  # caffe_rng_uniform: CHECK_LE(a, b)
    ('type: "gaussian" std: 0', (4, 4), "std must be > 0, got 0"),  # caffe_rng_gaussian: CHECK_GT(sigma, 0)
    ('type: "gaussian" mean: 1 std: -0.5', (4, 4), "std must be > 0, got -0.5"),
    ('type: "gaussian" sparse: 1', (), "at least one axis"),
    ('type: "xavier"', (), "xavier filler needs a blob with at least one axis"),  # blob->shape(0) CHECK-fails
    ('type: "msra"', (), "msra filler needs a blob with at least one axis"),
    ('type: "positive_unitball"', (), "positive_unitball filler needs a blob with at least one axis"),
    ('type: "bilinear"', (2, 3, 3), "4-axis"),
    ('type: "bilinear"', (2, 1, 3, 4), "square"),
    ('type: "uniform" sparse: 3', (4, 4), "sparse"),
    ('type: "gaussian" sparse: 9', (4, 4), "exceeds"),
    ('type: "gaussian" sparse: -2', (4, 4), "sparse"),
    ('type: "constant"', (0, 4), "empty"),
])
def test_errors(text, shape, message):
    with pytest.raises(CaffeinitError, match=message) as info:
        fill(filler(text), shape, np.random.default_rng(0), where="layer 'conv1' weight")
    assert "layer 'conv1' weight" in str(info.value)


def test_scaled_random_blobs_fit_the_net_and_keep_scale():
    from caffeinit.fillers import scaled_random_blobs
    from caffeinit.net import build_net
    from caffeinit.prototxt import parse_net_text
    net = build_net(parse_net_text(
        'layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 8 dim: 6 dim: 6 } } }\n'
        'layer { name: "c" type: "Convolution" bottom: "d" top: "c" convolution_param { num_output: 400 '
        'kernel_size: 3 } }\nlayer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }\n'
        'layer { name: "s" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }\n'))
    blobs = scaled_random_blobs(net, np.random.default_rng(0))
    for node in net.layers:
        assert [a.shape for a in blobs.get(node.name, [])] == [tuple(s) for s in node.layer.blob_shapes]
    assert abs(blobs["c"][0].std() * np.sqrt(8 * 9) - 1) < 0.05  # N(0, 1/fan_in)
    assert blobs["bn"][2].tolist() == [1.0] and (blobs["bn"][1] > 0).all()
    assert abs(blobs["s"][0].mean() - 1) < 0.05


# -- large blobs: drawn in chunks from child generators, on threads --------------------------------------

def large_count():
    from caffeinit.fillers import CHUNK
    return 2 * CHUNK + 12345  # two full chunks and a partial one


@pytest.mark.parametrize("text", ['type: "gaussian" mean: 0.5 std: 2', 'type: "uniform" min: -1 max: 3',
                                  'type: "xavier"', 'type: "msra"', 'type: "gaussian" std: 1 sparse: 100000'])
def test_large_blob_values_do_not_depend_on_the_thread_count(text):
    shape = (large_count() // 5, 5)
    runs = []
    for threads in (1, 2, 3):
        rng = np.random.default_rng(11)
        runs.append((fill(filler(text), shape, rng, threads=threads), rng.random(4)))
    for values, after in runs[1:]:
        np.testing.assert_array_equal(values, runs[0][0])
        np.testing.assert_array_equal(after, runs[0][1])  # the generator is left in the same state too
    assert np.isfinite(runs[0][0]).all()


def test_large_blob_draws_follow_the_seed_and_the_generator_state():
    shape = (large_count(),)
    gauss = filler('type: "gaussian" std: 1')
    rng = np.random.default_rng(5)
    first, second = fill(gauss, shape, rng), fill(gauss, shape, rng)
    again = np.random.default_rng(5)
    np.testing.assert_array_equal(fill(gauss, shape, again), first)
    np.testing.assert_array_equal(fill(gauss, shape, again), second)
    other = fill(gauss, shape, np.random.default_rng(6))
    assert not np.array_equal(first, second) and not np.array_equal(first, other)


def test_large_gaussian_moments_per_chunk():
    """Every chunk is N(mean, std^2) on its own, and chunks are not copies of one another (independent streams)."""
    from caffeinit.fillers import CHUNK
    values = draw('type: "gaussian" mean: 1 std: 0.5', (large_count(),))
    chunks = [values[i:i + CHUNK] for i in range(0, values.size, CHUNK)]
    for chunk in chunks:  # 5 standard errors: mean 0.5 / sqrt(n), variance sqrt(2 / n) relative
        assert abs(chunk.mean() - 1) < 5 * 0.5 / math.sqrt(chunk.size)
        assert abs(chunk.var() / 0.25 - 1) < 5 * math.sqrt(2 / chunk.size)
    centered = [c[:12345] - 1 for c in chunks]
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert abs(np.corrcoef(centered[a], centered[b])[0, 1]) < 5 / math.sqrt(12345)


def test_large_xavier_support_and_variance():
    n = 1000  # fan_in of a (count / 1000, 1000) blob
    values = draw('type: "xavier"', (large_count() // n, n))
    bound = math.sqrt(3 / n)
    assert np.abs(values).max() <= bound * (1 + 1e-6) and np.abs(values).max() > 0.999 * bound
    assert abs(values.var() * n - 1) < 5 * math.sqrt(0.8 / values.size)  # relative error of a uniform variance


def test_large_sparse_gaussian_keeps_its_probability():
    values = draw('type: "gaussian" std: 1 sparse: 10', (40, large_count() // 40))
    kept = (values != 0).mean()
    assert abs(kept - 10 / 40) < 5 * math.sqrt(0.25 * 0.75 / values.size)


def test_large_constant_is_exact():
    values = fill(filler('type: "constant" value: 0.1'), (large_count(),), np.random.default_rng(0))
    assert values.dtype == np.float32 and (values == np.float32(0.1)).all()
