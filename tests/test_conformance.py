"""Every conformance case answered by real Caffe: `caffeinit forward --blobs all` reproduces every blob, and
`caffeinit inspect --json` gives the shapes and outputs Caffe reported."""
import json

import numpy as np
import pytest

from caffeinit.cli import main
from tests.conftest import SHARED, conformance_cases

CASES = conformance_cases()


def rel_err(ours, caffe):
    scale = np.max(np.abs(caffe)) if caffe.size else 0.0
    diff = np.max(np.abs(ours.astype(np.float64) - caffe.astype(np.float64))) if caffe.size else 0.0
    return diff / scale if scale > 0 else diff


@pytest.fixture(params=CASES)
def case(request):
    return SHARED / "conformance" / request.param


def _inputs(case):
    meta = json.loads((case / "meta.json").read_text())
    return meta, {name: case / f"in_{name}.npy" for name in meta["inputs"]}


def test_forward_all_blobs_matches_caffe(case, tmp_path, capsys):
    meta, inputs = _inputs(case)
    out = tmp_path / "blobs.npz"
    argv = ["forward", str(case / "net.prototxt"), "--weights", str(case / "weights.caffemodel"),
            "--blobs", "all", "--out", str(out), "--device", "cpu"]
    for name, path in inputs.items():
        argv += ["--input", f"{name}={path}"]
    assert main(argv) == 0, capsys.readouterr().err
    ours = np.load(out)
    golden = np.load(case / "golden.npz")
    assert sorted(ours.files) == sorted(golden.files)
    for blob in golden.files:
        assert ours[blob].shape == golden[blob].shape, blob
        assert rel_err(ours[blob], golden[blob]) <= 1e-5, (case.name, blob, rel_err(ours[blob], golden[blob]))


def test_forward_outputs_are_caffes(case, tmp_path, capsys):
    meta, inputs = _inputs(case)
    out = tmp_path / "out.npz"
    argv = ["forward", str(case / "net.prototxt"), "--weights", str(case / "weights.caffemodel"), "--out", str(out)]
    for name, path in inputs.items():
        argv += ["--input", f"{name}={path}"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(np.load(out).files) == sorted(meta["outputs"])


def test_inspect_json_gives_caffes_shapes(case, capsys):
    meta, _ = _inputs(case)
    assert main(["inspect", str(case / "net.prototxt"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    golden = np.load(case / "golden.npz")
    assert summary["outputs"] == meta["outputs"]
    assert list(summary["inputs"]) == meta["inputs"]
    assert set(summary["blobs"]) == set(golden.files)
    for blob in golden.files:
        assert tuple(summary["blobs"][blob]) == golden[blob].shape, blob
