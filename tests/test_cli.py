"""The command line: output formats, one-line errors with exit codes, no tracebacks, atomic outputs."""
import json
import os
import subprocess
import sys

import numpy as np

from caffeinit.cli import main
from tests.conftest import ROOT, shared_path

LENET = ROOT / "models" / "lenet" / "deploy.prototxt"


def run_cli(*args):
    """Run the real console entry point in a subprocess (exit codes and stderr as users see them)."""
    r = subprocess.run([sys.executable, "-m", "caffeinit", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT)
    return r.returncode, r.stdout, r.stderr


def test_inspect_table_lists_layers_and_parameter_count(capsys):
    assert main(["inspect", str(LENET)]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "Convolution" in out and "64x20x24x24" in out
    # conv1 20*1*5*5+20, conv2 50*20*5*5+50, ip1 500*800+500, ip2 10*500+10
    assert f"{520 + 25050 + 400500 + 5010:,} parameters" in out


def test_inspect_json_is_one_object(capsys):
    assert main(["inspect", str(LENET), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["name"] == "LeNet"
    assert summary["inputs"] == {"data": [64, 1, 28, 28]}
    assert summary["outputs"] == ["prob"]
    assert summary["blobs"]["pool2"] == [64, 50, 4, 4]
    conv1 = summary["layers"][1]
    assert conv1 == {"name": "conv1", "type": "Convolution", "bottoms": ["data"], "tops": ["conv1"],
                     "top_shapes": [[64, 20, 24, 24]], "params": [[20, 1, 5, 5], [20]]}


def test_missing_file_is_one_line_exit_1():
    code, out, err = run_cli("inspect", "no/such/net.prototxt")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("caffeinit: error:") and "no/such/net.prototxt" in err
    assert "Traceback" not in err


def test_usage_error_exits_2():
    code, _, err = run_cli("inspect")
    assert code == 2 and "usage" in err


def test_syntax_error_names_file_line_column(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom "x"\n}\n')
    code, _, err = run_cli("inspect", bad)
    assert code == 1 and f"{bad}:5:" in err and "Traceback" not in err


def test_debug_shows_traceback(tmp_path):
    code, _, err = run_cli("--debug", "inspect", tmp_path / "missing.prototxt")
    assert code == 1 and "Traceback" in err


def test_an_unexpected_failure_is_one_line_without_a_traceback_unless_debug(monkeypatch, capsys):
    """A bug (any exception that is not a CaffeinitError) still gives one line and exit 1; --debug re-raises it;
    Ctrl-C gives one line and exit 130."""
    import pytest
    from caffeinit import cli

    def broken(args):
        raise RuntimeError("the unexpected")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_inspect", broken)
    assert main(["inspect", str(LENET)]) == 1
    err = capsys.readouterr().err
    assert err == ("caffeinit: error: internal error (RuntimeError: the unexpected); rerun with --debug for the "
                   "traceback\n")
    with pytest.raises(RuntimeError, match="the unexpected"):
        main(["--debug", "inspect", str(LENET)])
    monkeypatch.setattr(cli, "cmd_inspect", interrupted)
    assert main(["inspect", str(LENET)]) == 130
    assert capsys.readouterr().err == "caffeinit: interrupted\n"


def _lenet_input(tmp_path, shape=(2, 1, 28, 28)):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return path


def test_forward_missing_input_names_it(tmp_path):
    code, _, err = run_cli("forward", LENET, "--out", tmp_path / "o.npz")
    assert code == 1 and "missing input 'data'" in err


def test_forward_wrong_shape_names_input_and_both_shapes(tmp_path):
    x = _lenet_input(tmp_path, (2, 3, 28, 28))
    code, _, err = run_cli("forward", LENET, "--input", f"data={x}", "--out", tmp_path / "o.npz")
    assert code == 1 and "input 'data'" in err and "(2, 3, 28, 28)" in err and "(64, 1, 28, 28)" in err


def test_forward_failure_leaves_existing_output_untouched(tmp_path):
    out = tmp_path / "o.npz"
    out.write_bytes(b"precious")
    x = _lenet_input(tmp_path, (2, 3, 28, 28))
    code, _, _ = run_cli("forward", LENET, "--input", f"data={x}", "--out", out)
    assert code == 1 and out.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["o.npz", "x.npy"]  # no temporary file left behind


def test_forward_writes_requested_blobs(tmp_path):
    x = _lenet_input(tmp_path)
    out = tmp_path / "o.npz"
    assert main(["forward", str(LENET), "--input", f"data={x}", "--blobs", "conv1,prob", "--out", str(out)]) == 0
    z = np.load(out)
    assert sorted(z.files) == ["conv1", "prob"] and z["conv1"].shape == (2, 20, 24, 24)


def test_malformed_arguments_are_one_line_naming_the_flag(tmp_path, capsys):
    missing = tmp_path / "missing.npy"
    cases = [
        (["inspect", LENET, "--input-shape", "data=1,x"], "--input-shape 'data=1,x': expected BLOB=N,C,H,W with "
                                                          "positive integers"),
        (["inspect", LENET, "--input-shape", "data=1,0,2,2"], "--input-shape 'data=1,0,2,2': expected BLOB=N,C,H,W "
                                                              "with positive integers"),
        (["forward", LENET, "--input", "data", "--out", tmp_path / "o.npz"], "--input 'data': expected NAME=FILE.npy"),
        (["forward", LENET, "--input", f"data={missing}", "--out", tmp_path / "o.npz"],
         f"--input data: cannot read '{missing}': "),
        (["forward", LENET, "--input", f"data={missing}", "--images", "x.txt", "--out", tmp_path / "o.npz"],
         "use either --images or --input"),
        (["upgrade", LENET, "-o", tmp_path / "u.prototxt", "--weights", tmp_path / "w.caffemodel"],
         "--weights needs --weights-out for the upgraded caffemodel"),
        (["upgrade", LENET, "-o", tmp_path / "u.prototxt", "--weights-out", tmp_path / "w.caffemodel"],
         "--weights-out needs --weights (the caffemodel to upgrade)"),
        (["upgrade", LENET, "-o", tmp_path / "u.prototxt", "--weights", missing, "--weights-out", tmp_path / "w"],
         f"{missing}: "),
    ]
    for argv, message in cases:
        assert main([str(a) for a in argv]) == 1, argv
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"caffeinit: error: {message}"), (argv, last)
    assert sorted(os.listdir(tmp_path)) == []  # nothing written by a command that failed


def test_inspect_with_weights_names_the_layers_they_lack(tmp_path, capsys):
    from caffeinit.weights import write_caffemodel
    from caffeinit.api import load
    weights = tmp_path / "w.caffemodel"
    blobs = load(LENET).blobs()
    write_caffemodel(weights, load(LENET).net_param, {k: v for k, v in blobs.items() if k != "ip2"})
    assert main(["inspect", str(LENET), "--weights", str(weights)]) == 0
    assert f"note: 1 layers not in {weights}: ip2" in capsys.readouterr().err


def test_upgrade_v0_net_to_current_format(tmp_path):
    src = shared_path("corpus", "v0__lenet.prototxt")
    out = tmp_path / "lenet_v2.prototxt"
    assert main(["upgrade", str(src), "-o", str(out)]) == 0
    text = out.read_text()
    assert 'type: "Convolution"' in text and "layers {" not in text
    # The upgraded text is stable and builds the same net.
    out2 = tmp_path / "again.prototxt"
    assert main(["upgrade", str(out), "-o", str(out2)]) == 0
    assert out2.read_text() == text


def test_upgrade_refuses_to_overwrite_its_input(tmp_path):
    src = tmp_path / "net.prototxt"
    src.write_text(shared_path("corpus", "v0__lenet.prototxt").read_text())
    before = src.read_text()
    code, _, err = run_cli("upgrade", src, "-o", src)
    assert code == 1 and before == src.read_text()


def test_upgrade_with_weights_writes_a_loadable_caffemodel(tmp_path):
    case = shared_path("conformance", "v0_lenet")
    out, wout = tmp_path / "net.prototxt", tmp_path / "w.caffemodel"
    assert main(["upgrade", str(case / "net.prototxt"), "--weights", str(case / "weights.caffemodel"),
                 "-o", str(out), "--weights-out", str(wout)]) == 0
    from caffeinit.weights import load_weights
    before, after = load_weights(str(case / "weights.caffemodel")), load_weights(str(wout))
    assert sorted(before) == sorted(after)
    for name in before:
        for a, b in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b)
    x = np.load(case / "in_data.npy")
    golden = np.load(case / "golden.npz")
    from caffeinit.api import load
    prob = load(out, weights=wout).forward({"data": x})["prob"]
    np.testing.assert_allclose(prob, golden["prob"], rtol=0, atol=1e-5 * np.abs(golden["prob"]).max())


def test_convert_gives_caffes_numbers_in_onnx_runtime(tmp_path, capsys):
    import onnxruntime as ort
    case = shared_path("conformance", "cifar10_quick")
    out = tmp_path / "net.onnx"
    assert main(["convert", str(case / "net.prototxt"), "--weights", str(case / "weights.caffemodel"),
                 "--onnx", str(out)]) == 0
    assert "max relative error" in capsys.readouterr().err
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.load(case / "in_data.npy")
    prob = session.run(["prob"], {"data": x})[0]
    golden = np.load(case / "golden.npz")["prob"]
    assert np.abs(prob - golden).max() <= 1e-5 * np.abs(golden).max()
    # The batch dimension is dynamic.
    assert session.run(["prob"], {"data": np.concatenate([x, x, x])})[0].shape == (3 * len(x), 10)


def test_convert_unsupported_layer_fails_cleanly(tmp_path):
    net = tmp_path / "loss.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } '
                   'shape { dim: 2 } } }\nlayer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" '
                   'top: "loss" }\n')
    out = tmp_path / "o.onnx"
    out.write_bytes(b"keep")
    code, _, err = run_cli("convert", net, "--onnx", out)
    errors = [line for line in err.splitlines() if line.startswith("caffeinit: error:")]
    assert code == 1 and errors == ["caffeinit: error: net '' has no inference part: its TEST phase holds only data "
                                    "and loss/accuracy layers"]
    assert "Traceback" not in err and out.read_bytes() == b"keep"


def test_convert_a_train_val_net_exports_its_inference_part(tmp_path, capsys):
    import onnx
    net = shared_path("corpus", "bvlc__models_bvlc_alexnet_train_val.prototxt")
    out = tmp_path / "alexnet.onnx"
    assert main(["convert", str(net), "--input-shape", "data=2,3,227,227", "--onnx", str(out)]) == 0  # no label
    assert "(inputs: data; outputs: fc8)" in capsys.readouterr().err
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["data"] and [o.name for o in graph.output] == ["fc8"]
    # without --input-shape, its database (not here) would say it
    code, _, err = run_cli("convert", net, "--onnx", tmp_path / "b.onnx")
    assert code == 1 and err.strip().endswith("(--input-shape data=N,C,H,W gives the shape of layer 'data''s top)")


def test_inspect_train_net_with_input_shapes(capsys):
    net = shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt")
    # Without its LMDB the Data layer cannot give its shape: a clear error naming the database...
    code, _, err = run_cli("inspect", net)
    assert code == 1 and "mnist_test_lmdb" in err
    # ...and --input-shape supplies it.
    assert main(["inspect", str(net), "--phase", "train", "--json", "--input-shape", "data=64,1,28,28",
                 "--input-shape", "label=64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outputs"] == ["loss"] and summary["blobs"]["ip2"] == [64, 10]
    assert [layer["name"] for layer in summary["layers"]][0] == "mnist"


def test_version():
    import caffeinit
    code, out, err = run_cli("--version")
    assert code == 0 and out == f"caffeinit {caffeinit.__version__}\n"


def test_the_parser_and_usage_errors_do_not_load_torch():
    """`caffeinit --help` and option typos answer at once: importing torch alone takes over a second."""
    code = ("import sys\nfrom caffeinit.cli import build_parser, main\nbuild_parser().format_help()\n"
            "try:\n    main(['run', 'net.prototxt', '--method', 'lsuv', '-o', 'x'])\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "2 False", out.stderr
    assert "invalid choice: 'lsuv'" in out.stderr


def test_every_command_starts_by_retaining_freed_memory(monkeypatch):
    import caffeinit.cli as cli
    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(True))
    assert main(["inspect", str(LENET)]) == 0
    assert calls == [True]
