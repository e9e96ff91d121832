import os

import h5py
import lmdb
import numpy as np
import pytest
from PIL import Image

from caffeinit.data import (ImageSource, Preprocess, batches, find_images, layer_source, parse_image_list,
                            peek_top_shapes)
from caffeinit.data.sources import HDF5Source
from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2
from tests.conftest import ROOT
from tests.data.caffe_oracle import caffe_transform

TEST, TRAIN = caffe_pb2.TEST, caffe_pb2.TRAIN


def make_png(path, rgb):
    Image.fromarray(np.asarray(rgb, np.uint8), "RGB").save(path)
    return rgb


# -- lists, folders, globs -----------------------------------------------------------------------------------------
def test_list_parsing_odd_whitespace_missing_labels_and_relative_paths(tmp_path):
    (tmp_path / "list.txt").write_bytes(b"a.jpg 3\r\n\n  sub/b c.jpg\t7  \r\nd.jpg\n/abs/e.jpg 1\n"
                                        b"name with space.jpg\n")
    entries = parse_image_list(str(tmp_path / "list.txt"))
    assert [(e.path, e.label) for e in entries] == [
        (os.path.join(str(tmp_path), "a.jpg"), 3), (os.path.join(str(tmp_path), "sub/b c.jpg"), 7),
        (os.path.join(str(tmp_path), "d.jpg"), 0), ("/abs/e.jpg", 1),
        (os.path.join(str(tmp_path), "name with space.jpg"), 0)]
    assert [e.where.rsplit(":", 1)[1] for e in entries] == ["1", "3", "4", "5", "6"]
    # root_folder: plain concatenation, as Caffe does
    rooted = parse_image_list(str(tmp_path / "list.txt"), root_folder="/data/pre_")
    assert rooted[0].path == "/data/pre_a.jpg" and rooted[3].path == "/data/pre_/abs/e.jpg"


def test_labels_are_read_as_caffes_atoi_reads_them(tmp_path):
    """image_data_layer.cpp: label = atoi(text after the last space): its leading integer ("3.0" is 3, "1_0" is 1,
    not Python's 10); a last field without one leaves the whole line as the path (label 0)."""
    (tmp_path / "list.txt").write_text("a.jpg 3.0\nb.jpg 5abc\nc.jpg 1_0\nd.jpg -2\ne f.jpg\n")
    entries = parse_image_list(str(tmp_path / "list.txt"), relative_to_list=False)
    assert [(e.path, e.label) for e in entries] == [("a.jpg", 3), ("b.jpg", 5), ("c.jpg", 1), ("d.jpg", -2),
                                                    ("e f.jpg", 0)]


def test_empty_list_folder_and_glob_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(CaffeinitError, match="empty.txt' is empty"):
        parse_image_list(str(tmp_path / "empty.txt"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(CaffeinitError, match="no image files"):
        find_images(str(tmp_path / "dir"))
    with pytest.raises(CaffeinitError, match="no files match"):
        find_images(str(tmp_path / "*.jpg"))
    with pytest.raises(CaffeinitError, match="not a file, a directory"):
        find_images(str(tmp_path / "nothing"))


def test_folder_is_recursive_and_sorted_and_glob_matches(tmp_path):
    (tmp_path / "x" / "y").mkdir(parents=True)
    for name in ["x/y/b.PNG", "x/a.jpg", "x/notes.txt", "c.jpeg"]:
        (tmp_path / name).write_bytes(b"")
    assert [os.path.relpath(e.path, tmp_path) for e in find_images(str(tmp_path))] == \
        ["c.jpeg", "x/a.jpg", "x/y/b.PNG"]
    assert [os.path.basename(e.path) for e in find_images(str(tmp_path / "x" / "*.jpg"))] == ["a.jpg"]


def test_missing_image_names_file_and_line_or_is_skipped(tmp_path):
    make_png(tmp_path / "ok.png", np.full((4, 4, 3), 9))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "list.txt").write_text("ok.png 1\nmissing.png 2\nok.png 3\nbad.png 4\n")
    pre = Preprocess(mean_values=(1.0,))
    source = ImageSource(str(tmp_path / "list.txt"), pre, label_top="label")
    with pytest.raises(CaffeinitError, match=r"list.txt:2: cannot read image '.*missing.png': no such file"):
        list(batches(source, 2, 4, progress=False))
    skipping = ImageSource(str(tmp_path / "list.txt"), pre, label_top="label", skip_bad=True)
    with pytest.warns(UserWarning, match="skipped 2 unreadable images"):
        out = list(batches(skipping, 2, 3, progress=False, num_threads=1))
    assert skipping.skipped == 2
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in out]), [1, 3, 1])  # wraps after bad.png
    np.testing.assert_array_equal(out[0]["data"], np.full((2, 3, 4, 4), 8, np.float32))
    all_bad = tmp_path / "bad.txt"
    all_bad.write_text("bad.png\nmissing.png\n")
    with pytest.raises(CaffeinitError, match="could be read"), pytest.warns(UserWarning):
        list(batches(ImageSource(str(all_bad), pre, skip_bad=True), 1, 1, progress=False))


