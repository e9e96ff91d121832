import os
import struct

import numpy as np
import pytest
from google.protobuf import text_format

from caffeinit import weights
from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2
from caffeinit.netstate import filter_net
from caffeinit.splits import insert_splits
from caffeinit.upgrade import upgrade_net_as_needed
from tests.conftest import shared_path


def conformance_cases():
    folder = shared_path("conformance")
    return sorted(p for p in folder.iterdir() if (p / "weights.caffemodel").is_file())


# -- reading ------------------------------------------------------------------------------------------------

def test_corpus_resnet_stem_shapes():
    arrays = weights.load_weights(shared_path("corpus", "htshinichi__resnet50_stem.caffemodel"))
    shapes = {name: [a.shape for a in blobs] for name, blobs in arrays.items()}
    assert shapes == {"conv1": [(64, 3, 7, 7), (64,)],
                      "bn_conv1": [(64,), (64,), (1,)],
                      "scale_conv1": [(64,), (64,)]}
    assert all(a.dtype == np.float32 for blobs in arrays.values() for a in blobs)
    assert arrays["bn_conv1"][2].tolist() == [1.0]  # this model's BatchNorm scale factor
    assert np.all(arrays["bn_conv1"][1] >= 0)  # variance sums


def test_every_conformance_model_loads():
    cases = conformance_cases()
    assert len(cases) >= 20
    for case in cases:
        arrays = weights.load_weights(case / "weights.caffemodel")
        assert all(a.dtype == np.float32 and np.isfinite(a).all() for blobs in arrays.values() for a in blobs)
    lenet = weights.load_weights(shared_path("conformance", "lenet", "weights.caffemodel"))
    # From the LeNet definition: 1 -> 20 -> 50 channels, 5x5 kernels, 50*4*4 = 800 -> 500 -> 10.
    assert {k: [a.shape for a in v] for k, v in lenet.items()} == {
        "conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)],
        "ip1": [(500, 800), (500,)], "ip2": [(10, 500), (10,)]}


def test_loaded_values_reproduce_caffe_forward():
    # Caffe's InnerProduct output is x.W^T + b: the decoded weights must give Caffe's golden blob.
    case = shared_path("conformance", "ip_default")
    w, b = weights.load_weights(case / "weights.caffemodel")["fc"]
    x = np.load(case / "in_data.npy").reshape(2, -1).astype(np.float64)
    golden = np.load(case / "golden.npz")["fc"]
    np.testing.assert_allclose(x @ w.T.astype(np.float64) + b, golden, rtol=1e-5, atol=1e-6)


def test_load_weights_from_net_parameter():
    net = caffe_pb2.NetParameter()
    net.layer.add(name="relu", type="ReLU")
    conv = net.layer.add(name="conv", type="Convolution")
    conv.blobs.add(data=[1, 2], shape=caffe_pb2.BlobShape(dim=[2, 1, 1, 1]))
    arrays = weights.load_weights(net)
    assert list(arrays) == ["conv"]
    np.testing.assert_array_equal(arrays["conv"][0], np.array([1, 2], np.float32).reshape(2, 1, 1, 1))


def test_load_weights_keeps_the_file_order_with_a_repeated_name_at_its_last_place():
    """CopyTrainedLayersFrom copies the layers in file order, a repeated name twice: its last copy is also its
    last write."""
    net = caffe_pb2.NetParameter()
    for name, value in (("a", 1), ("b", 2), ("a", 3)):
        net.layer.add(name=name, type="InnerProduct").blobs.add(data=[value], shape=caffe_pb2.BlobShape(dim=[1]))
    arrays = weights.load_weights(net)
    assert list(arrays) == ["b", "a"] and arrays["a"][0][0] == 3


