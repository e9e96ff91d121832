"""Every deploy net of ../shared/corpus (SSD excepted: its fork layers do not parse) exported with random weights
and run in ONNX Runtime (CPU) at batch 2, a batch size the prototxts do not have: every blob matches the torch graph.

The nets keep their real input size (and so their real ceil-pooling cases) except the AlexNet family, VGG-16 and
FCN-8s, whose fully connected weights and compute are shrunk with a smaller input to keep the suite fast."""
import pytest

from caffeinit.prototxt import read_net
from tests.conftest import SHARED
from tests.onnx_export.common import export_and_compare

SMALLER_INPUT = {
    "bvlc__models_bvlc_alexnet_deploy.prototxt": (10, 3, 99, 99),
    "bvlc__models_bvlc_reference_caffenet_deploy.prototxt": (10, 3, 99, 99),
    "bvlc__models_finetune_flickr_style_deploy.prototxt": (10, 3, 99, 99),
    "v1__alexnet_deploy.prototxt": (10, 3, 99, 99),
    "soeaver__deploy_vgg16-pytorch.prototxt": (1, 3, 64, 64),
    "fcn__voc-fcn8s_deploy.prototxt": (1, 3, 48, 48),
}
SLOW = {"fcn__voc-fcn8s_deploy.prototxt", "shicai__DenseNet_121.prototxt", "kaiming__ResNet-50-deploy.prototxt"}
NOT_DEPLOY = {"bvlc__examples_mnist_lenet_train_test.prototxt", "bvlc__models_bvlc_alexnet_train_val.prototxt"}


def corpus_nets():
    if not SHARED.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip("../shared absent"))]
    names = sorted(p.name for p in (SHARED / "corpus").glob("*.prototxt"))
    return [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else [], id=n.removesuffix(".prototxt"))
            for n in names if not n.startswith("ssd__") and n not in NOT_DEPLOY]


@pytest.mark.parametrize("name", corpus_nets())
def test_corpus_net_matches_torch_at_another_batch(name):
    net = read_net(SHARED / "corpus" / name)
    shape = SMALLER_INPUT.get(name)
    errors, graph, results = export_and_compare(net, run_batch=2, input_shapes=None if shape is None else
                                                {"data": shape})
    assert all(value.shape[0] == 2 for value in results.values() if value.ndim == 4)


def test_corpus_selection_is_what_we_think():
    """The skipped files are the SSD net (fork layers) and the two train_val nets (LMDB data layers)."""
    if not SHARED.is_dir():
        pytest.skip("../shared absent")
    names = {p.name for p in (SHARED / "corpus").glob("*.prototxt")}
    assert NOT_DEPLOY <= names and set(SMALLER_INPUT) <= names and SLOW <= names
    assert len([n for n in names if not n.startswith("ssd__") and n not in NOT_DEPLOY]) == 17
