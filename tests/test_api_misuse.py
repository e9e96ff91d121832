"""The Python API as a demanding user calls it: any array layout or real type as a feed, and every mistake refused
with one CaffeinitError naming the culprit (not a raw numpy/torch exception, not a silent wrong result)."""
import numpy as np
import pytest
import torch

import caffeinit
from caffeinit import CaffeinitError
from caffeinit.prototxt import parse_net_text
from tests.conftest import ROOT

CIFAR = ROOT / "models" / "cifar10_quick" / "deploy.prototxt"


@pytest.fixture(scope="module")
def model():
    return caffeinit.load(CIFAR, device="cpu")


def images(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)) * 50


def test_feeds_of_any_layout_and_real_type_give_caffes_float32_result(model):
    """Caffe's blobs are float32: whatever the caller's array type or memory layout, the net sees its values
    cast to float32 (what assigning to a pycaffe blob does)."""
    x = images()
    wide = np.random.default_rng(1).standard_normal((2, 3, 32, 64)) * 50
    for feed in [x,                                     # float64
                 np.asfortranarray(x),                  # Fortran order
                 x[:, ::-1],                            # negative strides (was a raw ValueError)
                 wide[:, :, :, ::2],                    # not contiguous
                 x.tolist(),                            # nested lists (was an AttributeError)
                 torch.from_numpy(x),                   # a float64 tensor
                 torch.from_numpy(x).float().requires_grad_(),
                 x > 0,
                 np.round(x).astype(np.int16)]:
        as_float32 = np.array(np.asarray(feed.detach() if torch.is_tensor(feed) else feed), np.float32)
        want = model.forward({"data": as_float32}, blobs="all")
        got = model.forward({"data": feed}, blobs="all")
        assert list(got) == list(want)
        for blob in want:
            assert got[blob].dtype == np.float32
            np.testing.assert_array_equal(got[blob], want[blob], err_msg=blob)


@pytest.mark.parametrize("feed, message", [
    (images().astype(np.complex64), r"^input 'data' holds complex numbers \(complex64\): Caffe's blobs are real$"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.complex64), r"^input 'data' holds complex numbers"),
    (images().astype(str), r"^input 'data' holds <U\d+ values, not numbers$"),
    (images().astype(object), r"^input 'data' holds object values, not numbers$"),
    ([[1.0, 2.0], [3.0]], r"^input 'data' is not an array of numbers \("),
    (np.full((2, 3, 32, 32), 1e39), r"^input 'data' has 6144 values beyond float32's range \(\+-3\.4e38\)"),
    (torch.full((2, 3, 32, 32), -1e39, dtype=torch.float64), r"^input 'data' has 6144 values beyond float32's "),
    (np.where(np.arange(6144).reshape(2, 3, 32, 32) % 1000 == 0, np.nan, 1).astype(np.float32),
     r"^input 'data' has 7 non-finite values \(NaN or inf\)$"),
    (torch.full((2, 3, 32, 32), float("inf")), r"^input 'data' has 6144 non-finite values"),
    (3.0, r"^input 'data' has shape \(\), the net expects \(\d, 3, 32, 32\) \(only the batch size may differ\)$"),
])
def test_feeds_that_are_not_float32_numbers_are_refused(model, feed, message):
    """Complex values lost their imaginary part and float64 values beyond float32 became infinite, silently."""
    with pytest.raises(CaffeinitError, match=message):
        model.forward({"data": feed})


@pytest.mark.parametrize("inputs, message", [
    (images(1), r"^inputs must be a dict \{input blob: array\}, not ndarray \(the net's inputs: data\)$"),
    ([images(1)], r"^inputs must be a dict \{input blob: array\}, not list "),
    ({"dat": images(1)}, r"^missing input 'data' \(the net's inputs: data\)$"),
    ({"data": images(1), "label": np.zeros(1)}, r"^unknown input 'label' \(the net's inputs: data\)$"),
    ({"data": images(1)[0]}, r"^input 'data' has shape \(3, 32, 32\), the net expects \(\d, 3, 32, 32\) "),
])
def test_misnamed_or_misshapen_feeds_are_refused(model, inputs, message):
    with pytest.raises(CaffeinitError, match=message):
        model.forward(inputs)