def test_corrupt_truncated_empty_and_missing_files(tmp_path):
    good = shared_path("conformance", "lenet", "weights.caffemodel").read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(good[:len(good) // 2])
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff" * 64)
    (tmp_path / "text.caffemodel").write_bytes(b'name: "LeNet"\nlayer {\n  name: "data"\n}\n')
    for name in ["cut.caffemodel", "junk.caffemodel", "text.caffemodel"]:
        with pytest.raises(CaffeinitError, match=f"{name}: not a valid caffemodel \\(truncated or corrupt"):
            weights.read_caffemodel(tmp_path / name)
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(CaffeinitError, match="empty.caffemodel: not a valid caffemodel \\(no layers\\)"):
        weights.read_caffemodel(tmp_path / "empty.caffemodel")
    with pytest.raises(CaffeinitError, match="absent.caffemodel: cannot read caffemodel: No such file"):
        weights.load_weights(tmp_path / "absent.caffemodel")


def test_a_prototxt_given_as_weights_says_it_is_text(tmp_path):
    for name in ["bvlc__models_bvlc_alexnet_deploy.prototxt", "v0__lenet.prototxt"]:
        with pytest.raises(CaffeinitError, match=f"{name}: not a valid caffemodel .*; it is text, a .prototxt"):
            weights.read_caffemodel(shared_path("corpus", name))
    # the hint is for text only: corrupt binary data gets none
    good = shared_path("conformance", "lenet", "weights.caffemodel").read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(good[:len(good) // 2])
    with pytest.raises(CaffeinitError) as info:
        weights.read_caffemodel(tmp_path / "cut.caffemodel")
    assert str(info.value).endswith("(truncated or corrupt protobuf data)")


def test_files_over_2_gib_are_refused(tmp_path):
    huge = tmp_path / "huge.caffemodel"
    with open(huge, "wb") as f:
        f.truncate(2**31)  # sparse: nothing is written or read
    with pytest.raises(CaffeinitError, match="huge.caffemodel: caffemodel is 2,147,483,648 bytes; .*2 GiB"):
        weights.read_caffemodel(huge)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_endless_device_is_read_no_further_than_the_limit(monkeypatch):
    """/dev/zero reports size 0: the read itself is bounded (it ran out of memory before)."""
    monkeypatch.setattr(weights, "MAX_MESSAGE_BYTES", 1 << 20)
    with pytest.raises(CaffeinitError, match=r"^/dev/zero: caffemodel is larger than 1,048,576 bytes, the limit of "
                                             r"protobuf messages \(and of Caffe itself\)$"):
        weights.read_caffemodel("/dev/zero")


def test_blob_count_mismatch_names_the_blob():
    net = caffe_pb2.NetParameter()
    net.layer.add(name="fc").blobs.add(data=[1, 2, 3], shape=caffe_pb2.BlobShape(dim=[2, 2]))
    with pytest.raises(CaffeinitError, match="layer 'fc' blob 0: shape \\[2, 2\\] needs 4 values but the blob holds 3"):
        weights.load_weights(net)


# -- blob decoding ------------------------------------------------------------------------------------------

def test_legacy_dims_and_their_precedence_over_shape():
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=range(6))
    assert weights.blob_to_array(blob).shape == (1, 1, 2, 3)
    # Only some legacy dims set: the others are 0, as in Caffe (and 0 values).
    assert weights.blob_to_array(caffe_pb2.BlobProto(width=0)).shape == (0, 0, 0, 0)
    # Blob::FromProto reads the legacy dims when any is set, whatever `shape` says.
    both = caffe_pb2.BlobProto(num=1, channels=1, height=1, width=6, shape=caffe_pb2.BlobShape(dim=[2, 3]),
                               data=range(6))
    assert weights.blob_to_array(both).shape == (1, 1, 1, 6)


def test_zero_axis_blob():
    blob = caffe_pb2.BlobProto(data=[0.25])
    array = weights.blob_to_array(blob)
    assert array.shape == () and array.dtype == np.float32 and float(array) == 0.25
    with pytest.raises(CaffeinitError, match="needs 1 values but the blob holds 2"):
        weights.blob_to_array(caffe_pb2.BlobProto(data=[1, 2]))


def test_double_data_is_preferred():
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2]), data=[1, 2], double_data=[0.1, 1e300])
    array = weights.blob_to_array(blob)
    assert array.dtype == np.float32
    assert array.tolist() == [np.float32(0.1), np.inf]  # rounded to float32 as Caffe's static_cast does
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2]), data=[1, 2])
    assert weights.blob_to_array(blob).tolist() == [1, 2]


