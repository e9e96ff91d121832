"""Legacy format upgrades (caffeinit/upgrade.py) against hand-written before/after texts that follow Caffe's
src/caffe/util/upgrade_proto.cpp, and against the real legacy files of the corpus."""
import glob
import warnings

import pytest
from google.protobuf import text_format

from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2
from caffeinit.upgrade import (net_needs_data_upgrade, net_needs_v0_to_v1_upgrade, net_needs_v1_to_v2_upgrade,
                               upgrade_net_as_needed, upgrade_solver_as_needed)
from tests.conftest import shared_path

# The 61 layer types BVLC Caffe master registers (REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR).
CAFFE_LAYER_TYPES = set("""AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss
Convolution Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten HDF5Data
HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM LSTMUnit Log MVN MemoryData
MultinomialLogisticLoss PReLU Parameter Pooling Power Python RNN ReLU Reduction Reshape SPP Scale Sigmoid
SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss Split Swish TanH Threshold Tile WindowData""".split())


def net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def upgraded(text):
    param = net(text)
    upgrade_net_as_needed(param, "test.prototxt")
    return param


def assert_upgrades_to(before, after):
    param = net(before)
    assert upgrade_net_as_needed(param, "test.prototxt") is True
    assert param == net(after), text_format.MessageToString(param)
    # A second upgrade changes nothing.
    assert upgrade_net_as_needed(param, "test.prototxt") is False
    assert param == net(after)


# -- V0 -> V1 (and on to V2) ----------------------------------------------------------------------------------------
def test_v0_padding_layer_folds_into_the_conv_that_reads_it():
    before = """
    name: "padnet"
    input: "img"  input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9
    layers { layer { name: "pad1" type: "padding" pad: 3 } bottom: "img" top: "img_padded" }
    layers { layer { name: "c1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 } bottom: "img_padded" top: "c1" }
    layers { layer { name: "r1" type: "relu" } bottom: "c1" top: "c1" }
    layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "c1" top: "c1_padded" }
    layers { layer { name: "p1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "c1_padded" top: "p1" }
    """
    after = """
    name: "padnet"
    layer { name: "input" type: "Input" top: "img" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
    layer { name: "c1" type: "Convolution" bottom: "img" top: "c1"
            convolution_param { num_output: 4 pad: 3 kernel_size: 3 stride: 2 } }
    layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
    layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1"
            pooling_param { pool: AVE pad: 1 kernel_size: 3 stride: 2 } }
    """
    assert_upgrades_to(before, after)


def test_v0_padding_layer_feeding_a_non_conv_layer_is_an_error():
    param = net("""
    input: "x"
    layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "x" top: "xp" }
    layers { layer { name: "act" type: "relu" } bottom: "xp" top: "y" }
    """)
    with pytest.raises(CaffeinitError, match=r"test.prototxt: layer 'act' reads padding layer 'pad1'.*relu"):
        upgrade_net_as_needed(param, "test.prototxt")


def test_v0_padding_with_unknown_bottom_is_an_error():
    param = net("""layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }""")
    with pytest.raises(CaffeinitError, match="layer 'c': unknown bottom blob 'nowhere'"):
        upgrade_net_as_needed(param, "test.prototxt")


