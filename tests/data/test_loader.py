import cv2
import numpy as np
import pytest

from caffeinit.data import DEPLOY_MEAN, ImageSource, Preprocess, batches, layer_source
from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2
from tests.conftest import ROOT

SAMPLES = ROOT / "models" / "images" / "list.txt"


def test_sample_images_ship_as_a_caffe_list():
    lines = SAMPLES.read_text().splitlines()
    assert 24 <= len(lines) <= 32
    sizes = [cv2.imread(str(SAMPLES.parent / line.split()[0])).shape for line in lines]
    assert set(sizes) == {(256, 256, 3)}
    assert sum(f.stat().st_size for f in SAMPLES.parent.glob("*.jpg")) < 1_500_000


def test_deploy_default_on_sample_images_is_warp_bgr_minus_mean():
    pre = Preprocess.from_flags((10, 3, 227, 227))
    source = ImageSource(str(SAMPLES), pre, label_top="label")
    out = list(batches(source, 10, 25, seed=0, progress=False))
    assert [b["data"].shape for b in out] == [(10, 3, 227, 227)] * 2 + [(5, 3, 227, 227)]
    assert out[0]["label"].dtype == np.float32 and out[0]["label"].shape == (10,)
    first = source.entries[0].path
    # oracle: OpenCV BGR decode, INTER_LINEAR warp, minus (104, 117, 123)
    resized = cv2.resize(cv2.imread(first), (227, 227), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(out[0]["data"][0], resized.transpose(2, 0, 1) - np.reshape(DEPLOY_MEAN, (3, 1, 1)))


def test_train_crop_and_mirror_deterministic_across_threads_and_seeds():
    pre = Preprocess(phase=caffe_pb2.TRAIN, crop_size=200, mirror=True, mean_values=(110.0,))
    source = ImageSource(str(SAMPLES), pre)
    run = lambda seed, threads: np.concatenate(  # noqa: E731
        [b["data"] for b in batches(source, 4, 8, seed=seed, num_threads=threads, progress=False)])
    a, b, c = run(3, 1), run(3, 2), run(4, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dummy_data_batches_use_the_fillers():
    pytest.importorskip("caffeinit.fillers")
    lp = caffe_pb2.LayerParameter(name="d", type="DummyData", top=["x", "y"])
    lp.dummy_data_param.shape.add().dim.extend([3, 2])
    lp.dummy_data_param.data_filler.add(type="constant", value=1.5)
    lp.dummy_data_param.data_filler.add(type="uniform", min=2, max=3)
    out = list(batches(layer_source(lp), 3, 5, seed=0, progress=False))
    assert [b["x"].shape for b in out] == [(3, 2), (2, 2)]
    assert np.all(out[0]["x"] == 1.5) and np.all((out[0]["y"] >= 2) & (out[0]["y"] <= 3))


def test_bad_batch_arguments():
    source = ImageSource(str(SAMPLES), Preprocess())
    with pytest.raises(CaffeinitError, match="must be positive"):
        next(batches(source, 0, 4))


def test_truncated_jpegs_are_used_as_caffe_does_and_named_once(tmp_path):
    import warnings
    from caffeinit.data import find_images
    rng = np.random.default_rng(1)
    picture = cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), (5, 5), 0)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(tmp_path / name), picture)
    for name in ("b.jpg", "c.jpg"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[:len(data) // 2])
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg 0\nb.jpg 1\nc.jpg 2\n")
    source = ImageSource(find_images(str(listing)), Preprocess(resize=(40, 40)), "data", "label")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(batches(source, 3, 6, progress=False))  # each image twice
    assert [str(w.message) for w in caught] == [
        f"2 images are truncated JPEGs, used as decoded in part (the rest grey), as Caffe does (first: "
        f"{listing}:2: '{tmp_path / 'b.jpg'}')"]
    want = cv2.imread(str(tmp_path / "b.jpg")).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(got[0]["data"][1], want)  # the pixels Caffe's cv::imread gives