def test_fit_blob_legacy_matching():
    ip_weight = np.arange(120, dtype=np.float32).reshape(1, 1, 6, 20)
    fitted = weights.fit_blob(ip_weight, (6, 20), "fc", 0)
    assert fitted.shape == (6, 20) and np.array_equal(fitted.ravel(), ip_weight.ravel())
    assert weights.fit_blob(np.zeros((1, 1, 1, 6), np.float32), [6], "fc", 1).shape == (6,)
    assert weights.fit_blob(np.zeros((1, 1, 1, 1), np.float32), (), "prelu", 0).shape == ()
    conv = np.zeros((5, 3, 3, 3), np.float32)
    assert weights.fit_blob(conv, (5, 3, 3, 3), "conv", 0) is conv
    bad = [(np.zeros((2, 1, 6, 20)), (6, 20)),  # leading legacy dim must be 1
           (np.zeros((1, 6, 20)), (6, 20)),  # only 4-D blobs are legacy
           (np.zeros((6, 20)), (20, 6)),
           (np.zeros((1, 1, 1, 6)), (1, 1, 1, 1, 6))]  # more than 4 axes never match legacy dims
    for array, expected in bad:
        with pytest.raises(CaffeinitError) as err:
            weights.fit_blob(array, expected, "fc", 1)
        assert str(err.value) == (f"layer 'fc': blob 1 has shape {list(array.shape)} in the weights but the net "
                                  f"needs {list(expected)}")


# -- writing ------------------------------------------------------------------------------------------------

def test_array_to_blob_bytes_by_hand():
    array = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    # data (field 5, packed: 6 floats = 24 bytes), then shape (field 7) holding dim (field 1, packed) [2, 3]
    expected = b"\x2a\x18" + struct.pack("<6f", 1, 2, 3, 4, 5, 6) + b"\x3a\x04\x0a\x02\x02\x03"
    assert weights.array_to_blob(array).SerializeToString() == expected
    # A 0-axis blob: no shape, one value.
    assert weights.array_to_blob(np.float32(-1.5)).SerializeToString() == b"\x2a\x04" + struct.pack("<f", -1.5)
    # Big dims take multi-byte varints (300 = 0xac 0x02); float64 and strided input become float32 C order.
    wide = np.arange(600, dtype=np.float64).reshape(300, 2).T
    blob = weights.array_to_blob(wide)
    assert list(blob.shape.dim) == [2, 300] and blob.SerializeToString().endswith(b"\x3a\x05\x0a\x03\x02\xac\x02")
    assert np.array_equal(np.array(blob.data, np.float32), wide.astype(np.float32).ravel())


def small_net_and_blobs():
    net = text_format.Parse("""
        name: "tiny"
        layer { name: "in" type: "Input" top: "data" phase: TEST }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" phase: TEST
                param { lr_mult: 1 } convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "act" type: "PReLU" bottom: "conv" top: "act" phase: TEST
                prelu_param { channel_shared: true } }
        layer { name: "bn" type: "BatchNorm" bottom: "act" top: "bn" phase: TEST }
    """, caffe_pb2.NetParameter())
    rng = np.random.default_rng(1)
    blobs = {"conv": [rng.standard_normal((2, 3, 1, 1)).astype(np.float32), np.arange(2, dtype=np.float32)],
             "act": [np.float32(0.25)],
             "bn": [np.ones(2, np.float32), np.full(2, 2, np.float32), np.array([999.98], np.float32)]}
    return net, blobs