def test_forward_returns_arrays_of_the_callers_own():
    """An input blob asked for, or a Parameter layer's top, came back as a view of the caller's array or of the
    model's weight: writing to the result changed the weights."""
    net = parse_net_text(
        'name: "p"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "s" type: "Eltwise" bottom: "data" bottom: "w" top: "s" }\n')
    model = caffeinit.load(net, weights={"w": [np.full((2, 3), 2, np.float32)]})
    x = np.ones((2, 3), np.float32)
    for as_numpy in (True, False):
        out = model.forward({"data": x}, blobs="all", as_numpy=as_numpy)
        out["data"][:] = 7
        out["w"][:] = 5
        assert (x == 1).all() and (model.blobs()["w"][0] == 2).all()
    np.testing.assert_array_equal(model.forward({"data": x})["s"], np.full((2, 3), 3, np.float32))


@pytest.mark.parametrize("blobs, message", [
    (None, r"^blobs must be 'outputs', 'all', a blob name, comma-separated names or a list of names$"),
    (3, r"^blobs must be "),
    (["conv1", 1], r"^blobs must be "),
    ([], r"^blobs names no blob"),
    ("", r"^blobs names no blob"),
    (["all"], r"^unknown blob 'all' \(the net's blobs: data, conv1, "),
    ("conv1,nope", r"^unknown blob 'nope' "),
])
def test_blob_selection_mistakes_are_refused(model, blobs, message):
    with pytest.raises(CaffeinitError, match=message):
        model.forward({"data": images(1)}, blobs=blobs)


def test_blob_selections(model):
    x = images(1)
    assert list(model.forward({"data": x}, blobs="conv1, ip1")) == ["conv1", "ip1"]
    assert list(model.forward({"data": x}, blobs=("ip1", "conv1", "ip1"))) == ["ip1", "conv1"]
    assert list(model.forward({"data": x}, blobs="ip1")) == ["ip1"]


@pytest.mark.parametrize("kwargs, message", [
    ({"wieghts": "x"}, r"^load\(\) got an unknown keyword argument 'wieghts' \(did you mean 'weights'\? it takes "
                       r"weights, phase, stages, level, device, seed, input_shapes, precision\)$"),
    ({"devices": "cpu"}, r"^load\(\) got an unknown keyword argument 'devices' \(did you mean 'device'\?"),
    ({"device": None}, r"^device must be a string \(auto, cpu, cuda or cuda:N\) or a torch.device, not NoneType$"),
    ({"device": 0}, r"^device must be a string "),
    ({"device": "gpu"}, r"^unknown device 'gpu' "),
    ({"device": torch.device("meta")}, r"^unknown device 'meta' "),
    ({"phase": None}, r"^unknown phase None "),
    ({"phase": 5}, r"^unknown phase 5 "),
    ({"stages": ["a", 1]}, r"^stages must be a stage name or a list of names, not \('a', 1\)$"),
    ({"level": "1"}, r"^level must be an integer, not '1'$"),
    ({"level": 2**31}, r"^level must be within -2147483648 to 2147483647, got 2147483648$"),
    ({"seed": -1}, r"^seed must be within 0 to 9223372036854775807, got -1$"),
    ({"seed": 1.5}, r"^seed must be an integer, not 1.5$"),
    ({"input_shapes": {"data": "1,3,32,32"}}, r"^input shape for 'data' must be a sequence of integers, not "
                                              r"'1,3,32,32'$"),
    ({"input_shapes": [(1, 3, 32, 32)]}, r"^input_shapes must be a dict \{input blob: shape\}, not list$"),
])
def test_load_argument_mistakes_are_refused(kwargs, message):
    with pytest.raises(CaffeinitError, match=message):
        caffeinit.load(CIFAR, **kwargs)


def test_a_cuda_torch_device_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, on any machine
    with pytest.raises(CaffeinitError, match=r"^device 'cuda' requested but CUDA is not available"):
        caffeinit.load(CIFAR, device=torch.device("cuda"))


def test_a_string_stage_is_one_stage():
    """Caffe's NetState.stage is a list of names: "deploy" is the stage deploy (it was the stages d, e, p, ...)."""
    net = parse_net_text(
        'name: "s"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "keep" type: "ReLU" bottom: "data" top: "r" include { stage: "deploy" } }\n'
        'layer { name: "d" type: "ReLU" bottom: "data" top: "d" include { stage: "d" } }\n')
    assert [n.name for n in caffeinit.load(net, stages="deploy").net.layers] == ["data", "keep"]
    assert [n.name for n in caffeinit.load(net, stages=["deploy"]).net.layers] == ["data", "keep"]


@pytest.mark.parametrize("net, message", [
    (None, r"^net must be a prototxt path or a caffe_pb2.NetParameter, not NoneType$"),
    (3, r"^net must be a prototxt path or a caffe_pb2.NetParameter, not int$"),
])
def test_a_net_that_is_no_path_is_refused(net, message):
    with pytest.raises(CaffeinitError, match=message):
        caffeinit.load(net)


