"""Net assembly: Caffe's wiring rules, in-place renaming, outputs, shapes of real nets."""
import numpy as np
import pytest

import caffeinit
from caffeinit import CaffeinitError
from caffeinit.net import build_net
from caffeinit.proto import caffe_pb2
from caffeinit.prototxt import parse_net_text, read_net
from tests.conftest import ROOT, shared_path

HEAD = ('name: "t" layer { name: "data" type: "Input" top: "data" '
        'input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n')


TWO_INPUTS = HEAD + HEAD.replace('"data"', '"data2"').replace('name: "t" ', "")


def net_of(text):
    return build_net(parse_net_text(HEAD + text))


def test_in_place_tops_get_fresh_values_and_blob_keeps_last_writer():
    net = net_of('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
                 'convolution_param { num_output: 4 kernel_size: 3 } }\n'
                 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n')
    conv, relu = net.layers[1], net.layers[2]
    assert conv.top_values == ["conv1"]
    assert relu.bottom_values == ["conv1"] and relu.top_values == ["conv1@relu1"]
    assert net.value_of["conv1"] == "conv1@relu1"
    assert net.blob_shapes == {"data": (2, 3, 8, 8), "conv1": (2, 4, 6, 6)}
    assert net.outputs == ["conv1"] and net.inputs == {"data": (2, 3, 8, 8)}


@pytest.mark.parametrize("text, blob", [
    ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data2" top: "data" }', "data"),
    ('layer { name: "e" type: "LRN" bottom: "data" top: "data" }', "data"),
    ('layer { name: "e" type: "Concat" bottom: "data" bottom: "data2" top: "data" }', "data"),
])
def test_in_place_where_caffe_computes_otherwise_is_refused(text, blob):
    with pytest.raises(CaffeinitError, match=rf"^layer 'e' \(\w+\): works in place on blob '{blob}', where .*: "
                                             "Caffe's numbers would differ from the layer's; give it its own top$"):
        build_net(parse_net_text(TWO_INPUTS + text))


def test_in_place_eltwise_prod_runs():
    """Eltwise PROD multiplies element by element: Caffe's in-place result is the product."""
    model = caffeinit.load(parse_net_text(TWO_INPUTS + 'layer { name: "e" type: "Eltwise" bottom: "data" '
                                          'bottom: "data2" top: "data" eltwise_param { operation: PROD } }'))
    a, b = np.full((2, 3, 8, 8), 3, np.float32), np.full((2, 3, 8, 8), -2, np.float32)
    assert (model.forward({"data": a, "data2": b})["data"] == -6).all()


def test_a_layer_with_its_own_phase_runs_in_it():
    """Net::Init gives the net's phase only to layers without one: a BatchNorm with phase TRAIN in a TEST net uses
    the batch's statistics (batch_norm_layer.cpp: mean and E((x - mean)^2) over num and spatial axes), a Dropout
    with phase TEST in a TRAIN net copies; include rules still follow the net's phase."""
    text = (HEAD + 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" phase: TRAIN '
            'include { phase: TEST } }\n'
            'layer { name: "drop" type: "Dropout" bottom: "data" top: "drop" phase: TEST }\n')
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32) * 3 + 5
    weights = {"bn": [np.zeros(3, np.float32), np.ones(3, np.float32), np.ones(1, np.float32)]}
    test = caffeinit.load(parse_net_text(text), weights, phase="test")
    assert [node.layer.phase for node in test.net.layers[1:]] == [caffe_pb2.TRAIN, caffe_pb2.TEST]
    wide = x.astype(np.float64)
    mean = wide.mean(axis=(0, 2, 3), keepdims=True)
    var = ((wide - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(test.forward({"data": x})["bn"], (wide - mean) / np.sqrt(var + 1e-5),
                               rtol=1e-4, atol=1e-5)
    train = caffeinit.load(parse_net_text(text), phase="train")  # the BatchNorm's include rule asks for TEST
    assert [node.name for node in train.net.layers] == ["data", "drop"]
    np.testing.assert_array_equal(train.forward({"data": x})["drop"], x)


def test_outputs_are_unconsumed_blobs_sorted_by_name():
    net = net_of('layer { name: "z" type: "Power" bottom: "data" top: "z_out" }\n'
                 'layer { name: "a" type: "Power" bottom: "data" top: "a_out" }\n')
    assert net.outputs == ["a_out", "z_out"]


@pytest.mark.parametrize("text,match", [
    ('layer { name: "in2" type: "Input" top: "x" input_param { shape { dim: 1 dim: -1 } } }\n',
     r"^layer 'in2' \(Input\): top 'x' would have shape 1x-1: a negative dimension$"),
    ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3000000000 '
     '} }\n',
     r"^layer 'fc' \(InnerProduct\): top 'fc' would have shape 2x3000000000, 6,000,000,000 elements: "
     r"Caffe's blobs hold at most 2,147,483,647$"),
    ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 20000000 '
     '} }\n',
     r"^layer 'fc' \(InnerProduct\): parameter blob 0 would have shape 20000000x192, 3,840,000,000 elements"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 8 kernel_size: 3 '
     'pad: 100000 } }\n', r"^layer 'c' \(Convolution\): top 'c' would have shape 2x8x200006x200006"),
])
def test_blobs_caffe_could_not_hold_are_refused_when_the_net_is_built(text, match):
    """Caffe's Blob::Reshape checks every dimension >= 0 and at most INT_MAX elements (it ran out of memory, or
    failed on a math domain error, with no layer named)."""
    with pytest.raises(CaffeinitError, match=match):
        net_of(text)