def _listed_once_written(spec, path) -> bool:
    """The oracle: write ``path`` and ask ``find_images`` whether ``spec`` now lists it."""
    with open(path, "wb") as f:
        f.write(b"not really an image")
    try:
        return any(os.path.samefile(e.path, path) for e in find_images(spec))
    except CaffeinitError:  # nothing matches
        return False
    finally:
        os.unlink(path)


def test_lists_as_image_says_what_find_images_would_list_once_the_file_is_there(tmp_path, monkeypatch):
    """An output that a later `--images` listing would pick up must be found before it is written: for folders
    (recursive, image extensions, links to folders not followed), globs (any file, '**', hidden names, links),
    lists and single images, lists_as_image agrees with find_images run after the file was written."""
    from caffeinit.data.sources import lists_as_image
    monkeypatch.chdir(tmp_path)
    for folder in ("imgs/sub", "imgs/.hid", "other"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("imgs/a.png", "imgs/sub/b.jpg", "imgs/.hid/c.png", "other/d.png"):
        make_png(tmp_path / name, [[[1, 2, 3]]])
    (tmp_path / "imgs" / "link").symlink_to(tmp_path / "other")
    (tmp_path / "alias").symlink_to(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("imgs/a.png 1\n")
    specs = ["imgs", "imgs/", str(tmp_path / "imgs"), "alias", "imgs/*.png", "imgs/*", "imgs/**/*.png", "imgs/**",
             "imgs/**/*", "*/*.png", "imgs/[ab]*.png", "imgs/.*/*.png", str(tmp_path / "imgs" / "*.png"),
             "alias/*.png", "imgs/*/", "imgs/*/*.png", "list.txt", "imgs/a.png", "*.png", "imgs/sub/*.jpg"]
    outputs = ["imgs/report.png", "imgs/report.json", "imgs/net.caffemodel", "imgs/sub/r.png", "imgs/.hid/r.png",
               "imgs/.r.png", "imgs/link/r.png", "other/r.png", "r.png", "./imgs/x.PNG", "alias/r.png",
               str(tmp_path / "imgs" / "r.tiff"), "imgs/sub/../r.webp", "imgs/sub/r.json"]
    wrong = [(spec, out, lists_as_image(spec, out)) for spec in specs for out in outputs
             if lists_as_image(spec, out) != _listed_once_written(spec, out)]
    assert wrong == []
    assert lists_as_image("imgs", "imgs/report.png") and not lists_as_image("imgs", "imgs/report.json")
    assert lists_as_image("imgs/*", "imgs/net.caffemodel") and not lists_as_image("list.txt", "imgs/r.png")


def test_lists_as_image_looks_at_the_folders_of_a_glob_not_at_every_image(tmp_path, monkeypatch):
    """A '**' glob over a large dataset: the check compares the output's folder with the folders the glob names
    (a few), not with each of the files (ImageNet's 1.2 million)."""
    from caffeinit.data.sources import lists_as_image
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(300):
        (tmp_path / "imgs" / "sub" / f"{i}.png").write_bytes(b"")
    stats = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        stats.append(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "stat", counting_stat)
    assert lists_as_image("imgs/**/*.png", "imgs/sub/new.png") and lists_as_image("imgs/**", "imgs/new.json")
    assert not lists_as_image("imgs/**/*.png", "new.png")
    assert len(stats) < 30


# -- ImageData layer -----------------------------------------------------------------------------------------------
def image_data_layer(tmp_path, **image_data):
    rng = np.random.default_rng(0)
    images = [make_png(tmp_path / f"im{i}.png", rng.integers(0, 256, (6, 8, 3))) for i in range(3)]
    (tmp_path / "list.txt").write_text("".join(f"im{i}.png {i + 5}\n" for i in range(3)))
    lp = caffe_pb2.LayerParameter(name="images", type="ImageData", top=["data", "label"])
    lp.image_data_param.source = str(tmp_path / "list.txt")
    lp.image_data_param.root_folder = str(tmp_path) + "/"
    lp.image_data_param.batch_size = 2
    for key, value in image_data.items():
        setattr(lp.image_data_param, key, value)
    return lp, images


def test_image_data_layer_source_and_shapes(tmp_path):
    lp, images = image_data_layer(tmp_path)
    lp.transform_param.crop_size = 4
    lp.transform_param.mean_value.extend([10, 20, 30])
    assert peek_top_shapes(lp, TEST) == [(2, 3, 4, 4), (2,)]
    out = list(batches(layer_source(lp, TEST), 2, 3, progress=False))
    assert [b["data"].shape[0] for b in out] == [2, 1]
    for k, rgb in enumerate(images):
        bgr_chw = rgb[..., ::-1].transpose(2, 0, 1)
        want = caffe_transform(bgr_chw, 4, 1, 2, False, mean_values=(10, 20, 30))
        np.testing.assert_allclose(out[k // 2]["data"][k % 2], want)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in out]), [5, 6, 7])


def test_image_data_resize_grey_and_errors(tmp_path):
    lp, _ = image_data_layer(tmp_path, new_height=5, new_width=7, is_color=False)
    assert peek_top_shapes(lp, TEST) == [(2, 1, 5, 7), (2,)]
    lp.image_data_param.new_width = 0
    with pytest.raises(CaffeinitError, match="new_height and new_width must be set together"):
        peek_top_shapes(lp, TEST)
    lp.image_data_param.new_width = 7
    lp.image_data_param.root_folder = "/nonexistent/"
    with pytest.raises(CaffeinitError, match=r"list.txt:1: cannot read image '/nonexistent/im0.png'"):
        peek_top_shapes(lp, TEST)


def test_image_data_shuffle_is_seeded(tmp_path):
    lp, _ = image_data_layer(tmp_path, shuffle=True)
    source = layer_source(lp, TEST)
    labels = lambda seed: [float(x[1]) for x in source.samples(6, seed)]  # noqa: E731
    assert labels(1) == labels(1)
    assert sorted(labels(1)[:3]) == [5, 6, 7] and sorted(labels(1)[3:]) == [5, 6, 7]
    assert any(labels(1) != labels(s) for s in range(2, 6))


# -- LMDB / LevelDB ------------------------------------------------------------------------------------------------
def write_lmdb(path, datums):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, d in enumerate(datums):
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()
    return str(path)


def raw_datum(array, label):
    c, h, w = array.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=array.astype(np.uint8).tobytes(), label=label)


def data_layer(source, crop=0, **transform):
    lp = caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"])
    lp.data_param.source = source
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    lp.data_param.batch_size = 2
    lp.transform_param.crop_size = crop
    for key, value in transform.items():
        if isinstance(value, list):
            getattr(lp.transform_param, key).extend(value)
        else:
            setattr(lp.transform_param, key, value)
    return lp


def test_lmdb_raw_datums_with_crop_mean_scale(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (3, 6, 7)) for _ in range(3)]
    path = write_lmdb(tmp_path / "db", [raw_datum(a, i) for i, a in enumerate(arrays)])
    lp = data_layer(path, crop=4, mean_value=[5, 6, 7], scale=0.5)
    assert peek_top_shapes(lp, TEST) == [(2, 3, 4, 4), (2,)]
    out = list(batches(layer_source(lp, TEST), 2, 4, progress=False))  # 4 > 3 records: wraps around
    data = np.concatenate([b["data"] for b in out])
    for k in range(4):
        want = caffe_transform(arrays[k % 3], 4, 1, 1, False, 0.5, mean_values=(5, 6, 7))
        np.testing.assert_allclose(data[k], want)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in out]), [0, 1, 2, 0])


