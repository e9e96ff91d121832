import numpy as np
import pytest
from google.protobuf import text_format

from caffeinit.errors import CaffeinitError
from caffeinit.layers import layer_class
from caffeinit.proto import caffe_pb2


def layer(text):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    obj = layer_class(lp.type, lp.name)(lp, caffe_pb2.TEST)
    obj.check_counts(len(lp.bottom), len(lp.top))
    return obj


def test_input_layer_shapes_and_is_data():
    obj = layer('name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } }')
    assert obj.is_data and obj.setup([]) == [(1, 3, 224, 224)]
    with pytest.raises(CaffeinitError, match="layer 'in' \\(Input\\)"):
        obj.forward([], [])


def test_data_layer_reads_first_lmdb_record(tmp_path):
    import lmdb
    env = lmdb.open(str(tmp_path / "db"))
    with env.begin(write=True) as txn:
        datum = caffe_pb2.Datum(channels=1, height=28, width=28, data=bytes(784), label=3)
        txn.put(b"0", datum.SerializeToString())
    env.close()
    obj = layer(f'name: "mnist" type: "Data" top: "data" top: "label" transform_param {{ crop_size: 20 }} '
                f'data_param {{ source: "{tmp_path / "db"}" batch_size: 64 backend: LMDB }}')
    assert obj.setup([]) == [(64, 1, 20, 20), (64,)]


def test_missing_source_and_count_errors_name_the_layer(tmp_path):
    obj = layer(f'name: "train" type: "Data" top: "data" data_param {{ source: "{tmp_path / "x"}" batch_size: 1 '
                'backend: LMDB }')
    with pytest.raises(CaffeinitError, match=r"layer 'train' \(Data\): LMDB .* does not exist"):
        obj.setup([])
    with pytest.raises(CaffeinitError, match="takes exactly 2 tops"):
        layer('name: "m" type: "MemoryData" top: "data" memory_data_param { batch_size: 1 channels: 1 height: 1 '
              'width: 1 }')


def test_dummy_and_window_shapes():
    dummy = layer('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } '
                  'shape { dim: 2 } }')
    assert dummy.setup([]) == [(2, 3), (2,)]
    window = layer('name: "w" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 11 } '
                   'window_data_param { batch_size: 4 }')
    assert window.setup([]) == [(4, 3, 11, 11), (4,)]
    assert np.all([cls.is_data for cls in (type(dummy), type(window))])
