"""Every within-layer method on real-world nets of the corpus and real images: what a sweep over the corpus found
(zca made a dead channel in MobileNet's depthwise layers) stays found."""
import warnings

import numpy as np
import pytest

from caffeinit.api import load
from caffeinit.data import batches
from caffeinit.data.netinput import ImageOptions, net_source
from caffeinit.init import InitConfig, initialize
from tests.conftest import ROOT, shared_path

NETS = {"mobilenet": ("shicai__mobilenet_deploy.prototxt", False),  # depthwise + BatchNorm/Scale
        "squeezenet": ("squeeze__SqueezeNet_v1.1_deploy.prototxt", False),  # Concat
        "lenet_v0": ("v0__lenet.prototxt", True)}  # legacy V0 format, greyscale


@pytest.mark.slow
@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("method", ["orthogonal", "pca", "zca", "kmeans", "rand"])
def test_every_method_on_corpus_nets_and_real_images(net, method):
    name, gray = NETS[net]
    model = load(shared_path("corpus", name), device="cpu")
    options = ImageOptions(images=str(ROOT / "models" / "images" / "list.txt"), gray=gray)
    data = list(batches(net_source(model.net, options), 4, 8, progress=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = initialize(model, data, InitConfig(method=method, between_batches=2), progress=False)
    # with 8 images only layers that have fewer input samples than outputs fall back to gaussian; nothing else warns
    fallbacks = {str(w.message).split("'")[1] for w in caught if "input samples for" in str(w.message)}
    assert [str(w.message) for w in caught if "input samples for" not in str(w.message)] == []
    assert report.between_converged and report.spread() < 1.5
    for record in report.layers:
        assert record.dead == 0, record.name  # real images: every unit responds
        if record.type in ("Convolution", "InnerProduct"):
            assert record.method == ("gaussian" if record.name in fallbacks else method), record.name
    assert all(np.isfinite(a).all() for arrays in model.blobs().values() for a in arrays)