def test_round_trip_write_read(tmp_path):
    net, blobs = small_net_and_blobs()
    out = tmp_path / "tiny.caffemodel"
    weights.write_caffemodel(out, net, blobs)
    loaded = weights.load_weights(out)
    assert list(loaded) == ["conv", "act", "bn"]
    for name, arrays in blobs.items():
        assert [a.shape for a in loaded[name]] == [np.shape(a) for a in arrays]
        for ours, theirs in zip(loaded[name], arrays):
            np.testing.assert_array_equal(ours, theirs)
    saved = weights.read_caffemodel(out)
    # BatchNorm's set-up adds lr_mult 0 specs; other layers keep their parameters; no legacy dims are written.
    assert [p.lr_mult for p in saved.layer[3].param] == [0, 0, 0]
    assert [p.lr_mult for p in saved.layer[1].param] == [1]
    assert not any(b.HasField("num") for layer in saved.layer for b in layer.blobs)
    assert not saved.layer[2].blobs[0].HasField("shape")
    # The streamed writer and net_to_proto agree byte for byte.
    assert out.read_bytes() == weights.net_to_proto(net, blobs).SerializeToString()


def test_write_refuses_unknown_layers_and_inputs(tmp_path):
    net, blobs = small_net_and_blobs()
    with pytest.raises(CaffeinitError, match="weights given for layer 'ghost', which is not in net 'tiny'"):
        weights.write_caffemodel(tmp_path / "x.caffemodel", net, {**blobs, "ghost": []})
    source = tmp_path / "in.caffemodel"
    weights.write_caffemodel(source, net, blobs)
    before = source.read_bytes()
    with pytest.raises(CaffeinitError, match="refusing to overwrite input file"):
        weights.write_caffemodel(source, net, {}, inputs=[source])
    assert source.read_bytes() == before


def test_failed_write_keeps_the_old_file(tmp_path):
    net, blobs = small_net_and_blobs()
    out = tmp_path / "model.caffemodel"
    out.write_bytes(b"old model")
    # The last layer's blob cannot become float32: the failure comes after earlier layers were written.
    with pytest.raises(ValueError):
        weights.write_caffemodel(out, net, {**blobs, "bn": [np.array(["not a number"], object)]})
    assert out.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.caffemodel"]


def test_byte_layout_matches_caffe_written_models(tmp_path):
    cases, batchnorms = conformance_cases(), 0
    assert len(cases) >= 20
    for case in cases:
        original = (case / "weights.caffemodel").read_bytes()
        # Re-serializing the parse, through the streamed writer.
        weights.write_caffemodel(tmp_path / "same.caffemodel", caffe_pb2.NetParameter.FromString(original))
        assert (tmp_path / "same.caffemodel").read_bytes() == original, case.name
        # read_caffemodel upgrades as Caffe's reader does: the only change to a model Caffe wrote is
        # UpgradeNetBatchNorm setting decay_mult 0 next to lr_mult 0 on BatchNorm's three param specs.
        expected = caffe_pb2.NetParameter.FromString(original)
        for layer in expected.layer:
            if layer.type == "BatchNorm" and len(layer.param) == 3:
                batchnorms += 1
                for spec in layer.param:
                    spec.decay_mult = 0
        assert weights.read_caffemodel(case / "weights.caffemodel") == expected, case.name
        # Rebuilding what Net::ToProto writes from the prototxt (upgraded, TEST net, splits) and the arrays.
        net = text_format.Parse((case / "net.prototxt").read_text(), caffe_pb2.NetParameter())
        upgrade_net_as_needed(net, str(case / "net.prototxt"))
        net = insert_splits(filter_net(net, caffe_pb2.TEST), phase=caffe_pb2.TEST)
        arrays = weights.load_weights(case / "weights.caffemodel")
        assert weights.net_to_proto(net, arrays, phase=caffe_pb2.TEST).SerializeToString() == original, case.name
        weights.write_caffemodel(tmp_path / "rebuilt.caffemodel", net, arrays, phase=caffe_pb2.TEST)
        assert (tmp_path / "rebuilt.caffemodel").read_bytes() == original, case.name
    assert batchnorms  # the BatchNorm upgrade above was exercised


