"""caffeinit.layers.base.Layer: what every layer shares."""
from caffeinit.layers.base import Layer
from caffeinit.proto import caffe_pb2


def test_an_error_quotes_a_name_with_control_characters_escaped():
    """A prototxt string may hold '\\n' or other control characters; the error naming the layer stays one line."""
    class Probe(Layer):
        type_name = "Probe"

    layer = Probe(caffe_pb2.LayerParameter(name="conv\n1\t\x1b[31m", type="Probe"))
    message = str(layer.error("bad kernel"))
    assert message == "layer 'conv\\n1\\t\\x1b[31m' (Probe): bad kernel"
    assert message.isprintable()
    assert str(Probe(caffe_pb2.LayerParameter(name="conv1 é", type="Probe")).error("x")) == "layer 'conv1 é' (Probe): x"
