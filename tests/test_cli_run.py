"""`caffeinit run` end to end on a bundled net and images: outputs, determinism, bad input."""
import hashlib
import json
import os

import numpy as np
import pytest

from caffeinit.cli import main
from caffeinit.errors import CaffeinitError
from tests.conftest import ROOT

CIFAR = ROOT / "models" / "cifar10_quick" / "deploy.prototxt"
IMAGES = ROOT / "models" / "images" / "list.txt"
FAST = ["--num-images", "8", "--batch-size", "4", "--between-iters", "2", "--quiet", "--device", "cpu"]


def run(tmp_path, *extra, name="out.caffemodel"):
    out = tmp_path / name
    code = main(["run", str(CIFAR), "--images", str(IMAGES), "-o", str(out), *FAST, *map(str, extra)])
    return code, out


def test_run_writes_a_caffemodel_with_every_learnable_blob(tmp_path):
    code, out = run(tmp_path, "--report", tmp_path / "r.json")
    assert code == 0
    from caffeinit.weights import load_weights
    blobs = load_weights(str(out))
    assert sorted(blobs) == ["conv1", "conv2", "conv3", "ip1", "ip2"]
    assert blobs["conv1"][0].shape == (32, 3, 5, 5) and blobs["ip2"][1].shape == (10,)
    assert all(np.isfinite(a).all() for arrays in blobs.values() for a in arrays)
    report = json.loads((tmp_path / "r.json").read_text())
    assert [layer["name"] for layer in report["layers"]][:2] == ["conv1", "conv2"]


def test_the_report_says_how_it_was_made(tmp_path):
    """--report records the command line, every setting (defaults included) and the software and device."""
    import torch
    import caffeinit
    code, out = run(tmp_path, "--seed", "5", "--method", "pca", "--report", tmp_path / "r.json")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["command"][:3] == ["caffeinit", "run", str(CIFAR)] and report["command"][-4:] == [
        "--method", "pca", "--report", str(tmp_path / "r.json")]
    config = report["config"]
    assert (config["seed"], config["method"], config["num_images"], config["batch_size"]) == (5, "pca", 8, 4)
    assert (config["bias"], config["between_batches"], config["pass_images"]) == (0.1, 4, None)
    assert report["environment"] == {"caffeinit": caffeinit.__version__, "torch": torch.__version__, "device": "cpu",
                                     "precision": "ieee"}


def test_seed_gives_bitwise_identical_output(tmp_path):
    digests = []
    for name in ("a.caffemodel", "b.caffemodel"):
        code, out = run(tmp_path, "--seed", "7", name=name)
        assert code == 0
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    code, out = run(tmp_path, "--seed", "8", name="c.caffemodel")
    assert hashlib.sha256(out.read_bytes()).hexdigest() != digests[0]


def test_no_before_skips_the_report_only_pass_and_writes_the_same_weights(tmp_path, capsys):
    code, with_before = run(tmp_path, "--seed", "3", "--report", tmp_path / "a.json", name="a.caffemodel")
    assert code == 0
    code, without = run(tmp_path, "--seed", "3", "--no-before", "--report", tmp_path / "b.json", name="b.caffemodel")
    assert code == 0
    assert with_before.read_bytes() == without.read_bytes()
    measured = json.loads((tmp_path / "a.json").read_text())["layers"]
    skipped = json.loads((tmp_path / "b.json").read_text())["layers"]
    assert all(layer["rate_before"] > 0 and layer["std_before"] > 0 for layer in measured)
    assert all(layer[key] is None for layer in skipped for key in ("mean_before", "std_before", "rate_before"))
    assert [layer["rate_after"] for layer in skipped] == [layer["rate_after"] for layer in measured]


def test_pass_images_splits_the_gradient_passes(tmp_path, capsys):
    code, _ = run(tmp_path, "--pass-images", "3", "--report", tmp_path / "r.json")
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["gradient_chunk"] == 3
    code, out = run(tmp_path, "--pass-images", "0", name="bad.caffemodel")
    assert code != 0 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == "caffeinit: error: pass-images must be at least 1, got 0"


