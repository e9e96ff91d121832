"""The documented Python API, used as the README shows it."""
import numpy as np

import caffeinit
from caffeinit.data import batches
from caffeinit.data.netinput import ImageOptions, net_source
from tests.conftest import ROOT

CIFAR = ROOT / "models" / "cifar10_quick" / "deploy.prototxt"
IMAGES = ROOT / "models" / "images" / "list.txt"


def test_readme_workflow(tmp_path):
    model = caffeinit.load(CIFAR, device="cpu")
    source = net_source(model.net, ImageOptions(images=str(IMAGES)))
    report = caffeinit.initialize(model, batches(source, 4, 8, progress=False),
                                  caffeinit.InitConfig(method="kmeans", between_iters=2), progress=False)
    assert "conv1" in report.table()
    model.save_caffemodel(tmp_path / "init.caffemodel")
    result = caffeinit.export_onnx(model, tmp_path / "init.onnx")
    assert result.verification.max_rel_error <= 1e-4
    again = caffeinit.load(CIFAR, weights=tmp_path / "init.caffemodel")
    x = next(batches(source, 4, 4, progress=False))["data"]
    np.testing.assert_array_equal(model.forward({"data": x})["prob"], again.forward({"data": x})["prob"])
    blobs = again.forward({"data": x}, blobs="all")
    assert set(blobs) == {"data", "conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "ip1", "ip2", "prob"}
