"""export_onnx: the written file, its verification against the torch graph, and atomic output."""
import os

import numpy as np
import onnxruntime as ort
import pytest

import caffeinit
from caffeinit.errors import CaffeinitError
from caffeinit.onnx_export import export_onnx, registry
from tests.onnx_export.common import input_layer, layer, random_blobs, rel_err

NET = (input_layer(shape=(3, 3, 9, 9))
       + layer("Convolution", tops=("conv1",), params="convolution_param { num_output: 4 kernel_size: 3 }")
       + layer("ReLU", ("conv1",), ("conv1",), name="relu1")
       + layer("Pooling", ("conv1",), ("pool1",), "pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 }")
       + layer("InnerProduct", ("pool1",), ("prob",), "inner_product_param { num_output: 5 }"))


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(NET)
    net = caffeinit.load(path).net
    return caffeinit.load(path, weights=random_blobs(net))


def test_export_writes_a_verified_model(model, tmp_path):
    out = tmp_path / "net.onnx"
    result = export_onnx(model, out)
    assert result.verification.provider == "CPUExecutionProvider"
    assert result.verification.max_rel_error <= 1e-5
    assert set(result.verification.errors) == {"prob"}
    assert result.num_bytes == os.path.getsize(out)
    assert "max relative error" in result.summary() and "CPUExecutionProvider" in result.summary()
    # the file itself, at another batch size, against caffeinit's forward
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 9)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model.reshape({"data": (2, 3, 9, 9)})
    assert rel_err(session.run(["prob"], {"data": x})[0], model.forward({"data": x})["prob"]) <= 1e-5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_no_check(model, tmp_path):
    result = export_onnx(model, tmp_path / "net.onnx", check=False, static_batch=True, opset=19)
    assert result.verification is None and result.opset == 19


def test_unsupported_layer_leaves_existing_output_untouched(tmp_path):
    path = tmp_path / "train.prototxt"
    path.write_text(input_layer(shape=(2, 4)) + input_layer("label", (2,))
                    + layer("SoftmaxWithLoss", ("data", "label"), ("loss",), name="loss"))
    out = tmp_path / "net.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(CaffeinitError, match=r"^layer 'loss' \(SoftmaxWithLoss\): is a loss/accuracy layer"):
        export_onnx(caffeinit.load(path), out)
    assert out.read_bytes() == b"previous"