def test_a_bytes_path_names_the_net():
    assert caffeinit.load(str(CIFAR).encode()).net.name == "CIFAR10_quick"


def test_weight_mistakes_are_refused(model):
    blobs = model.blobs()
    conv1 = blobs["conv1"]
    for weights, message in [
            (3, r"^weights must be a \.caffemodel or \.h5 path or a dict \{layer: \[arrays\]\}, not int$"),
            ({"conv1": conv1[0]}, r"^weights for layer 'conv1' must be a list of arrays \(Caffe's blob order\), "
                                  r"not ndarray$"),
            ({"conv1": [conv1[0].astype(np.complex64), conv1[1]]},
             r"^weights of layer 'conv1' blob 0 holds complex numbers"),
            ({"conv1": [conv1[0], np.full(32, 1e300)]},
             r"^weights of layer 'conv1' blob 1 has 32 values beyond float32's range"),
            ({1: conv1}, r"^weights: layer names must be strings, not 1$"),
            ("no/such.caffemodel", r"^no/such\.caffemodel: cannot read caffemodel: ")]:
        with pytest.raises(CaffeinitError, match=message):
            caffeinit.load(CIFAR, weights=weights)


def test_weights_as_float64_lists_and_tensors_load_as_float32(model):
    blobs = model.blobs()
    for convert in (lambda a: a.astype(np.float64), lambda a: a.tolist(), torch.from_numpy):
        again = caffeinit.load(CIFAR, weights={k: [convert(a) for a in v] for k, v in blobs.items()})
        for layer, arrays in again.blobs().items():
            for ours, theirs in zip(arrays, blobs[layer]):
                np.testing.assert_array_equal(ours, theirs)


def test_save_caffemodel_needs_a_path(model):
    with pytest.raises(CaffeinitError, match=r"^the caffemodel path must be a path, not NoneType$"):
        model.save_caffemodel(None)


def test_help_lists_the_public_api():
    """help(caffeinit) shows the API the README documents (the lazily imported names were invisible)."""
    import pydoc
    text = pydoc.render_doc(caffeinit, renderer=pydoc.plaintext)
    for name in ("load", "CaffeModel", "initialize", "InitConfig", "export_onnx", "CaffeinitError"):
        assert name in dir(caffeinit)
        assert f"\n    {name}(" in text or f"class {name}(" in text, name


def test_phase_and_stages_in_numpy_and_empty_forms():
    """A numpy int phase is caffe_pb2's enum value (it was refused); stages=None is no stage (it was refused)."""
    from caffeinit.proto import caffe_pb2
    assert caffeinit.load(CIFAR, phase=np.int64(caffe_pb2.TRAIN)).phase == caffe_pb2.TRAIN
    assert caffeinit.load(CIFAR, stages=None).stages == ()
    with pytest.raises(CaffeinitError, match=r"^unknown phase True "):
        caffeinit.load(CIFAR, phase=True)


def test_a_legacy_net_param_object_is_upgraded_as_its_prototxt_is(shared):
    """A V0 or V1 NetParameter passed as an object was taken as it is: a net without layers, silently."""
    from google.protobuf import text_format

    from caffeinit.proto import caffe_pb2
    for name in ("v1__alexnet_deploy.prototxt", "v0__lenet.prototxt"):
        path = shared("corpus", name)
        param = text_format.Parse(path.read_text(), caffe_pb2.NetParameter())
        kept = param.SerializeToString()
        from_object, from_file = caffeinit.load(param).net, caffeinit.load(path).net
        assert len(from_object.layers) > 5
        assert [(n.name, n.type, n.top_shapes) for n in from_object.layers] == \
            [(n.name, n.type, n.top_shapes) for n in from_file.layers]
        assert param.SerializeToString() == kept  # the caller's object is left as it was


def test_finite_inputs_whose_sum_overflows_float32_run(model):
    """The finiteness check sums each input first: a sum that overflows without any infinite value is no error."""
    x = np.full((2, 3, 32, 32), 3e38, np.float32)
    assert torch.from_numpy(x).sum().isinf()
    out = model.forward({"data": x}, blobs="data")
    np.testing.assert_array_equal(out["data"], x)
    x[1, 2, 3, 4] = -np.inf
    with pytest.raises(CaffeinitError, match=r"^input 'data' has 1 non-finite values \(NaN or inf\)$"):
        model.forward({"data": x})