def test_a_data_layer_feeds_from_the_first_record_whatever_its_rand_skip(tmp_path):
    """BVLC master's Data layer reads from the first record: rand_skip went with its DataReader (ImageData still
    skips, after its shuffle)."""
    path = write_lmdb(tmp_path / "db", [raw_datum(np.full((1, 2, 2), i), i) for i in range(10)])
    lp = data_layer(path)
    lp.data_param.rand_skip = 8
    for seed in range(4):
        out = next(batches(layer_source(lp, TEST), 3, 3, seed=seed, progress=False))
        np.testing.assert_array_equal(out["label"], [0, 1, 2])


def test_lmdb_encoded_and_float_datums(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 4, 3)).astype(np.uint8)
    make_png(tmp_path / "x.png", rgb)
    encoded = caffe_pb2.Datum(data=(tmp_path / "x.png").read_bytes(), encoded=True, label=4)
    path = write_lmdb(tmp_path / "enc", [encoded])
    lp = data_layer(path)
    assert peek_top_shapes(lp, TEST) == [(2, 3, 5, 4), (2,)]
    data = next(batches(layer_source(lp, TEST), 1, 1, progress=False))
    np.testing.assert_array_equal(data["data"][0], rgb[..., ::-1].transpose(2, 0, 1))
    assert data["label"][0] == 4
    grey = data_layer(path, force_gray=True)
    assert peek_top_shapes(grey, TEST) == [(2, 1, 5, 4), (2,)]

    values = np.linspace(-1, 1, 2 * 3 * 2).astype(np.float32)
    fpath = write_lmdb(tmp_path / "float", [caffe_pb2.Datum(channels=2, height=3, width=2, float_data=values)])
    flp = data_layer(fpath, scale=2.0)
    out = next(batches(layer_source(flp, TEST), 1, 1, progress=False))
    np.testing.assert_allclose(out["data"][0], values.reshape(2, 3, 2) * 2)