# -- mean files ---------------------------------------------------------------------------------------------

def test_binaryproto_round_trip_and_compute_image_mean_layout(tmp_path):
    mean = np.random.default_rng(2).uniform(0, 255, (3, 4, 5)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    weights.write_binaryproto(path, mean)
    np.testing.assert_array_equal(weights.read_mean_binaryproto(path), mean)
    assert list(caffe_pb2.BlobProto.FromString(path.read_bytes()).shape.dim) == [1, 3, 4, 5]
    # compute_image_mean writes legacy dims 1 x C x H x W.
    legacy = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5, data=mean.ravel())
    path.write_bytes(legacy.SerializeToString())
    np.testing.assert_array_equal(weights.read_mean_binaryproto(path), mean)


def test_bad_mean_files(tmp_path):
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 3]), data=range(6)).SerializeToString())
    with pytest.raises(CaffeinitError, match="mean.binaryproto: a mean file needs a 1xCxHxW or CxHxW blob, "
                                             "found shape \\[2, 3\\]"):
        weights.read_mean_binaryproto(path)
    path.write_bytes(b"\x2a\xff\xff")
    with pytest.raises(CaffeinitError, match="not a valid binaryproto"):
        weights.read_mean_binaryproto(path)


# -- old formats ------------------------------------------------------------------------------------------------

def test_v1_model_is_upgraded_and_legacy_blobs_fit(tmp_path):
    old = caffe_pb2.NetParameter(name="v1", input=["data"], input_dim=[1, 20, 1, 1])
    fc = old.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT, bottom=["data"], top=["fc"])
    fc.inner_product_param.num_output = 6
    weight = np.arange(120, dtype=np.float32)
    fc.blobs.add(num=1, channels=1, height=6, width=20, data=weight)
    fc.blobs.add(num=1, channels=1, height=1, width=6, data=range(6))
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(old.SerializeToString())
    net = weights.read_caffemodel(path)
    assert len(net.layers) == 0
    assert [(layer.name, layer.type) for layer in net.layer] == [("input", "Input"), ("fc", "InnerProduct")]
    arrays = weights.load_weights(net)
    assert [a.shape for a in arrays["fc"]] == [(1, 1, 6, 20), (1, 1, 1, 6)]
    np.testing.assert_array_equal(weights.fit_blob(arrays["fc"][0], (6, 20), "fc", 0), weight.reshape(6, 20))
    np.testing.assert_array_equal(weights.fit_blob(arrays["fc"][1], (6,), "fc", 1), np.arange(6))


def test_non_finite_blobs_are_never_written(tmp_path):
    from caffeinit.weights import write_caffemodel
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="fc", type="InnerProduct")
    out = tmp_path / "w.caffemodel"
    out.write_bytes(b"old")
    bad = {"fc": [np.array([[1.0, np.nan]], np.float32), np.zeros(1, np.float32)]}
    with pytest.raises(CaffeinitError, match="layer 'fc' blob 0 has 1 non-finite values"):
        write_caffemodel(out, net, bad)
    assert out.read_bytes() == b"old"
    # The same through the NetParameter path (e.g. `caffeinit upgrade --weights`).
    net.layer[0].blobs.add().data.extend([np.inf])
    net.layer[0].blobs[0].shape.dim.append(1)
    with pytest.raises(CaffeinitError, match="layer 'fc' blob 0 has 1 non-finite"):
        write_caffemodel(out, net)
    assert out.read_bytes() == b"old"


