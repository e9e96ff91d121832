"""Loss layers and Accuracy against numpy transcriptions of Caffe's loss layer loops."""
import numpy as np
import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.layers import loss  # noqa: F401  (registers the layers)
from caffeinit.proto import caffe_pb2
from tests.layers.helpers import make, rand, run

FLT_MIN = np.finfo(np.float32).tiny


def normalizer(mode, outer, inner, valid):
    """get_normalizer in softmax_loss_layer.cpp."""
    return max(1.0, {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode])


def softmax_loss_oracle(x, label, axis, ignore, mode):
    """softmax_loss_layer.cpp Forward_cpu: loops over outer and inner, skipping the ignore_label."""
    outer, c, inner = int(np.prod(x.shape[:axis])), x.shape[axis], int(np.prod(x.shape[axis + 1:]))
    z = x.astype(np.float64).reshape(outer, c, inner)
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    label = label.reshape(outer, inner)
    total, valid = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            k = int(label[i, j])
            if ignore is not None and k == ignore:
                continue
            total -= np.log(max(prob[i, k, j], FLT_MIN))
            valid += 1
    return total / normalizer(mode, outer, inner, valid), prob.reshape(x.shape)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("ignore", [None, 2])
@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_with_loss_normalization(mode, ignore, axis):
    x = rand(2, 4, 3) * 3
    label = np.random.default_rng(1).integers(0, x.shape[axis], (2, 3) if axis == 1 else (2, 4)).astype(np.float32)
    text = f"loss_param {{ normalization: {mode} " + ("" if ignore is None else f"ignore_label: {ignore}") + \
        f" }} softmax_param {{ axis: {axis} }}"
    layer = make("SoftmaxWithLoss", text, 2, 2)
    top, prob = run(layer, x, label)
    want, want_prob = softmax_loss_oracle(x, label, axis, ignore, mode)
    assert top.shape == () and layer.is_loss
    np.testing.assert_allclose(top, want, rtol=2e-6)
    np.testing.assert_allclose(prob, want_prob, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("normalize, mode", [(True, "VALID"), (False, "BATCH_SIZE")])
def test_softmax_with_loss_legacy_normalize(normalize, mode):
    x, label = rand(4, 5), np.array([0, 1, 1, 4], np.float32)
    text = f"loss_param {{ normalize: {str(normalize).lower()} ignore_label: 1 }}"
    top = run(make("SoftmaxWithLoss", text, 2, 1), x, label)[0]
    np.testing.assert_allclose(top, softmax_loss_oracle(x, label, 1, 1, mode)[0], rtol=2e-6)


@pytest.mark.parametrize("type_name, shapes, message", [
    ("SoftmaxWithLoss", [(2, 3, 4), (2, 3)], "label count 6"),
    ("SoftmaxWithLoss", [(2, 3), (3,)], "same first dimension"),
    ("EuclideanLoss", [(), ()], "at least one axis"),  # LossLayer::Reshape: shape(0) of a 0-axis blob
    ("SigmoidCrossEntropyLoss", [(1,), ()], "at least one axis"),
    ("EuclideanLoss", [(2, 3), (2, 4)], "same dimension"),
    ("SigmoidCrossEntropyLoss", [(2, 3), (2, 4)], "same count"),
    ("MultinomialLogisticLoss", [(2, 3), (2, 2)], "one label per item"),
    ("InfogainLoss", [(2, 3), (2,), (3, 2)], "3x3"),
    ("InfogainLoss", [(2, 3), (2,)], "third bottom or infogain_loss_param.source"),
    ("Accuracy", [(2, 3), (2,)], None),
])
def test_loss_checks(type_name, shapes, message):
    layer = make(type_name, "", len(shapes))
    if message is None:
        assert layer.setup(shapes) == [()]
        return
    with pytest.raises(CaffeinitError, match=f"layer 'L' \\({type_name}\\).*{message}"):
        layer.setup(shapes)


def test_label_out_of_range_is_a_clear_error():
    with pytest.raises(CaffeinitError, match="label 5 is outside \\[0, 3\\)"):
        run(make("SoftmaxWithLoss", "", 2), rand(2, 3), np.array([0, 5], np.float32))


def accuracy_oracle(x, label, top_k, axis, ignore):
    """accuracy_layer.cpp: a hit when fewer than top_k other classes score >= the true class."""
    outer, c, inner = int(np.prod(x.shape[:axis])), x.shape[axis], int(np.prod(x.shape[axis + 1:]))
    z, label = x.reshape(outer, c, inner), label.reshape(outer, inner)
    hits, valid, per_hit, per_num = 0, 0, np.zeros(c), np.zeros(c)
    for i in range(outer):
        for j in range(inner):
            k = int(label[i, j])
            if ignore is not None and k == ignore:
                continue
            per_num[k] += 1
            better = sum(z[i, m, j] >= z[i, k, j] for m in range(c)) - 1
            if better < top_k:
                hits += 1
                per_hit[k] += 1
            valid += 1
    per_class = np.where(per_num > 0, per_hit / np.maximum(per_num, 1), 0)
    return (hits / valid if valid else 0.0), per_class


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("ignore", [None, 0])
@pytest.mark.parametrize("axis", [1, -1])
def test_accuracy(top_k, ignore, axis):
    rng = np.random.default_rng(top_k)
    x = rng.integers(0, 3, (3, 4, 5)).astype(np.float32)  # many ties, which count against the label
    label_shape = (3, 5) if axis == 1 else (3, 4)
    label = rng.integers(0, x.shape[axis], label_shape).astype(np.float32)
    text = f"accuracy_param {{ top_k: {top_k} axis: {axis} " + \
        ("" if ignore is None else f"ignore_label: {ignore}") + " }"
    layer = make("Accuracy", text, 2, 2)
    top, per_class = run(layer, x, label)
    want, want_per_class = accuracy_oracle(x, label, top_k, axis % 3, ignore)
    assert layer.is_loss
    np.testing.assert_allclose(top, want, rtol=1e-6)
    np.testing.assert_allclose(per_class, want_per_class, rtol=1e-6)


def test_accuracy_tie_is_a_miss_and_top_k_check():
    x = np.array([[1, 3, 3, 0]], np.float32)
    assert run(make("Accuracy", "", 2), x, np.array([2], np.float32))[0] == 0
    assert run(make("Accuracy", "accuracy_param { top_k: 2 }", 2), x, np.array([2], np.float32))[0] == 1
    with pytest.raises(CaffeinitError, match="\\(Accuracy\\).*top_k 5 exceeds"):
        make("Accuracy", "accuracy_param { top_k: 5 }", 2).setup([(1, 4), (1,)])


def test_euclidean_loss():
    a, b = rand(3, 2, 2), rand(3, 4, seed=1)
    want = ((a.reshape(3, -1).astype(np.float64) - b) ** 2).sum() / 3 / 2
    np.testing.assert_allclose(run(make("EuclideanLoss", "", 2), a, b)[0], want, rtol=2e-6)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x, label = rand(4, 5), np.array([0, 4, 2, 2], np.float32)
    # hinge_loss_layer.cpp: flip the sign at the label, then max(0, 1 + value)
    d = x.astype(np.float64).copy()
    d[np.arange(4), label.astype(int)] *= -1
    d = np.maximum(0, 1 + d)
    want = (np.abs(d).sum() if norm == "L1" else (d * d).sum()) / 4
    top = run(make("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}", 2), x, label)[0]
    np.testing.assert_allclose(top, want, rtol=2e-6)


def test_multinomial_logistic_loss():
    prob = np.array([[0.2, 0.8], [0.0, 1.0], [0.5, 0.5]], np.float32)
    label = np.array([1, 0, 0], np.float32).reshape(3, 1, 1, 1)
    want = -(np.log(0.8) + np.log(1e-20) + np.log(0.5)) / 3
    np.testing.assert_allclose(run(make("MultinomialLogisticLoss", "", 2), prob, label)[0], want, rtol=2e-6)


@pytest.mark.parametrize("text, mode, ignore", [
    ("", "BATCH_SIZE", None), ("loss_param { normalization: FULL }", "FULL", None),
    ("loss_param { normalize: true ignore_label: -1 }", "VALID", -1),
    ("loss_param { normalization: NONE ignore_label: -1 }", "NONE", -1),
])
def test_sigmoid_cross_entropy_loss(text, mode, ignore):
    x = rand(3, 4) * 5
    target = np.random.default_rng(2).integers(-1, 2, (3, 4)).astype(np.float32)
    # sigmoid_cross_entropy_loss_layer.cpp: the stable form of the log likelihood
    xd, total, valid = x.astype(np.float64).reshape(-1), 0.0, 0
    for v, t in zip(xd, target.reshape(-1)):
        if ignore is not None and int(t) == ignore:
            continue
        total -= v * (t - (v >= 0)) - np.log(1 + np.exp(v - 2 * v * (v >= 0)))
        valid += 1
    want = total / normalizer(mode, 3, 4, valid)
    np.testing.assert_allclose(run(make("SigmoidCrossEntropyLoss", text, 2), x, target)[0], want, rtol=2e-6)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(legacy):
    a, b = rand(5, 3), rand(5, 3, seed=1) * 0.3
    y = np.array([1, 0, 0, 1, 0], np.float32).reshape(5, 1, 1, 1)
    margin = 2.0
    total = 0.0
    for i in range(5):
        d2 = float(((a[i].astype(np.float64) - b[i]) ** 2).sum())
        if y[i]:
            total += d2
        elif legacy:
            total += max(margin - d2, 0)
        else:
            total += max(margin - np.sqrt(d2), 0) ** 2
    text = f"contrastive_loss_param {{ margin: {margin} legacy_version: {str(legacy).lower()} }}"
    np.testing.assert_allclose(run(make("ContrastiveLoss", text, 3), a, b, y)[0], total / 5 / 2, rtol=2e-6)
    with pytest.raises(CaffeinitError, match="\\(ContrastiveLoss\\).*same channels"):
        make("ContrastiveLoss", "", 3).setup([(5, 3), (5, 4), (5, 1)])


def test_contrastive_loss_reads_one_similarity_per_pair():
    """contrastive_loss_layer.cpp reads bottom 2's first num values (LossLayer checks only bottoms 0 and 1): extra
    similarities are ignored, too few are refused."""
    a, b = rand(2, 3), rand(2, 3, seed=1)
    y = np.array([1, 0, 1], np.float32).reshape(3, 1, 1, 1)
    want = run(make("ContrastiveLoss", "", 3), a, b, y[:2])[0]
    assert run(make("ContrastiveLoss", "", 3), a, b, y)[0] == want
    with pytest.raises(CaffeinitError, match="\\(ContrastiveLoss\\).*fewer items"):
        make("ContrastiveLoss", "", 3).setup([(2, 3), (2, 3), (1, 1)])


def infogain_oracle(x, label, H, ignore, mode):
    """infogain_loss_layer.cpp: softmax inside, then -sum_l H[label, l] * log(max(p_l, 1e-20))."""
    z = x.astype(np.float64)
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    total, valid = 0.0, 0
    for i, k in enumerate(label.astype(int)):
        if ignore is not None and k == ignore:
            continue
        total -= (H[k] * np.log(np.maximum(prob[i], 1e-20))).sum()
        valid += 1
    return total / normalizer(mode, x.shape[0], 1, valid)


@pytest.mark.parametrize("mode, ignore", [("VALID", None), ("VALID", 1), ("BATCH_SIZE", 1)])
def test_infogain_loss_bottom_and_file(tmp_path, mode, ignore):
    x, label = rand(4, 3) * 2, np.array([0, 1, 2, 1], np.float32)
    H = np.random.default_rng(3).random((3, 3)).astype(np.float32)
    text = f"loss_param {{ normalization: {mode} " + ("" if ignore is None else f"ignore_label: {ignore}") + " }"
    want = infogain_oracle(x, label, H, ignore, mode)
    np.testing.assert_allclose(run(make("InfogainLoss", text, 3), x, label, H)[0], want, rtol=2e-6)
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=3, width=3)
    blob.data.extend(H.reshape(-1).tolist())
    (tmp_path / "H.binaryproto").write_bytes(blob.SerializeToString())
    text += f" infogain_loss_param {{ source: '{tmp_path / 'H.binaryproto'}' }}"
    np.testing.assert_allclose(run(make("InfogainLoss", text, 2), x, label)[0], want, rtol=2e-6)


def test_infogain_loss_file_errors(tmp_path):
    missing = tmp_path / "nope.binaryproto"
    with pytest.raises(CaffeinitError, match="\\(InfogainLoss\\).*cannot read infogain matrix"):
        make("InfogainLoss", f"infogain_loss_param {{ source: '{missing}' }}", 2).setup([(2, 3), (2,)])
    with pytest.raises(CaffeinitError, match="\\(InfogainLoss\\).*normalize is deprecated"):
        make("InfogainLoss", "loss_param { normalize: true }", 3).setup([(2, 3), (2,), (3, 3)])
