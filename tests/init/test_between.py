import warnings

import numpy as np
import pytest
import torch

from caffeinit.init import InitConfig, initialize
from caffeinit.init.scale_model import build_scale_model, end_values
from tests.conftest import shared_path
from tests.init.nets import DAG, FROZEN_SHARED, HEAD, MIXED, PLAIN, conv, images, ip, layer, model, relu


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
        assert report.between_note is None and "note:" not in report.table()
    else:  # the Eltwise and Concat constraints allow a least-squares equalization only
        assert _spread(after) < spread_before
        # ... and the report says why the spread left is not a failure to converge, naming the extremes
        rates = {r.name: r.rate_after for r in report.layers}
        high, low = max(rates, key=rates.get), min(rates, key=rates.get)
        assert report.spread("after") > 1.5
        assert report.between_note == (
            f"the rates still differ by {report.spread('after'):.2f}x after the best rescaling that keeps the net's "
            "function (least squares on the log rates): the inputs of each Eltwise sum share one scale per channel "
            f"(residual streams); highest {high}, lowest {low}")
        assert f"note: {report.between_note}" in report.table()


def test_a_spread_the_structure_leaves_is_explained_by_what_the_net_has():
    """FROZEN_SHARED: conv2 is frozen (bias included), so conv1's rate cannot move, and s1/s2 share one weight; MIXED
    has LRN and Sigmoid. PLAIN (a chain) is equalized exactly: no note."""
    frozen = initialize(model(FROZEN_SHARED), images(4), InitConfig(), progress=False)
    assert frozen.between_converged and frozen.spread() > 2
    assert ": layers that share parameters share one scale; frozen layers (conv2) keep their scale, and so do the " \
           "layers that feed them; highest" in frozen.between_note
    mixed = initialize(model(MIXED), images(4), InitConfig(), progress=False)
    assert mixed.spread() > 1.15  # beyond the tolerance and the noise range of its rates (+-6%, 5 rates)
    assert ": the non-homogeneous layers (norm1, sig) respond to scaling only approximately; highest" \
        in mixed.between_note
    assert initialize(model(PLAIN), images(4), InitConfig(), progress=False).between_note is None


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


def test_a_frozen_all_zero_layer_is_named_and_the_layers_it_cuts_off_are_reported(monkeypatch):
    """A deploy FCN's upsampling Deconvolution has lr_mult 0 and no filler: its weights are zero, so the output is
    constant and no gradient reaches the layers before it. Both facts are warned; the weights stay finite."""
    frozen_bn = layer("bn1", "BatchNorm", "conv1", "conv1", "param { lr_mult: 0 } " * 3)  # as MobileNet's: no warning
    text = (HEAD.format(name="zero_up") + conv("conv1", "data", 8) + frozen_bn + relu("relu1", "conv1")
            + conv("score", "conv1", 4)
            + layer("up", "Deconvolution", "score", extra='param { lr_mult: 0 } convolution_param { num_output: 4 '
                    'kernel_size: 4 stride: 2 bias_term: false } '))
    m = model(text)
    from caffeinit.init import between
    passes = []
    original = between.square_grads
    monkeypatch.setattr(between, "square_grads", lambda *a, **k: (passes.append(a[3]), original(*a, **k))[1])
    with pytest.warns(UserWarning) as caught:
        report = initialize(m, images(2), InitConfig(measure_before=False), progress=False)
    assert passes == []  # nothing to measure: no gradient can pass the frozen zeros
    messages = [str(w.message) for w in caught]
    assert [msg for msg in messages if "frozen" in msg] == [
        "layer 'up': frozen (lr_mult 0) with all-zero weights: its output does not depend on its input; give it a "
        "filler (Caffe's 'bilinear' for upsampling) or load its weights with --weights"]
    assert "no gradient reaches 2 learnable layers from the net's outputs (conv1, score)" in " ".join(messages)
    assert "all-zero weights" in report.layer("up").note
    assert report.layer("score").note == "no gradient reaches it from the net's outputs: not rescaled"
    assert report.layer("conv1").rate_after is None and report.between_iterations == 0
    assert all(np.isfinite(a).all() for v in m.blobs().values() for a in v)