def test_v0_every_field_mapping():
    before = """
    name: "all"
    force_backward: true
    layers { layer { name: "d" type: "data" source: "db" batchsize: 8 rand_skip: 3 meanfile: "m.binaryproto"
                     cropsize: 5 mirror: true scale: 0.5 } top: "x" top: "label" }
    layers { layer { name: "im" type: "images" source: "list.txt" batchsize: 2 rand_skip: 1 shuffle_images: true
                     new_height: 7 new_width: 6 } top: "im" top: "im_label" }
    layers { layer { name: "w" type: "window_data" source: "win.txt" batchsize: 4 det_fg_threshold: 0.6
                     det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16 det_crop_mode: "square" }
             top: "w" top: "w_label" }
    layers { layer { name: "h" type: "hdf5_data" source: "h5.txt" batchsize: 3 } top: "h" }
    layers { layer { name: "c" type: "conv" num_output: 6 biasterm: false pad: 1 kernelsize: 3 group: 2
                     stride: 2 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" }
                     blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 } bottom: "x" top: "c" }
    layers { layer { name: "p" type: "pool" pool: STOCHASTIC pad: 1 kernelsize: 2 stride: 1 } bottom: "c" top: "p" }
    layers { layer { name: "n" type: "lrn" local_size: 3 alpha: 0.1 beta: 0.5 k: 2 } bottom: "p" top: "n" }
    layers { layer { name: "dr" type: "dropout" dropout_ratio: 0.3 } bottom: "n" top: "n" }
    layers { layer { name: "fc" type: "innerproduct" num_output: 10 biasterm: true
                     weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } }
             bottom: "n" top: "fc" }
    layers { layer { name: "cat" type: "concat" concat_dim: 0 } bottom: "fc" bottom: "fc" top: "cat" }
    layers { layer { name: "ig" type: "infogain_loss" source: "H.binaryproto" } bottom: "fc" bottom: "label" }
    layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }
             bottom: "fc" bottom: "label" }
    layers { layer { name: "sm" type: "softmax_loss" } bottom: "fc" bottom: "label" top: "loss" }
    """
    after = """
    name: "all"
    force_backward: true
    layer { name: "d" type: "Data" top: "x" top: "label"
            transform_param { scale: 0.5 mirror: true crop_size: 5 mean_file: "m.binaryproto" }
            data_param { source: "db" batch_size: 8 rand_skip: 3 } }
    layer { name: "im" type: "ImageData" top: "im" top: "im_label"
            image_data_param { source: "list.txt" batch_size: 2 rand_skip: 1 shuffle: true new_height: 7
                               new_width: 6 } }
    layer { name: "w" type: "WindowData" top: "w" top: "w_label"
            window_data_param { source: "win.txt" batch_size: 4 fg_threshold: 0.6 bg_threshold: 0.4
                                fg_fraction: 0.3 context_pad: 16 crop_mode: "square" } }
    layer { name: "h" type: "HDF5Data" top: "h" hdf5_data_param { source: "h5.txt" batch_size: 3 } }
    layer { name: "c" type: "Convolution" bottom: "x" top: "c"
            param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
            convolution_param { num_output: 6 bias_term: false pad: 1 kernel_size: 3 group: 2 stride: 2
                                weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } } }
    layer { name: "p" type: "Pooling" bottom: "c" top: "p"
            pooling_param { pool: STOCHASTIC pad: 1 kernel_size: 2 stride: 1 } }
    layer { name: "n" type: "LRN" bottom: "p" top: "n" lrn_param { local_size: 3 alpha: 0.1 beta: 0.5 k: 2 } }
    layer { name: "dr" type: "Dropout" bottom: "n" top: "n" dropout_param { dropout_ratio: 0.3 } }
    layer { name: "fc" type: "InnerProduct" bottom: "n" top: "fc"
            inner_product_param { num_output: 10 bias_term: true weight_filler { type: "xavier" }
                                  bias_filler { type: "constant" value: 0.1 } } }
    layer { name: "cat" type: "Concat" bottom: "fc" bottom: "fc" top: "cat" concat_param { concat_dim: 0 } }
    layer { name: "ig" type: "InfogainLoss" bottom: "fc" bottom: "label"
            infogain_loss_param { source: "H.binaryproto" } }
    layer { name: "out" type: "HDF5Output" bottom: "fc" bottom: "label"
            hdf5_output_param { file_name: "o.h5" } }
    layer { name: "sm" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
    """
    assert_upgrades_to(before, after)


