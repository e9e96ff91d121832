"""The layer registry: every BVLC type registered once, duplicates refused, misses explained."""
import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.layers import Layer, known_layer_types, layer_class, register_layer

BVLC_TYPES = """AbsVal Accuracy ArgMax BNLL BatchNorm BatchReindex Bias Clip Concat ContrastiveLoss Convolution Crop
Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp Filter Flatten HDF5Data HDF5Output
HingeLoss Im2col ImageData InfogainLoss InnerProduct Input LRN LSTM LSTMUnit Log MVN MemoryData
MultinomialLogisticLoss PReLU Parameter Pooling Power RNN ReLU Reduction Reshape SPP Scale Sigmoid
SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss Split Swish TanH Threshold Tile WindowData""".split()


def test_every_bvlc_type_but_python_is_registered():
    assert sorted(known_layer_types()) == sorted(BVLC_TYPES)  # 61 BVLC types less Python
    for name in BVLC_TYPES:
        assert layer_class(name).type_name == name


def test_duplicate_registration_is_refused():
    class AnotherReLU(Layer):
        type_name = "ReLU"
    with pytest.raises(ValueError, match="'ReLU' already registered"):
        register_layer(AnotherReLU)
    assert layer_class("ReLU") is not AnotherReLU


def test_unknown_type_lists_the_known_ones():
    with pytest.raises(CaffeinitError) as e:
        layer_class("Convolutoin", "conv1")
    message = str(e.value)
    assert "layer 'conv1' has unknown type 'Convolutoin'" in message
    assert all(t in message for t in ("Convolution", "Pooling", "Softmax"))


@pytest.mark.parametrize("type_name,fork", [("Permute", "SSD"), ("ROIPooling", "R-CNN"), ("Interp", "PSPNet")])
def test_fork_types_name_their_fork(type_name, fork):
    with pytest.raises(CaffeinitError, match=f"layer 'x' has type '{type_name}', which is not in BVLC Caffe.*{fork}"):
        layer_class(type_name, "x")


def test_python_layers_are_refused_by_name():
    with pytest.raises(CaffeinitError, match="layer 'py' is a Python layer"):
        layer_class("Python", "py")