def test_failed_verification_leaves_existing_output_untouched(model, tmp_path, monkeypatch):
    """A converter that computes the wrong function (|x| for ReLU) is caught by the ORT-vs-torch check."""
    def wrong_relu(g, node, inputs, outputs, blobs):
        g.op("Abs", inputs, node.name, out=outputs[0])

    monkeypatch.setitem(registry._CONVERTERS, "ReLU", wrong_relu)
    out = tmp_path / "net.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(CaffeinitError, match=r"ONNX Runtime \(CPUExecutionProvider\) disagrees with the torch graph: "
                                             r"relative error .* on output 'prob'"):
        export_onnx(model, out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.prototxt", "net.onnx"]


def test_output_must_not_overwrite_an_input(model, tmp_path):
    source = tmp_path / "deploy.prototxt"
    with pytest.raises(CaffeinitError, match="refusing to overwrite input file"):
        export_onnx(model, source, inputs=[source])
    assert source.read_text() == NET


def test_cuda_request_without_cuda_is_an_error(model, tmp_path, monkeypatch):
    cpu_only = [p for p in ort.get_available_providers() if p != "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: cpu_only)  # an onnxruntime without CUDA, anywhere
    with pytest.raises(CaffeinitError, match="no CUDA execution provider"):
        export_onnx(model, tmp_path / "net.onnx", device="cuda")
    assert not (tmp_path / "net.onnx").exists()


def test_index_inputs_cannot_be_verified_on_random_data(tmp_path):
    """Random normal inputs are no indices: the check fails with one line that says how to skip it."""
    path = tmp_path / "embed.prototxt"
    path.write_text(input_layer(shape=(2, 5)) + layer("Embed", params="embed_param { input_dim: 7 num_output: 3 }"))
    model = caffeinit.load(path)
    with pytest.raises(CaffeinitError, match=r"^cannot verify the export on random inputs: layer 'out' \(Embed\).*"
                                             r"export without the check"):
        export_onnx(model, tmp_path / "embed.onnx")
    assert not (tmp_path / "embed.onnx").exists()
    assert export_onnx(model, tmp_path / "embed.onnx", check=False).verification is None


def test_an_input_no_layer_reads_does_not_stop_the_verification(tmp_path):
    """A deploy net declaring a 'label' input that nothing reads: the graph has no such input, and the check
    still runs the torch graph (which is fed something for it)."""
    path = tmp_path / "deploy.prototxt"
    path.write_text(input_layer(shape=(2, 3)) + input_layer("label", (2,)) + layer("ReLU", tops=("relu",)))
    result = export_onnx(caffeinit.load(path), tmp_path / "net.onnx")
    assert result.verification.errors == {"relu": 0.0}


@pytest.mark.parametrize("args, message", [
    (lambda m, p: ("deploy.prototxt", p), r"^export_onnx takes a model from caffeinit.load\(...\), not str "
                                          r"\('deploy.prototxt'\)$"),
    (lambda m, p: (m.net, p), r"^export_onnx takes a model from caffeinit.load\(...\), not Net$"),
    (lambda m, p: (m, None), r"^the ONNX path must be a path, not NoneType$"),
    (lambda m, p: (m, 3), r"^the ONNX path must be a path, not int$"),
])
def test_misuse_is_one_clear_error(model, tmp_path, args, message):
    with pytest.raises(CaffeinitError, match=message):
        export_onnx(*args(model, tmp_path / "net.onnx"))
    assert os.listdir(tmp_path) == ["deploy.prototxt"]  # nothing written


def test_a_torchnet_and_a_path_like_are_taken(model, tmp_path):
    result = export_onnx(model.module, tmp_path / "net.onnx", check=False)
    assert result.path == str(tmp_path / "net.onnx") and os.path.getsize(result.path) == result.num_bytes


@pytest.mark.parametrize("options, message", [
    ({"opset": "21"}, r"^opset must be an integer, not '21'$"),
    ({"opset": 21.0}, r"^opset must be an integer, not 21.0$"),
    ({"tolerance": None}, r"^tolerance must be a finite number, at least 0, not None$"),
    ({"tolerance": "1e-4"}, r"^tolerance must be a finite number, at least 0, not '1e-4'$"),
    ({"tolerance": float("nan")}, r"^tolerance must be a finite number, at least 0, not nan$"),
    ({"tolerance": -1e-4}, r"^tolerance must be a finite number, at least 0, not -0.0001$"),
    ({"inputs": None}, r"^inputs must be a list of paths, not NoneType$"),
    ({"inputs": "deploy.prototxt"}, r"^inputs must be a list of paths, not str$"),
    ({"inputs": [None]}, r"^each of export_onnx's inputs must be a path, not NoneType$"),
    ({"seed": -1}, r"^seed must be within 0 to 9223372036854775807, got -1$"),
    ({"seed": 1.5}, r"^seed must be an integer, not 1.5$"),
    ({"static_batch": "no"}, r"^static_batch must be True or False, not 'no'$"),
    ({"check": "no"}, r"^check must be True or False, not 'no'$"),
])
def test_options_of_the_wrong_type_are_one_clear_error(model, tmp_path, options, message):
    """Each was a raw TypeError or ValueError, or silently taken (a NaN tolerance failed every check, "no" was
    true)."""
    with pytest.raises(CaffeinitError, match=message):
        export_onnx(model, tmp_path / "net.onnx", **options)
    assert os.listdir(tmp_path) == ["deploy.prototxt"]  # nothing written
