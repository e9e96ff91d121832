"""Check an exported model: onnx.checker (full check) and an ONNX Runtime run against the torch graph.

ONNX Runtime falls back to the CPU silently when the CUDA provider cannot load, so the provider that actually
runs is read back from the session and a requested CUDA run that lands elsewhere is an error.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
import torch

from caffeinit.errors import CaffeinitError

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
FLT_MAX = float(np.finfo(np.float32).max)


def check_model(model: onnx.ModelProto | str | os.PathLike) -> None:
    """onnx.checker with full_check (strict shape inference); a failure becomes a one-line CaffeinitError."""
    target = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    try:
        onnx.checker.check_model(target, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CaffeinitError(f"the exported ONNX model fails onnx.checker: {first}") from None


def providers_for(device: str) -> list[str]:
    """Execution providers to ask for: "cpu"; "cuda" (CUDA first, an error without it); "auto" (CUDA if present)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device not in ("cuda", "auto"):
        raise CaffeinitError(f"unknown ONNX Runtime device '{device}' (use cpu, cuda or auto)")
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise CaffeinitError("ONNX Runtime has no CUDA execution provider here (install the gpu extra: "
                             f"onnxruntime-gpu instead of onnxruntime); available: {', '.join(available)}")
    return [CPU]


def ort_session(model: onnx.ModelProto | str | os.PathLike, device: str = "cpu", optimize: bool = True):
    """An InferenceSession on ``device`` and the provider that actually runs it (checked, not assumed)."""
    import onnxruntime as ort

    wanted = providers_for(device)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    providers: list = list(wanted)
    if wanted[0] == CUDA:
        providers[0] = (CUDA, {"use_tf32": "0"})  # Caffe's numbers need IEEE fp32 convolutions
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        if wanted[0] != CUDA:
            raise CaffeinitError(f"ONNX Runtime cannot load the exported model: {str(e).splitlines()[0]}") from None
        session = ort.InferenceSession(source, options, providers=wanted)  # older ORT without use_tf32
    used = session.get_providers()[0]
    if used != wanted[0]:
        raise CaffeinitError(f"ONNX Runtime fell back to {used} although {wanted[0]} was requested")
    return session, used


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - ref| / max |ref| over ordinary cells. NaN, infinities and +-FLT_MAX (Caffe's empty max-pooling
    window) must match exactly (a mismatch is infinite) and stay out of the scale, which they would swamp."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        return float("inf")
    nan = np.isnan(reference)
    if not np.array_equal(nan, np.isnan(ours)):
        return float("inf")
    special = np.abs(reference) >= FLT_MAX
    if not np.array_equal(ours[special], reference[special]):
        return float("inf")
    ordinary = ~nan & ~special
    ours, reference = ours[ordinary], reference[ordinary]
    if reference.size == 0:
        return 0.0
    diff = np.max(np.abs(ours - reference))
    scale = np.max(np.abs(reference))
    return float(diff / scale) if scale > 0 else float(diff)


@dataclass
class Verification:
    """The ORT run against the torch graph: worst relative error over all outputs and the provider that ran."""
    max_rel_error: float
    provider: str
    errors: dict[str, float] = field(default_factory=dict)  # graph output -> relative error


def random_inputs(shapes: Mapping[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def compare_with_torch(session, provider: str, export_graph, module, inputs: Mapping[str, np.ndarray]
                       ) -> Verification:
    """Run ``inputs`` ({graph input: array}) through ORT and through ``module`` (a TorchNet); compare outputs."""
    onnx_to_value = {name: value for value, name in export_graph.value_names.items()}
    feeds = {onnx_to_value[name]: torch.from_numpy(np.ascontiguousarray(a)).to(module.device)
             for name, a in inputs.items()}
    for node in module.net.layers:  # the torch graph wants every data-layer top, also those no layer reads
        for value in node.top_values if node.layer.is_data else ():
            if value not in feeds:
                feeds[value] = torch.zeros(module.net.value_shapes[value], device=module.device)
    wanted = [onnx_to_value[name] for name in export_graph.outputs]
    with torch.no_grad():
        reference = module(feeds, keep=wanted)
    try:
        results = session.run(export_graph.outputs, dict(inputs))
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise CaffeinitError(f"ONNX Runtime failed to run the exported model: {str(e).strip().splitlines()[0]}") \
            from None
    errors = {name: relative_error(ours, reference[onnx_to_value[name]].detach().cpu().numpy())
              for name, ours in zip(export_graph.outputs, results)}
    worst = max(errors.values(), default=0.0)
    return Verification(worst, provider, errors)