def test_v0_pool_method_numbers_match_the_current_enum():
    # The V0 -> V1 mapping relies on equal numbering (Caffe maps MAX/AVE/STOCHASTIC one by one).
    v0, cur = caffe_pb2.V0LayerParameter, caffe_pb2.PoolingParameter
    assert (v0.MAX, v0.AVE, v0.STOCHASTIC) == (cur.MAX, cur.AVE, cur.STOCHASTIC)
    assert (caffe_pb2.V1LayerParameter.STRICT, caffe_pb2.V1LayerParameter.PERMISSIVE) == \
        (caffe_pb2.ParamSpec.STRICT, caffe_pb2.ParamSpec.PERMISSIVE)


# UpgradeV0LayerType's 24 type strings, each with the type name UpgradeV1LayerType then gives.
V0_TYPES = {"accuracy": "Accuracy", "bnll": "BNLL", "concat": "Concat", "conv": "Convolution", "data": "Data",
            "dropout": "Dropout", "euclidean_loss": "EuclideanLoss", "flatten": "Flatten", "hdf5_data": "HDF5Data",
            "hdf5_output": "HDF5Output", "im2col": "Im2col", "images": "ImageData", "infogain_loss": "InfogainLoss",
            "innerproduct": "InnerProduct", "lrn": "LRN", "multinomial_logistic_loss": "MultinomialLogisticLoss",
            "pool": "Pooling", "relu": "ReLU", "sigmoid": "Sigmoid", "softmax": "Softmax",
            "softmax_loss": "SoftmaxWithLoss", "split": "Split", "tanh": "TanH", "window_data": "WindowData"}


@pytest.mark.parametrize("v0_type, expected", sorted(V0_TYPES.items()))
def test_v0_layer_types_become_caffes_type_names(v0_type, expected):
    param = upgraded(f'layers {{ layer {{ name: "l" type: "{v0_type}" }} }}')
    assert [layer.type for layer in param.layer] == [expected] and not param.layers


def test_v0_unknown_type_is_an_error_naming_the_layer():
    param = net("""layers { layer { name: "mystery" type: "warp" } top: "y" }""")
    with pytest.raises(CaffeinitError, match="V0 layer 'mystery' has unknown type 'warp'"):
        upgrade_net_as_needed(param, "test.prototxt")


def test_v0_field_meaningless_for_the_type_warns_and_is_dropped():
    param = net("""input: "x"
                   layers { layer { name: "act" type: "relu" num_output: 3 kernelsize: 2 } bottom: "x" top: "y" }""")
    with pytest.warns(UserWarning) as caught:
        upgrade_net_as_needed(param, "test.prototxt")
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "V0 layer 'act': parameter 'kernelsize'" in messages[0] and "'relu'" in messages[0]
    assert "V0 layer 'act': parameter 'num_output'" in messages[1]
    assert param.layer[0].type == "ReLU"
    assert not param.layer[0].HasField("convolution_param") and not param.layer[0].HasField("pooling_param")


def test_v0_lenet_from_the_corpus():
    param = net(shared_path("corpus", "v0__lenet.prototxt").read_text())
    assert net_needs_v0_to_v1_upgrade(param)
    assert upgrade_net_as_needed(param, "v0__lenet.prototxt")
    assert [(layer.name, layer.type) for layer in param.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("pool1", "Pooling"), ("conv2", "Convolution"),
        ("pool2", "Pooling"), ("ip1", "InnerProduct"), ("relu1", "ReLU"), ("ip2", "InnerProduct"),
        ("prob", "Softmax")]
    assert list(param.layer[0].input_param.shape[0].dim) == [64, 1, 28, 28]
    conv1 = param.layer[1]
    assert list(conv1.convolution_param.kernel_size) == [5] and conv1.convolution_param.num_output == 20
    assert [p.lr_mult for p in conv1.param] == [1, 2]
    assert conv1.convolution_param.weight_filler.type == "xavier"
    pool1 = param.layer[2].pooling_param
    assert (pool1.pool, pool1.kernel_size, pool1.stride) == (pool1.MAX, 2, 2)
    assert param.layer[5].inner_product_param.num_output == 500
    assert not param.layers and not param.input and not param.input_dim


