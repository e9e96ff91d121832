import math

import numpy as np
import torch

from caffeinit.init.measure import measure, measure_table
from tests.init.nets import PLAIN, images, model


def test_statistics_are_those_of_each_affine_output_over_all_images():
    m = model(PLAIN)
    batches = images(3, seed=2)
    measures = measure(m, batches)
    assert [x.name for x in measures] == ["conv1", "conv2", "fc1", "fc2"]
    outs = {}
    with torch.no_grad():
        for b in batches:
            got = m.module({"data": torch.from_numpy(b["data"])}, keep={"conv1", "fc1"})
            for v in ("conv1", "fc1"):
                outs.setdefault(v, []).append(got[v].double().numpy())
    for x, axes in ((measures[0], (0, 2, 3)), (measures[2], (0,))):
        data = np.concatenate(outs[x.name])
        np.testing.assert_allclose(x.mean, data.mean(axis=axes).mean(), rtol=1e-6)
        np.testing.assert_allclose(x.std, data.std(axis=axes).mean(), rtol=1e-5)
        stds = data.std(axis=axes)  # the coefficient of variation of the channel stds, numpy's (population) std
        np.testing.assert_allclose(x.std_cv, stds.std() / stds.mean(), rtol=1e-5)
    assert all(x.rate is not None and x.rate > 0 for x in measures)


def test_weights_that_overflow_are_named_in_the_table():
    m = model(PLAIN.replace("std: 0.01", "std: 1e12"))  # ~1e13 per layer: fc1 overflows float32
    measures = measure(m, images(1))
    by_name = {x.name: x for x in measures}
    assert math.isfinite(by_name["conv2"].std) and not math.isfinite(by_name["fc1"].std)
    text = measure_table(measures)
    assert "note: these weights overflow float32 from layer 'fc1' on" in text
    assert "overflow" not in measure_table(measure(model(PLAIN), images(1)))


def test_rates_measured_in_chunks_where_a_whole_pass_does_not_fit(monkeypatch):
    """`caffeinit stats` splits its gradient passes as the initialization does (and says so): the same rates."""
    import pytest
    from caffeinit.init import pipeline
    from caffeinit.init.rates import pass_bytes_per_image
    from caffeinit.init.scale_model import build_scale_model
    from caffeinit.init.within import values_per_image
    batches = images(2, batch=8, seed=4)
    m = model(PLAIN)
    whole = measure(m, batches)
    sm = build_scale_model(m.module)
    per_image = pipeline.PASS_OVERHEAD * (pass_bytes_per_image(m.module, sm, {"data": torch.from_numpy(
        batches[0]["data"])}, sm.groups) + 2 * values_per_image(m.net)[1])
    gradients = sum(4.0 * p.numel() for p in m.module.parameters())
    monkeypatch.setattr(pipeline, "available_memory", lambda device: (gradients + 4.5 * per_image) / 0.8)
    with pytest.warns(UserWarning, match="they run 4 images at a time"):
        split = measure(m, batches)
    np.testing.assert_allclose([x.rate for x in split], [x.rate for x in whole], rtol=1e-5)
    np.testing.assert_allclose([x.std for x in split], [x.std for x in whole], rtol=0)


def test_a_progress_bar_counts_the_forward_and_gradient_passes(capsys, monkeypatch):
    from caffeinit.init import measure as measure_module
    counts = []
    original = measure_module.measure_rates

    def counted(*args, done=None, **kwargs):
        return original(*args, done=lambda: (counts.append(1), done())[1], **kwargs)

    batches = images(3, batch=4, seed=1)
    quiet = measure(model(PLAIN), batches)
    monkeypatch.setattr(measure_module, "measure_rates", counted)
    shown = measure(model(PLAIN), batches, progress=True)
    assert len(counts) == 3 and "stats" in capsys.readouterr().err  # one per batch's gradient pass
    assert [(m.rate, m.std) for m in shown] == [(m.rate, m.std) for m in quiet]


