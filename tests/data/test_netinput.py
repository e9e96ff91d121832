"""What feeds a net: --images with deploy preprocessing, or replacing a train net's data layer."""
import warnings

import cv2
import numpy as np
import pytest

from caffeinit.api import load
from caffeinit.data import batches
from caffeinit.data.netinput import ImageOptions, image_feed_shapes, net_source
from caffeinit.errors import CaffeinitError
from caffeinit.prototxt import read_net
from tests.conftest import ROOT, shared_path

CAFFENET = ROOT / "models" / "caffenet" / "deploy.prototxt"
IMAGES = ROOT / "models" / "images" / "list.txt"


def test_deploy_default_is_warp_bgr_minus_mean():
    model = load(CAFFENET)
    source = net_source(model.net, ImageOptions(images=str(IMAGES)))
    batch = next(batches(source, 2, 2, progress=False))
    first = IMAGES.read_text().split()[0]
    pixels = cv2.resize(cv2.imread(str(IMAGES.parent / first), cv2.IMREAD_COLOR), (227, 227),
                        interpolation=cv2.INTER_LINEAR).astype(np.float32)
    want = (pixels - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)
    assert batch["data"].shape == (2, 3, 227, 227)
    np.testing.assert_array_equal(batch["data"][0], want)


def test_flags_override_the_default():
    model = load(CAFFENET)
    source = net_source(model.net, ImageOptions(images=str(IMAGES), resize="256,256", crop="227",
                                                mean_value="1,2,3", scale="0.5"))
    batch = next(batches(source, 1, 1, progress=False))
    first = IMAGES.read_text().split()[0]
    pixels = cv2.resize(cv2.imread(str(IMAGES.parent / first)), (256, 256)).astype(np.float32)
    want = ((pixels[14:241, 14:241] - np.array([1, 2, 3], np.float32)) * 0.5).transpose(2, 0, 1)
    np.testing.assert_allclose(batch["data"][0], want, rtol=0, atol=1e-5)


def test_input_net_without_images_is_an_error():
    model = load(CAFFENET)
    with pytest.raises(CaffeinitError, match="pass images with --images"):
        net_source(model.net, ImageOptions())


def _net(text):
    from caffeinit.prototxt import parse_net_text
    return load(parse_net_text('name: "n"\n' + text)).net


DUMMY = ('layer {{ name: "{0}" type: "DummyData" top: "{0}" dummy_data_param {{ shape {{ dim: 2 dim: {1} }} }} }}\n')
INPUT = 'layer {{ name: "{0}" type: "Input" top: "{0}" input_param {{ shape {{ dim: {1} }} }} }}\n'


@pytest.mark.parametrize("text, options, message", [
    ('layer { name: "c" type: "DummyData" top: "c" dummy_data_param { shape { dim: 1 } } }\n'
     'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n', ImageOptions(gray=True),
     "--resize/--crop/--mean-value/--mean-file/--scale/--gray apply to --images only"),
    (DUMMY.format("a", "3") + DUMMY.format("b", "3"), ImageOptions(),
     "net 'n' has several data layers (a, b): caffeinit feeds one"),
    (INPUT.format("x", "2 dim: 5"), ImageOptions(images=str(IMAGES)),
     "--images needs exactly one 4-D (N x C x H x W) input in net 'n', found none"),
    (INPUT.format("x", "2 dim: 3 dim: 8 dim: 8") + INPUT.format("y", "2 dim: 3 dim: 8 dim: 8"),
     ImageOptions(images=str(IMAGES)), "--images needs exactly one 4-D (N x C x H x W) input in net 'n', found x, y"),
    (INPUT.format("x", "2 dim: 3 dim: 8 dim: 8") + INPUT.format("extra", "2 dim: 7"), ImageOptions(images=str(IMAGES)),
     "--images feeds 'x', but the net also needs input 'extra'"),
], ids=["flags-without-images", "two-data-layers", "no-4d-input", "two-4d-inputs", "other-input"])
def test_what_images_cannot_feed_is_one_line_naming_it(text, options, message):
    with pytest.raises(CaffeinitError) as caught:
        net_source(_net(text), options)
    assert str(caught.value) == message


