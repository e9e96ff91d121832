import numpy as np
import pytest

from caffeinit.data.transform import DEPLOY_MEAN, Preprocess, read_mean_file
from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2
from tests.data.caffe_oracle import caffe_transform

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def datum(shape=(3, 7, 9), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_hand_computed_mean_then_scale():
    pixels = np.array([[[10, 20], [30, 40]]], np.uint8)  # 1 x 2 x 2
    pre = Preprocess(mean_values=(4.0,), scale=0.5)
    out = pre.apply(pixels, np.random.default_rng(0), hwc=False)
    np.testing.assert_array_equal(out, [[[3, 8], [13, 18]]])
    assert out.dtype == np.float32


def test_test_phase_centre_crop_odd_margin_keeps_extra_pixel_bottom_right():
    pixels = np.arange(7 * 6, dtype=np.uint8).reshape(1, 7, 6)
    out = Preprocess(phase=TEST, crop_size=4).apply(pixels, np.random.default_rng(0), hwc=False)
    # (7 - 4) // 2 = 1 row off the top, (6 - 4) // 2 = 1 column off the left
    np.testing.assert_array_equal(out[0], pixels[0, 1:5, 1:5])


def test_mean_image_indexed_at_uncropped_position_matches_caffe_loops():
    img = datum()
    mean = np.random.default_rng(1).uniform(0, 255, img.shape).astype(np.float32)
    pre = Preprocess(phase=TEST, crop_size=5, mean_image=mean, scale=0.25)
    out = pre.apply(img, np.random.default_rng(0), hwc=False)
    np.testing.assert_allclose(out, caffe_transform(img, 5, 1, 2, False, 0.25, mean=mean), rtol=0, atol=1e-5)


@pytest.mark.parametrize("values", [(100.0,), (104.0, 117.0, 123.0)])
def test_mean_values_one_or_per_channel(values):
    img = datum()
    out = Preprocess(mean_values=values).apply(img, np.random.default_rng(0), hwc=False)
    np.testing.assert_allclose(out, caffe_transform(img, 0, 0, 0, False, mean_values=values), atol=1e-5)


def test_wrong_number_of_mean_values_is_refused():
    with pytest.raises(ValueError, match="2 mean values for 3 channels"):
        Preprocess(mean_values=(1.0, 2.0)).apply(datum(), np.random.default_rng(0), hwc=False)


def test_mirror_is_random_in_test_phase_and_matches_caffe():
    img = datum((2, 5, 6))
    pre = Preprocess(phase=TEST, crop_size=4, mirror=True, mean_values=(3.0, 5.0))
    plain = caffe_transform(img, 4, 0, 1, False, mean_values=(3.0, 5.0))
    flipped = caffe_transform(img, 4, 0, 1, True, mean_values=(3.0, 5.0))
    flips = 0
    for seed in range(100):
        out = pre.apply(img, np.random.default_rng(seed), hwc=False)
        if np.array_equal(out, flipped):
            flips += 1
        else:
            np.testing.assert_array_equal(out, plain)
    assert 25 <= flips <= 75  # about half, as Caffe's Rand(2)


def test_train_random_crop_covers_all_offsets_and_matches_caffe():
    img = datum((1, 6, 5))
    pre = Preprocess(phase=TRAIN, crop_size=3)
    seen = set()
    for seed in range(200):
        out = pre.apply(img, np.random.default_rng(seed), hwc=False)
        matches = [(h, w) for h in range(4) for w in range(3)
                   if np.array_equal(out, caffe_transform(img, 3, h, w, False))]
        assert matches
        seen.update(matches)
    assert seen == {(h, w) for h in range(4) for w in range(3)}


def test_train_crop_and_mirror_are_deterministic_for_a_seed():
    img = datum((3, 20, 20))
    pre = Preprocess(phase=TRAIN, crop_size=11, mirror=True)
    a = [pre.apply(img, np.random.default_rng([7, i]), hwc=False) for i in range(8)]
    b = [pre.apply(img, np.random.default_rng([7, i]), hwc=False) for i in range(8)]
    c = [pre.apply(img, np.random.default_rng([8, i]), hwc=False) for i in range(8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_hwc_input_is_channel_major_output():
    hwc = np.zeros((2, 3, 3), np.uint8)
    hwc[..., 0], hwc[..., 1], hwc[..., 2] = 1, 2, 3  # B, G, R planes
    out = Preprocess().apply(hwc, np.random.default_rng(0))
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out[:, 0, 0], [1, 2, 3])


def test_crop_larger_than_image_and_mean_size_mismatch_are_reported():
    with pytest.raises(ValueError, match="smaller than crop_size 8"):
        Preprocess(crop_size=8).apply(datum(), np.random.default_rng(0), hwc=False)
    with pytest.raises(ValueError, match="mean image is 3x4x4"):
        Preprocess(mean_image=np.zeros((3, 4, 4), np.float32)).apply(datum(), np.random.default_rng(0), hwc=False)


def write_blobproto(path, array, legacy=True):
    blob = caffe_pb2.BlobProto()
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = 1, *array.shape
    else:
        blob.shape.dim.extend([1, *array.shape])
    blob.data.extend(array.reshape(-1).tolist())
    path.write_bytes(blob.SerializeToString())


@pytest.mark.parametrize("legacy", [True, False])
def test_mean_binaryproto_round_trip_through_transform_param(tmp_path, legacy):
    mean = np.random.default_rng(3).uniform(0, 255, (3, 7, 9)).astype(np.float32)
    write_blobproto(tmp_path / "mean.binaryproto", mean, legacy)
    np.testing.assert_array_equal(read_mean_file(str(tmp_path / "mean.binaryproto")), mean)
    tp = caffe_pb2.TransformationParameter(mean_file=str(tmp_path / "mean.binaryproto"), crop_size=5, scale=2.0)
    pre = Preprocess.from_transform_param(tp, TEST)
    img = datum()
    out = pre.apply(img, np.random.default_rng(0), hwc=False)
    np.testing.assert_allclose(out, caffe_transform(img, 5, 1, 2, False, 2.0, mean=mean), atol=1e-4)


def test_transform_param_errors(tmp_path):
    write_blobproto(tmp_path / "m.binaryproto", np.zeros((1, 2, 2), np.float32))
    both = caffe_pb2.TransformationParameter(mean_file=str(tmp_path / "m.binaryproto"), mean_value=[1])
    with pytest.raises(CaffeinitError, match="mean_file and mean_value"):
        Preprocess.from_transform_param(both)
    with pytest.raises(CaffeinitError, match="force_color and force_gray"):
        Preprocess.from_transform_param(caffe_pb2.TransformationParameter(force_color=True, force_gray=True))
    with pytest.raises(CaffeinitError, match="missing.binaryproto"):
        missing = caffe_pb2.TransformationParameter(mean_file=str(tmp_path / "missing.binaryproto"))
        Preprocess.from_transform_param(missing)


def test_deploy_default_and_flags(tmp_path):
    default = Preprocess.from_flags((10, 3, 224, 224))
    assert (default.resize, default.crop_size, default.mean_values, default.scale) == ((224, 224), 0, DEPLOY_MEAN, 1.0)
    assert default.describe() == ("preprocessing: warp to 224x224 (OpenCV bilinear), BGR, "
                                  "subtract mean (104,117,123), scale 1")
    custom = Preprocess.from_flags((1, 3, 227, 227), resize="256,256", crop="227", mean_value="1,2,3", scale="0.5")
    assert (custom.resize, custom.crop_size, custom.mean_values, custom.scale) == ((256, 256), 227, (1, 2, 3), 0.5)
    assert "centre crop 227" in custom.describe()
    gray = Preprocess.from_flags((1, 1, 28, 28), gray=True, mean_value="0", scale=1 / 255)
    assert gray.force_gray and not gray.color and gray.mean_values == (0.0,)
    for kwargs, message in [({"resize": "256"}, "--resize expects H,W"), ({"crop": "x"}, "--crop expects"),
                            ({"mean_value": "a,b"}, "--mean-value expects"),
                            ({"mean_value": "1", "mean_file": "m"}, "cannot be used together")]:
        with pytest.raises(CaffeinitError, match=message):
            Preprocess.from_flags((1, 3, 8, 8), **kwargs)


def test_mean_file_flag_must_match_the_warp_and_layer_override(tmp_path):
    write_blobproto(tmp_path / "m.binaryproto", np.zeros((3, 256, 256), np.float32))
    with pytest.raises(CaffeinitError, match="--resize 256,256 --crop N"):
        Preprocess.from_flags((1, 3, 227, 227), mean_file=str(tmp_path / "m.binaryproto"))
    ok = Preprocess.from_flags((1, 3, 227, 227), mean_file=str(tmp_path / "m.binaryproto"), resize="256,256",
                               crop=227)
    assert ok.mean_image.shape == (3, 256, 256) and ok.crop_size == 227
    lp = caffe_pb2.LayerParameter(name="data", type="Data", top=["data"])
    lp.transform_param.mean_file = str(tmp_path / "m.binaryproto")
    lp.transform_param.crop_size = 227
    assert Preprocess.for_layer(lp, TRAIN, (8, 3, 227, 227)).resize == (256, 256)
    lp.transform_param.ClearField("mean_file")
    assert Preprocess.for_layer(lp, TRAIN, (8, 3, 227, 227)).resize is None
    lp.transform_param.crop_size = 0
    assert Preprocess.for_layer(lp, TRAIN, (8, 3, 32, 30)).resize == (32, 30)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": "2,3"}, "--scale expects one number, got '2,3'"),
    ({"scale": "nan"}, "--scale nan: nan is not a finite float32 number"),
    ({"scale": "inf"}, "--scale inf: inf is not a finite float32 number"),
    ({"scale": "1e39"}, "--scale 1e39: 1e+39 is not a finite float32 number"),  # inf as Caffe's float
    ({"mean_value": "1,nan,3"}, "--mean-value 1,nan,3: nan is not a finite float32 number"),
    ({"mean_value": "-inf"}, "--mean-value -inf: -inf is not a finite float32 number"),
    ({"mean_value": "104,1e39,123"}, "--mean-value 104,1e39,123: 1e+39 is not a finite float32 number"),
])
def test_scale_and_mean_flags_are_finite_float32_numbers(kwargs, message):
    with pytest.raises(CaffeinitError) as e:
        Preprocess.from_flags((1, 3, 8, 8), **kwargs)
    assert str(e.value).startswith(message)
    ok = Preprocess.from_flags((1, 3, 8, 8), scale="3e38", mean_value="-3e38")
    assert (ok.scale, ok.mean_values) == (3e38, (-3e38,))


@pytest.mark.parametrize("field, value", [("scale", float("nan")), ("scale", float("inf")),
                                          ("mean_value", float("nan")), ("mean_value", -float("inf"))])
def test_a_non_finite_transform_param_is_refused_naming_the_layer(field, value):
    tp = caffe_pb2.TransformationParameter()
    if field == "scale":
        tp.scale = value
    else:
        tp.mean_value.extend([1, value])
    with pytest.raises(CaffeinitError, match=rf"^layer 'data' \(Data\): transform_param {field}: {value:g} is not "
                                             "a finite number"):
        Preprocess.from_transform_param(tp, where="layer 'data' (Data)")


def test_a_mean_file_with_nan_is_refused(tmp_path):
    mean = np.zeros((3, 2, 2), np.float32)
    mean[1, 0, 1] = np.nan
    write_blobproto(tmp_path / "m.binaryproto", mean)
    with pytest.raises(CaffeinitError, match=r"m\.binaryproto: the mean image has 1 non-finite values"):
        read_mean_file(str(tmp_path / "m.binaryproto"))