# -- data transformation fields --------------------------------------------------------------------------------------
def test_v1_data_layer_transform_fields_move_to_transform_param():
    before = """
    layers { name: "d" type: DATA top: "x" data_param { source: "db" batch_size: 4 scale: 0.25 mean_file: "m"
             crop_size: 11 mirror: true } }
    layers { name: "i" type: IMAGE_DATA top: "y" image_data_param { source: "l" crop_size: 3 } }
    layers { name: "w" type: WINDOW_DATA top: "z" window_data_param { source: "w" mirror: false } }
    layers { name: "h" type: HDF5_DATA top: "t" hdf5_data_param { source: "h" } }
    """
    assert net_needs_data_upgrade(net(before))
    after = """
    layer { name: "d" type: "Data" top: "x" transform_param { scale: 0.25 mean_file: "m" crop_size: 11 mirror: true }
            data_param { source: "db" batch_size: 4 } }
    layer { name: "i" type: "ImageData" top: "y" transform_param { crop_size: 3 } image_data_param { source: "l" } }
    layer { name: "w" type: "WindowData" top: "z" transform_param { mirror: false }
            window_data_param { source: "w" } }
    layer { name: "h" type: "HDF5Data" top: "t" hdf5_data_param { source: "h" } }
    """
    assert_upgrades_to(before, after)


# -- V1 -> V2 --------------------------------------------------------------------------------------------------------
def test_v1_param_specs_from_names_share_modes_lrs_and_decays():
    before = """
    name: "shared"
    state { phase: TRAIN }
    layers { name: "a" type: INNER_PRODUCT bottom: "x" top: "a" param: "w" param: "b" blob_share_mode: PERMISSIVE
             blobs_lr: 1 blobs_lr: 2 blobs_lr: 3 weight_decay: 0.5 loss_weight: 2
             include { phase: TRAIN stage: "s" } inner_product_param { num_output: 3 } }
    layers { name: "b" type: SOFTMAX_LOSS bottom: "a" bottom: "y" exclude { phase: TEST }
             loss_param { ignore_label: 255 } }
    """
    after = """
    name: "shared"
    state { phase: TRAIN }
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" loss_weight: 2
            param { name: "w" share_mode: PERMISSIVE lr_mult: 1 decay_mult: 0.5 }
            param { name: "b" lr_mult: 2 } param { lr_mult: 3 }
            include { phase: TRAIN stage: "s" } inner_product_param { num_output: 3 } }
    layer { name: "b" type: "SoftmaxWithLoss" bottom: "a" bottom: "y" exclude { phase: TEST }
            loss_param { ignore_label: 255 } }
    """
    assert_upgrades_to(before, after)


def test_v1_enum_types_all_become_registered_caffe_type_names():
    enum = caffe_pb2.V1LayerParameter.LayerType
    param = caffe_pb2.NetParameter()
    for value in enum.values():
        param.layers.add(name=enum.Name(value), type=value)
    assert net_needs_v1_to_v2_upgrade(param)
    upgrade_net_as_needed(param)
    types = {layer.name: layer.type for layer in param.layer}
    assert len(types) == 40
    assert types.pop("NONE") == ""
    assert set(types.values()) <= CAFFE_LAYER_TYPES
    assert len(set(types.values())) == 39  # no two enum values share a name
    assert (types["SOFTMAX_LOSS"], types["IM2COL"], types["ABSVAL"], types["TANH"], types["HDF5_DATA"]) == \
        ("SoftmaxWithLoss", "Im2col", "AbsVal", "TanH", "HDF5Data")


