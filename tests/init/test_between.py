import numpy as np
import pytest
import torch

from caffeinit.init import InitConfig, initialize
from caffeinit.init.between import build_scale_model, end_values
from tests.conftest import shared_path
from tests.init.nets import DAG, FROZEN_SHARED, MIXED, PLAIN, images, model


def _outputs(m, batches, value):
    with torch.no_grad():
        return np.concatenate([m.module({"data": torch.from_numpy(b["data"])}, keep={value})[value].numpy()
                               for b in batches])


def _rates(m, batches, draws=4, seed=123):
    """Oracle: lr_mult x RMS(dL/dW) / RMS(W) per learnable affine weight, by plain autograd, N(0,1) at the ends."""
    module = m.module
    ends = end_values(m.net)
    weights = {}
    for node in m.net.layers:
        if node.type in ("Convolution", "InnerProduct") and node.param.param[:1] != [] and \
                node.param.param[0].lr_mult == 0:
            continue
        if node.type in ("Convolution", "InnerProduct"):
            weights.setdefault(id(module.layer_blobs[node.index][0]), (node.name, module.layer_blobs[node.index][0]))
    sums = {k: 0.0 for k in weights}
    gen = torch.Generator().manual_seed(seed)
    for b in batches:
        out = module({"data": torch.from_numpy(b["data"])}, keep=set(ends))
        for d in range(draws):
            loss = sum((torch.randn(out[v].shape, generator=gen) * out[v]).sum() for v in ends)
            grads = torch.autograd.grad(loss, [w for _, w in weights.values()], retain_graph=d < draws - 1)
            for k, g in zip(weights, grads):
                sums[k] += float((g.double() ** 2).mean())
    return {name: np.sqrt(sums[k] / (len(batches) * draws)) / float(w.detach().double().pow(2).mean().sqrt())
            for k, (name, w) in weights.items()}


def _spread(rates):
    values = list(rates.values())
    return max(values) / min(values)


@pytest.mark.parametrize("text", [PLAIN, DAG], ids=["plain", "dag"])
def test_homogeneous_net_keeps_its_function_and_equalizes_rates(text):
    m = model(text)
    init, held_out = images(8, seed=5), images(8, seed=6)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    end = end_values(m.net)[0]
    before = _outputs(m, held_out, end)
    spread_before = _spread(_rates(m, held_out))
    report = initialize(m, init, InitConfig(within=False, between_batches=8, measure_before=False), progress=False)
    assert report.homogeneous and report.between_converged and report.between_iterations == 1
    np.testing.assert_allclose(_outputs(m, held_out, end), before, rtol=1e-4, atol=1e-5)  # output scale 1
    after = _rates(m, held_out)
    if text is PLAIN:  # a chain is equalized exactly (on the init images); held-out images within 1.25x
        assert report.spread("after") < 1.001
        assert _spread(after) < 1.25 < spread_before
    else:  # the Eltwise and Concat constraints allow a least-squares equalization only
        assert _spread(after) < spread_before


def test_frozen_and_shared_weights():
    m = model(FROZEN_SHARED)
    initialize(m, images(4, seed=7), InitConfig(between=False, measure_before=False), progress=False)
    frozen = [a.copy() for a in m.blobs()["conv2"]]
    shared = m.blobs()["s1"][0].copy()
    report = initialize(m, images(4, seed=7), InitConfig(within=False, measure_before=False), progress=False)
    blobs = m.blobs()
    assert all(np.isfinite(a).all() for v in blobs.values() for a in v)
    for a, b in zip(blobs["conv2"], frozen):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(blobs["s1"][0], blobs["s2"][0])
    scale = report.layer("s1").between_scale
    assert scale != 1.0 and report.layer("s2").between_scale == scale
    np.testing.assert_allclose(blobs["s1"][0], shared * scale, rtol=1e-5)  # scaled once, not twice
    assert report.layer("conv2").rate_after is None and report.layer("conv2").method == "frozen"


def test_frozen_layers_do_not_drawn_or_break_when_no_gradient_reaches_them():
    m = model(FROZEN_SHARED)
    report = initialize(m, images(2), InitConfig(), progress=False)
    assert report.layer("conv2").method == "frozen"
    assert np.isfinite(report.spread("after"))


def test_non_homogeneous_layers_iterate_and_stay_finite():
    m = model(MIXED)
    report = initialize(m, images(4, seed=8), InitConfig(between_batches=4), progress=False)
    assert report.homogeneous is False
    assert all(np.isfinite(a).all() for v in m.blobs().values() for a in v)
    assert report.between_converged and report.spread("after") < 1.1


def test_scale_model_constraints_on_a_dag():
    m = model(DAG)
    sm = build_scale_model(m.module)
    names = [nodes[0].name for nodes in sm.group_nodes]
    x = sm.solve(np.log(np.arange(1.0, len(names) + 1)), np.ones(len(names), bool))
    level = {v: float(c @ x) for v, c in sm.lin.items()}
    assert abs(level["conv1"] - level["b"]) < 1e-9  # Eltwise bottoms share one scale
    assert abs(level["left"] - level["right"]) < 1e-9  # so do Concat bottoms
    assert abs(level["fc"]) < 1e-9  # the end keeps its scale


def test_resnet50_stem_with_its_real_weights_is_rescaled_without_changing_its_function():
    net = shared_path("corpus", "htshinichi__resnet50_stem.prototxt")
    weights = shared_path("corpus", "htshinichi__resnet50_stem.caffemodel")
    from caffeinit.api import load
    m = load(net, weights)
    name = list(m.net.feeds)[0]
    m.reshape({name: (2, 3, 64, 64)})
    batches = [{name: b["data"]} for b in images(2, batch=2, size=64, seed=9)]
    original = {k: [a.copy() for a in v] for k, v in m.blobs().items()}
    ends = end_values(m.net)
    with torch.no_grad():
        before = m.module({m.net.value_of[name]: torch.from_numpy(batches[0][name])}, keep=set(ends))
    report = initialize(m, batches, InitConfig(), progress=False)
    blobs = m.blobs()
    assert all(np.isfinite(a).all() for v in blobs.values() for a in v)
    for layer in ("conv1", "scale_conv1"):  # kept layers: only their scale changes
        w0, w1 = original[layer][0].ravel().astype(np.float64), blobs[layer][0].ravel().astype(np.float64)
        assert report.layer(layer).method == "kept"
        assert w0 @ w1 / np.linalg.norm(w0) / np.linalg.norm(w1) > 1 - 1e-6
    with torch.no_grad():
        after = m.module({m.net.value_of[name]: torch.from_numpy(batches[0][name])}, keep=set(ends))
    for v in ends:
        np.testing.assert_allclose(after[v].numpy(), before[v].numpy(), rtol=1e-3, atol=1e-3)
    assert report.spread("after") < 1.01 < report.spread("before")