def test_preprocessing_that_does_not_fit_the_input_is_an_error():
    model = load(CAFFENET)
    with pytest.raises(CaffeinitError, match="gives 3x200x200 images but the net's input 'data' is 3x227x227"):
        net_source(model.net, ImageOptions(images=str(IMAGES), resize="256,256", crop="200"))


@pytest.mark.parametrize("channels,gray,hint", [(1, False, "(--gray decodes greyscale)"),
                                                (3, True, "(drop --gray: the net takes colour)")])
def test_a_colour_mismatch_names_the_flag(tmp_path, channels, gray, hint):
    net = tmp_path / "net.prototxt"
    net.write_text(f'input: "data" input_shape {{ dim: 1 dim: {channels} dim: 28 dim: 28 }}\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 2 } }\n')
    with pytest.raises(CaffeinitError) as error:
        net_source(load(net).net, ImageOptions(images=str(IMAGES), gray=gray))
    assert str(error.value).endswith(f"is {channels}x28x28 {hint}")


def test_images_replace_a_train_nets_data_layer():
    param = read_net(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))
    with pytest.warns(UserWarning) as caught:
        shapes = image_feed_shapes(param, "train", ImageOptions(images=str(IMAGES)), 4)
    assert shapes == {"data": (4, 3, 256, 256), "label": (4,)}  # the JPEGs' own size: the layer does not resize
    # its LMDB is not here to say that it holds 1x28x28 digits: the user is told what the net's input became
    assert [str(w.message) for w in caught] == [
        "layer 'mnist' (Data): its database 'examples/mnist/mnist_train_lmdb' is not here to say what its images "
        "are, so the size and colour of the first image set the net's input: 3x256x256; if the database holds "
        "other images, say so with --resize H,W and --gray"]
    model = load(param, phase="train", input_shapes=shapes)
    source = net_source(model.net, ImageOptions(images=str(IMAGES)))
    batch = next(batches(source, 4, 4, progress=False))
    assert set(batch) == {"data", "label"}
    first = IMAGES.read_text().split()[0]
    want = cv2.imread(str(IMAGES.parent / first)).astype(np.float32).transpose(2, 0, 1) * 0.00390625
    np.testing.assert_allclose(batch["data"][0], want, rtol=1e-6)


def _replaced(param, options, phase="train", batch=2):
    """image_feed_shapes, then net_source on the net built with them (what `caffeinit run` does)."""
    shapes = image_feed_shapes(param, phase, options, batch)
    model = load(param, phase=phase, input_shapes=shapes)
    return shapes, next(batches(net_source(model.net, options), batch, batch, progress=False))


