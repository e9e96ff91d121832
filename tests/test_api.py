"""The documented Python API, used as the README shows it."""
import json

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
    from caffeinit.init import InitReport
    assert isinstance(report, InitReport) and [r.name for r in report.layers][:2] == ["conv1", "conv2"]
    assert report.between_converged and report.spread() < 2 and report.before_images == 4
    assert set(report.seconds) == {"load", "before", "within", "between"}
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["spread_after"] == report.spread()
    figure = report.figure()
    assert len(figure.axes) == 2
    import matplotlib.pyplot as plt
    plt.close(figure)
    model.save_caffemodel(tmp_path / "init.caffemodel")
    result = caffeinit.export_onnx(model, tmp_path / "init.onnx")
    assert result.verification.max_rel_error <= 1e-4
    again = caffeinit.load(CIFAR, weights=tmp_path / "init.caffemodel")
    x = next(batches(source, 4, 4, progress=False))["data"]
    np.testing.assert_array_equal(model.forward({"data": x})["prob"], again.forward({"data": x})["prob"])
    blobs = again.forward({"data": x}, blobs="all")
    assert set(blobs) == {"data", "conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "ip1", "ip2", "prob"}


def big_fc_net(extra=""):
    """An InnerProduct whose weight (1100 x 1000) is drawn in chunks by the fillers."""
    from caffeinit.prototxt import parse_net_text
    return parse_net_text(
        'name: "big"\nlayer { name: "d" type: "Input" top: "d" input_param { shape { dim: 2 dim: 1000 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "d" top: "fc" inner_product_param { num_output: 1100 '
        'weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.5 } } }\n' + extra)


def test_filler_weights_follow_the_seed_not_the_thread_count(monkeypatch):
    from caffeinit import fillers
    runs = []
    for cpus in (1, 2, 3):
        monkeypatch.setattr(fillers, "_usable_cpus", lambda: cpus)
        runs.append(caffeinit.load(big_fc_net(), seed=4).blobs())
    assert runs[0]["fc"][0].size > fillers.CHUNK
    for blobs in runs[1:]:
        for ours, first in zip(blobs["fc"], runs[0]["fc"]):
            np.testing.assert_array_equal(ours, first)
    assert not np.array_equal(caffeinit.load(big_fc_net(), seed=5).blobs()["fc"][0], runs[0]["fc"][0])


def test_saved_file_is_net_to_proto_and_blobs_stay_copies(tmp_path):
    model = caffeinit.load(big_fc_net())
    path = tmp_path / "m.caffemodel"
    model.save_caffemodel(path)
    assert path.read_bytes() == model.to_proto().SerializeToString()
    blobs = model.blobs()
    blobs["fc"][0][:] = 7  # the arrays blobs() returns are the caller's own
    assert not (model.blobs()["fc"][0] == 7).any()
    reloaded = caffeinit.load(big_fc_net(), weights=path)
    for ours, theirs in zip(reloaded.blobs()["fc"], caffeinit.load(big_fc_net()).blobs()["fc"]):
        np.testing.assert_array_equal(ours, theirs)


def test_weights_given_as_arrays_are_copied():
    arrays = {"fc": [np.ones((1100, 1000), np.float32), np.zeros(1100, np.float32)]}
    model = caffeinit.load(big_fc_net(), weights=arrays)
    arrays["fc"][0][:] = 3  # changing the caller's arrays afterwards does not reach the model
    assert (model.blobs()["fc"][0] == 1).all()
    x = np.ones((2, 1000), np.float32)
    np.testing.assert_array_equal(model.forward({"d": x})["fc"], np.full((2, 1100), 1000, np.float32))


def test_channel_shared_prelu_round_trip(tmp_path):
    """Caffe's PReLU holds a channel-shared slope in a 0-axis blob: written without a shape, read back as such."""
    from caffeinit.weights import read_caffemodel
    net = big_fc_net('layer { name: "p" type: "PReLU" bottom: "fc" top: "p" prelu_param { channel_shared: true } }')
    model = caffeinit.load(net)
    path = tmp_path / "p.caffemodel"
    model.save_caffemodel(path)
    saved = read_caffemodel(path).layer[2].blobs[0]
    assert not saved.HasField("shape") and list(saved.data) == [0.25]  # Caffe's default PReLU filler
    again = caffeinit.load(net, weights=path)
    assert again.blobs()["p"][0].shape == ()
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    np.testing.assert_array_equal(again.forward({"d": x})["p"], model.forward({"d": x})["p"])


def test_inputs_of_another_shape_are_refused_where_a_layers_parameters_would_change():
    """A Reshape that fixes the first dim makes fc's weight depend on the batch: Caffe's Reshape CHECKs the
    parameter shapes, and so does the model (an internal error from inside the layer before); batches the net
    does follow still run."""
    import pytest
    from google.protobuf import text_format

    from caffeinit.proto import caffe_pb2
    head = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'
    conv = 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 ' \
           'kernel_size: 3 } }\n'
    fc = 'layer { name: "fc" type: "InnerProduct" bottom: "r" top: "fc" inner_product_param { num_output: 5 } }\n'
    fixed = 'layer { name: "r" type: "Reshape" bottom: "c" top: "r" reshape_param { shape { dim: 1 dim: -1 } } }\n'
    model = caffeinit.load(text_format.Parse(head + conv + fixed + fc, caffe_pb2.NetParameter()))
    x = np.zeros((3, 3, 8, 8), np.float32)
    with pytest.raises(caffeinit.CaffeinitError, match=r"^layer 'fc' \(InnerProduct\): for inputs data 3x3x8x8 its "
                                                       r"parameter blob 0 would have to be 5x432, not 5x288: "):
        model.forward({"data": x})
    assert model.forward({"data": np.zeros((2, 3, 8, 8), np.float32)})["fc"].shape == (1, 5)
    following = caffeinit.load(text_format.Parse(head + conv + fixed.replace("dim: 1 ", "dim: 0 ") + fc,
                                                 caffe_pb2.NetParameter()))
    assert following.forward({"data": x})["fc"].shape == (3, 5)


def test_an_input_shape_for_a_blob_that_is_no_input_is_refused():
    """load(input_shapes=...) and reshape(...) name data-layer tops; another name was silently ignored."""
    import pytest
    from google.protobuf import text_format

    from caffeinit.proto import caffe_pb2
    text = ('name: "n" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    with pytest.raises(caffeinit.CaffeinitError, match=r"^input shape for 'dta', which is not a top of a data layer "
                                                       r"of net 'n' \(its inputs: data\)$"):
        caffeinit.load(param, input_shapes={"dta": (5, 3)})
    model = caffeinit.load(param)
    with pytest.raises(caffeinit.CaffeinitError, match=r"^input shape for 'r', "):
        model.reshape({"r": (4, 3)})
    model.reshape({"data": (4, 3)})
    assert model.net.blob_shapes["r"] == (4, 3)
