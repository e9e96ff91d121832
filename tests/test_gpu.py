"""What a user of a CUDA GPU relies on (marked gpu, skipped without CUDA; tools/gpu_checks.sh runs them on a lent
GPU): Caffe's goldens on CUDA, IEEE fp32 by default, `caffeinit run --device cuda` end to end, CUDA gradients equal
to CPU ones, gradient passes split for memory, ONNX export of a CUDA model."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffeinit.api import load
from caffeinit.cli import main
from caffeinit.fillers import scaled_random_blobs
from caffeinit.init.scale_model import end_values
from caffeinit.prototxt import parse_net_text
from tests.conftest import ROOT, SHARED, shared_path
from tests.test_conformance import CASES, rel_err

DEVICE = "cuda"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]

CAFFENET = ROOT / "models" / "caffenet" / "deploy.prototxt"
IMAGES = ROOT / "models" / "images" / "list.txt"
AFFINE = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


# -- Caffe's numbers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_conformance_case_on_cuda_reproduces_caffe(case, tmp_path, capsys):
    folder = SHARED / "conformance" / case
    meta = json.loads((folder / "meta.json").read_text())
    out = tmp_path / "blobs.npz"
    argv = ["forward", str(folder / "net.prototxt"), "--weights", str(folder / "weights.caffemodel"),
            "--blobs", "all", "--out", str(out), "--device", DEVICE]
    for name in meta["inputs"]:
        argv += ["--input", f"{name}={folder / f'in_{name}.npy'}"]
    assert main(argv) == 0, capsys.readouterr().err
    ours, golden = np.load(out), np.load(folder / "golden.npz")
    assert sorted(ours.files) == sorted(golden.files)
    for blob in golden.files:
        assert ours[blob].shape == golden[blob].shape, blob
        assert rel_err(ours[blob], golden[blob]) <= 1e-5, (case, blob, rel_err(ours[blob], golden[blob]))


# A convolution (stride 2: no Winograd or FFT algorithm) and an InnerProduct with long dot products (2304 and 12544
# terms). With N(0,1) data the error relative to the largest output is about the unit roundoff of the inputs'
# rounding: ~1e-7 in IEEE fp32, ~4e-4 in TF32 (10-bit mantissa), whatever the length.
PRECISION_NET = '''name: "precision"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 256 dim: 28 dim: 28 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 64 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 128 } }
'''


def precision_errors(device) -> dict[str, float]:
    """Relative errors of the conv and fc outputs of PRECISION_NET loaded with ``load(..., device=device)``
    against a float64 CPU computation of the same function."""
    rng = np.random.default_rng(0)
    w_conv, b_conv = rng.standard_normal((64, 256, 3, 3)), rng.standard_normal(64)
    w_fc, b_fc = rng.standard_normal((128, 64 * 14 * 14)), rng.standard_normal(128)
    x = rng.standard_normal((4, 256, 28, 28))
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    model = load(parse_net_text(PRECISION_NET), device=device,
                 weights={"conv": [f32(w_conv), f32(b_conv)], "fc": [f32(w_fc), f32(b_fc)]})
    got = model.forward({"data": f32(x)}, blobs=["conv", "fc"])
    # the reference from the same float32-rounded numbers, computed in float64
    t = lambda a: torch.from_numpy(f32(a).astype(np.float64))  # noqa: E731
    conv = F.conv2d(t(x), t(w_conv), t(b_conv), stride=2, padding=1)
    fc = conv.flatten(1) @ t(w_fc).T + t(b_fc)
    return {"conv": rel_err(got["conv"], conv.numpy()), "fc": rel_err(got["fc"], fc.numpy())}


def test_ieee_fp32_is_the_default_on_cuda():
    errors = precision_errors(DEVICE)
    assert max(errors.values()) <= 1e-5, errors  # TF32 would give ~4e-4


def test_ieee_fp32_is_the_default_for_a_torch_device_too():
    """A fresh process that passes a torch.device (never calling select_device itself) gets IEEE fp32 too."""
    code = ("import torch, tests.test_gpu as t; "
            f"print(max(t.precision_errors(torch.device({DEVICE!r})).values()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) <= 1e-5


# -- gradients ---------------------------------------------------------------------------------------------------

GRADIENT_NETS = ["bvlc__models_bvlc_reference_caffenet_deploy", "bvlc__models_bvlc_googlenet_deploy",
                 "htshinichi__resnet50_stem"]


def gradients(path, weights, device, dtype, seed=0):
    """d(sum(G * end values))/d(every learnable blob) with N(0,1) inputs and injected gradients G (batch 2)."""
    model = load(path, weights=weights, device=device, input_shapes=_batch_of_two(path))
    module = model.module.to(dtype)
    rng = np.random.default_rng(seed)
    feeds = {model.net.feed_values[b]: torch.from_numpy(rng.standard_normal(s)).to(device, dtype)
             for b, s in model.net.feeds.items()}
    ends = end_values(model.net)
    params = [p for p in module.parameters() if p.requires_grad]
    with torch.enable_grad():
        out = module(feeds, keep=ends)
        loss = sum((torch.from_numpy(rng.standard_normal(tuple(out[v].shape))).to(device, dtype) * out[v]).sum()
                   for v in ends)
        grads = torch.autograd.grad(loss, params)
    return [g.detach().cpu().double().numpy() for g in grads]


def _batch_of_two(path):
    return {b: (2,) + tuple(s[1:]) for b, s in load(path).net.feeds.items()}


def _weights(name):
    path = shared_path("corpus", name + ".prototxt")
    real = path.with_suffix(".caffemodel")
    if real.exists():
        return path, str(real)
    return path, scaled_random_blobs(load(path).net, np.random.default_rng(0))


@pytest.mark.parametrize("name", GRADIENT_NETS)
def test_cuda_gradients_equal_cpu_gradients_in_float64(name):
    """In float64 (where no ReLU mask or max-pooling choice can flip between devices) the CUDA backward of every
    layer equals the CPU one to rounding."""
    path, weights = _weights(name)
    cpu = gradients(path, weights, "cpu", torch.float64)
    gpu = gradients(path, weights, DEVICE, torch.float64)
    assert len(cpu) == len(gpu) > 0
    for k, (a, b) in enumerate(zip(cpu, gpu)):
        assert np.abs(a - b).max() <= 1e-10 * np.abs(a).max(), (name, k)


@pytest.mark.parametrize("name", GRADIENT_NETS)
def test_cuda_gradients_equal_cpu_gradients_in_float32(name):
    """As the initialization runs (float32). A pre-activation within rounding of 0 (or a max-pooling near-tie) may
    send a gradient element another way on each device, moving a few elements by up to a few % of the blob's
    largest. Between float32 and float64 on the CPU (these nets, 5 seeds) that moved RMS(dL/dW), what the
    between-layer step uses, by up to 8e-4 and a blob as a whole (norm of the difference) by up to 6e-3; a wrong
    gradient moves both by ~1. Hence 5e-3 and 5e-2."""
    path, weights = _weights(name)
    cpu = gradients(path, weights, "cpu", torch.float32)
    gpu = gradients(path, weights, DEVICE, torch.float32)
    assert len(cpu) == len(gpu) > 0
    for k, (a, b) in enumerate(zip(cpu, gpu)):
        rms_a, rms_b = np.sqrt(np.mean(a ** 2)), np.sqrt(np.mean(b ** 2))
        assert abs(rms_b / rms_a - 1) <= 5e-3, (name, k, rms_a, rms_b)
        assert np.linalg.norm(a - b) <= 5e-2 * np.linalg.norm(a), (name, k)


# -- gradient passes split for memory ------------------------------------------------------------------------------

def _pass_setup(name, batch):
    from caffeinit.init.scale_model import build_scale_model
    path, weights = _weights(name)
    shapes = {b: (batch,) + tuple(s[1:]) for b, s in load(path).net.feeds.items()}
    model = load(path, weights=weights, device=DEVICE, input_shapes=shapes)
    rng = np.random.default_rng(2)
    feed = {model.net.feed_values[b]: torch.from_numpy(rng.standard_normal((batch,) + tuple(s[1:])).astype(
        np.float32)).to(DEVICE) for b, s in model.net.feeds.items()}
    return model, build_scale_model(model.module), feed


def test_cuda_gradient_passes_split_into_chunks_give_the_same_sums():
    from caffeinit.init import rates
    model, sm, feed = _pass_setup("htshinichi__resnet50_stem", 12)
    with rates.GradsOnly(model.module, sm.groups):
        whole = rates.square_grads(model.module, sm, feed, 0, 1, 3, sm.groups)
        split = rates.square_grads(model.module, sm, feed, 0, 1, 3, sm.groups, chunk=5)
    assert np.isfinite(whole).all() and (whole > 0).all()
    np.testing.assert_allclose(split, whole, rtol=1e-4)


def test_the_gradient_pass_estimate_covers_the_measured_cuda_peak():
    """What initialize budgets for a gradient pass (caffeinit.init.pipeline.gradient_chunk) is at least the pass's
    measured peak on the device, and not wildly more (VGG-16, 16 images)."""
    from caffeinit.init import pipeline, rates
    from caffeinit.init.within import values_per_image
    model, sm, feed = _pass_setup("soeaver__deploy_vgg16-pytorch", 16)
    kept = rates.pass_bytes_per_image(model.module, sm, feed, sm.groups)
    budget = pipeline.PASS_OVERHEAD * (kept + 2 * values_per_image(model.net)[1]) * 16
    budget += sum(4.0 * p.numel() for p in model.module.parameters())
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with rates.GradsOnly(model.module, sm.groups):
        rates.square_grads(model.module, sm, feed, 0, 1, 3, sm.groups)
    torch.cuda.synchronize()
    used = torch.cuda.max_memory_allocated() - base
    print(f"VGG-16 gradient pass, 16 images: {used / 2 ** 30:.2f} GiB, budgeted {budget / 2 ** 30:.2f} GiB")
    assert used <= budget <= 3 * used


# -- `caffeinit run --device cuda` end to end ------------------------------------------------------------------

def init_images(model, num_images, batch_size):
    """The batches `caffeinit run --images models/images/list.txt` feeds (default preprocessing, seed 0)."""
    from caffeinit.data import batches
    from caffeinit.data.netinput import ImageOptions, net_source

    source = net_source(model.net, ImageOptions(images=str(IMAGES)))
    return list(batches(source, batch_size, num_images, seed=0, progress=False))


def channel_stats(model, batches):
    """Per-channel mean and std (float64, over images and positions) of every AFFINE layer's own output (before
    its in-place ReLU), computed on the CPU."""
    sums = {}

    def tap(node, tops):
        if node.name in AFFINE:
            x = tops[0].double().transpose(0, 1).reshape(tops[0].shape[1], -1)
            s = sums.setdefault(node.name, [0, 0.0, 0.0])
            s[0] += x.shape[1]
            s[1] = s[1] + x.sum(1)
            s[2] = s[2] + (x * x).sum(1)

    with torch.no_grad():
        for b in batches:
            model.module({model.net.feed_values["data"]: torch.from_numpy(b["data"])}, tap=tap)
    stats = {}
    for name, (n, s1, s2) in sums.items():
        mean = (s1 / n).numpy()
        stats[name] = (mean, np.sqrt(np.maximum((s2 / n).numpy() - mean ** 2, 0)))
    return stats


def run_caffenet(tmp_path, *extra):
    out, report = tmp_path / "init.caffemodel", tmp_path / "report.json"
    argv = ["run", str(CAFFENET), "--images", str(IMAGES), "--num-images", "64", "--batch-size", "16",
            "--device", DEVICE, "--quiet", "-o", str(out), "--report", str(report), *extra]
    assert main(argv) == 0
    from caffeinit.weights import load_weights
    blobs = load_weights(str(out))
    assert sorted(blobs) == sorted(AFFINE)
    assert all(np.isfinite(a).all() for arrays in blobs.values() for a in arrays)
    return load(CAFFENET, weights=str(out), device="cpu"), json.loads(report.read_text())


def test_run_on_cuda_normalizes_every_channel_of_caffenet(tmp_path):
    model, report = run_caffenet(tmp_path, "--no-between")
    assert all(layer["dead"] == 0 for layer in report["layers"])
    stats = channel_stats(model, init_images(model, 64, 16))
    assert sorted(stats) == sorted(AFFINE)
    for name, (mean, std) in stats.items():  # exact on the init images, up to CPU-vs-CUDA rounding
        np.testing.assert_allclose(mean, 0.1, atol=2e-4, err_msg=name)
        np.testing.assert_allclose(std, 1.0, rtol=2e-4, err_msg=name)


def test_run_on_cuda_equalizes_change_rates_and_writes_onnx(tmp_path):
    import onnxruntime as ort
    from caffeinit.init.measure import measure, spread

    onnx_path = tmp_path / "init.onnx"
    model, report = run_caffenet(tmp_path, "--onnx", str(onnx_path))  # the run verifies the ONNX file itself
    assert report["spread_after"] <= 1.1, report["spread_after"]  # tolerance 0.05 on every rate
    # measured again on the CPU, with other gradient draws: sampling noise on top
    images = init_images(model, 64, 16)
    measured = measure(model, images, draws=1, seed=1)
    assert spread(measured) <= 1.2, [(m.name, m.effective_rate) for m in measured]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = images[0]["data"][:2]
    want = model.forward({"data": x})["prob"]
    got = session.run(["prob"], {"data": x})[0]
    # the export's own tolerance: two fp32 engines over 8 layers differ by ~1e-5 of the largest probability
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


# -- ONNX ----------------------------------------------------------------------------------------------------------

def test_onnx_export_of_a_cuda_model_verifies_in_onnxruntime_cpu(tmp_path):
    import onnxruntime as ort
    from caffeinit.onnx_export import export_onnx

    path = shared_path("corpus", "bvlc__models_bvlc_googlenet_deploy.prototxt")
    model = load(path, weights=scaled_random_blobs(load(path).net, np.random.default_rng(0)), device=DEVICE)
    result = export_onnx(model, tmp_path / "net.onnx", device="cpu")  # ORT on the CPU against torch on the GPU
    assert result.verification.provider == "CPUExecutionProvider"
    assert result.verification.max_rel_error <= 1e-4
    x = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype(np.float32)
    want = model.forward({"data": x})["prob"]
    got = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"]).run(
        ["prob"], {"data": x})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_cuda_provider_reproduces_caffe(case):
    import onnxruntime as ort
    from caffeinit.onnx_export import build_model
    from caffeinit.onnx_export.verify import ort_session
    from tests.onnx_export.common import assert_blobs_match_goldens

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here (providers: "
                    f"{', '.join(ort.get_available_providers())}; onnxruntime-gpu would add it)")
    folder = SHARED / "conformance" / case
    meta = json.loads((folder / "meta.json").read_text())
    model = load(folder / "net.prototxt", weights=folder / "weights.caffemodel", device=DEVICE)
    graph = build_model(model.net, model.module.blobs_numpy(), debug_outputs=True)
    session, provider = ort_session(graph.model, "cuda")
    assert provider == "CUDAExecutionProvider"
    assert_blobs_match_goldens(model, graph, session, folder, meta["inputs"])
