"""proto/caffe.proto and the generated module: wire/text compatibility with BVLC Caffe, and freshness."""
import json
import subprocess
import sys

import pytest
from google.protobuf import descriptor as _d

from caffeinit.proto import caffe_pb2
from tests.conftest import ROOT, shared_path

_TYPES = {
    _d.FieldDescriptor.TYPE_DOUBLE: "double", _d.FieldDescriptor.TYPE_FLOAT: "float",
    _d.FieldDescriptor.TYPE_INT64: "int64", _d.FieldDescriptor.TYPE_UINT32: "uint32",
    _d.FieldDescriptor.TYPE_INT32: "int32", _d.FieldDescriptor.TYPE_BOOL: "bool",
    _d.FieldDescriptor.TYPE_STRING: "string", _d.FieldDescriptor.TYPE_BYTES: "bytes",
    _d.FieldDescriptor.TYPE_MESSAGE: "message", _d.FieldDescriptor.TYPE_ENUM: "enum",
}


def _label(field) -> str:
    if hasattr(field, "is_repeated"):  # protobuf >= 5.28; .label is gone in 7.x
        return "repeated" if field.is_repeated else ("required" if field.is_required else "optional")
    return {field.LABEL_REPEATED: "repeated", field.LABEL_REQUIRED: "required"}.get(field.label, "optional")


def _our_fields():
    """{message full name: {field name: facts}} from the generated descriptor, in caffe_fields.json's terms."""
    out = {}
    for msg in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        fields = {}
        for f in msg.fields:
            facts = {"number": f.number, "type": _TYPES[f.type], "label": _label(f)}
            if f.message_type is not None:
                facts["type_name"] = f.message_type.full_name
            if f.enum_type is not None:
                facts["type_name"] = f.enum_type.full_name
            proto = f.GetOptions()
            facts["packed"] = bool(proto.packed) if proto.HasField("packed") else False
            fields[f.name] = (facts, f)
        out[msg.full_name] = fields
    return out


def _default_matches(expected: str, field) -> bool:
    value = field.default_value
    if field.type == field.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name == expected
    if field.type == field.TYPE_BOOL:
        return str(value).lower() == expected
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return abs(value - float(expected)) <= 1e-7 * max(1.0, abs(float(expected)))
    if field.type in (field.TYPE_STRING, field.TYPE_BYTES):
        return value in (expected, expected.encode())
    return value == int(expected)


def test_schema_matches_bvlc_field_by_field():
    ref = json.loads(shared_path("reference", "caffe_fields.json").read_text())
    ours = _our_fields()
    assert set(ours) == set(ref["messages"]), set(ours) ^ set(ref["messages"])
    n_fields = 0
    for msg, fields in ref["messages"].items():
        assert set(ours[msg]) == {f["name"] for f in fields}, msg
        for f in fields:
            facts, field = ours[msg][f["name"]]
            where = f"{msg}.{f['name']}"
            assert facts["number"] == f["number"], where
            assert facts["type"] == f["type"], where
            assert facts["label"] == f["label"], where
            assert facts.get("type_name") == f.get("type_name"), where
            assert facts["packed"] == bool(f.get("packed", False)), where
            assert field.has_default_value == ("default" in f), where
            if "default" in f:
                assert _default_matches(f["default"], field), where
            n_fields += 1
    assert (len(ref["messages"]), n_fields) == (63, 423)


def test_enums_match_bvlc():
    ref = json.loads(shared_path("reference", "caffe_fields.json").read_text())
    ours = {}
    for e in caffe_pb2.DESCRIPTOR.enum_types_by_name.values():
        ours[e.full_name] = {v.name: v.number for v in e.values}
    for msg in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        for e in msg.enum_types:
            ours[e.full_name] = {v.name: v.number for v in e.values}
    assert ours == ref["enums"]
    assert len(ours) == 26


def test_generated_module_is_current():
    """tools/generate_proto.py regenerates caffe_pb2.py with grpcio-tools (a test dependency) and compares."""
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "generate_proto.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_generated_module_has_no_runtime_version_check():
    # gencode from protoc >= 26 calls runtime_version.ValidateProtobufRuntimeVersion and refuses older runtimes.
    text = (ROOT / "caffeinit" / "proto" / "caffe_pb2.py").read_text()
    assert "runtime_version" not in text
    assert "AddSerializedFile" in text


def test_round_trip_text_and_binary():
    from google.protobuf import text_format
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="pool", type="Pooling", bottom=["x"], top=["y"])
    layer.pooling_param.round_mode = caffe_pb2.PoolingParameter.FLOOR
    layer.pooling_param.kernel_size = 3
    again = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    assert again == net
    assert text_format.Parse(text_format.MessageToString(net), caffe_pb2.NetParameter()) == net
    # Defaults as Caffe's: stride 1, CEIL rounding, LRN k 1, BatchNorm eps 1e-5.
    assert caffe_pb2.PoolingParameter().stride == 1
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.LRNParameter().k == 1.0
    assert caffe_pb2.BatchNormParameter().eps == pytest.approx(1e-5)
