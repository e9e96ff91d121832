"""models/README.md tells the truth about the bundled nets and images."""
import re

import cv2
import pytest

import caffeinit
from tests.conftest import ROOT, shared_path

MODELS = ROOT / "models"
DOC = (MODELS / "README.md").read_text(encoding="utf-8")
ROWS = re.findall(r"^\| `(\w+)/` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", DOC, flags=re.M)
NETS = [(folder, shape.strip()) for folder, _, shape, _ in ROWS if folder != "images"]
BVLC = {"lenet": "bvlc__examples_mnist_lenet.prototxt",
        "cifar10_quick": "bvlc__examples_cifar10_cifar10_quick.prototxt",
        "caffenet": "bvlc__models_bvlc_reference_caffenet_deploy.prototxt"}


def test_every_folder_listed():
    listed = {folder for folder, *_ in ROWS}
    assert listed == {p.name for p in MODELS.iterdir() if p.is_dir()}


@pytest.mark.parametrize("folder,shape", NETS)
def test_input_column(folder, shape):
    net = caffeinit.build_net(caffeinit.read_net_param(MODELS / folder / "deploy.prototxt"))
    assert net.layers[0].type == "Input"
    (data,) = net.inputs.values()
    assert "x".join(map(str, data[1:])) == shape


@pytest.mark.parametrize("folder", sorted(BVLC))
def test_layer_names_follow_bvlc(folder):
    ours = caffeinit.read_net_param(MODELS / folder / "deploy.prototxt")
    theirs = caffeinit.read_net_param(shared_path("corpus", BVLC[folder]))

    def layers(net):
        return [(layer.name, layer.type, list(layer.bottom), list(layer.top)) for layer in net.layer
                if layer.type not in ("Input", "Data", "Accuracy", "SoftmaxWithLoss")]
    assert layers(ours) == layers(theirs)


def test_images_row():
    (notes,) = [notes for folder, _, _, notes in ROWS if folder == "images"]
    count = int(re.search(r"(\d+) natural photos", notes).group(1))
    images = sorted((MODELS / "images").glob("*.jpg"))
    lines = (MODELS / "images" / "list.txt").read_text().split("\n")
    assert count == len(images) == len([line for line in lines if line.strip()])
    for path in images:
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (256, 256, 3), path
    labels = {int(line.split()[1]) for line in lines if line.strip()}
    low, high = map(int, re.search(r"index, (\d+)-(\d+)\)", notes).groups())
    assert labels == set(range(low, high + 1))


def test_plain11_signal_vanishes():
    """The std ratio of consecutive convolutions' outputs on the bundled images stays in the range the row gives."""
    from caffeinit.data import batches
    from caffeinit.data.netinput import ImageOptions, net_source
    from caffeinit.init.measure import measure

    (notes,) = [notes for folder, _, _, notes in ROWS if folder == "plain11"]
    low, high = map(int, re.search(r"std (\d+)-(\d+)x below", notes).groups())
    model = caffeinit.load(MODELS / "plain11" / "deploy.prototxt", device="cpu")
    source = net_source(model.net, ImageOptions(images=str(MODELS / "images" / "list.txt"), gray=True))
    stds = [m.std for m in measure(model, batches(source, 16, 16, progress=False)) if m.type == "Convolution"]
    ratios = [a / b for a, b in zip(stds, stds[1:])]
    assert len(ratios) == 9 and all(low <= r <= high for r in ratios), ratios