def test_gray_and_resize_say_what_a_data_layers_datums_would_hold():
    """A Data layer's Datums carry their own colour and size (MNIST: 28 x 28 greyscale), so --gray and --resize
    describe them, and the layer's transform_param still applies."""
    param = read_net(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))
    options = ImageOptions(images=str(IMAGES), gray=True, resize="28,28")
    shapes, batch = _replaced(param, options)
    assert shapes["data"] == (2, 1, 28, 28)
    first = IMAGES.read_text().split()[0]
    pixels = cv2.resize(cv2.imread(str(IMAGES.parent / first), cv2.IMREAD_GRAYSCALE), (28, 28),
                        interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(batch["data"][0, 0], pixels * 0.00390625, rtol=1e-6)


def _write_digits_lmdb(path, channels=1, size=(28, 28)):
    import lmdb
    from caffeinit.proto import caffe_pb2
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        pixels = np.zeros((channels,) + size, np.uint8)
        datum = caffe_pb2.Datum(channels=channels, height=size[0], width=size[1], data=pixels.tobytes(), label=3)
        txn.put(b"00000000", datum.SerializeToString())
    env.close()


def test_a_data_layers_database_here_says_what_the_images_are(tmp_path, monkeypatch):
    """Where the replaced layer's LMDB is here (relative to the folder Caffe runs in), --images are decoded as its
    records are: MNIST's 1x28x28, without --gray or --resize, and without a warning."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples" / "mnist").mkdir(parents=True)
    _write_digits_lmdb(tmp_path / "examples" / "mnist" / "mnist_train_lmdb")
    param = read_net(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shapes, batch = _replaced(param, ImageOptions(images=str(IMAGES)))
    assert shapes["data"] == (2, 1, 28, 28)
    first = IMAGES.read_text().split()[0]
    pixels = cv2.resize(cv2.imread(str(IMAGES.parent / first), cv2.IMREAD_GRAYSCALE), (28, 28),
                        interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(batch["data"][0, 0], pixels * 0.00390625, rtol=1e-6)
    # flags that agree are accepted, flags that do not are refused with the database named
    assert _replaced(param, ImageOptions(images=str(IMAGES), gray=True, resize="28,28"))[0] == shapes
    with pytest.raises(CaffeinitError, match=r"^--resize 32,32: layer 'mnist' \(Data\) takes 28x28 images \(its "
                                             r"database 'examples/mnist/mnist_train_lmdb'\)$"):
        image_feed_shapes(param, "train", ImageOptions(images=str(IMAGES), resize="32,32"), 2)


def test_gray_is_refused_for_a_database_of_colour_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples" / "mnist").mkdir(parents=True)
    _write_digits_lmdb(tmp_path / "examples" / "mnist" / "mnist_train_lmdb", channels=3, size=(32, 30))
    param = read_net(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))
    assert image_feed_shapes(param, "train", ImageOptions(images=str(IMAGES)), 2)["data"] == (2, 3, 32, 30)
    with pytest.raises(CaffeinitError, match=r"^--gray: layer 'mnist' \(Data\) reads colour images \(its database "
                                             r"'examples/mnist/mnist_train_lmdb' holds 3x32x30 images\)$"):
        image_feed_shapes(param, "train", ImageOptions(images=str(IMAGES), gray=True), 2)


def test_no_warning_where_the_layer_fixes_what_its_images_are(tmp_path):
    """AlexNet's train_val crops 227 from Datums and names a 3-channel mean file: nothing is left open."""
    from caffeinit.weights import write_binaryproto
    write_binaryproto(tmp_path / "mean.binaryproto", np.full((3, 256, 256), 110, np.float32))
    param = read_net(shared_path("corpus", "bvlc__models_bvlc_alexnet_train_val.prototxt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shapes = image_feed_shapes(param, "train", ImageOptions(images=str(IMAGES),
                                                                mean_file=str(tmp_path / "mean.binaryproto")), 2)
    assert shapes["data"] == (2, 3, 227, 227)


def test_transform_flags_do_not_apply_to_a_replaced_layer():
    param = read_net(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))
    with pytest.raises(CaffeinitError, match=r"layer 'mnist' \(Data\), whose transform_param sets the "
                                             r"preprocessing: --crop/--scale do not apply \(--gray and --resize do"):
        image_feed_shapes(param, "train", ImageOptions(images=str(IMAGES), scale="2", crop="20", gray=True), 2)


IMAGE_DATA = '''name: "image_data"
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
  image_data_param {{ source: "unused.txt" batch_size: 2 {params} }} transform_param {{ scale: 0.5 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 2 }} }}
'''


