"""The converter registry: duplicates refused, a miss names the layer and type, and every exportable type is
exercised by a test net in this folder."""
import re

import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.net import build_net
from caffeinit.onnx_export import build_model, exportable_types
from caffeinit.onnx_export.registry import converter
from caffeinit.prototxt import parse_net_text
from tests.onnx_export import (test_activation, test_conv, test_inner_product, test_normalization, test_pooling,
                               test_recurrent, test_structure)
from tests.onnx_export.common import input_layer, layer


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="'ReLU' is already registered"):
        converter("ReLU")(lambda *args: None)


def test_every_exportable_type_has_a_test_net():
    import inspect

    source = "".join(inspect.getsource(m) for m in (test_activation, test_conv, test_inner_product,
                                                    test_normalization, test_pooling, test_recurrent,
                                                    test_structure))
    tested = set(re.findall(r'(?:layer\(|")([A-Z][A-Za-z0-9]+)"', source))
    assert set(exportable_types()) <= tested, sorted(set(exportable_types()) - tested)


def test_unsupported_layer_fails_with_one_line_naming_it():
    text = (input_layer(shape=(2, 3)) + input_layer("c", (2, 3))
            + layer("EuclideanLoss", ("data", "c"), ("loss",), name="l2"))
    net = build_net(parse_net_text(text), "test")
    with pytest.raises(CaffeinitError) as info:
        build_model(net, {})
    message = str(info.value)
    assert "\n" not in message
    assert "layer 'l2' (EuclideanLoss)" in message and "no inference meaning" in message


def test_type_without_converter_lists_the_exportable_types(monkeypatch):
    from caffeinit.onnx_export import registry

    monkeypatch.delitem(registry._CONVERTERS, "TanH")
    net = build_net(parse_net_text(input_layer() + layer("TanH", name="squash")), "test")
    with pytest.raises(CaffeinitError, match=r"layer 'squash' has type 'TanH', which cannot be exported to ONNX "
                                             r"\(exportable types: AbsVal, ArgMax, BNLL, .*, Tile\)$") as info:
        build_model(net, {})
    assert "TanH," not in str(info.value)