def test_non_homogeneous_layers_iterate_and_stay_finite():
    m = model(MIXED)
    # one between-layer batch: the iteration's own batch, so the check is free of batch-to-batch sampling noise
    report = initialize(m, images(4, seed=8), InitConfig(between_batches=1), progress=False)
    assert report.homogeneous is False
    assert all(np.isfinite(a).all() for v in m.blobs().values() for a in v)
    assert report.between_converged and report.spread("after") < 1.1


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
    for kept in ("conv1", "scale_conv1"):  # kept layers: only their scale changes
        w0, w1 = original[kept][0].ravel().astype(np.float64), blobs[kept][0].ravel().astype(np.float64)
        assert report.layer(kept).method == "kept"
        assert w0 @ w1 / np.linalg.norm(w0) / np.linalg.norm(w1) > 1 - 1e-6
    with torch.no_grad():
        after = m.module({m.net.value_of[name]: torch.from_numpy(batches[0][name])}, keep=set(ends))
    for v in ends:
        np.testing.assert_allclose(after[v].numpy(), before[v].numpy(), rtol=1e-3, atol=1e-3)
    assert report.spread("after") < 1.01 < report.spread("before")


# two strongly saturated LRNs (u = alpha/n sum x^2 is about 1 on unit-variance inputs: local exponent about 0.3)
LRN_NET = (HEAD.format(name="lrn") + conv("conv1", "data", 8) + relu("relu1", "conv1")
           + layer("norm1", "LRN", "conv1", extra="lrn_param { local_size: 3 alpha: 3 beta: 0.75 } ")
           + conv("conv2", "norm1", 8) + relu("relu2", "conv2")
           + layer("norm2", "LRN", "conv2", extra="lrn_param { local_size: 5 alpha: 5 beta: 0.75 k: 2 } ")
           + conv("conv3", "norm2", 8) + relu("relu3", "conv3") + ip("fc", "conv3", 5))


def test_saturated_lrn_converges_in_few_updates():
    m = model(LRN_NET)
    init = images(4, seed=11)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    conv1 = m.blobs()["conv1"][0].copy()
    spread_before = _spread(_rates(m, init))
    m.module.layer_blobs[m.net.layer("conv1").index][0].data.mul_(30.0)  # push norm1 deep into saturation
    assert _spread(_rates(m, init)) > spread_before
    # 8 draws per batch: this net's rates are noisy (5 outputs, 8 images a batch)
    report = initialize(m, init, InitConfig(within=False, measure_before=False, between_draws=8), progress=False)
    assert report.homogeneous is False and report.between_converged
    assert report.between_iterations <= 5
    oracle = _rates(m, init, draws=8)  # measured independently, with other gradient draws
    assert _spread(oracle) < 1.15
    for name, rate in oracle.items():  # the reported rates (measured on all init batches) agree
        assert abs(report.layer(name).rate_after / rate - 1) < 0.1, name
    assert np.isfinite(m.blobs()["conv1"][0]).all() and not np.allclose(m.blobs()["conv1"][0], conv1 * 30)


# CaffeNet's LRN setting (alpha 1e-4 over 5 channels): mildly non-homogeneous
MILD_LRN_NET = LRN_NET.replace("local_size: 3 alpha: 3 beta: 0.75", "local_size: 5 alpha: 0.0001 beta: 0.75") \
    .replace("local_size: 5 alpha: 5 beta: 0.75 k: 2", "local_size: 5 alpha: 0.0001 beta: 0.75")


def _between_passes(monkeypatch, text, config):
    """The report of a between-layer step from conv1 x 30 after a within-layer init, and the batch of every
    gradient pass it made, in order."""
    from caffeinit.init import between
    passes = []
    original = between.square_grads
    monkeypatch.setattr(between, "square_grads", lambda *a, **k: (passes.append(a[3]), original(*a, **k))[1])
    m = model(text)
    init = images(4, seed=11)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    m.module.layer_blobs[m.net.layer("conv1").index][0].data.mul_(30.0)  # far from equal rates
    return initialize(m, init, config, progress=False), passes


@pytest.mark.parametrize("text, mispredicted", [(MILD_LRN_NET, False), (LRN_NET, True)], ids=["mild", "saturated"])
def test_gradient_pass_schedule(monkeypatch, text, mispredicted):
    """All batches are measured once, then batch 0 after each update while the model predicts its changes (a mild
    LRN: one update); the update it mispredicts (a saturated LRN) is measured on the other batches at once, and
    every later update on all batches: no spread extrapolated from batch 0 is ever compared with a measured one."""
    report, passes = _between_passes(monkeypatch, text, InitConfig(within=False, measure_before=False))
    assert report.homogeneous is False and report.between_converged and report.between_iterations >= 1
    assert passes[:5] == [0, 1, 2, 3, 0]  # every batch, then batch 0 after the first update
    rest = passes[5:]
    if not mispredicted:
        assert rest == [0] * (report.between_iterations - 1) and report.between_iterations == 1
        return
    assert rest[:3] == [1, 2, 3]  # the other batches, right after batch 0 showed the misprediction
    assert rest[3:] == [0, 1, 2, 3] * (report.between_iterations - 1)


