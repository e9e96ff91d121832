import contextlib
import json
import math
import warnings

import numpy as np
import pytest
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.init import InitConfig, initialize
from tests.init.nets import DAG, MIXED, PLAIN, images, model


def test_seed_gives_a_bitwise_identical_caffemodel(tmp_path):
    paths = []
    for run, seed in enumerate((3, 3, 4)):
        m = model(PLAIN)
        initialize(m, images(4), InitConfig(method="kmeans", seed=seed), progress=False)
        paths.append(tmp_path / f"run{run}.caffemodel")
        m.save_caffemodel(paths[-1])
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] and data[0] != data[2]


@pytest.mark.parametrize("text,kept,drawn", [(PLAIN, ("conv1", "fc1"), ("conv2", "fc2")),
                                             (DAG, ("a", "left", "right", "fc"), ("conv1", "b"))],
                         ids=["plain", "dag"])
def test_pretrained_layers_keep_their_direction_and_the_rest_is_drawn(text, kept, drawn):
    """DAG's fc reads a Concat: where its weight was drawn, each branch's block of it may get a factor of its own;
    loaded, it is scaled as a whole (the branches then share one level)."""
    donor = model(text)
    initialize(donor, images(4, seed=1), InitConfig(between=False, measure_before=False), progress=False)
    loaded = {k: v for k, v in donor.blobs().items() if k in kept}
    m = model(text, loaded)
    report = initialize(m, images(4, seed=2), InitConfig(), progress=False)
    blobs = m.blobs()
    for name in kept:
        assert report.layer(name).method == "kept"
        for w0, w1 in zip(loaded[name], blobs[name]):
            ratio = w1.ravel().astype(np.float64) / w0.ravel().astype(np.float64)
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5, err_msg=name)
            assert ratio[0] > 0
        assert report.layer(name).between_scale != 1.0
    assert all(report.layer(name).method == "gaussian" for name in drawn)


def test_reinit_from_a_layer_draws_that_layer_and_later_ones():
    donor = model(PLAIN)
    initialize(donor, images(2), InitConfig(measure_before=False), progress=False)
    m = model(PLAIN, donor.blobs())
    report = initialize(m, images(2), InitConfig(reinit="conv2", between=False, measure_before=False),
                        progress=False)
    assert [report.layer(n).method for n in ("conv1", "conv2", "fc1", "fc2")] == ["kept"] + ["gaussian"] * 3
    np.testing.assert_array_equal(m.blobs()["conv1"][0], donor.blobs()["conv1"][0])
    with pytest.raises(CaffeinitError, match="no layer 'conv9'"):
        initialize(model(PLAIN), images(1), InitConfig(reinit="conv9"), progress=False)


@pytest.mark.parametrize("batches,match", [
    ([{"image": np.zeros((2, 3, 12, 12), np.float32)}], "no values for input 'data'"),
    ([{"data": np.zeros((2, 3, 12, 12), np.float32), "label": np.zeros(2)}], "unknown input 'label'"),
    ([{"data": np.zeros((2, 3, 10, 12), np.float32)}], r"input 'data' has shape \(2, 3, 10, 12\)"),
    ([], "no images"),
])
def test_bad_batches(batches, match):
    with pytest.raises(CaffeinitError, match=match):
        initialize(model(PLAIN), batches, progress=False)


@pytest.mark.parametrize("field,value,match", [
    ("method", "lsuv", "unknown init method 'lsuv'"),
    ("between_iters", 0, r"between-iters must be at least 1, got 0 \(--no-between skips"),
    ("tolerance", 0.0, "tolerance must be positive"),
    ("bias", float("nan"), "bias must be a finite number, got nan")])
def test_bad_options(field, value, match):
    with pytest.raises(CaffeinitError, match=match):
        initialize(model(PLAIN), images(1), InitConfig(**{field: value}), progress=False)