def test_an_image_data_layer_decodes_as_its_is_color_says(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(IMAGE_DATA.format(params="is_color: false new_height: 20 new_width: 24"))
    shapes, batch = _replaced(read_net(net), ImageOptions(images=str(IMAGES)), phase="test")
    assert shapes["data"] == (2, 1, 20, 24)
    first = IMAGES.read_text().split()[0]
    pixels = cv2.resize(cv2.imread(str(IMAGES.parent / first), cv2.IMREAD_GRAYSCALE), (24, 20),
                        interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(batch["data"][0, 0], pixels * 0.5, rtol=1e-6)
    # flags that agree with the layer are accepted
    assert _replaced(read_net(net), ImageOptions(images=str(IMAGES), gray=True, resize="20,24"),
                     phase="test")[0] == shapes


@pytest.mark.parametrize("params, options, message", [
    ("", {"gray": True}, r"--gray: layer 'data' \(ImageData\) reads its images in colour \(image_data_param "
                         r"is_color\)"),
    ("new_height: 20 new_width: 24", {"resize": "28,28"},
     r"--resize 28,28: layer 'data' \(ImageData\) takes 20x24 images \(image_data_param new_height/new_width\)")])
def test_flags_that_contradict_an_image_data_layer_are_refused(tmp_path, params, options, message):
    net = tmp_path / "net.prototxt"
    net.write_text(IMAGE_DATA.format(params=params))
    with pytest.raises(CaffeinitError, match=message):
        image_feed_shapes(read_net(net), "test", ImageOptions(images=str(IMAGES), **options), 2)


def test_a_missing_mean_file_names_the_layer_that_asks_for_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # AlexNet's train_val names data/ilsvrc12/imagenet_mean.binaryproto, from Caffe's root
    param = read_net(shared_path("corpus", "bvlc__models_bvlc_alexnet_train_val.prototxt"))
    with pytest.raises(CaffeinitError, match=r"^layer 'data' \(Data\): transform_param mean_file "
                                             r"'data/ilsvrc12/imagenet_mean.binaryproto' is not there \(Caffe reads a "
                                             r"relative path from the folder it runs in\): run from that folder, or "
                                             r"say where it is with --mean-file$"):
        image_feed_shapes(param, "train", ImageOptions(images=str(IMAGES)), 2)


def test_an_unreadable_mean_file_flag_is_named_as_the_flag(tmp_path):
    bad = tmp_path / "mean.binaryproto"
    bad.write_bytes(b"not a blob")
    param = read_net(shared_path("corpus", "bvlc__models_bvlc_alexnet_train_val.prototxt"))
    with pytest.raises(CaffeinitError) as caught:
        image_feed_shapes(param, "train", ImageOptions(images=str(IMAGES), mean_file=str(bad)), 2)
    message = str(caught.value)
    assert message == f"--mean-file {bad}: not a valid binaryproto (truncated or corrupt protobuf data) (in place " \
                      "of the mean_file of layer 'data' (Data))"
    assert "Caffe reads a relative path" not in message  # the hint is about the prototxt's own path


def test_mean_file_says_where_the_replaced_layers_mean_file_is(tmp_path):
    from caffeinit.weights import write_binaryproto
    mean = np.random.default_rng(3).uniform(90, 130, (3, 256, 256)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    param = read_net(shared_path("corpus", "bvlc__models_bvlc_alexnet_train_val.prototxt"))
    options = ImageOptions(images=str(IMAGES), mean_file=str(tmp_path / "mean.binaryproto"))
    shapes, batch = _replaced(param, options, phase="test")  # TEST: centre crop, no mirror
    assert shapes["data"] == (2, 3, 227, 227)
    first = IMAGES.read_text().split()[0]
    pixels = cv2.resize(cv2.imread(str(IMAGES.parent / first)), (256, 256)).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_allclose(batch["data"][0], (pixels - mean)[:, 14:241, 14:241], rtol=0, atol=1e-4)
    # a layer that names no mean file gets none
    lenet = read_net(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))
    with pytest.raises(CaffeinitError, match=r"preprocessing: --mean-file does not apply"):
        image_feed_shapes(lenet, "train", options, 2)


def test_a_data_layer_with_its_own_phase_transforms_as_that_phase(tmp_path):
    """AlexNet's TEST data layer given `phase: TRAIN` in a TEST-phase net: Caffe gives it its own phase, so its
    crop is random (and it may mirror), not the centre crop."""
    from caffeinit.proto import caffe_pb2
    from caffeinit.weights import write_binaryproto
    mean = np.zeros((3, 256, 256), np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    param = read_net(shared_path("corpus", "bvlc__models_bvlc_alexnet_train_val.prototxt"))
    options = ImageOptions(images=str(IMAGES), mean_file=str(tmp_path / "mean.binaryproto"))
    centre = _replaced(param, options, phase="test")[1]["data"]
    data = next(lp for lp in param.layer if lp.type == "Data" and lp.include[0].phase == caffe_pb2.TEST)
    data.phase = caffe_pb2.TRAIN
    own = _replaced(param, options, phase="test")[1]["data"]
    assert own.shape == centre.shape and not np.array_equal(own, centre)


@pytest.mark.parametrize("options, message", [
    (ImageOptions(scale="2,3"), "--scale expects one number, got '2,3'"),
    (ImageOptions(scale="1e39"), "--scale 1e39: 1e+39 is not a finite float32 number"),
    (ImageOptions(mean_value="nan"), "--mean-value nan: nan is not a finite float32 number"),
    (ImageOptions(resize="256"), "--resize expects H,W, got '256'"),
    (ImageOptions(crop="0"), "--crop expects a positive integer, got '0'"),
])
def test_option_values_are_checked_before_any_work(options, message):
    with pytest.raises(CaffeinitError) as caught:
        options.check()
    assert str(caught.value).startswith(message)
    ImageOptions(scale="0.5", mean_value="1,2,3", resize="8,8", crop="4").check()


def _protected(files, path):
    from caffeinit.fileio import check_output_path
    try:
        check_output_path(path, files)
    except CaffeinitError as e:
        return str(e)
    return None


def test_every_file_the_options_and_the_nets_data_layers_read_is_an_input(tmp_path, monkeypatch):
    """--mean-file, the --images list and the images it names, and each data layer's mean file, database
    folder, image list (and its images), HDF5 list (and its files) are what a command must not overwrite."""
    from caffeinit.fileio import InputFiles
    from caffeinit.prototxt import parse_net_text
    monkeypatch.chdir(tmp_path)
    for name in ("mean.binaryproto", "flag_mean.binaryproto", "own.jpg", "a.h5", "listed.jpg", "elsewhere.txt"):
        (tmp_path / name).write_bytes(b"data")
    (tmp_path / "images.txt").write_text("listed.jpg 1\n")
    (tmp_path / "own.txt").write_text("own.jpg 0\n")
    (tmp_path / "h5.txt").write_text("a.h5\n")
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "data.mdb").write_bytes(b"records")
    net = parse_net_text(
        'layer { name: "d" type: "Data" top: "data" include { phase: TRAIN } transform_param { mean_file: '
        '"mean.binaryproto" } data_param { source: "db" batch_size: 1 } }\n'
        'layer { name: "i" type: "ImageData" top: "x" include { phase: TEST } '
        'image_data_param { source: "own.txt" } }\n'
        'layer { name: "h" type: "HDF5Data" top: "y" hdf5_data_param { source: "h5.txt" batch_size: 1 } }\n')
    options = ImageOptions(images="images.txt", mean_file="flag_mean.binaryproto")
    files = InputFiles()
    options.add_inputs(files, net)
    for path, what in [("flag_mean.binaryproto", "--mean-file"), ("images.txt", "--images"),
                       ("listed.jpg", "an image of --images images.txt"),
                       ("mean.binaryproto", "the mean_file of layer 'd'"),
                       ("own.txt", "the image list of layer 'i'"), ("own.jpg", "an image listed in own.txt:1"),
                       ("h5.txt", "the HDF5 list of layer 'h'"), ("a.h5", "a file listed in 'h5.txt'")]:
        message = _protected(files, tmp_path / path)
        assert message is not None and message.endswith(f"({what})"), (path, message)
    assert _protected(files, tmp_path / "db" / "data.mdb").endswith("refusing to write inside input folder 'db' "
                                                                    "(the database of layer 'd')")
    assert _protected(files, tmp_path / "elsewhere.txt") is None
    assert _protected(files, tmp_path / "new.caffemodel") is None


def test_images_are_found_once(tmp_path, monkeypatch):
    from caffeinit.data import netinput
    calls = []
    real = netinput.find_images
    monkeypatch.setattr(netinput, "find_images", lambda *a: calls.append(a) or real(*a))
    from caffeinit.prototxt import parse_net_text
    options = ImageOptions(images=str(IMAGES))
    net = parse_net_text('layer { name: "d" type: "ImageData" top: "data" transform_param { crop_size: 8 } '
                         'image_data_param { source: "not_here.txt" batch_size: 2 new_height: 9 new_width: 9 } }\n'
                         'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    shapes = image_feed_shapes(net, 1, options, 2)  # the first image says the shapes: the list is read here...
    assert shapes == {"data": (2, 3, 8, 8)}
    source = net_source(load(net, input_shapes=shapes).net, options)  # ...and not again here
    assert source.entries == options.image_entries() and len(calls) == 1


STAGED = """
layer { name: "small" type: "ImageData" top: "data" top: "label" include { phase: TEST stage: "small" }
  transform_param { crop_size: 64 } image_data_param { source: "list.txt" batch_size: 2 } }
layer { name: "large" type: "ImageData" top: "data" top: "label" include { phase: TEST not_stage: "small" max_level: 1 }
  transform_param { crop_size: 96 } image_data_param { source: "list.txt" batch_size: 2 } }
layer { name: "big" type: "ImageData" top: "data" top: "label" include { phase: TEST not_stage: "small" min_level: 2 }
  transform_param { crop_size: 128 } image_data_param { source: "list.txt" batch_size: 2 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
"""


@pytest.mark.parametrize("stages, level, crop", [((), 0, 96), (("small",), 0, 64), ((), 2, 128)])
def test_the_replaced_data_layer_is_the_one_of_the_nets_stages_and_level(stages, level, crop):
    from caffeinit.prototxt import parse_net_text
    param = parse_net_text(STAGED)
    options = ImageOptions(images=str(IMAGES))
    shapes = image_feed_shapes(param, "test", options, 2, stages, level)
    assert shapes == {"data": (2, 3, crop, crop), "label": (2,)}
    model = load(param, phase="test", stages=stages, level=level, input_shapes=shapes)
    batch = next(batches(net_source(model.net, options), 2, 2, progress=False))
    assert batch["data"].shape == (2, 3, crop, crop)


def test_an_output_that_a_later_images_listing_would_read_is_refused(tmp_path, monkeypatch):
    """`run NET --images imgs/ --plot imgs/report.png` would add the plot to the next run's images: refused before
    any work, naming the output and --images; an output --images does not list (a list file, another extension, a
    glob it does not match) is fine."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "list.txt").write_text("imgs/a.png 0\n")
    outputs = {"-o": "imgs/net.caffemodel", "--report": None, "--plot": "imgs/report.png"}
    with pytest.raises(CaffeinitError) as e:
        ImageOptions(images="imgs").check_outputs(outputs)
    assert str(e.value) == ("--plot imgs/report.png: refusing to write where --images imgs finds images (a later run "
                            "would read it as one): write it elsewhere")
    glob_refusal = r"^-o imgs/net\.caffemodel: refusing to write where --images imgs/\* finds images"
    with pytest.raises(CaffeinitError, match=glob_refusal):
        ImageOptions(images="imgs/*").check_outputs(outputs)  # a glob lists any file
    for images in ("list.txt", "imgs/*.jpg", "imgs/a.png", None):
        ImageOptions(images=images).check_outputs(outputs)
    ImageOptions(images="imgs").check_outputs({"-o": "imgs/net.caffemodel", "--plot": "report.png"})