@pytest.mark.parametrize("position", [0, 1, 65535, 65536, 65537, 200_000 - 1])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_found_anywhere_in_a_blob(tmp_path, position, bad_value):
    """The chunked check finds one bad value at the ends of the blob and on either side of a chunk boundary."""
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="a", type="InnerProduct")
    net.layer.add(name="b", type="InnerProduct")
    good = np.random.default_rng(0).standard_normal((400, 500), dtype=np.float32)
    bad = good.copy()
    bad.flat[position] = bad_value
    out = tmp_path / "w.caffemodel"
    for blobs in ({"a": [good, bad]}, {"a": [good], "b": [np.ones(3, np.float32), bad.T]}):  # .T: not contiguous
        with pytest.raises(CaffeinitError, match=r"blob 1 has 1 non-finite values"):
            weights.write_caffemodel(out, net, blobs)
        assert not out.exists() and not list(tmp_path.iterdir())  # no file, no temporary left behind


def test_count_non_finite_agrees_with_numpy():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(3 * 65536 + 7).astype(np.float32)
    values[rng.choice(values.size, 500, replace=False)] = rng.choice([np.nan, np.inf, -np.inf], 500)
    for array in (values, values[:7 * 28000].reshape(7, -1)[:, ::3], values[:1].reshape(()), values[:0]):
        assert weights.count_non_finite(array) == array.size - np.isfinite(array).sum()
    assert weights.count_non_finite(np.float32([1e38, -3.4e38, 0])) == 0  # large but finite is fine


# -- shapes Caffe's Blob::Reshape refuses ---------------------------------------------------------------------------
@pytest.mark.parametrize("fields, values, message", [
    (dict(num=-1, channels=-1, height=1, width=1), 1, r"shape \[-1, -1, 1, 1\] has a negative dimension"),
    (dict(num=-1, channels=1, height=1, width=1), 1, r"shape \[-1, 1, 1, 1\] has a negative dimension"),
    (dict(shape=caffe_pb2.BlobShape(dim=[-2, -3])), 6, r"shape \[-2, -3\] has a negative dimension"),
    # 2**64 values: a product taken in int64 wraps around to 0, which an empty blob then "matched"
    (dict(shape=caffe_pb2.BlobShape(dim=[2**32, 2**32])), 0,
     r"shape .* holds 18,446,744,073,709,551,616 values; .* at most"),
    (dict(shape=caffe_pb2.BlobShape(dim=[1] * 33)), 1, r"shape has 33 axes; Caffe's blobs have at most 32"),
])
def test_shapes_caffe_cannot_hold_are_refused(fields, values, message):
    # Blob::Reshape: CHECK_LE(axes, kMaxBlobAxes), CHECK_GE(dim, 0), CHECK_LE(count, INT_MAX)
    blob = caffe_pb2.BlobProto(**fields)
    blob.data.extend([0.5] * values)
    with pytest.raises(CaffeinitError, match=f"^layer 'fc' blob 0: {message}"):
        weights.blob_to_array(blob, "layer 'fc' blob 0")