def test_v1_typed_params_are_all_copied():
    # Every *_param a V1 layer can hold survives the upgrade (Caffe copies each one).
    v1_fields = [f.name for f in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
                 if f.name.endswith("_param") and f.message_type is not None]
    assert len(v1_fields) == 30
    param = caffe_pb2.NetParameter()
    layer = param.layers.add(name="all", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    for field in v1_fields:
        getattr(layer, field).SetInParent()
    upgrade_net_as_needed(param)
    assert all(param.layer[0].HasField(field) for field in v1_fields)


def test_layer_and_layers_together_is_an_error():
    param = net("""layer { name: "new" type: "ReLU" } layers { name: "old" type: RELU }""")
    with pytest.raises(CaffeinitError, match="test.prototxt: .*both 'layer' and 'layers'"):
        upgrade_net_as_needed(param, "test.prototxt")


def test_any_v0_layer_makes_the_whole_net_v0():
    param = caffe_pb2.NetParameter()
    param.layers.add(name="a", type=caffe_pb2.V1LayerParameter.RELU)
    param.layers.add(name="b", type=caffe_pb2.V1LayerParameter.RELU).layer.SetInParent()
    # Having a `layer` inside makes the net V0 for Caffe's check; the V0 upgrade then rebuilds both layers.
    assert net_needs_v0_to_v1_upgrade(param)
    # V0 -> V1 keeps only bottom/top and what the V0 `layer` holds: layer 'a' loses its V1 name and type, which
    # Caffe does silently; here a warning names the layer and what it loses.
    with pytest.warns(UserWarning, match=r"net.prototxt: layer 'a' is in the V1 format .* drops its name, type"):
        upgrade_net_as_needed(param, "net.prototxt")
    assert [(layer.name, layer.type) for layer in param.layer] == [("", ""), ("", "")]


def test_v1_layer_blobs_lost_in_a_v0_caffemodel_are_named():
    param = caffe_pb2.NetParameter()
    param.layers.add(bottom=["x"], top=["y"]).layer.type = "relu"
    v1 = param.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT, bottom=["y"], top=["z"])
    v1.blobs.add(data=[1.0], num=1, channels=1, height=1, width=1)
    param.input.append("x")
    with pytest.warns(UserWarning, match=r"layer 'fc' .* drops its name, type, blobs"):
        upgrade_net_as_needed(param, "w.caffemodel")
    assert not param.layer[1].blobs


def test_v1_alexnet_deploy_from_the_corpus():
    param = net(shared_path("corpus", "v1__alexnet_deploy.prototxt").read_text())
    assert upgrade_net_as_needed(param, "v1__alexnet_deploy.prototxt")
    assert len(param.layer) == 24 and not param.layers
    assert (param.layer[0].name, param.layer[0].type, list(param.layer[0].top)) == ("input", "Input", ["data"])
    assert list(param.layer[0].input_param.shape[0].dim) == [10, 3, 227, 227]
    counts = {}
    for layer in param.layer[1:]:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    assert counts == {"Convolution": 5, "Dropout": 2, "InnerProduct": 3, "LRN": 2, "Pooling": 3, "ReLU": 7,
                      "Softmax": 1}
    conv1 = param.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert list(conv1.convolution_param.kernel_size) == [11] and list(conv1.convolution_param.stride) == [4]
    assert param.layer[3].lrn_param.local_size == 5


# -- inputs -> Input layer -------------------------------------------------------------------------------------------
def test_input_shapes_become_one_input_layer_first():
    assert_upgrades_to("""
        input: "a" input_shape { dim: 1 dim: 2 } input: "b" input_shape { dim: 3 }
        layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "c" }
        layer { name: "t" type: "ReLU" bottom: "c" top: "c" }
    """, """
        layer { name: "input" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 2 } shape { dim: 3 } } }
        layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "c" }
        layer { name: "t" type: "ReLU" bottom: "c" top: "c" }
    """)


