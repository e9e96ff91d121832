"""Shared helpers: export a net with random weights, run it in ONNX Runtime (CPU) and compare every blob with the
torch graph (TorchNet)."""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import torch

from caffeinit.executor import TorchNet
from caffeinit.net import build_net
from caffeinit.onnx_export import build_model
from caffeinit.prototxt import parse_net_text

TOLERANCE = 1e-5
FLT_MAX = float(np.finfo(np.float32).max)


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| over ordinary cells. NaN, infinities and Caffe's +-FLT_MAX (an empty max-pooling
    window) must match exactly and stay out of the scale."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), "NaN in different places"
    special = np.isinf(ref) | (np.abs(ref) >= FLT_MAX)
    assert np.array_equal(ours[special], ref[special]), "infinities or -FLT_MAX differ"
    finite = ~special & ~np.isnan(ref)
    if not finite.any():
        return 0.0
    scale = np.max(np.abs(ref[finite]))
    diff = np.max(np.abs(ours[finite] - ref[finite]))
    return float(diff / scale) if scale > 0 else float(diff)


def random_blobs(net, seed=0) -> dict[str, list[np.ndarray]]:
    """Random weights of sensible scale (1/sqrt(fan-in)); BatchNorm gets positive variances and a scale factor."""
    rng = np.random.default_rng(seed)
    blobs = {}
    for node in net.layers:
        shapes = node.layer.blob_shapes
        if not shapes:
            continue
        if node.type == "BatchNorm":
            c = shapes[0]
            factor = np.float32(rng.uniform(0.5, 2.0))
            blobs[node.name] = [rng.standard_normal(c).astype(np.float32) * factor,
                                rng.uniform(0.2, 2.0, c).astype(np.float32) * factor,
                                np.array([factor], np.float32)]
            continue
        arrays = []
        for shape in shapes:
            fan_in = math.prod(shape[1:]) if len(shape) >= 2 else 1
            array = rng.standard_normal(shape, dtype=np.float32)
            array *= np.float32(1 / math.sqrt(fan_in))
            arrays.append(array)
        blobs[node.name] = arrays
    return blobs


def random_feeds(shapes, seed=1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def export_and_compare(net_text, *, run_batch=None, feeds=None, static_batch=False, opset=None, seed=0,
                       tolerance=TOLERANCE, blobs=None, input_shapes=None):
    """Export ``net_text`` (random weights) with every blob as an output; run ORT CPU and the torch graph, with the
    batch size ``run_batch`` if given (the ONNX model keeps the prototxt's, or ``input_shapes``); check every blob.
    ``net_text`` may also be a NetParameter. Returns
    {value: relative error}, the export graph and the ORT results by graph output name."""
    param = parse_net_text(net_text) if isinstance(net_text, str) else net_text
    net = build_net(param, "test", input_shapes=input_shapes)
    blobs = random_blobs(net, seed) if blobs is None else blobs
    kwargs = {} if opset is None else {"opset": opset}
    graph = build_model(net, blobs, static_batch=static_batch, debug_outputs=True, **kwargs)
    run_net = net
    if run_batch is not None:
        run_net = build_net(param, "test", input_shapes={name: (run_batch,) + tuple(net.value_shapes[name][1:])
                                                         for name in graph.inputs})
    if feeds is None:
        feeds = random_feeds({name: run_net.value_shapes[name] for name in graph.inputs}, seed + 1)
    with torch.no_grad():
        reference = TorchNet(run_net, blobs)({k: torch.from_numpy(v) for k, v in feeds.items()})
    results = dict(zip(graph.outputs, session(graph.model).run(graph.outputs, feeds)))
    errors = {}
    for value, name in graph.value_names.items():
        if value in feeds or name not in results:
            continue
        errors[value] = rel_err(results[name], reference[value].detach().numpy())
    assert errors, "nothing was compared"
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tolerance, (worst, errors[worst])
    return errors, graph, results


def input_layer(name="data", shape=(2, 3, 6, 6)):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def layer(type_name, bottoms=("data",), tops=("out",), params="", name=None):
    """A layer in prototxt text."""
    name = name or tops[0] if tops else name or type_name.lower()
    lines = [f'name: "{name}"', f'type: "{type_name}"']
    lines += [f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops]
    return "layer { " + " ".join(lines) + " " + params + " }\n"


def assert_blobs_match_goldens(model, graph, ort_session, folder, inputs, tolerance=1e-5) -> None:
    """Run ``ort_session`` on a conformance case's inputs and compare every blob Caffe wrote (golden.npz) that the
    graph exposes (``debug_outputs=True``), the fed inputs excepted; at least one blob must be compared."""
    feeds = {name: np.load(folder / f"in_{name}.npy") for name in inputs if name in graph.inputs}
    results = dict(zip(graph.outputs, ort_session.run(graph.outputs, feeds)))
    golden = np.load(folder / "golden.npz")
    compared = 0
    for blob in golden.files:
        value = model.net.value_of[blob]
        if value in model.net.feeds:
            continue
        assert rel_err(results[graph.value_names[value]], golden[blob]) <= tolerance, blob
        compared += 1
    assert compared > 0