def test_lmdb_errors_name_the_database_and_record(tmp_path):
    with pytest.raises(CaffeinitError, match=r"LMDB '.*nowhere' does not exist"):
        peek_top_shapes(data_layer(str(tmp_path / "nowhere")), TEST)
    arrays = [np.zeros((3, 4, 4)), np.zeros((3, 5, 5))]
    path = write_lmdb(tmp_path / "mixed", [raw_datum(a, 0) for a in arrays])
    with pytest.raises(CaffeinitError, match=r"record '00000001': Datum gives 3x5x5 .* input 'data' takes 3x4x4"):
        list(batches(layer_source(data_layer(path), TEST), 2, 2, progress=False))
    short = caffe_pb2.Datum(channels=3, height=4, width=4, data=b"\0" * 10)
    path = write_lmdb(tmp_path / "short", [short])
    with pytest.raises(CaffeinitError, match=r"record '00000000': Datum says 3x4x4 but holds 10 bytes"):
        peek_top_shapes(data_layer(path), TEST)
    env = lmdb.open(str(tmp_path / "empty"))
    env.close()
    with pytest.raises(CaffeinitError, match="is empty"):
        peek_top_shapes(data_layer(str(tmp_path / "empty")), TEST)


def test_leveldb_records_in_key_order(tmp_path):
    plyvel = pytest.importorskip("plyvel")
    db = plyvel.DB(str(tmp_path / "ldb"), create_if_missing=True)
    arrays = [np.full((1, 2, 2), v) for v in (7, 3)]
    db.put(b"b", raw_datum(arrays[0], 1).SerializeToString())
    db.put(b"a", raw_datum(arrays[1], 0).SerializeToString())
    db.close()
    lp = data_layer(str(tmp_path / "ldb"))
    lp.data_param.backend = caffe_pb2.DataParameter.LEVELDB
    out = next(batches(layer_source(lp, TEST), 2, 2, progress=False))
    np.testing.assert_array_equal(out["data"][:, 0, 0, 0], [3, 7])
    np.testing.assert_array_equal(out["label"], [0, 1])


# -- HDF5 ----------------------------------------------------------------------------------------------------------
def test_hdf5_files_in_order_with_shapes_and_errors(tmp_path):
    rng = np.random.default_rng(2)
    parts = []
    for k, rows in enumerate((3, 2)):
        data, label = rng.normal(size=(rows, 2, 3)), np.arange(rows) + 10 * k
        with h5py.File(tmp_path / f"p{k}.h5", "w") as f:
            f["data"], f["label"] = data, label
        parts.append((data, label))
    (tmp_path / "files.txt").write_text("p0.h5\n\np1.h5\n")
    lp = caffe_pb2.LayerParameter(name="h5", type="HDF5Data", top=["data", "label"])
    lp.hdf5_data_param.source = str(tmp_path / "files.txt")
    lp.hdf5_data_param.batch_size = 4
    assert peek_top_shapes(lp, TEST) == [(4, 2, 3), (4,)]
    out = list(batches(layer_source(lp, TEST), 4, 6, progress=False))
    data = np.concatenate([b["data"] for b in out])
    want = np.concatenate([parts[0][0], parts[1][0], parts[0][0][:1]]).astype(np.float32)
    np.testing.assert_array_equal(data, want)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in out]), [0, 1, 2, 10, 11, 0])

    lp.top[1] = "target"
    with pytest.raises(CaffeinitError, match="files.txt:1: HDF5 file .*p0.h5' has no dataset 'target'"):
        peek_top_shapes(lp, TEST)
    (tmp_path / "files.txt").write_text("p0.h5\ngone.h5\n")
    with pytest.raises(CaffeinitError, match="files.txt:2: HDF5 file 'gone.h5' does not exist"):
        layer_source(lp, TEST)
    lp.transform_param.scale = 2
    with pytest.raises(CaffeinitError, match="does not transform"):
        layer_source(lp, TEST)