def test_plot_is_written_atomically_in_the_format_its_name_says(tmp_path, capsys):
    code, _ = run(tmp_path, "--plot", tmp_path / "r.png", "--num-images", "4")
    assert code == 0 and (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _ = run(tmp_path, "--plot", tmp_path / "r.svg", "--num-images", "4")
    assert code == 0 and b"<svg" in (tmp_path / "r.svg").read_bytes()[:1000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.caffemodel", "r.png", "r.svg"]  # no temporaries

    (tmp_path / "old.xyz").write_bytes(b"old")
    code, out = run(tmp_path, "--plot", tmp_path / "old.xyz", name="other.caffemodel")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and not out.exists() and (tmp_path / "old.xyz").read_bytes() == b"old"  # refused before the work
    assert err[-1].startswith(f"caffeinit: error: {tmp_path / 'old.xyz'}: cannot write a plot as '.xyz' (use one of: ")
    assert ".png" in err[-1] and ".pgf" not in err[-1]


def test_output_in_missing_folder_is_a_clear_error(tmp_path, capsys):
    code = main(["run", str(CIFAR), "--images", str(IMAGES), "-o", str(tmp_path / "nope" / "o.caffemodel"), *FAST])
    err = capsys.readouterr().err
    assert code == 1 and "nope" in err and err.count("\n") == 1


def test_failed_run_leaves_existing_output_untouched(tmp_path, capsys):
    out = tmp_path / "out.caffemodel"
    out.write_bytes(b"precious")
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("missing.jpg 0\n")
    code = main(["run", str(CIFAR), "--images", str(bad_list), "-o", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 1 and "missing.jpg" in err and f"{bad_list}:1" in err
    assert out.read_bytes() == b"precious"


def test_run_refuses_to_overwrite_an_input(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text(CIFAR.read_text())
    code = main(["run", str(net), "--images", str(IMAGES), "-o", str(net), *FAST])
    assert code == 1 and net.read_text() == CIFAR.read_text()


def test_run_onnx_writes_the_initialized_net(tmp_path):
    import onnxruntime as ort
    onnx_path = tmp_path / "init.onnx"
    code, out = run(tmp_path, "--onnx", onnx_path)
    assert code == 0
    from caffeinit.api import load
    model = load(CIFAR, weights=out)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = model.forward({"data": x})["prob"]
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["prob"], {"data": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_run_onnx_of_a_train_net_writes_its_inference_part(tmp_path, capsys):
    """LeNet's train_test: the caffemodel is for the net as given; the ONNX file is its TEST-phase inference part
    (no Data layer, label, loss or accuracy), computing what the train_test computes with those weights."""
    import onnxruntime as ort
    from caffeinit.api import load
    from tests.conftest import shared_path
    net = shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt")
    out, onnx_path = tmp_path / "lenet.caffemodel", tmp_path / "lenet.onnx"
    code = main(["run", str(net), "--images", str(IMAGES), "--gray", "--resize", "28,28", "-o", str(out),
                 "--onnx", str(onnx_path), *[a for a in FAST if a != "--quiet"]])
    assert code == 0
    assert ("ONNX of the inference net: the TEST-phase layers without loss/accuracy layers (inputs: data; outputs: "
            "ip2)") in capsys.readouterr().err
    model = load(net, weights=out, phase="test", input_shapes={"data": (3, 1, 28, 28), "label": (3,)})
    x = np.random.default_rng(1).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    want = model.forward({"data": x, "label": np.zeros(3, np.float32)}, blobs=["ip2"])["ip2"]
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["ip2"], {"data": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_run_refuses_an_unexportable_net_before_the_work(tmp_path, capsys, monkeypatch):
    from caffeinit.onnx_export import registry
    monkeypatch.delitem(registry._CONVERTERS, "Pooling")  # as if Pooling had no ONNX converter
    out = tmp_path / "out.caffemodel"
    out.write_bytes(b"precious")
    code, _ = run(tmp_path, "--onnx", tmp_path / "init.onnx")
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("caffeinit: error: layer 'pool1' has type 'Pooling', which cannot be "
                                        "exported to ONNX") and err.count("\n") == 1
    assert out.read_bytes() == b"precious" and not (tmp_path / "init.onnx").exists()


def test_the_default_image_count_shrinks_to_what_fits_and_an_explicit_one_is_refused(tmp_path, capsys, monkeypatch):
    from caffeinit.api import load
    from caffeinit.init import pipeline
    from caffeinit.init.within import memory_estimate
    estimate = memory_estimate(load(CIFAR).net, 4)
    monkeypatch.setattr(pipeline, "available_memory", lambda device: (estimate.total(12) + 1) / 0.7)
    out, report = tmp_path / "out.caffemodel", tmp_path / "report.json"
    args = ["run", str(CIFAR), "--images", str(IMAGES), "-o", str(out), "--batch-size", "4", "--between-iters", "1",
            "--device", "cpu", "--report", str(report)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("note: 12 images instead of the default 160: the within-layer step keeps every image's values, and more "
            "would not fit in the memory available (--num-images sets the count)") in err
    assert "it may run out" not in err  # the count it chose is clear of the warning
    assert json.loads(report.read_text())["num_images"] == 12
    out.unlink()
    assert main(args + ["--num-images", "160"]) == 1
    fit = estimate.images_within((estimate.total(12) + 1) / 0.7)
    assert f"(about {fit} images fit): use fewer images (--num-images)" in capsys.readouterr().err
    assert not out.exists()


def test_warnings_are_one_line_each(tmp_path, capsys):
    code, out = run(tmp_path, "--method", "kmeans")
    err = capsys.readouterr().err.splitlines()
    assert code == 0
    fallback = [line for line in err if "ip1" in line]
    assert fallback == ["caffeinit: warning: layer 'ip1': kmeans: only 8 input samples for 64 outputs: gaussian"]
    assert not any("warnings.warn" in line or "UserWarning" in line for line in err)


def test_weights_of_another_net_name_the_file_layer_and_blob(tmp_path, capsys):
    from caffeinit.api import load
    other = tmp_path / "lenet.caffemodel"
    load(ROOT / "models" / "lenet" / "deploy.prototxt").save_caffemodel(other)
    code, out = run(tmp_path, "--weights", other)
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert err == (f"caffeinit: error: {other}: layer 'conv1' (Convolution): blob 0 has shape [20, 1, 5, 5] in the "
                   "weights but the net needs [32, 3, 5, 5]\n")


def test_fewer_images_than_asked_for_are_cycled_and_said_so(tmp_path, capsys):
    out = tmp_path / "out.caffemodel"
    args = ["run", str(CIFAR), "--images", str(IMAGES), "-o", str(out), "--batch-size", "10", "--between-iters", "1",
            "--device", "cpu"]
    assert main(args + ["--num-images", "30"]) == 0
    err = capsys.readouterr().err
    assert "note: 28 images for --num-images 30: cycled as Caffe's data layers do (batches repeat images)" in err
    assert main(args + ["--num-images", "20"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_the_weights_line_says_what_starts_from_fillers(tmp_path, capsys):
    out = tmp_path / "out.caffemodel"
    args = ["run", str(CIFAR), "--images", str(IMAGES), "-o", str(out), "--num-images", "8", "--batch-size", "4",
            "--between-iters", "1", "--device", "cpu"]
    assert main(args) == 0
    assert "weights: none given: 5 layers with parameters start from their fillers" in capsys.readouterr().err
    from caffeinit.api import read_net_param
    from caffeinit.weights import load_weights, write_caffemodel
    partial = tmp_path / "partial.caffemodel"
    net_param = read_net_param(CIFAR)
    keep = [layer for layer in net_param.layer if layer.name == "conv1"]
    del net_param.layer[:]
    net_param.layer.extend(keep)
    write_caffemodel(partial, net_param, {"conv1": load_weights(str(out))["conv1"]})
    assert main(args + ["--weights", str(partial), "-o", str(tmp_path / "b.caffemodel")]) == 0
    assert f"weights: 4 layers not in {partial} (filler values): conv2, conv3, ip1, ip2" in capsys.readouterr().err
    assert main(args + ["--weights", str(out), "-o", str(tmp_path / "c.caffemodel")]) == 0
    assert f"weights: every layer with parameters (5) from {out}" in capsys.readouterr().err


def test_long_name_lists_are_elided_in_the_middle():
    from caffeinit.cli import _name_list
    names = [f"l{i}" for i in range(30)]
    assert _name_list(names[:12]) == ", ".join(names[:12])
    assert _name_list(names) == "l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, ... (18 more), l28, l29"


def files_in(folder):
    """{name: bytes} of every file in ``folder`` (temporaries included)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def copied_images(tmp_path, count=4):
    """``count`` of the bundled images and a list naming them, in tmp_path/imgs."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = [line.split()[0] for line in IMAGES.read_text().splitlines()[:count]]
    for name in names:
        (folder / name).write_bytes((IMAGES.parent / name).read_bytes())
    (folder / "list.txt").write_text("".join(f"{name} 0\n" for name in names))
    return folder, names


def test_no_image_the_run_reads_is_overwritten(tmp_path, capsys):
    """An output naming one of the images --images names (a list, a folder or a glob) is refused before the work,
    however it is spelled."""
    folder, names = copied_images(tmp_path)
    before = files_in(folder)
    for images, out in [(folder / "list.txt", folder / names[0]), (folder, folder / names[1]),
                        (f"{folder}/*.jpg", tmp_path / "imgs" / ".." / "imgs" / names[2])]:
        code = main(["run", str(CIFAR), "--images", str(images), "-o", str(tmp_path / "o.caffemodel"),
                     "--report", str(out), *FAST])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith(f"caffeinit: error: {out}: refusing to overwrite input file ") and f"--images {images}" \
            in err
    assert files_in(folder) == before and not (tmp_path / "o.caffemodel").exists()


def test_the_mean_file_and_a_data_layers_files_are_inputs(tmp_path, capsys, monkeypatch):
    """--mean-file, and what the net's own data layer reads (its image list and the images it names, its mean file)
    are never overwritten."""
    from caffeinit.weights import write_binaryproto
    folder, names = copied_images(tmp_path)
    mean = tmp_path / "mean.binaryproto"
    write_binaryproto(mean, np.full((3, 32, 32), 100, np.float32))
    code = main(["run", str(CIFAR), "--images", str(folder / "list.txt"), "--mean-file", str(mean), "-o", str(mean),
                 *FAST])
    assert code == 1 and f"refusing to overwrite input file '{mean}' (--mean-file)" in capsys.readouterr().err
    net = tmp_path / "net.prototxt"
    own_data = (f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" transform_param {{ mean_file: '
                f'"{mean}" }} image_data_param {{ source: "{folder / "list.txt"}" root_folder: "{folder}/" '
                f'batch_size: 2 new_height: 32 new_width: 32 }} }}')
    text = CIFAR.read_text()
    net.write_text(text.replace(next(line for line in text.splitlines() if '"Input"' in line), own_data))
    before = files_in(folder), mean.read_bytes()
    for out, what in [(folder / names[3], "an image listed in"), (folder / "list.txt", "the image list of layer "
                      "'data'"), (mean, "the mean_file of layer 'data'")]:
        code = main(["run", str(net), "-o", str(out), *FAST])
        err = capsys.readouterr().err
        assert code == 1 and "refusing to overwrite input file" in err and what in err, err
    assert (files_in(folder), mean.read_bytes()) == before


def test_outputs_naming_the_same_file_are_refused_before_the_work(tmp_path, capsys, monkeypatch):
    from caffeinit import init
    monkeypatch.setattr(init, "initialize", lambda *a, **k: pytest.fail("the work started"))
    x = tmp_path / "x.caffemodel"
    for extra, options in [(["--onnx", x], "-o and --onnx"), (["--report", tmp_path / "." / "x.caffemodel"],
                           "-o and --report"), (["--report", tmp_path / "r", "--plot", tmp_path / "r"],
                           "--report and --plot")]:
        code = main(["run", str(CIFAR), "--images", str(IMAGES), "-o", str(x), *FAST, *map(str, extra)])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"caffeinit: error: {options} name the same file") and \
            err.count("\n") == 1, err
    assert files_in(tmp_path) == {}


@pytest.mark.parametrize("failure", ["onnx", "plot"])
def test_a_failed_output_leaves_every_output_as_it_was(tmp_path, capsys, monkeypatch, failure):
    """run's outputs are all-or-nothing: when the ONNX check fails or the disk fills while the plot is written,
    the caffemodel and report written before it are not put in place, and no temporary file is left."""
    import matplotlib.figure
    import caffeinit.onnx_export as onnx_export
    if failure == "onnx":
        def check_model(path):
            raise CaffeinitError("onnx.checker: the model is invalid")
        monkeypatch.setattr(onnx_export, "check_model", check_model)
        message = "caffeinit: error: onnx.checker: the model is invalid"
    else:
        def savefig(self, *args, **kwargs):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
        message = f"caffeinit: error: {tmp_path / 'r.png'}: cannot write: No space left on device"
    for name in ("out.caffemodel", "r.json", "r.png", "init.onnx"):
        (tmp_path / name).write_bytes(b"precious " + name.encode())
    before = files_in(tmp_path)
    code, _ = run(tmp_path, "--report", tmp_path / "r.json", "--plot", tmp_path / "r.png", "--onnx",
                  tmp_path / "init.onnx")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == message and not any(line.startswith("wrote") for line in err)
    assert files_in(tmp_path) == before


def test_all_outputs_are_said_once_they_are_in_place(tmp_path, capsys):
    out = tmp_path / "out.caffemodel"
    code = main(["run", str(CIFAR), "--images", str(IMAGES), "-o", str(out), "--report", str(tmp_path / "r.json"),
                 "--onnx", str(tmp_path / "i.onnx"), *[a for a in FAST if a != "--quiet"]])
    err = capsys.readouterr().err.splitlines()
    assert code == 0 and sorted(files_in(tmp_path)) == ["i.onnx", "out.caffemodel", "r.json"]
    assert err[-3:-1] == [f"wrote {out}", f"wrote {tmp_path / 'r.json'}"]
    assert err[-1].startswith(f"wrote {tmp_path / 'i.onnx'} (opset ")


@pytest.mark.parametrize("extra, message", [
    (["--tolerance", "inf"], "tolerance must be a finite number, got inf"),
    (["--bias", "1e39"], "bias must be a finite float32 number"),
    (["--scale", "2,3"], "--scale expects one number, got '2,3'"),
    (["--scale", "nan"], "--scale nan: nan is not a finite float32 number"),
    (["--scale", "1e39"], "--scale 1e39: 1e+39 is not a finite float32 number"),
    (["--mean-value", "inf"], "--mean-value inf: inf is not a finite float32 number"),
    (["--mean-value", "104,1e39,123"], "--mean-value 104,1e39,123: 1e+39 is not a finite float32 number"),
])
def test_values_that_would_put_nan_or_inf_in_the_output_are_refused_up_front(
        tmp_path, capsys, monkeypatch, extra, message):
    from caffeinit import api
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("the net was loaded"))
    code, out = run(tmp_path, *extra, "--report", tmp_path / "r.json")
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"caffeinit: error: {message}") and err.count("\n") == 1, err
    assert files_in(tmp_path) == {}


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", "-1", "argument --seed: expected an integer from 0 to 2**63-1"),
    ("--seed", "99999999999999999999", "argument --seed: expected an integer from 0 to 2**63-1"),
    ("--seed", "x", "argument --seed: expected an integer from 0 to 2**63-1"),
    ("--level", "99999999999999999999", "argument --level: expected an integer from -2147483648 to 2147483647"),
])
def test_out_of_range_seed_and_level_are_usage_errors(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, flag, value)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_the_largest_seed_runs(tmp_path):
    code, out = run(tmp_path, "--seed", str(2**63 - 1), "--no-between", "--no-before")
    assert code == 0 and out.exists()


def test_an_output_folder_that_cannot_be_written_to_is_found_before_the_work(tmp_path, capsys, monkeypatch):
    """Simulated (a read-only file system refuses even root, but making one needs privileges): the output folder
    refuses new files; the run stops before loading the net."""
    from caffeinit import api, fileio
    real = os.open

    def read_only(path, flags, *mode):
        if flags & os.O_CREAT and str(path).startswith(str(tmp_path / "ro")):
            raise OSError(30, "Read-only file system")
        return real(path, flags, *mode)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(fileio.os, "open", read_only)
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("the net was loaded"))
    code = main(["run", str(CIFAR), "--images", str(IMAGES), "-o", str(tmp_path / "o.caffemodel"), "--report",
                 str(tmp_path / "ro" / "r.json"), *FAST])
    err = capsys.readouterr().err
    assert code == 1 and err == (f"caffeinit: error: {tmp_path / 'ro' / 'r.json'}: cannot write in output folder "
                                 f"'{tmp_path / 'ro'}': Read-only file system\n")
    assert files_in(tmp_path) == {}


def test_an_image_count_that_cannot_fit_is_refused_before_any_image_is_loaded(tmp_path, monkeypatch, capsys):
    import caffeinit.data
    from caffeinit.init import pipeline

    monkeypatch.setattr(pipeline, "available_memory", lambda device: 2 ** 20)
    monkeypatch.setattr(caffeinit.data, "batches", lambda *a, **k: pytest.fail("images were loaded"))
    args = ["run", str(CIFAR), "--images", str(IMAGES), "-o", str(tmp_path / "out.caffemodel"), "--num-images",
            "100000", "--device", "cpu"]
    assert main(args) == 1
    assert "for 100000 images it needs about" in capsys.readouterr().err
    assert not (tmp_path / "out.caffemodel").exists()
