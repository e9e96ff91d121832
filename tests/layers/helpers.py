"""Shared helpers of the layer tests: build one layer from text, run it on numpy arrays, replay conformance cases."""
import numpy as np
import torch
from google.protobuf import text_format

import caffeinit.layers  # noqa: F401  (registers every layer family, for conformance cases that mix them)
from caffeinit.layers.registry import layer_class
from caffeinit.proto import caffe_pb2
from tests.conftest import shared_path

# Whether this torch build has oneDNN's fused convolution, asked of torch itself (not of caffeinit's OptionalOp,
# which switches itself off after a rejected call: the fused-path tests must fail then, not skip).
ONEDNN_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def make(type_name, text="", n_bottoms=1, n_tops=1, phase=caffe_pb2.TEST):
    """A layer of ``type_name`` named 'L' with bottoms b0.. and tops t0.., parameters from prototxt ``text``."""
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    param.name, param.type = "L", type_name
    param.bottom.extend(f"b{i}" for i in range(n_bottoms))
    param.top.extend(f"t{i}" for i in range(n_tops))
    return layer_class(type_name)(param, phase)


def run(layer, *arrays, blobs=()):
    """setup + forward on numpy arrays; checks the forward agrees with setup's shapes."""
    layer.check_counts(len(layer.param.bottom), len(layer.param.top))
    shapes = layer.setup([a.shape for a in arrays])
    tops = layer.forward([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays],
                         [torch.from_numpy(b) for b in blobs])
    tops = [t.numpy() for t in tops]
    assert [t.shape for t in tops] == [tuple(s) for s in shapes]
    return tops


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def close(got, want, rtol=1e-6, atol=1e-6):
    np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=rtol, atol=atol)


def run_case(name, oracles=None):
    """Run a conformance case layer by layer (our layers; ``oracles`` {type: fn(param, bottoms, blobs)} for layers
    of other families) and compare every golden blob to <= 1e-5 relative to max |caffe|."""
    case = shared_path("conformance", name)
    net = text_format.Parse((case / "net.prototxt").read_text(), caffe_pb2.NetParameter())
    model = caffe_pb2.NetParameter()
    model.ParseFromString((case / "weights.caffemodel").read_bytes())
    weights = {layer.name: [np.array(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in layer.blobs]
               for layer in model.layer}
    values = {}
    for lp in net.layer:
        if lp.type == "Input":
            for top in lp.top:
                values[top] = np.load(case / f"in_{top}.npy").astype(np.float32)
            continue
        bottoms = [values[b] for b in lp.bottom]
        blobs = weights.get(lp.name, [])
        if oracles and lp.type in oracles:
            tops = oracles[lp.type](lp, bottoms, blobs)
        else:
            layer = layer_class(lp.type, lp.name)(lp, caffe_pb2.TEST)
            layer.check_counts(len(lp.bottom), len(lp.top))
            layer.setup([b.shape for b in bottoms])
            assert [tuple(s) for s in layer.blob_shapes] == [b.shape for b in blobs]
            tops = run(layer, *bottoms, blobs=blobs)
        values.update(zip(lp.top, tops))
    golden = np.load(case / "golden.npz")
    for blob in golden.files:
        want = golden[blob]
        assert values[blob].shape == want.shape, blob
        scale = max(float(np.abs(want).max()), 1e-30)
        assert np.abs(values[blob] - want).max() <= 1e-5 * scale, blob