def test_a_net_without_parameters_is_refused_and_a_frozen_one_is_left_as_it_is():
    from tests.init.nets import HEAD, conv, relu
    with pytest.raises(CaffeinitError, match="net 'bare' has no layer with parameters: nothing to initialize"):
        initialize(model(HEAD.format(name="bare") + relu("relu", "data")), images(1), progress=False)
    frozen = model(HEAD.format(name="frozen") + conv("conv1", "data", 4, extra='param { lr_mult: 0 } '))
    weights = [a.copy() for a in frozen.blobs()["conv1"]]
    report = initialize(frozen, images(2), progress=False)
    assert report.layer("conv1").method == "frozen" and report.between_iterations == 0
    for a, b in zip(frozen.blobs()["conv1"], weights):
        np.testing.assert_array_equal(a, b)


BRANCHED = """name: "branched"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "a" top: "a" }
layer { name: "b" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "c" type: "Convolution" bottom: "a" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "c" top: "cat" }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_the_within_steps_stored_values_are_counted_after_each_layer():
    """Alive after each layer, per image (floats): a 256, relu 256, b 256 + 384 (the ReLU's output still feeds c),
    c 384 + 128, cat 512, fc nothing later reads."""
    from caffeinit.init.within import stored_peak
    per_image, where = stored_peak(model(BRANCHED).net)
    assert per_image == 4 * (256 + 384) and where.name == "b"


def test_the_within_steps_memory_estimate():
    """BRANCHED, batches of 2: per image the stored 640 floats with their overhead and the 192-float input; fixed,
    one batch's input and output of the largest top (cat: 512 floats; the parameters are already in memory)."""
    from caffeinit.init.within import STORED_OVERHEAD, memory_estimate
    estimate = memory_estimate(model(BRANCHED).net, batch_size=2)
    assert estimate.stored == 4 * 640 and estimate.where.name == "b"
    assert estimate.per_image == pytest.approx(STORED_OVERHEAD * 4 * 640 + 4 * 192)
    assert estimate.fixed == 2 * 4 * 512 * 2
    assert estimate.images_within(estimate.total(10)) == 10 and estimate.images_within(estimate.total(10) - 1) == 9


def test_a_within_step_that_cannot_fit_in_memory_is_refused_before_any_work(monkeypatch):
    from caffeinit.init import pipeline
    from caffeinit.init.within import memory_estimate
    m = model(BRANCHED)
    before = {k: [a.copy() for a in v] for k, v in m.blobs().items()}
    batches = images(5, batch=2, size=8)  # 10 images
    need = int(memory_estimate(m.net, 2).total(10))
    monkeypatch.setattr(pipeline, "available_memory", lambda device: need - 1)
    with pytest.raises(CaffeinitError, match=r"^the within-layer step keeps every image's values \(0.0 MiB per image "
                                             r"after layer 'b' \(Convolution\)\): for 10 images it needs about 0.1 "
                                             r"MiB, more than the 0.1 MiB of memory available \(about 9 images fit\): "
                                             r"use fewer images \(--num-images\) or smaller inputs$"):
        initialize(m, batches, InitConfig(), progress=False)
    assert all(np.array_equal(a, b) for k in before for a, b in zip(before[k], m.blobs()[k]))
    monkeypatch.setattr(pipeline, "available_memory", lambda device: need)
    with pytest.warns(UserWarning, match=r"^the within-layer step keeps every image's values .*: for 10 images it "
                                         r"needs about 0.1 MiB, most of the 0.1 MiB of memory available: it may run "
                                         r"out \(--num-images lowers it\)$"):
        initialize(m, batches, InitConfig(between=False), progress=False)
    monkeypatch.setattr(pipeline, "available_memory", lambda device: need / 0.8 + 1)  # fits, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        initialize(m, batches, InitConfig(between=False), progress=False)
    monkeypatch.setattr(pipeline, "available_memory", lambda device: need - 1)
    initialize(m, batches, InitConfig(within=False), progress=False)  # only the within step stores every image
    # refused as soon as the images loaded so far would not fit, not after loading them all
    consumed = []

    def counted():
        for i, batch in enumerate(batches):
            consumed.append(i)
            yield batch
    monkeypatch.setattr(pipeline, "available_memory", lambda device: int(memory_estimate(m.net, 2).total(6)))
    with pytest.raises(CaffeinitError, match=r"for 8 images it needs about .* \(about 6 images fit\)"):
        initialize(m, counted(), InitConfig(), progress=False)
    assert consumed == [0, 1, 2, 3]


def test_a_default_image_count_shrinks_to_what_fits(monkeypatch):
    from caffeinit.init import pipeline
    from caffeinit.init.within import memory_estimate
    net = model(BRANCHED).net
    estimate = memory_estimate(net, 2)
    monkeypatch.setattr(pipeline, "available_memory", lambda device: estimate.total(160) / 0.7)
    assert pipeline.images_that_fit(net, "cpu", 2, 160) == 160
    monkeypatch.setattr(pipeline, "available_memory", lambda device: (estimate.total(100) + 1) / 0.7)
    assert pipeline.images_that_fit(net, "cpu", 2, 160) == 100  # filling 70%: clear of the warning at 80%
    monkeypatch.setattr(pipeline, "available_memory", lambda device: 1)
    assert pipeline.images_that_fit(net, "cpu", 2, 160) == 2  # one batch: initialize then says why it cannot run
    monkeypatch.setattr(pipeline, "available_memory", lambda device: None)
    assert pipeline.images_that_fit(net, "cpu", 2, 160) == 160


def test_gradient_passes_that_do_not_fit_run_in_chunks_and_give_the_same_weights(monkeypatch):
    """Where a whole batch's gradient pass would not fit, the passes run a few images at a time (said once, kept in
    the report): the weights are those of whole passes up to float rounding. Where one image does not fit, the
    run is refused before any work."""
    from caffeinit.init import pipeline
    from caffeinit.init.rates import pass_bytes_per_image
    from caffeinit.init.scale_model import build_scale_model
    from caffeinit.init.within import values_per_image
    batches = images(3, batch=8, seed=6)
    whole = model(PLAIN)
    report = initialize(whole, batches, InitConfig(), progress=False)
    assert report.gradient_chunk is None

    m = model(PLAIN)
    per_image = pass_bytes_per_image(m.module, build_scale_model(m.module), {"data": torch.from_numpy(
        batches[0]["data"])}, build_scale_model(m.module).groups) + 2 * values_per_image(m.net)[1]
    per_image *= pipeline.PASS_OVERHEAD
    gradients = sum(4.0 * p.numel() for p in m.module.parameters())
    monkeypatch.setattr(pipeline, "check_memory", lambda *a, **k: False)  # the within step's own check: tested above
    monkeypatch.setattr(pipeline, "available_memory", lambda device: (gradients + 3.5 * per_image) / 0.8)
    with pytest.warns(UserWarning, match=r"^the between-layer step's gradient passes would keep about .* for a batch "
                                         r"of 8 images, more than the .* of memory available allows: they run 3 "
                                         r"images at a time \(the same change rates up to float rounding\)$"):
        report = initialize(m, batches, InitConfig(), progress=False)
    assert report.gradient_chunk == 3 and report.to_dict()["gradient_chunk"] == 3
    whole_report = initialize(model(PLAIN), batches, InitConfig(between=False), progress=False)
    for split, one in zip(report.layers, whole_report.layers):  # 'before' on 4 images: chunks of 3 and 1
        for key in ("mean_before", "std_before", "rate_before"):
            assert getattr(split, key) == pytest.approx(getattr(one, key), rel=1e-4), (split.name, key)
    for name, arrays in whole.blobs().items():
        for a, b in zip(arrays, m.blobs()[name]):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max())

    fresh = model(PLAIN)
    before = {k: [a.copy() for a in v] for k, v in fresh.blobs().items()}
    monkeypatch.setattr(pipeline, "available_memory", lambda device: (gradients + 0.5 * per_image) / 0.8)
    with pytest.raises(CaffeinitError, match=r"^the between-layer step's gradient passes keep .* per image for their "
                                             r"backward, besides .* of gradients: more than the .* of memory "
                                             r"available allows \(--no-between skips that step\)$"):
        initialize(fresh, batches, InitConfig(), progress=False)
    assert all(np.array_equal(a, b) for k in before for a, b in zip(before[k], fresh.blobs()[k]))