def test_noise_range_is_the_expected_range_of_k_noisy_equal_rates():
    from caffeinit.init.between import _noise_range
    rng = np.random.default_rng(5)
    for k in (2, 5, 8, 57):
        se = np.full(k + 1, 0.03)
        valid = np.ones(k + 1, bool)
        valid[-1] = False  # an invalid rate does not count
        simulated = np.ptp(rng.standard_normal((20000, k)) * 0.03, axis=1).mean()
        assert _noise_range(se, valid) == pytest.approx(simulated, rel=0.05)
    assert _noise_range(np.array([0.1]), np.array([True])) == 0.0


@pytest.mark.parametrize("noise_range", [0.0, 1e9])
def test_once_distrusted_the_step_stops_when_the_spread_is_within_the_noise_range(monkeypatch, noise_range):
    """In the saturated-LRN case the model mispredicts the first update; from then on a spread no wider than what
    the rates' noise alone would give ends the step (as converged), however large the per-rate moves."""
    from caffeinit.init import between
    monkeypatch.setattr(between, "_noise_range", lambda *a: noise_range)
    report, passes = _between_passes(monkeypatch, LRN_NET,
                                     InitConfig(within=False, measure_before=False, tolerance=1e-4))
    assert report.between_converged
    if noise_range:
        # all batches, batch 0 after update 1 (mispredicted: distrust), then at once the other batches: done
        assert passes == [0, 1, 2, 3, 0, 1, 2, 3] and report.between_iterations == 1
    else:
        assert report.between_iterations > 1


def test_rate_noise_is_the_standard_error_of_the_batch_mean():
    from caffeinit.init.between import _rate_noise
    rng = np.random.default_rng(4)
    spread = np.array([0.05, 0.1, 0.2, 0.4])
    log_each = rng.standard_normal((4000, 4)) * spread + np.log([1.0, 2.0, 3.0, 4.0])
    valid = np.array([True, True, True, False])
    se = _rate_noise(log_each, valid)
    pooled = 0.1  # the median of the valid layers' spreads
    want = np.sqrt((spread ** 2 + pooled ** 2) / 2) / np.sqrt(4000)
    np.testing.assert_allclose(se[:3], want[:3], rtol=0.05)
    assert se[3] == 0.0
    assert not _rate_noise(log_each[:1], valid).any()  # one batch: no estimate


def test_running_out_of_updates_is_warned_with_the_spread_and_the_noise():
    m = model(LRN_NET)
    init = images(4, seed=11)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    m.module.layer_blobs[m.net.layer("conv1").index][0].data.mul_(30.0)
    with pytest.warns(UserWarning, match=r"the between-layer step did not converge in 1 updates \(non-homogeneous "
                      r"layers: norm1, norm2\); change rates still differ by [0-9.]+x, each measured to \+-[0-9]+% "
                      r"\(--between-iters allows more updates\)"):
        report = initialize(m, init, InitConfig(within=False, measure_before=False, between_iters=1), progress=False)
    assert report.between_converged is False and report.between_iterations == 1


@pytest.mark.parametrize("text", [PLAIN, DAG, MIXED, FROZEN_SHARED], ids=["plain", "dag", "mixed", "frozen"])
def test_every_weight_group_of_a_net_without_zero_layers_is_reached_by_the_gradient(text):
    from caffeinit.init.between import _reached_by_gradient
    m = model(text)
    sm = build_scale_model(m.module)
    assert len(sm.groups) > 1 and _reached_by_gradient(m.module, sm).all()
    # zeroing a frozen layer (FROZEN_SHARED's conv2) cuts off what lies before it
    if text is FROZEN_SHARED:
        m.module.layer_blobs[m.net.layer("conv2").index][0].data.zero_()
        reached = dict(zip((nodes[0].name for nodes in sm.group_nodes), _reached_by_gradient(m.module, sm)))
        assert not reached["conv1"]
        assert all(reached[name] for name in reached if name != "conv1")


