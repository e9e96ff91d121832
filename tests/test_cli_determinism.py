"""`--seed` gives bitwise-identical outputs on the CPU across processes: the caffemodel, --onnx, --plot and the
--report JSON but for its timings."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CIFAR = ROOT / "models" / "cifar10_quick" / "deploy.prototxt"
IMAGES = ROOT / "models" / "images" / "list.txt"
OUTPUTS = ("out.caffemodel", "out.onnx", "plot.png", "report.json")


def run_in_a_process(folder, *extra):
    folder.mkdir()
    argv = [sys.executable, "-m", "caffeinit", "run", str(CIFAR), "--images", str(IMAGES), "--num-images", "16",
            "--batch-size", "8", "--between-iters", "2", "--device", "cpu", "--quiet", "--seed", "11",
            "-o", "out.caffemodel", "--onnx", "out.onnx", "--plot", "plot.png", "--report", "report.json",
            *map(str, extra)]
    proc = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    files = {name: (folder / name).read_bytes() for name in OUTPUTS}
    report = json.loads(files.pop("report.json"))
    del report["seconds"]
    return files, report


@pytest.mark.parametrize("method,weights", [("kmeans", False), ("orthogonal", True)])
def test_two_processes_write_the_same_bits(tmp_path, method, weights):
    extra = ["--method", method]
    if weights:  # a pretrained start: layers from the file are kept, conv3 and later drawn
        first, _ = run_in_a_process(tmp_path / "start")
        (tmp_path / "start.caffemodel").write_bytes(first["out.caffemodel"])
        extra += ["--weights", tmp_path / "start.caffemodel", "--reinit", "conv3"]
    a_files, a_report = run_in_a_process(tmp_path / "a", *extra)
    b_files, b_report = run_in_a_process(tmp_path / "b", *extra)
    for name in a_files:
        assert a_files[name] == b_files[name], name
    assert a_report == b_report