def test_pinned_pass_images_split_the_passes_the_same_on_any_memory(monkeypatch):
    """``pass_images`` splits the gradient passes as given whatever the memory: with plenty it gives the bits that
    an automatic split to that size gives where memory is short (so --seed's bits do not depend on the machine's
    memory); a pinned size that does not fit is refused before any work, with how many fit."""
    from caffeinit.init import pipeline
    from caffeinit.init.rates import pass_bytes_per_image
    from caffeinit.init.scale_model import build_scale_model
    from caffeinit.init.within import values_per_image
    batches = images(3, batch=8, seed=6)
    pinned = model(PLAIN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: no warning
        report = initialize(pinned, batches, InitConfig(pass_images=3), progress=False)
    assert report.gradient_chunk == 3

    m = model(PLAIN)
    sm = build_scale_model(m.module)
    per_image = pipeline.PASS_OVERHEAD * (pass_bytes_per_image(m.module, sm, {"data": torch.from_numpy(
        batches[0]["data"])}, sm.groups) + 2 * values_per_image(m.net)[1])
    gradients = sum(4.0 * p.numel() for p in m.module.parameters())
    monkeypatch.setattr(pipeline, "check_memory", lambda *a, **k: False)
    monkeypatch.setattr(pipeline, "available_memory", lambda device: (gradients + 3.5 * per_image) / 0.8)
    with pytest.warns(UserWarning, match="they run 3 images at a time"):
        assert initialize(m, batches, InitConfig(), progress=False).gradient_chunk == 3
    for name, arrays in pinned.blobs().items():
        assert all(np.array_equal(a, b) for a, b in zip(arrays, m.blobs()[name])), name

    fresh = model(PLAIN)
    before = {k: [a.copy() for a in v] for k, v in fresh.blobs().items()}
    with pytest.raises(CaffeinitError, match=r"^pass-images 5: a gradient pass of 5 images would keep about .*, more "
                                             r"than the .* of memory available allows: at most 3 fit$"):
        initialize(fresh, batches, InitConfig(pass_images=5), progress=False)
    assert all(np.array_equal(a, b) for k in before for a, b in zip(before[k], fresh.blobs()[k]))
    with pytest.raises(CaffeinitError, match="^pass-images must be at least 1, got 0$"):
        InitConfig(pass_images=0).check()


FIXED_BATCH = PLAIN.replace('bottom: "pool2" top: "fc1"', 'bottom: "rows" top: "fc1"').replace(
    'layer { name: "fc1"', 'layer { name: "rows" type: "Reshape" bottom: "pool2" top: "rows" '
    'reshape_param { shape { dim: 8 dim: -1 } } }\nlayer { name: "fc1"')


def test_a_net_that_runs_only_at_its_declared_batch_size():
    """A Reshape that fixes the first dim at the declared batch (8): initialized with batches of 8, the 'before'
    pass takes a whole batch instead of its 4 images; a batch of another size is refused before any work."""
    m = model(FIXED_BATCH)
    report = initialize(m, images(3, batch=8, seed=2), InitConfig(), progress=False)
    assert report.before_images == 8 and report.between_converged
    assert all(np.isfinite(a).all() for arrays in m.blobs().values() for a in arrays)

    fresh = model(FIXED_BATCH)
    before = {k: [a.copy() for a in v] for k, v in fresh.blobs().items()}
    with pytest.raises(CaffeinitError, match=r"^layer 'fc1' \(InnerProduct\): with batches of 4 its parameters .* "
                                             r"runs only with batches of exactly 8 images"):
        initialize(fresh, images(2, batch=8, seed=2) + images(1, batch=4, seed=3), InitConfig(), progress=False)
    assert all(np.array_equal(a, b) for k in before for a, b in zip(before[k], fresh.blobs()[k]))


def test_report_table_json_and_plot(tmp_path):
    m = model(PLAIN)
    report = initialize(m, images(2), InitConfig(), progress=False)
    text = report.table()
    for name in ("conv1", "conv2", "fc1", "fc2", "16 images ('before' on the first 4)"):
        assert name in text
    data = json.loads(json.dumps(report.to_dict()))
    assert [r["name"] for r in data["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert data["spread_after"] < 1.001 < data["spread_before"]
    assert data["spread_after"] < 1.001 < data["spread_between_start"]
    assert 0 < data["rate_noise"] < 1 and f"rates measured to +-{100 * report.rate_noise:.0f}%" in text
    per_layer = sorted(layer["rate_noise"] for layer in data["layers"])
    assert 0 < per_layer[0] and per_layer[-1] < 1  # each layer's own standard error; the summary gives their median
    assert per_layer[0] <= data["rate_noise"] <= per_layer[-1]
    report.layer("conv2").std_before = math.inf  # starting weights that overflow: valid JSON all the same
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["layers"][1]["std_before"] is None and "inf" in report.table()
    assert data["first_overflow_before"] == "conv2" and "overflow float32 from layer 'conv2'" in report.table()
    report.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    fig = report.figure()
    rate_ax, std_ax = fig.axes
    from matplotlib.container import BarContainer
    heights = [[bar.get_height() for bar in container] for container in rate_ax.containers + std_ax.containers
               if isinstance(container, BarContainer)]
    records = report.layers
    np.testing.assert_allclose(heights[0], [r.rate_before for r in records])
    np.testing.assert_allclose(heights[1], [r.rate_after for r in records])
    assert heights[2][0] == report.layer("conv1").std_before and math.isnan(heights[2][1])  # inf: no bar
    np.testing.assert_allclose(heights[3], [r.std_after for r in records])
    assert [t.get_text() for t in std_ax.get_xticklabels()] == ["conv1", "conv2", "fc1", "fc2"]
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_all_zero_starting_weights_get_their_before_statistics_from_a_forward_alone(monkeypatch):
    """A deploy net without fillers starts at zero weights: the outputs before are the biases (std 0) and there is no
    rate to measure, so no gradient pass is made for the report."""
    text = PLAIN.replace('weight_filler { type: "gaussian" std: 0.01 }', 'bias_filler { type: "constant" value: 0.5 }')
    m = model(text)
    import caffeinit.init.pipeline as init_module

    def no_gradient_pass(*args, **kwargs):
        raise AssertionError("a gradient pass for the starting weights")
    monkeypatch.setattr(init_module, "measure_rates", no_gradient_pass)
    report = initialize(m, images(2), InitConfig(between=False), progress=False)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = report.layer(name)
        assert (layer.mean_before, layer.std_before, layer.rate_before) == (0.5, 0.0, None)
        assert layer.mean_after == pytest.approx(0.1) and layer.std_after == pytest.approx(1.0)


def test_starting_weights_that_overflow_are_named_and_the_init_is_finite(tmp_path):
    """Fillers of std 1e12 overflow float32 by fc1 (~1e13 per layer): the report names the first layer whose
    statistics before are not finite, and the drawn weights do not inherit anything from them."""
    m = model(PLAIN.replace("std: 0.01", "std: 1e12"))
    report = initialize(m, images(2), InitConfig(), progress=False)
    assert report.first_overflow() == "fc1"
    assert math.isfinite(report.layer("conv2").std_before) and not math.isfinite(report.layer("fc1").std_before)
    assert "overflow float32 from layer 'fc1' on" in report.table()
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["first_overflow_before"] == "fc1"
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert report.layer(name).std_after is not None and math.isfinite(report.layer(name).std_after)
    out = m.forward(images(1, seed=9)[0], ["fc2"])["fc2"]
    assert np.isfinite(out).all() and 0 < np.abs(out).max() < 1e6
    assert report.spread() < 1.1


DIGITS = """name: "digits"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 32 dim: 1 dim: 8 dim: 8 } } }
""" + "".join(
    f'layer {{ name: "conv{i}" type: "Convolution" bottom: "{"data" if i == 1 else f"conv{i - 1}"}" top: "conv{i}" '
    f'convolution_param {{ num_output: 16 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.01 }} }} }}\n'
    f'layer {{ name: "relu{i}" type: "ReLU" bottom: "conv{i}" top: "conv{i}" }}\n' for i in range(1, 7)) + """
layer { name: "fc1" type: "InnerProduct" bottom: "conv6" top: "fc1"
        inner_product_param { num_output: 32 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu7" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.01 } } }
"""


@contextlib.contextmanager
def _one_thread():
    """Tiny ops: OpenMP barriers only cost time, and a lot of it on a machine busy with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(m, x, y, lr, steps=200, batch=32):
    params = [p for p in m.module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    value = m.net.value_of["fc2"]
    losses = []
    with _one_thread():
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            out = m.module({"data": x[idx]}, keep={value})[value]
            loss = torch.nn.functional.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return float(np.mean(losses[-20:]))


@pytest.mark.parametrize("lr", [0.001, 0.003, 0.01])
def test_trainability_on_digits(lr):
    """8-layer plain net, gaussian 0.01 fillers: stuck at ln 10 from the fillers, learns from caffeinit's weights."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0 - 0.5).astype(np.float32)[:, None])
    y = torch.from_numpy(digits.target.astype(np.int64))
    torch.manual_seed(0)
    filler = model(DIGITS)
    assert abs(_train(filler, x, y, lr) - math.log(10)) < 0.05
    m = model(DIGITS)
    batches = [{"data": x[i:i + 32].numpy()} for i in range(0, 320, 32)]
    initialize(m, batches, InitConfig(), progress=False)
    assert _train(m, x, y, lr) < 1.0


def test_a_deploy_init_loads_into_the_train_net_by_layer_names(tmp_path):
    """`caffe train --weights init.caffemodel` copies layers by name: every learnable layer of LeNet's train/test net
    finds its initialized blobs, with the shapes it needs, and the TRAIN net computes what the deploy net does."""
    from caffeinit.api import load
    from tests.conftest import shared_path
    deploy = load(shared_path("corpus", "bvlc__examples_mnist_lenet.prototxt"))
    rng = np.random.default_rng(2)
    batches = [{"data": rng.uniform(0, 1, (16, 1, 28, 28)).astype(np.float32)} for _ in range(4)]
    initialize(deploy, batches, InitConfig(), progress=False)
    out = tmp_path / "init.caffemodel"
    deploy.save_caffemodel(out)
    train = load(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"), out, phase="train",
                 input_shapes={"data": (16, 1, 28, 28), "label": (16,)})
    assert train.module.missing == []
    learnable = {name: blobs for name, blobs in train.blobs().items() if blobs}
    assert sorted(learnable) == ["conv1", "conv2", "ip1", "ip2"]
    for name, blobs in learnable.items():
        for got, want in zip(blobs, deploy.blobs()[name]):
            np.testing.assert_array_equal(got, want)
    x = batches[0]["data"]
    got = train.forward({"data": x, "label": np.zeros(16, np.float32)}, blobs=["ip2"])["ip2"]
    np.testing.assert_allclose(got, deploy.forward({"data": x}, blobs=["ip2"])["ip2"], rtol=1e-6, atol=1e-6)


def test_the_before_pass_has_its_own_progress_bar(capsys):
    """The report-only pass under the starting weights (FCN-8s: 25 s) shows a bar while it runs."""
    initialize(model(PLAIN), images(2, batch=4, seed=2), InitConfig(between=False), progress=True)
    assert "before-init rates" in capsys.readouterr().err


@pytest.mark.parametrize("names,match", [
    (("c", "c"), r"^two layers with parameters are named 'c' \(Convolution, top c1; Convolution, top c2\): a "
                 r"caffemodel stores weights under layer names, so Caffe would load both from one; rename one$"),
    (("c", ""), r"^a layer with parameters has no name \(Convolution, top c2\): a caffemodel stores weights under "
                r"layer names; name it$"),
])
def test_layers_with_parameters_need_distinct_names(names, match):
    from tests.init.nets import HEAD, conv
    text = HEAD.format(name="names") + conv("c1", "data", 8) + conv("c2", "c1", 4)
    text = text.replace('name: "c1"', f'name: "{names[0]}"').replace('name: "c2"', f'name: "{names[1]}"')
    with pytest.raises(CaffeinitError, match=match):
        initialize(model(text), images(1), InitConfig(), progress=False)


def test_a_weight_loaded_through_one_layer_is_kept_for_the_layers_sharing_it():
    """s1 and s2 share a weight; the file holds s1 only: s2 is listed as missing, yet drawing it would overwrite
    what s1 loaded."""
    from tests.init.nets import FROZEN_SHARED
    donor = model(FROZEN_SHARED)
    initialize(donor, images(2, seed=1), InitConfig(between=False, measure_before=False), progress=False)
    m = model(FROZEN_SHARED, {"s1": donor.blobs()["s1"]})
    report = initialize(m, images(2, seed=2), InitConfig(between=False, measure_before=False), progress=False)
    assert report.layer("s1").method == "kept" and report.layer("s2").method == "shared (s1)"
    np.testing.assert_array_equal(m.blobs()["s1"][0], donor.blobs()["s1"][0])
    np.testing.assert_array_equal(m.blobs()["s2"][0], donor.blobs()["s1"][0])


@pytest.mark.parametrize("reinit,refilled", [("missing", ()), ("all", ("pr", "shift")), ("conv2", ("shift",)),
                                             ("pr", ("pr", "shift"))])
def test_reinit_starts_the_layers_it_covers_that_are_not_drawn_from_their_fillers(reinit, refilled):
    """PReLU and Bias layers are not drawn by the init: a net without weights starts them from their fillers
    (Caffe's constant fillers here: slope 0.25, bias 0.5). ``--reinit`` covering them must do the same (they kept
    the loaded values while the report said 'filler'); ``missing`` and layers before FROM_LAYER keep the file's."""
    from tests.init.nets import HEAD, conv, ip, layer, relu
    text = (HEAD.format(name="refill") + conv("conv1", "data", 8)
            + layer("pr", "PReLU", "conv1", "conv1", 'prelu_param { filler { type: "constant" value: 0.25 } } ')
            + conv("conv2", "conv1", 8)
            + layer("shift", "Bias", "conv2", "conv2", 'bias_param { filler { type: "constant" value: 0.5 } } ')
            + relu("relu2", "conv2") + ip("fc", "conv2", 4))
    filler = {"pr": 0.25, "shift": 0.5}
    loaded = {k: [a.copy() for a in v] for k, v in model(text).blobs().items()}
    loaded["pr"][0][:], loaded["shift"][0][:] = 0.9, 0.3
    m = model(text, loaded)
    report = initialize(m, images(2), InitConfig(reinit=reinit, between=False, measure_before=False),
                        progress=False)
    for name in ("pr", "shift"):
        expected = filler[name] if name in refilled else loaded[name][0]
        np.testing.assert_array_equal(m.blobs()[name][0], np.broadcast_to(expected, loaded[name][0].shape), name)
    assert report.layer("pr").method == ("filler" if "pr" in refilled else "kept")


def test_after_statistics_past_a_non_homogeneous_layer_are_measured():
    """On MIXED (PReLU, LRN, Sigmoid) the between step's rescaling changes what follows those layers other than its
    model predicts: the report's 'after' statistics of those layers are measured with the final weights on the
    between step's first batch (a Sigmoid net's last layer was reported at std 1 while it measured 0.05); layers
    before them keep the within step's exact figures, rescaled."""
    from caffeinit.init.roles import affine_of
    from caffeinit.init.stats import ChannelStats
    m = model(MIXED)
    batches = images(4, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = initialize(m, batches, InitConfig(seed=0, measure_before=False), progress=False)
    assert report.homogeneous is False and report.between_iterations > 0 and report.after_images == 8
    first, every = {}, {}  # per layer: statistics on batch 0, on all batches
    with torch.no_grad():
        for i, batch in enumerate(batches):
            def tap(node, tops):
                if affine_of(node) is not None:
                    for where in ((first, every) if i == 0 else (every,)):
                        where.setdefault(node.name, ChannelStats()).update(tops[0], affine_of(node).channel_axis)
            m.module({"data": torch.from_numpy(batch["data"])}, keep=(), tap=tap)
    first_approximate = min(node.index for node in m.net.layers if node.type in ("PReLU", "LRN", "Sigmoid"))
    counts = [0, 0]
    for record in report.layers:
        if record.mean_after is None:
            continue
        past = m.net.layer(record.name).index > first_approximate
        stats = (first if past else every)[record.name]  # measured on batch 0, or predicted exactly on all
        assert record.mean_after == pytest.approx(float(stats.mean.mean()), rel=1e-4, abs=1e-6), record.name
        assert record.std_after == pytest.approx(float(stats.std.mean()), rel=1e-4), record.name
        counts[past] += 1
    assert counts[0] >= 1 and counts[1] >= 2