def test_input_dims_four_per_input():
    assert_upgrades_to("""
        input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4
        input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8
    """, """
        layer { name: "input" type: "Input" top: "a" top: "b"
                input_param { shape { dim: 1 dim: 2 dim: 3 dim: 4 } shape { dim: 5 dim: 6 dim: 7 dim: 8 } } }
    """)


def test_input_without_shape_is_dropped():
    assert_upgrades_to("""input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }""",
                       """layer { name: "r" type: "ReLU" bottom: "data" top: "r" }""")


def test_too_few_input_dims_is_an_error():
    with pytest.raises(CaffeinitError, match="test.prototxt: 2 inputs need 8 input_dim values, got 4"):
        upgraded("""input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4""")


# -- BatchNorm -------------------------------------------------------------------------------------------------------
def test_batch_norm_with_three_param_specs_gets_zero_multipliers():
    assert_upgrades_to("""
        layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 2 }
                param { name: "keep" lr_mult: 3 } }
        layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }
        layer { name: "sc" type: "Scale" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }
    """, """
        layer { name: "bn" type: "BatchNorm" param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
                param { name: "keep" lr_mult: 0 decay_mult: 0 } }
        layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }
        layer { name: "sc" type: "Scale" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }
    """)


# -- whole nets ------------------------------------------------------------------------------------------------------
def test_current_format_is_left_alone():
    param = net(shared_path("corpus", "bvlc__models_bvlc_googlenet_deploy.prototxt").read_text())
    before = param.SerializeToString()
    assert upgrade_net_as_needed(param) is False
    assert param.SerializeToString() == before


def test_every_corpus_net_upgrades_idempotently():
    files = [f for f in sorted(glob.glob(str(shared_path("corpus", "*.prototxt"))))
             if "ssd__" not in f and "DenseNet" not in f]  # fork fields: see tests/test_prototxt.py
    assert len(files) >= 15
    for path in files:
        param = net(open(path).read())
        upgrade_net_as_needed(param, path)
        assert param.layer and not param.layers and not param.input and not param.input_dim, path
        again = caffe_pb2.NetParameter()
        again.CopyFrom(param)
        assert upgrade_net_as_needed(again, path) is False and again == param, path


# -- solver ----------------------------------------------------------------------------------------------------------
def test_solver_type_enum_becomes_type_string():
    for enum_name, type_name in [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                                 ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")]:
        solver = text_format.Parse(f"base_lr: 0.1 solver_type: {enum_name}", caffe_pb2.SolverParameter())
        assert upgrade_solver_as_needed(solver) is True
        assert solver.type == type_name and not solver.HasField("solver_type")
        assert upgrade_solver_as_needed(solver) is False


def test_solver_with_both_type_fields_is_an_error():
    solver = text_format.Parse('solver_type: ADAM type: "Adam"', caffe_pb2.SolverParameter())
    with pytest.raises(CaffeinitError, match="both 'solver_type'"):
        upgrade_solver_as_needed(solver, "solver.prototxt")


def test_no_warnings_for_clean_legacy_files():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upgraded(shared_path("corpus", "v0__lenet.prototxt").read_text())


def test_blobs_travel_through_v0_and_v1_upgrades():
    blob = "blobs { num: 1 channels: 1 height: 1 width: 3 data: 1 data: 2 data: 3 }"
    v0 = upgraded(f"""input: "x" layers {{ layer {{ name: "fc" type: "innerproduct" num_output: 3 {blob} }}
                      bottom: "x" top: "y" }}""")
    v1 = upgraded(f"""layers {{ name: "fc" type: INNER_PRODUCT {blob} {blob.replace("data: 3", "data: 4")} }}""")
    expected = text_format.Parse(blob, caffe_pb2.LayerParameter()).blobs[0]
    assert list(v0.layer[0].blobs) == [expected]
    assert v1.layer[0].blobs[0] == expected and list(v1.layer[0].blobs[1].data) == [1, 2, 4]