def test_a_caffemodel_with_a_negative_dimension_is_one_error_line(tmp_path, capsys):
    from caffeinit.cli import main
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="fc", type="InnerProduct")
    layer.blobs.add(num=-1, channels=-1, height=1, width=1, data=[1.0])
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(CaffeinitError, match="bad.caffemodel: layer 'fc' blob 0: shape .* negative dimension"):
        weights.load_weights(path)
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text('name: "n"\nlayer { name: "fc" type: "InnerProduct" }\n')
    assert main(["upgrade", str(prototxt), "-o", str(tmp_path / "out.prototxt"), "--weights", str(path),
                 "--weights-out", str(tmp_path / "out.caffemodel")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("caffeinit: error: layer 'fc' blob 0: shape [-1, -1, 1, 1] has a negative dimension")
    assert err.count("\n") == 1
    assert not (tmp_path / "out.caffemodel").exists() and not (tmp_path / "out.prototxt").exists()


# -- HDF5 weights (.caffemodel.h5) ----------------------------------------------------------------------------------
def write_caffe_hdf5(path, net_param, arrays_by_layer, skip=()):
    """What Net::ToHDF5 writes: group data (and diff), one group per layer (empty for layers without blobs), one
    dataset per blob named by its index; ``skip`` (layer, blob) pairs are left out as Caffe leaves shared blobs."""
    import h5py
    with h5py.File(path, "w") as f:
        data, diff = f.create_group("data"), f.create_group("diff")
        for layer in net_param.layer:
            group = data.create_group(layer.name)
            diff.create_group(layer.name)
            for k, array in enumerate(arrays_by_layer.get(layer.name, ())):
                if (layer.name, k) not in skip:
                    group.create_dataset(str(k), data=array)


def test_hdf5_weights_load_like_the_binary_ones_and_reproduce_caffe(tmp_path, capsys):
    from caffeinit.api import load
    from caffeinit.cli import main
    case = shared_path("conformance", "lenet")
    binary = weights.load_weights(case / "weights.caffemodel")
    h5 = tmp_path / "lenet.caffemodel.h5"
    write_caffe_hdf5(h5, weights.read_caffemodel(case / "weights.caffemodel"),
                     {k: [a.astype(np.float64) for a in v] for k, v in binary.items()})
    loaded = weights.load_weights(h5)
    assert sorted(loaded) == sorted(binary)
    for name in binary:
        assert [a.dtype for a in loaded[name]] == [np.float32] * len(binary[name])
        for a, b in zip(loaded[name], binary[name]):
            np.testing.assert_array_equal(a, b)
    renamed = tmp_path / "renamed.caffemodel"  # HDF5 data under a binary model's name
    renamed.write_bytes(h5.read_bytes())
    assert sorted(weights.load_weights(renamed)) == sorted(binary)
    golden = np.load(case / "golden.npz")
    prob = load(case / "net.prototxt", weights=h5).forward({"data": np.load(case / "in_data.npy")})["prob"]
    np.testing.assert_allclose(prob, golden["prob"], rtol=0, atol=1e-5 * np.abs(golden["prob"]).max())
    assert main(["inspect", str(case / "net.prototxt"), "--weights", str(h5)]) == 0
    assert "not in" not in capsys.readouterr().err
    with pytest.raises(CaffeinitError, match=r"lenet.caffemodel.h5: HDF5 weights .* need"):
        weights.read_caffemodel(h5)  # e.g. `caffeinit upgrade --weights`: there is no net in it to upgrade


def test_bad_hdf5_weights_name_the_file_and_layer(tmp_path):
    import h5py
    net = caffe_pb2.NetParameter()
    net.layer.add(name="fc", type="InnerProduct")
    partial = tmp_path / "partial.caffemodel.h5"
    write_caffe_hdf5(partial, net, {"fc": [np.ones((2, 3)), np.ones(2)]}, skip={("fc", 0)})
    with pytest.raises(CaffeinitError, match=r"partial.caffemodel.h5: layer 'fc': blobs 1; .* not supported"):
        weights.load_weights(partial)
    with h5py.File(tmp_path / "nodata.h5", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(CaffeinitError, match=r"nodata.h5: an HDF5 file without Caffe's 'data' group"):
        weights.load_weights(tmp_path / "nodata.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(CaffeinitError, match=r"junk.h5: not a valid HDF5 caffemodel"):
        weights.load_weights(tmp_path / "junk.h5")
    with pytest.raises(CaffeinitError, match=r"absent.h5: cannot read caffemodel: No such file"):
        weights.load_weights(tmp_path / "absent.h5")
    (tmp_path / "folder.h5").mkdir()
    with pytest.raises(CaffeinitError, match=r"folder.h5: cannot read caffemodel: Is a directory"):
        weights.load_weights(tmp_path / "folder.h5")