def test_an_hdf5_list_names_files_separated_by_any_whitespace(tmp_path):
    """hdf5_data_layer.cpp reads its list with `source_file >> line`: two names on one line are two files."""
    for k in (1, 2):
        with h5py.File(tmp_path / f"p{k}.h5", "w") as f:
            f["data"], f["label"] = np.full((2, 1), k), np.full(2, k)
    (tmp_path / "files.txt").write_text("p1.h5 \tp2.h5\n")
    lp = caffe_pb2.LayerParameter(name="h5", type="HDF5Data", top=["data", "label"])
    lp.hdf5_data_param.source = str(tmp_path / "files.txt")
    lp.hdf5_data_param.batch_size = 4
    out = next(batches(layer_source(lp, TEST), 4, 4, progress=False))
    np.testing.assert_array_equal(out["label"], [1, 1, 2, 2])
    listed = HDF5Source.listed_files(str(tmp_path / "files.txt"))
    assert listed == [str(tmp_path / "p1.h5"), str(tmp_path / "p2.h5")]


# -- shapes of the other data layers -------------------------------------------------------------------------------
def test_shapes_of_input_memory_dummy_window():
    lp = caffe_pb2.LayerParameter(name="in", type="Input", top=["a", "b"])
    lp.input_param.shape.add().dim.extend([2, 3, 5, 5])
    assert peek_top_shapes(lp) == [(2, 3, 5, 5), (2, 3, 5, 5)]
    lp.input_param.shape.add().dim.extend([2])
    assert peek_top_shapes(lp) == [(2, 3, 5, 5), (2,)]
    with pytest.raises(CaffeinitError, match="pass images with --images"):
        layer_source(lp)

    mem = caffe_pb2.LayerParameter(name="m", type="MemoryData", top=["data", "label"])
    mem.memory_data_param.batch_size, mem.memory_data_param.channels = 4, 1
    mem.memory_data_param.height = mem.memory_data_param.width = 6
    assert peek_top_shapes(mem) == [(4, 1, 6, 6), (4,)]

    dummy = caffe_pb2.LayerParameter(name="d", type="DummyData", top=["x", "y"])
    dummy.dummy_data_param.num.extend([2])
    dummy.dummy_data_param.channels.extend([3, 1])
    dummy.dummy_data_param.height.extend([4])
    dummy.dummy_data_param.width.extend([4])
    assert peek_top_shapes(dummy) == [(2, 3, 4, 4), (2, 1, 4, 4)]
    dummy2 = caffe_pb2.LayerParameter(name="d", type="DummyData", top=["x"])
    dummy2.dummy_data_param.shape.add().dim.extend([5, 7])
    assert peek_top_shapes(dummy2) == [(5, 7)]

    window = caffe_pb2.LayerParameter(name="w", type="WindowData", top=["data", "label"])
    window.window_data_param.batch_size = 8
    window.transform_param.crop_size = 227
    assert peek_top_shapes(window) == [(8, 3, 227, 227), (8,)]