def test_the_json_data_hold_no_nan_or_infinity():
    """A layer whose outputs do not vary over the images (one image through an InnerProduct) has std 0 and so no
    coefficient of variation: null in the JSON, never NaN (which json.dumps would write and JSON cannot hold)."""
    import json
    from caffeinit.init.measure import measures_to_dict
    from tests.init.nets import HEAD, ip
    m = model(HEAD.format(name="fc") + ip("fc1", "data", 3))
    measures = measure(m, images(1, batch=1))
    assert measures[0].std == 0 and math.isnan(measures[0].std_cv)
    data = measures_to_dict(measures)
    assert data["layers"][0]["std_cv"] is None and data["layers"][0]["std"] == 0
    json.dumps(data, allow_nan=False)
    overflow = measure(model(PLAIN.replace("std: 0.01", "std: 1e12")), images(1))
    assert any(not math.isfinite(x.std) for x in overflow)
    json.dumps(measures_to_dict(overflow), allow_nan=False)


def test_a_layer_no_gradient_reaches_has_no_rate_and_is_named():
    """A layer whose output feeds no end value (a branch into Silence) gets no gradient at all: its change rate is
    undefined ("-", null in the JSON, named in a note), not 0, as `caffeinit run` reports it. The other rates are
    C_k = sqrt(mean over batches and draws of mean(dL/dW^2)) / RMS(W), computed here directly with autograd."""
    import json
    from caffeinit.init.measure import NO_GRADIENT, measures_to_dict
    from tests.init.nets import HEAD, conv, ip, relu
    text = (HEAD.format(name="side") + conv("conv1", "data", 4) + relu("relu1", "conv1") + conv("side", "conv1", 4)
            + 'layer { name: "sil" type: "Silence" bottom: "side" }\n' + ip("fc", "conv1", 3))
    m = model(text)
    batches = images(2, batch=4, seed=3)
    measures = measure(m, batches, draws=2, seed=5)
    side = measures[1]
    assert side.name == "side" and side.rate is None and side.effective_rate is None and side.note == NO_GRADIENT
    table = measure_table(measures)
    assert table.splitlines()[3].split()[-2:] == ["-", "-"] and f"note: side: {NO_GRADIENT}" in table
    assert json.loads(json.dumps(measures_to_dict(measures)))["layers"][1]["rate"] is None
    w = [m.module.layer_blobs[n.index] for n in m.net.layers if n.name in ("conv1", "fc")]
    squares = [0.0, 0.0]
    for b, feed in enumerate(batches):
        x = torch.from_numpy(feed["data"]).double()
        for d in range(2):  # the draws rates.square_grads makes
            gen = torch.Generator()
            gen.manual_seed((5 * 7_368_787 + 104_729 * b + 1_299_709 * d + 1) % (2 ** 63))
            w1, w2 = (blobs[0].detach().double().requires_grad_(True) for blobs in w)
            h = torch.relu(torch.nn.functional.conv2d(x, w1, w[0][1].detach().double(), padding=1))
            y = h.reshape(len(x), -1) @ w2.t() + w[1][1].detach().double()
            grads = torch.autograd.grad((torch.randn(y.shape, generator=gen).double() * y).sum(), [w1, w2])
            squares = [s + float(g.square().mean()) for s, g in zip(squares, grads)]
    for got, s, blobs in zip((measures[0], measures[2]), squares, w):
        expected = math.sqrt(s / 4) / float(blobs[0].double().square().mean().sqrt())
        np.testing.assert_allclose(got.rate, expected, rtol=1e-5)


def test_the_table_holds_no_nan_and_says_why_a_figure_is_missing():
    """All-zero weights (a deploy net without fillers): the outputs do not vary, so the std's coefficient of
    variation is undefined and so is the rate; the table shows "-" and says why, never "nan" or "-0"."""
    from caffeinit.init.measure import ZERO_WEIGHTS, LayerMeasure
    from tests.init.nets import HEAD
    text = HEAD.format(name="zero") + ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                                       'inner_product_param { num_output: 2 } }\n')
    measures = measure(model(text), images(1))
    assert measures[0].note == ZERO_WEIGHTS
    table = measure_table(measures)
    assert "nan" not in table and f"note: fc: {ZERO_WEIGHTS}" in table
    assert table.splitlines()[2].split() == ["fc", "InnerProduct", "2", "0", "0", "-", "-", "-"]
    negative_zero = LayerMeasure("x", "Convolution", 1, -0.0, -0.0, 0.5, -0.0, 1.0)
    assert "-0" not in measure_table([negative_zero]).splitlines()[2]
    empty = measure(model(HEAD.format(name="none") + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'),
                    images(1))
    assert empty == [] and "note: no learnable affine layer" in measure_table(empty)