def test_two_producers_of_a_blob_is_an_error():
    with pytest.raises(CaffeinitError, match=r"layer 'b' \(ReLU\): top blob 'x' is produced by multiple sources"):
        net_of('layer { name: "a" type: "ReLU" bottom: "data" top: "x" }\n'
               'layer { name: "b" type: "ReLU" bottom: "data" top: "x" }\n')


@pytest.mark.parametrize("text, match", [
    # a blob read by one layer, then changed in place by another: InsertSplits gives each its own copy, so the
    # in-place layer's top is a second producer of the blob (net.cpp AppendTop)
    ('layer { name: "p" type: "Sigmoid" bottom: "data" top: "p" }\n'
     'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n',
     r"^layer 'r' \(ReLU\): works in place on blob 'data', which layer 'p' also reads: Caffe's automatic split of "
     r"'data' then makes this layer a second producer of 'data' \(\"Duplicate blobs produced by multiple sources\"\); "
     r"give it its own top$"),
    ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "data" }\n',
     r"^layer 'e' \(Eltwise\): works in place on blob 'data', which it reads twice: "),
    ('layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" loss_weight: 1 }\n'
     'layer { name: "r" type: "ReLU" bottom: "s" top: "s" }\n',
     r"^layer 'r' \(ReLU\): works in place on blob 's', which layer 's' also takes as a loss \(loss_weight\): "),
    ('layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "a" }\n',
     r"^layer 'sl' \(Slice\): names top blob 'a' twice$"),
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "x" param { lr_mult: 1 } }\n',
     r"^layer 'r' \(ReLU\): has 1 param specs but 0 parameter blobs \(Caffe: too many params specified\)$"),
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "x" propagate_down: true propagate_down: false }\n',
     r"^layer 'r' \(ReLU\): has 2 propagate_down for 1 bottoms: Caffe takes none or one per bottom$"),
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "x" loss_weight: 1 loss_weight: 0 }\n',
     r"^layer 'r' \(ReLU\): has 2 loss_weight for 1 tops: Caffe takes none or one per top$"),
    ('layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }\n'
     'layer { name: "l" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" top: "prob" }\n',
     r"^layer 'l' \(SoftmaxWithLoss\): has 2 tops and no loss_weight: Caffe gives a loss layer one loss_weight "
     r"\(1\), which must be one per top; give them all \(e.g. loss_weight: 1 loss_weight: 0\)$"),
    ('layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" lr_mult: 1 } '
     'inner_product_param { num_output: 4 bias_term: false } }\n'
     'layer { name: "b" type: "InnerProduct" bottom: "data" top: "b" param { name: "w" lr_mult: 2 } '
     'inner_product_param { num_output: 4 bias_term: false } }\n',
     r"^layer 'b' \(InnerProduct\): shared parameter 'w' has lr_mult 2 here but 1 in layer 'a': Caffe takes one "
     r"lr_mult per shared parameter$"),
])
def test_what_caffes_net_init_refuses_is_refused(text, match):
    with pytest.raises(CaffeinitError, match=match):
        net_of(text)


def test_a_loss_layer_with_two_tops_and_a_loss_weight_each_builds():
    net = net_of('layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 1 dim: 8 '
                 'dim: 8 } } }\nlayer { name: "l" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" '
                 'top: "loss" top: "prob" loss_weight: 1 loss_weight: 0 }\n')
    assert net.outputs == ["loss", "prob"]


def test_in_place_after_all_other_readers_is_fine():
    """The in-place layer first, the other readers after it: they read its top, nothing is split before it."""
    net = net_of('layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
                 'layer { name: "p" type: "Sigmoid" bottom: "data" top: "p" }\n'
                 'layer { name: "q" type: "TanH" bottom: "data" top: "q" }\n')
    assert net.outputs == ["p", "q"] and net.layers[2].bottom_values == ["data@r"]