def test_the_progress_bars_say_which_gradient_pass_runs(capsys):
    """On large nets one gradient pass takes minutes: the bar names each pass of a measurement over several batches,
    then shows the spread."""
    m = model(PLAIN)
    initialize(m, images(3, batch=4, seed=2), InitConfig(between_batches=3, measure_before=False), progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "before-init rates" not in err  # measure_before=False
    shown = [line.strip() for line in err.splitlines() if "between" in line]
    passes = [i for i, line in enumerate(shown) if "gradient pass" in line]
    assert [shown[i].split("gradient pass ")[1].rstrip("]") for i in passes] == ["1/3", "2/3", "3/3"]
    assert "spread" in shown[-1] and passes[-1] < len(shown) - 1


# values routed and combined: Slice, Eltwise PROD, Crop, a two-bottom Scale (a product), a mean-only MVN, Flatten
ROUTING = (HEAD.format(name="routing") + conv("conv1", "data", 8) + relu("relu1", "conv1")
           + 'layer { name: "slice1" type: "Slice" bottom: "conv1" top: "s1a" top: "s1b" '
           'slice_param { axis: 1 slice_point: 4 } }\n'
           + conv("conv2a", "s1a", 6) + relu("relu2a", "conv2a") + conv("conv2b", "s1b", 6)
           + layer("prod", "Eltwise", ["conv2a", "conv2b"], extra="eltwise_param { operation: PROD } ")
           + layer("pool1", "Pooling", "prod", extra="pooling_param { pool: MAX kernel_size: 2 stride: 2 } ")
           + conv("conv3", "prod", 6, k=1)
           + layer("mvn", "MVN", "conv3", extra="mvn_param { normalize_variance: false } ")
           + layer("crop", "Crop", ["mvn", "pool1"], extra="crop_param { axis: 2 offset: 2 } ")
           + layer("gate", "Scale", ["crop", "pool1"], extra="scale_param { axis: 0 } ")
           + layer("flat", "Flatten", "gate") + ip("fc", "flat", 5))

# an MVN that normalizes the variance (its input's scale does not matter) and a two-bottom Bias (a sum)
RESETS = (HEAD.format(name="resets") + conv("conv1", "data", 8) + relu("relu1", "conv1") + layer("mvn", "MVN", "conv1")
          + conv("conv2", "mvn", 6) + conv("conv2b", "mvn", 6)
          + layer("bias", "Bias", ["conv2", "conv2b"], extra="bias_param { axis: 0 } ")
          + relu("relu2", "bias") + ip("fc", "bias", 5))


@pytest.mark.parametrize("text", [ROUTING, RESETS], ids=["routing", "resets"])
def test_routing_and_resetting_layers_are_modelled_exactly(text):
    """The scale model's rules for layers that route, multiply, crop or renormalize values are exact: one update
    keeps the function (output scale 1) and gives the rates the model predicted, which independent autograd draws
    confirm; where a two-bottom Bias ties its inputs to one scale, the report says why the rates stay apart."""
    m = model(text)
    init = images(8, seed=5)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    end = end_values(m.net)[0]
    before, spread_before = _outputs(m, init, end), _spread(_rates(m, init))
    report = initialize(m, init, InitConfig(within=False, between_batches=8, measure_before=False), progress=False)
    assert report.homogeneous and report.between_converged and report.between_iterations == 1
    np.testing.assert_allclose(_outputs(m, init, end), before, rtol=1e-4, atol=1e-5 * np.abs(before).max())
    after = _rates(m, init, draws=8)
    assert _spread(after) < 1.25 < spread_before
    for name, rate in after.items():  # the model's prediction, measured by other draws
        assert rate == pytest.approx(report.layer(name).rate_after, rel=0.25), name
    if text is ROUTING:
        assert report.spread("after") < 1.001 and report.between_note is None
    else:
        assert report.spread("after") > 1.05
        assert "the two inputs of each two-bottom Bias layer (a sum) share one scale; highest conv2b, lowest conv2" \
            in report.between_note


def test_an_update_that_makes_the_spread_worse_is_taken_back_and_halved(monkeypatch):
    """On a saturated LRN net the first update is mispredicted, so later ones are measured on every batch; the
    second is sabotaged (twice the model's step, the wrong way): the spread it leaves is worse, so the step takes it
    back exactly (every weight as before it) and goes on with half the model's steps to convergence."""
    from caffeinit.init import between
    m = model(LRN_NET)
    init = images(4, seed=11)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    m.module.layer_blobs[m.net.layer("conv1").index][0].data.mul_(30.0)
    steps, applied, snapshots = [], [], []
    model_step, apply = between._model_step, between._apply

    def sabotaged(*args, **kwargs):
        x, linear, move = model_step(*args, **kwargs)
        steps.append(x)
        return (-2 * x, linear, -2 * move) if len(steps) == 2 else (x, linear, move)

    def recorded(module, sm, linear, x, records):
        snapshots.append([p.detach().clone() for p in module.parameters()])
        applied.append(x.copy())
        apply(module, sm, linear, x, records)

    monkeypatch.setattr(between, "_model_step", sabotaged)
    monkeypatch.setattr(between, "_apply", recorded)
    report = initialize(m, init, InitConfig(within=False, measure_before=False), progress=False)
    assert len(applied) >= 4
    np.testing.assert_allclose(applied[1], -2 * steps[1])
    np.testing.assert_allclose(applied[2], -applied[1])  # taken back ...
    for before, now in zip(snapshots[1], snapshots[3]):  # ... to the weights before it
        torch.testing.assert_close(now, before, rtol=1e-5, atol=0)
    np.testing.assert_allclose(applied[3], 0.5 * steps[2])  # then half the model's step
    assert report.between_converged and report.spread("after") < 1.25 < report.spread_between_start


AFTER_LOSS = ('name: "after_loss"\nlayer { name: "data" type: "Input" top: "data" top: "label" input_param { '
              'shape { dim: 8 dim: 3 dim: 12 dim: 12 } shape { dim: 8 } } }\n'
              + conv("conv1", "data", 8) + relu("relu1", "conv1") + ip("fc", "conv1", 5)
              + layer("loss", "SoftmaxWithLoss", ["fc", "label"], "loss")
              + layer("rs", "Reshape", "loss", "rs", "reshape_param { shape { dim: 1 dim: 1 } }")
              + ip("post", "rs", 2))


def test_layers_computed_from_a_loss_are_not_part_of_the_between_layer_step():
    """The step stops at the last non-loss layer: a learnable layer reading a loss's output is neither an end nor
    measured, and the net before the loss is equalized as if it were not there."""
    m = model(AFTER_LOSS, phase="train")
    assert end_values(m.net) == ["fc"]
    assert [nodes[0].name for nodes in build_scale_model(m.module).group_nodes] == ["conv1", "fc"]
    rng = np.random.default_rng(0)
    init = [dict(b, label=rng.integers(0, 5, 8).astype(np.float32)) for b in images(4)]
    report = initialize(m, init, InitConfig(), progress=False)
    assert report.between_converged and report.spread("after") < 1.001 and report.between_note is None
    assert report.layer("post").rate_after is None
    assert report.layer("post").note == "reads a loss's output: not part of the init, keeps its weights"


def test_a_branch_into_silence_neither_pins_the_layer_feeding_it_nor_goes_unnamed():
    """What a discarded branch computes reaches no output, so the layer feeding it is rescaled as usual (it was
    held at its scale: a 2,700x spread); the branch's own learnable layer is named as one no gradient reaches."""
    text = (HEAD.format(name="silenced") + conv("conv1", "data", 8) + relu("relu1", "conv1") + conv("conv2", "conv1", 8)
            + relu("relu2", "conv2") + ip("fc", "conv2", 4) + conv("side", "conv1", 2, k=1)
            + 'layer { name: "sil" type: "Silence" bottom: "side" }\n')
    m = model(text)
    with pytest.warns(UserWarning, match=r"no gradient reaches 1 learnable layer from the net's outputs \(side\)"):
        report = initialize(m, images(4), InitConfig(), progress=False)
    assert report.between_converged and report.spread("after") < 1.001 and report.between_note is None
    assert report.layer("side").note == "no gradient reaches it from the net's outputs: not rescaled"


def test_batchnorm_statistics_are_compensated_exactly_even_where_the_variance_is_near_eps():
    """(x - mean) / sqrt(var + eps) is not scale-invariant where var is near eps: the compensation scales var + eps,
    so the TEST-phase function is preserved whatever the ratio (here eps 10 against an input variance of ~1), for
    any stored scale factor, 0 included (Caffe then uses zero statistics)."""
    text = (HEAD.format(name="bn_eps") + conv("conv1", "data", 8) + relu("relu1", "conv1")
            + conv("conv2", "conv1", 8).replace("convolution_param {", "convolution_param { bias_term: false")
            + layer("bn2", "BatchNorm", "conv2", "conv2", "batch_norm_param { eps: 10 }")
            + layer("sc2", "Scale", "conv2", "conv2", "scale_param { bias_term: true }") + relu("relu2", "conv2")
            + ip("fc", "conv2", 5))
    init, held_out = images(4, seed=8), images(4, seed=9)
    for factor in (1.0, 0.25, 0.0):
        m = model(text)
        initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
        bn = m.module.layer_blobs[m.net.layer("bn2").index]
        for blob in bn:
            blob.data.mul_(factor)  # stored statistics times the scale factor: the same statistics unless 0
        before = _outputs(m, held_out, "fc")
        report = initialize(m, init, InitConfig(within=False, measure_before=False), progress=False)
        assert report.layer("conv2").between_scale != 1.0
        np.testing.assert_allclose(_outputs(m, held_out, "fc"), before, rtol=1e-4, atol=1e-5, err_msg=str(factor))
        assert report.between_converged and report.spread("after") < 1.01


@pytest.mark.parametrize("frozen", ['param { lr_mult: 0 } param { lr_mult: 1 } ', 'param { lr_mult: 0 } '
                                    'param { lr_mult: 0 } ', 'param { lr_mult: 0 } '],
                         ids=["learnable-bias", "zero-bias", "no-bias"])
def test_a_frozen_layer_whose_output_scales_with_its_input_passes_the_level_on(frozen):
    """A frozen weight is kept, but where its bias is learnable (scaled with the output), zero or absent, the layer
    is linear in its input: the layers before it are rescaled too (they were held at their scale: a 5,000x
    spread), and the net's output is unchanged."""
    middle = conv("conv2", "conv1", 8, extra=frozen)
    if frozen.count("lr_mult") == 1:
        middle = middle.replace("convolution_param {", "convolution_param { bias_term: false")
    text = (HEAD.format(name="frozen_middle") + conv("conv1", "data", 8) + relu("relu1", "conv1") + middle
            + relu("relu2", "conv2") + conv("conv3", "conv2", 8) + relu("relu3", "conv3") + ip("fc", "conv3", 4))
    m = model(text)
    init, held_out = images(4, seed=10), images(4, seed=11)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    weight = m.blobs()["conv2"][0].copy()
    before = _outputs(m, held_out, "fc")
    report = initialize(m, init, InitConfig(within=False, measure_before=False), progress=False)
    assert report.layer("conv2").method == "frozen"
    np.testing.assert_array_equal(m.blobs()["conv2"][0], weight)
    assert report.between_converged and report.spread("after") < 1.001 and report.between_note is None
    np.testing.assert_allclose(_outputs(m, held_out, "fc"), before, rtol=1e-4, atol=1e-5)


def test_a_layer_whose_output_ignores_its_input_passes_no_gradient_and_breaks_nothing():
    """Power with scale 0 computes a constant: its scale probe finds no gradient (it raised an internal error), the
    layer before it is named as unreached, and every weight stays finite."""
    text = (HEAD.format(name="constant") + conv("conv1", "data", 8) + relu("relu1", "conv1")
            + layer("const", "Power", "conv1", "const", "power_param { scale: 0 shift: 1 }")
            + conv("conv2", "const", 4))
    m = model(text)
    with pytest.warns(UserWarning, match=r"no gradient reaches 1 learnable layer from the net's outputs \(conv1\)"):
        report = initialize(m, images(2), InitConfig(), progress=False)
    assert report.layer("conv1").note == "no gradient reaches it from the net's outputs: not rescaled"
    assert all(np.isfinite(a).all() for v in m.blobs().values() for a in v)


def test_a_negative_lr_mult_is_equalized_by_its_magnitude():
    """Caffe takes a negative lr_mult (gradient ascent on that weight): its layer changes as fast as with the
    magnitude, so |lr_mult| x C_k is what is equalized (the log of a negative rate gave NaN warnings and no rate)."""
    text = PLAIN.replace('name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" ',
                         'name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: -2 } ')
    m = model(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = initialize(m, images(4), InitConfig(), progress=False)
    assert report.layer("conv2").lr_mult == -2 and report.layer("conv2").rate_after > 0
    assert report.between_converged and report.spread("after") < 1.001
    plain = initialize(model(PLAIN), images(4), InitConfig(), progress=False)
    assert report.layer("conv2").between_scale != plain.layer("conv2").between_scale


def test_a_frozen_layer_has_no_change_rate_before_either():
    """lr_mult 0: the layer does not learn, so it has no effective change rate before the init (was 0.0, '0 -> -'
    in the table) or after; its statistics are still reported."""
    report = initialize(model(FROZEN_SHARED), images(2, seed=7), InitConfig(), progress=False)
    frozen = report.layer("conv2")
    assert frozen.rate_before is None and frozen.rate_after is None and frozen.std_before is not None
    assert report.layer("conv1").rate_before > 0


def test_lr_mults_other_than_one_equalize_the_effective_rates():
    """conv2 learns at lr_mult 2 (decay_mult 3, which weight decay alone uses) and fc1 at 0.1: the step equalizes
    lr_mult x C_k, so by the autograd oracle (more gradient draws than the step's own) the effective rates agree
    within their sampling noise, while the plain C_k differ by the lr_mult ratios; the function is unchanged."""
    text = PLAIN.replace('bottom: "pool1" top: "conv2" ',
                         'bottom: "pool1" top: "conv2" param { lr_mult: 2 decay_mult: 3 } param { lr_mult: 4 } ')
    text = text.replace('bottom: "pool2" top: "fc1" ', 'bottom: "pool2" top: "fc1" param { lr_mult: 0.1 } ')
    m = model(text)
    init, held_out = images(8, seed=5), images(4, seed=6)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    before = _outputs(m, held_out, "fc2")
    report = initialize(m, init, InitConfig(within=False, between_batches=8, measure_before=False), progress=False)
    assert report.between_converged and report.spread("after") < 1.001
    np.testing.assert_allclose(_outputs(m, held_out, "fc2"), before, rtol=1e-4, atol=1e-5)
    plain = _rates(m, init, draws=8)
    lr = {"conv1": 1.0, "conv2": 2.0, "fc1": 0.1, "fc2": 1.0}
    effective = {name: lr[name] * rate for name, rate in plain.items()}
    assert _spread(effective) < 1.1  # 64 images x 8 draws: a few percent of noise
    assert plain["conv2"] / plain["conv1"] == pytest.approx(0.5, rel=0.1)
    assert plain["fc1"] / plain["conv1"] == pytest.approx(10, rel=0.1)


@pytest.mark.parametrize("set_by,frozen", [("s2", False), ("s2", True)], ids=["lr3", "lr0"])
def test_a_shared_parameter_takes_the_lr_mult_a_later_sharer_sets(set_by, frozen):
    """Caffe's Net::AppendParam: a parameter shared by name learns at the lr_mult of the first of its layers that
    sets one (the owner's unset default 1 does not count). Here only s2 sets it: 3 makes the shared weight's
    effective rate 3 x C (by the autograd oracle, equal to the others'), 0 freezes it (never drawn or scaled)."""
    lr = 0 if frozen else 3
    text = (HEAD.format(name="shared_lr") + conv("conv1", "data", 8) + relu("relu1", "conv1")
            + conv("s1", "conv1", 8, extra='param { name: "w" } ') + relu("relu2", "s1")
            + conv(set_by, "s1", 8, extra=f'param {{ name: "w" lr_mult: {lr} }} ') + relu("relu3", set_by)
            + ip("fc", set_by, 5))
    m = model(text)
    init = images(8, seed=5)
    filler = m.blobs()["s1"][0].copy()
    within = initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    report = initialize(m, init, InitConfig(within=False, between_batches=8, measure_before=False), progress=False)
    assert report.between_converged
    if frozen:
        np.testing.assert_array_equal(m.blobs()["s1"][0], filler)
        assert within.layer("s1").method == "frozen" and report.layer("s1").rate_after is None
        return
    assert report.layer("s1").lr_mult == 3 and report.spread("after") < 1.001
    plain = _rates(m, init, draws=8)
    effective = {name: rate * (3 if name == "s1" else 1) for name, rate in plain.items()}
    assert _spread(effective) < 1.25, effective  # the rates of 64 images: their sampling noise


# Layers the between step must compensate when it rescales what feeds them: a Bias layer's bias, the bias of a
# two-bottom Scale (a product), and a BatchNorm whose stored scale factor is 0 (Caffe then uses zero statistics).
COMPENSATED = {
    "bias": (HEAD.format(name="bias") + conv("conv1", "data", 8)
             + layer("b1", "Bias", "conv1", "conv1", 'bias_param { filler { type: "gaussian" std: 1 } } ')),
    "scale2": (HEAD.format(name="scale2") + conv("conv1", "data", 8) + relu("relu1", "conv1") + conv("gate", "data", 8)
               + layer("sc", "Scale", ["conv1", "gate"], "conv1",
                       'scale_param { axis: 0 bias_term: true bias_filler { type: "gaussian" std: 1 } } ')),
    "batchnorm_factor_0": HEAD.format(name="bn0") + conv("conv1", "data", 8) + layer("bn1", "BatchNorm", "conv1",
                                                                                     "conv1"),
}


@pytest.mark.parametrize("name", sorted(COMPENSATED))
def test_rescaling_compensates_biases_and_batchnorm_statistics(name):
    """The update scales each layer's weights; what reads a rescaled value is compensated so that the net's output
    does not change (a homogeneous net: output scale 1)."""
    text = COMPENSATED[name] + relu("relu2", "conv1") + conv("conv2", "conv1", 8) + relu("relu3", "conv2") \
        + ip("fc", "conv2", 5)
    m = model(text)
    if name == "batchnorm_factor_0":
        m = model(text, {**m.blobs(), "bn1": [np.full(8, 5, np.float32), np.full(8, 7, np.float32),
                                              np.zeros(1, np.float32)]})
    held_out = images(2, seed=6)
    before = _outputs(m, held_out, "fc")
    report = initialize(m, images(4, seed=5), InitConfig(within=False, between_batches=4, measure_before=False),
                        progress=False)
    assert report.homogeneous and report.between_iterations == 1 and report.spread("after") < 1.001
    after = _outputs(m, held_out, "fc")
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()


# Layers between two convolutions, with the parameters they need. Positively homogeneous ones (f(s x) = s f(x) for
# s > 0) let the step equalize a chain exactly; the others make the net non-homogeneous (probed, not exact).
HOMOGENEOUS_LAYERS = {"ReLU": "", "PReLU": "", "Dropout": "", "AbsVal": "",
                      "Pooling": "pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } ",
                      "Tile": "tile_param { axis: 1 tiles: 2 } "}
NON_HOMOGENEOUS_LAYERS = {"TanH": "", "Sigmoid": "", "ELU": "", "BNLL": "", "Swish": "",
                          "LRN": "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } ",
                          "Power": "power_param { power: 2 scale: 0.5 shift: 1 } ", "Exp": "exp_param { scale: 0.1 } ",
                          "Log": "log_param { shift: 50 } ", "Clip": "clip_param { min: -1 max: 1 } "}


@pytest.mark.parametrize("type_name", sorted(HOMOGENEOUS_LAYERS) + sorted(NON_HOMOGENEOUS_LAYERS))
def test_each_layer_type_is_modelled_as_homogeneous_or_not(type_name):
    params = {**HOMOGENEOUS_LAYERS, **NON_HOMOGENEOUS_LAYERS}[type_name]
    m = model(HEAD.format(name="one_type") + conv("conv1", "data", 8) + layer("x", type_name, "conv1", "x", params)
              + conv("conv2", "x", 8) + relu("relu2", "conv2") + ip("fc", "conv2", 5))
    init = images(4, seed=5)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    held_out = images(2, seed=6)
    before = _outputs(m, held_out, "fc")
    report = initialize(m, init, InitConfig(within=False, between_batches=4, measure_before=False), progress=False)
    assert report.homogeneous == (type_name in HOMOGENEOUS_LAYERS)
    if report.homogeneous:  # equalized exactly in one update, the function kept
        assert report.between_iterations == 1 and report.spread("after") < 1.001
        np.testing.assert_allclose(_outputs(m, held_out, "fc"), before, rtol=1e-4, atol=1e-5)


def test_batch_reindex_is_modelled_as_channelwise():
    """BatchReindex only picks (and repeats) images of the batch by an index input: positively homogeneous, so the
    chain through it is equalized exactly in one update and the function kept (its index input untouched)."""
    text = (HEAD.format(name="reindex") + 'layer { name: "idx" type: "Input" top: "idx" '
            'input_param { shape { dim: 8 } } }\n' + conv("conv1", "data", 8)
            + layer("pick", "BatchReindex", ["conv1", "idx"], "pick") + conv("conv2", "pick", 8)
            + relu("relu2", "conv2") + ip("fc", "conv2", 5))
    m = model(text)
    index = np.array([7, 7, 0, 1, 2, 3, 5, 4], np.float32)  # a repeat, a dropped image, a swap
    init = [{**b, "idx": index} for b in images(4, seed=5)]
    held_out = [{**b, "idx": index[::-1].copy()} for b in images(2, seed=6)]

    def outputs():
        with torch.no_grad():
            return np.concatenate([m.module({m.net.feed_values[k]: torch.from_numpy(v) for k, v in b.items()},
                                            keep={"fc"})["fc"].numpy() for b in held_out])

    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    before = outputs()
    report = initialize(m, init, InitConfig(within=False, between_batches=4, measure_before=False), progress=False)
    assert report.homogeneous and report.between_iterations == 1 and report.spread("after") < 1.001
    np.testing.assert_allclose(outputs(), before, rtol=1e-4, atol=1e-5)


def test_a_silence_of_several_blobs_does_not_tie_their_levels():
    """Silence discards its bottoms: two main-path blobs it also reads keep their own levels (were they tied as an
    Eltwise sum's bottoms are, the step could not equalize the chain)."""
    silence = layer("quiet", "Silence", ["conv1", "conv2"]).replace('top: "quiet" ', "")
    m = model(HEAD.format(name="silence") + conv("conv1", "data", 8) + relu("relu1", "conv1")
              + conv("conv2", "conv1", 8) + relu("relu2", "conv2") + ip("fc", "conv2", 5) + silence)
    init = images(4, seed=5)
    initialize(m, init, InitConfig(between=False, measure_before=False), progress=False)
    held_out = images(2, seed=6)
    before = _outputs(m, held_out, "fc")
    report = initialize(m, init, InitConfig(within=False, between_batches=4, measure_before=False), progress=False)
    assert report.homogeneous and report.between_iterations == 1 and report.spread("after") < 1.001
    np.testing.assert_allclose(_outputs(m, held_out, "fc"), before, rtol=1e-4, atol=1e-5)
