"""OpenCV's dnn module as an independent Caffe reader: corpus deploy nets with random weights give the same outputs.

OpenCV reads the prototxt and caffemodel with its own parser and runs its own kernels. Known OpenCV deviations
(/work/shared/notes/torch_onnx_notes.md §7) are avoided rather than papered over: it ignores LRN's k (the corpus nets
use the default k = 1), IP transpose, Log's parameters and Swish's beta (unused in the corpus), crashes on 0-axis
blobs (none in the corpus deploy nets), and spells round_mode as ceil_mode (rewritten below).
"""
import re

import numpy as np
import pytest

from caffeinit.api import load
from caffeinit.prototxt import format_net
from tests.conftest import SHARED

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("this OpenCV has no Caffe reader (OpenCV 5 removed it)", allow_module_level=True)

NETS = [
    "bvlc__examples_mnist_lenet.prototxt",
    "bvlc__examples_cifar10_cifar10_quick.prototxt",
    "bvlc__examples_cifar10_cifar10_full.prototxt",
    "bvlc__models_bvlc_reference_caffenet_deploy.prototxt",
    "bvlc__models_bvlc_alexnet_deploy.prototxt",
    "bvlc__models_bvlc_googlenet_deploy.prototxt",
    "bvlc__models_finetune_flickr_style_deploy.prototxt",
    "kaiming__ResNet-50-deploy.prototxt",
    "squeeze__SqueezeNet_v1.0_deploy.prototxt",
    "squeeze__SqueezeNet_v1.1_deploy.prototxt",
    "shicai__mobilenet_deploy.prototxt",
    "shicai__DenseNet_121.prototxt",
    "soeaver__deploy_vgg16-pytorch.prototxt",
    "v1__alexnet_deploy.prototxt",
    "v0__lenet.prototxt",
]


def random_blobs(model, rng):
    """Weights that keep activations O(1) through deep nets: N(0, 1/fan_in) filters, sane BatchNorm statistics."""
    blobs = {}
    for node in model.net.layers:
        shapes = node.layer.blob_shapes
        if not shapes:
            continue
        if node.type == "BatchNorm":
            c = shapes[0]
            blobs[node.name] = [rng.normal(0, 0.1, c).astype(np.float32),
                                rng.uniform(0.5, 1.5, c).astype(np.float32), np.array([1.0], np.float32)]
            continue
        arrays = []
        for k, s in enumerate(shapes):
            if k == 0 and len(s) >= 2 and node.type not in ("Scale", "Bias", "PReLU"):
                fan_in = int(np.prod(s[1:])) if node.type != "Deconvolution" else int(s[0] * np.prod(s[2:]))
                arrays.append(rng.normal(0, 1 / np.sqrt(fan_in), s).astype(np.float32))
            elif node.type == "Scale" and k == 0:
                arrays.append((1 + rng.normal(0, 0.1, s)).astype(np.float32))
            else:
                arrays.append(rng.normal(0, 0.1, s).astype(np.float32))
        blobs[node.name] = arrays
    return blobs


def opencv_text(model) -> str:
    text = format_net(model.net_param)
    return re.sub(r"round_mode:\s*FLOOR", "ceil_mode: false", re.sub(r"round_mode:\s*CEIL", "ceil_mode: true", text))


@pytest.mark.parametrize("name", NETS)
def test_outputs_match_opencv(name, tmp_path):
    path = SHARED / "corpus" / name
    if not path.exists():
        pytest.skip("../shared is not present")
    rng = np.random.default_rng(0)
    model = load(path)
    model = load(path, weights=random_blobs(model, rng))
    (feed, shape), = model.net.feeds.items()
    x = rng.standard_normal((1,) + tuple(shape[1:])).astype(np.float32)

    proto_path, weights_path = tmp_path / "net.prototxt", tmp_path / "w.caffemodel"
    proto_path.write_text(opencv_text(model))
    model.save_caffemodel(weights_path)
    cv_net = cv2.dnn.readNetFromCaffe(str(proto_path), str(weights_path))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setInput(x, feed)

    # Compare the input of the final Softmax (probabilities saturate) and the net's output.
    last = model.net.layers[-1]
    names = [model.net.layers[-2].name, last.name] if last.type == "Softmax" else [last.name]
    cv_out = cv_net.forward(names)
    ours = model.forward({feed: x}, blobs=[model.net.layer(n).tops[0] for n in names])
    for n, theirs in zip(names, cv_out):
        mine = ours[model.net.layer(n).tops[0]]
        theirs = theirs.reshape(mine.shape)
        err = np.abs(mine - theirs).max() / max(np.abs(theirs).max(), 1e-12)
        assert err <= 1e-4, (name, n, err)