def test_a_loss_layer_without_a_top_gets_an_anonymous_one():
    """LossLayer::AutoTopBlobs: Caffe adds the top, which no layer can read and which is no output."""
    model = caffeinit.load(parse_net_text(
        HEAD + 'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 5 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" }\n'))
    assert model.net.outputs == [] and model.net.layers[-1].tops == ["(automatic)"]
    out = model.forward({"data": np.ones((3, 3, 8, 8), np.float32), "label": np.zeros(3, np.float32)}, "all")
    assert sorted(out) == ["data", "ip", "label"] and out["ip"].shape == (3, 5)


def test_unknown_bottom_is_an_error():
    with pytest.raises(CaffeinitError, match=r"layer 'a' \(ReLU\): unknown bottom blob 'nope'"):
        net_of('layer { name: "a" type: "ReLU" bottom: "nope" top: "x" }\n')


def test_unknown_layer_type_lists_known_types():
    with pytest.raises(CaffeinitError, match=r"unknown type 'Frobnicate' \(known types: .*Convolution"):
        net_of('layer { name: "a" type: "Frobnicate" bottom: "data" top: "x" }\n')


def test_input_shapes_override_batch():
    net = build_net(parse_net_text(HEAD), input_shapes={"data": (5, 3, 8, 8)})
    assert net.feeds == {"data": (5, 3, 8, 8)}


def test_a_data_layers_label_follows_the_batch_given_for_its_data():
    """MNIST's train_val with only data=N,C,H,W given: Caffe's Data layer shapes its label (N,), so its LMDB (not
    here) need not be opened; HDF5Data's label shapes come from its files, so it still needs them."""
    net = build_net(read_net(str(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))), "train",
                    input_shapes={"data": (2, 1, 28, 28)})
    assert net.feeds == {"data": (2, 1, 28, 28), "label": (2,)}
    hdf5 = ('name: "h" layer { name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: '
            '"absent.txt" batch_size: 2 } }\n')
    with pytest.raises(CaffeinitError, match="absent.txt"):
        build_net(parse_net_text(hdf5), input_shapes={"data": (2, 1, 28, 28)})


@pytest.mark.parametrize("name,blob,shape", [
    ("kaiming__ResNet-50-deploy.prototxt", "pool1", (1, 64, 56, 56)),  # ceil: 56, not 55
    ("squeeze__SqueezeNet_v1.1_deploy.prototxt", "pool3", (10, 128, 28, 28)),  # ceil: 28, not 27
    ("bvlc__models_bvlc_googlenet_deploy.prototxt", "pool5/7x7_s1", (10, 1024, 1, 1)),
    ("bvlc__models_bvlc_reference_caffenet_deploy.prototxt", "pool5", (10, 256, 6, 6)),
    ("fcn__voc-fcn8s_deploy.prototxt", "score", (1, 21, 500, 500)),
])
def test_corpus_shape_facts(name, blob, shape):
    net = build_net(read_net(str(shared_path("corpus", name))))
    assert net.blob_shapes[blob] == shape
    assert net.outputs == sorted(net.outputs)


def test_every_corpus_net_builds():
    paths = sorted(shared_path("corpus").glob("*.prototxt"))
    assert len(paths) >= 20
    for path in paths:
        if "ssd__" in path.name:
            with pytest.raises(CaffeinitError, match="SSD"):
                build_net(read_net(str(path)))
            continue
        param = read_net(str(path))
        data_tops = {}
        for lp in param.layer:  # train/test nets read LMDBs that are not here: give their tops' shapes
            if lp.type == "Data":
                crop = lp.transform_param.crop_size
                data_tops.update({lp.top[0]: (4, 1, 28, 28) if not crop else (4, 3, crop, crop), lp.top[1]: (4,)})
        for phase in ("test", "train"):
            net = build_net(param, phase, input_shapes=data_tops)
            assert net.layers and (net.outputs or phase == "train"), path.name


def test_bundled_models_build():
    paths = sorted((ROOT / "models").glob("*/deploy.prototxt"))
    assert {p.parent.name for p in paths} >= {"caffenet", "cifar10_quick", "lenet"}
    for path in paths:
        net = build_net(read_net(str(path)))
        assert net.outputs == ["prob"], path


def test_an_unknown_layer_name_suggests_close_ones():
    net = build_net(parse_net_text(
        'name: "n"\nlayer { name: "data" type: "Input" top: "data" '
        'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
        'layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1" '
        'convolution_param { num_output: 2 kernel_size: 3 } }\n'))
    with pytest.raises(CaffeinitError, match=r"net 'n' has no layer 'conv1' \(did you mean 'conv1_1'\?\)$"):
        net.layer("conv1")
    with pytest.raises(CaffeinitError, match=r"net 'n' has no layer 'fc8'$"):
        net.layer("fc8")
