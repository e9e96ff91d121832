"""OpenCV's dnn module as an independent Caffe reader: corpus deploy nets with random weights give the same outputs.

OpenCV reads the prototxt and caffemodel with its own parser and runs its own kernels. Known OpenCV deviations
(/work/shared/notes/torch_onnx_notes.md §7) are avoided rather than papered over: it ignores LRN's k (the corpus nets
use the default k = 1), IP transpose, Log's parameters and Swish's beta (unused in the corpus), crashes on 0-axis
blobs (none in the corpus deploy nets), and spells round_mode as ceil_mode (format_net_with_ceil_mode).
"""

import cv2
import numpy as np
import pytest

from caffeinit.api import load
from caffeinit.fillers import scaled_random_blobs
from caffeinit.prototxt import format_net_with_ceil_mode
from tests.conftest import shared_path

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


@pytest.mark.parametrize("name", NETS)
def test_outputs_match_opencv(name, tmp_path):
    path = shared_path("corpus", name)
    rng = np.random.default_rng(0)
    model = load(path)
    model = load(path, weights=scaled_random_blobs(model.net, rng))
    (feed, shape), = model.net.feeds.items()
    x = rng.standard_normal((1,) + tuple(shape[1:])).astype(np.float32)

    proto_path, weights_path = tmp_path / "net.prototxt", tmp_path / "w.caffemodel"
    proto_path.write_text(format_net_with_ceil_mode(model.net_param))
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