IMAGE_LIST = ROOT / "models" / "images" / "list.txt"
MALFORMED_DATA_LAYERS = [
    ('type: "Data" top: "data"', "layer 'bad' (Data): data_param.source is not set"),
    ('type: "ImageData" top: "data"', "layer 'bad' (ImageData): image_data_param.source is not set"),
    ('type: "HDF5Data" top: "data"', "layer 'bad' (HDF5Data): hdf5_data_param.source is not set"),
    (f'type: "ImageData" top: "data" image_data_param {{ source: "{IMAGE_LIST}" new_height: 8 }}',
     "layer 'bad' (ImageData): new_height and new_width must be set together"),
    ('type: "MemoryData" top: "data" memory_data_param { batch_size: 4 channels: 3 height: 5 }',
     "layer 'bad' (MemoryData): batch_size, channels, height and width must be set and positive"),
    ('type: "WindowData" top: "data" window_data_param { batch_size: 4 }',
     "layer 'bad' (WindowData): transform_param.crop_size must be set"),
    ('type: "Input" top: "a" top: "b"',
     "layer 'bad' (Input): no input_param shape: give the shape of 'a', 'b' (--input-shape NAME=N,C,H,W)"),
    ('type: "Input" top: "a" top: "b" top: "c" input_param { shape { dim: 1 } shape { dim: 2 } }',
     "layer 'bad' (Input): 2 shapes for 3 tops (give 1 or one per top)"),
    ('type: "DummyData" top: "a" dummy_data_param { data_filler { } data_filler { } shape { dim: 1 } }',
     "layer 'bad' (DummyData): 2 data_fillers for 1 tops"),
    ('type: "DummyData" top: "a" dummy_data_param { num: 1 channels: 1 height: 2 width: 2 shape { dim: 1 } }',
     "layer 'bad' (DummyData): give either shape or num/channels/height/width, not both"),
    ('type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { num: 1 num: 2 channels: 1 height: 2 width: 2 }',
     "layer 'bad' (DummyData): num/channels/height/width need 1 or 3 values each"),
    ('type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { shape { dim: 1 } shape { dim: 2 } }',
     "layer 'bad' (DummyData): 2 shapes for 3 tops (give 1 or one per top)"),
    ('type: "Convolution" top: "data"', "layer 'bad' (Convolution) is not a data layer"),
]


@pytest.mark.parametrize("text, message", MALFORMED_DATA_LAYERS,
                         ids=[m.split(": ", 1)[-1][:40] for _, m in MALFORMED_DATA_LAYERS])
def test_malformed_data_layers_are_one_line_errors_naming_the_layer(text, message):
    from google.protobuf import text_format
    lp = text_format.Parse(f'name: "bad" {text}', caffe_pb2.LayerParameter())
    with pytest.raises(CaffeinitError) as caught:
        (layer_source if lp.type == "HDF5Data" else peek_top_shapes)(lp)
    assert str(caught.value) == message


def test_data_layers_fed_by_the_program_point_to_images():
    for kind, said in (("MemoryData", "gets its data from the calling program"),
                       ("WindowData", "reading this layer's data is not supported")):
        lp = caffe_pb2.LayerParameter(name="feed", type=kind, top=["data"])
        with pytest.raises(CaffeinitError, match=f"^layer 'feed' \\({kind}\\)[ :].*{said}.*pass images with --images$"):
            layer_source(lp)


def test_input_shapes_match_conformance_goldens(shared):
    from google.protobuf import text_format
    for case in ("lenet", "cifar10_quick"):
        net = text_format.Parse(shared("conformance", case, "net.prototxt").read_text(), caffe_pb2.NetParameter())
        golden = np.load(shared("conformance", case, "golden.npz"))
        for layer in net.layer:
            if layer.type == "Input":
                for top, shape in zip(layer.top, peek_top_shapes(layer)):
                    assert golden[top].shape == shape


def test_a_folder_in_an_hdf5_list_is_named_as_one(tmp_path):
    (tmp_path / "p0.h5").mkdir()
    (tmp_path / "files.txt").write_text("p0.h5\n")
    lp = caffe_pb2.LayerParameter(name="h5", type="HDF5Data", top=["data"])
    lp.hdf5_data_param.source = str(tmp_path / "files.txt")
    with pytest.raises(CaffeinitError, match="files.txt:1: HDF5 file 'p0.h5' is a directory$"):
        layer_source(lp, TEST)


def test_a_dummydata_filler_that_cannot_fill_its_top_names_the_layer_and_top():
    """Caffe's bilinear filler needs a square 4-D blob: the error names the layer and the top (it said 'filler')."""
    param = caffe_pb2.LayerParameter(name="noise", type="DummyData", top=["x"])
    param.dummy_data_param.shape.add().dim.extend([2, 3, 8, 6])
    param.dummy_data_param.data_filler.add(type="bilinear")
    source = layer_source(param)
    with pytest.raises(CaffeinitError, match=r"^layer 'noise' \(DummyData\), top 'x': the bilinear filler needs a "
                                             r"square kernel, got shape \[2, 3, 8, 6\]$"):
        source.batch(2, np.random.default_rng(0))
