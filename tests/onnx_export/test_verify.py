"""verify: the relative error, the checker's one-line errors and the detection of ORT's silent CPU fallback."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from caffeinit.errors import CaffeinitError
from caffeinit.onnx_export import verify


def test_relative_error_hand_computed():
    ref = np.array([1.0, -4.0, 2.0], np.float32)
    assert verify.relative_error(np.array([1.0, -4.0, 2.5]), ref) == pytest.approx(0.5 / 4)
    assert verify.relative_error(ref, ref) == 0.0
    nan = np.array([np.nan, 1.0])
    assert verify.relative_error(nan, nan) == 0.0
    assert verify.relative_error(np.array([0.0, 1.0]), nan) == float("inf")
    assert verify.relative_error(np.zeros(2), np.zeros(3)) == float("inf")


def test_relative_error_is_not_swamped_by_an_empty_max_window():
    """Caffe's -FLT_MAX (an empty max-pooling window) must match exactly and not scale the other cells' error."""
    flt_max = float(np.finfo(np.float32).max)
    ref = np.array([-flt_max, 1.0, -2.0], np.float32)
    assert verify.relative_error(np.array([-flt_max, 1.0, -3.0]), ref) == pytest.approx(0.5)
    assert verify.relative_error(np.array([-np.inf, 1.0, -2.0]), ref) == float("inf")
    assert verify.relative_error(np.array([-flt_max, 1.0, -2.0]), ref) == 0.0
    inf = np.array([np.inf, -np.inf, 2.0])
    assert verify.relative_error(inf, inf) == 0.0
    assert verify.relative_error(np.array([np.inf, np.inf, 2.0]), inf) == float("inf")


def _identity_model(declare_output_shape=True):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2] if declare_output_shape else None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_checker_failure_is_one_line():
    model = _identity_model()
    model.graph.node[0].input[0] = "missing"
    with pytest.raises(CaffeinitError, match="^the exported ONNX model fails onnx.checker: ") as info:
        verify.check_model(model)
    assert "\n" not in str(info.value)
    verify.check_model(_identity_model())


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a real CUDA provider")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_silent_cpu_fallback_is_detected(monkeypatch):
    """ORT given a CUDA provider it cannot load runs on the CPU without an error; we must notice."""
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider"] + available)
    with pytest.raises(CaffeinitError, match="fell back to CPUExecutionProvider although CUDAExecutionProvider"):
        verify.ort_session(_identity_model(), "cuda")


def test_provider_names():
    assert verify.providers_for("cpu") == ["CPUExecutionProvider"]
    assert verify.providers_for("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(CaffeinitError, match="unknown ONNX Runtime device 'tpu'"):
        verify.providers_for("tpu")
    session, provider = verify.ort_session(_identity_model(), "cpu")
    assert provider == "CPUExecutionProvider"
    out = session.run(["y"], {"x": np.array([[-1, 2]], np.float32)})[0]
    np.testing.assert_array_equal(out, [[0, 2]])
