"""The command line: output formats, one-line errors with exit codes, no tracebacks, atomic outputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

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


@pytest.mark.parametrize("where", ["before the command", "after the command"])
def test_debug_shows_traceback(tmp_path, where):
    args = ["inspect", tmp_path / "missing.prototxt"]
    code, _, err = run_cli(*(["--debug"] + args if where == "before the command" else args + ["--debug"]))
    assert code == 1 and "Traceback" in err


def test_forward_counts_its_blobs_in_words(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    assert main(["forward", str(LENET), "--input", f"data={tmp_path / 'x.npy'}", "-o", str(tmp_path / "o.npz")]) == 0  # -o as run's
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[-1] == f"wrote 1 blob to {tmp_path / 'o.npz'}"  # stderr, as run's
    assert main(["forward", str(LENET), "--input", f"data={tmp_path / 'x.npy'}", "-o", str(tmp_path / "o.npz"),
                 "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_upgrade_says_what_it_wrote_on_stderr(tmp_path, capsys):
    assert main(["upgrade", str(LENET), "-o", str(tmp_path / "u.prototxt")]) == 0
    assert capsys.readouterr() == ("", f"wrote {tmp_path / 'u.prototxt'}\n")


def test_an_unexpected_failure_is_one_line_without_a_traceback_unless_debug(monkeypatch, capsys):
    """A bug (any exception that is not a CaffeinitError) still gives one line and exit 1; --debug re-raises it;
    Ctrl-C gives one line and exit 130; running out of memory says so."""
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

    def exhausted(args):
        raise MemoryError("Unable to allocate 279. GiB for an array")

    monkeypatch.setattr(cli, "cmd_inspect", exhausted)
    assert main(["inspect", str(LENET)]) == 1
    assert capsys.readouterr().err == ("caffeinit: error: out of memory: Unable to allocate 279. GiB for an array "
                                       "(fewer images, a smaller --batch-size or smaller inputs need less)\n")


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


def test_upgrade_of_a_solver_writes_the_upgraded_solver(tmp_path):
    """As Caffe's upgrade_solver_proto_text: the old solver_type enum becomes the type string; an inline net is
    upgraded too; the net file a solver names need not exist (it is not read)."""
    from caffeinit.prototxt import parse_solver_text
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "missing/train_val.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n'
                      'test_net_param { input: "data" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3 }\n')
    out = tmp_path / "new_solver.prototxt"
    assert main(["upgrade", str(solver), "-o", str(out)]) == 0
    upgraded = parse_solver_text(out.read_text())
    assert upgraded.type == "Nesterov" and not upgraded.HasField("solver_type")
    assert upgraded.net == "missing/train_val.prototxt" and upgraded.base_lr == pytest.approx(0.01)
    net = upgraded.test_net_param[0]
    assert not net.input and [layer.type for layer in net.layer] == ["Input"]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 2, 3, 3]


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


def test_help_says_what_caffeinit_does():
    code, out, _ = run_cli("--help")
    assert code == 0 and "Data-dependent initialization of Caffe networks" in " ".join(out.split())
    assert "argparse" not in out and "thin" not in out


def lenet_weights(tmp_path, nan=False):
    from caffeinit.api import load
    model = load(LENET)
    blobs = model.blobs()
    if nan:
        blobs["conv1"][0][0, 0, 0, :2] = np.nan
    path = tmp_path / ("nan.caffemodel" if nan else "w.caffemodel")
    from caffeinit.weights import net_to_proto
    path.write_bytes(net_to_proto(model.saved_net_param(), blobs).SerializeToString())  # no check on this path
    return path


def test_upgrade_writes_both_outputs_or_neither(tmp_path, capsys):
    """NaN weights are refused: the prototxt written before them is not put in place either, so 'nothing was
    written' is true; -o and --weights-out naming one file are refused before anything is read."""
    existing = tmp_path / "existing.prototxt"
    existing.write_text("keep")
    weights = lenet_weights(tmp_path, nan=True)
    assert main(["upgrade", str(LENET), "--weights", str(weights), "-o", str(existing), "--weights-out",
                 str(tmp_path / "y.caffemodel")]) == 1
    err = capsys.readouterr().err
    assert err == "caffeinit: error: layer 'conv1' blob 0 has 2 non-finite values (NaN or inf); nothing was written\n"
    assert sorted(os.listdir(tmp_path)) == ["existing.prototxt", "nan.caffemodel"] and existing.read_text() == "keep"
    assert main(["upgrade", str(LENET), "--weights", str(weights), "-o", str(tmp_path / "x"), "--weights-out",
                 str(tmp_path / "." / "x")]) == 1
    assert capsys.readouterr().err == (f"caffeinit: error: -o and --weights-out name the same file "
                                       f"'{tmp_path / '.' / 'x'}': give each output its own path\n")
    good = lenet_weights(tmp_path)
    assert main(["upgrade", str(LENET), "--weights", str(good), "-o", str(existing), "--weights-out",
                 str(tmp_path / "y.caffemodel")]) == 0
    assert "LeNet" in existing.read_text() and (tmp_path / "y.caffemodel").exists()


def test_the_net_a_solver_names_is_an_input(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text(LENET.read_text())
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "net.prototxt"\nbase_lr: 0.01\n')
    for argv in (["upgrade", solver, "-o", net], ["convert", solver, "--onnx", net],
                 ["forward", solver, "--input", f"data={tmp_path / 'x.npy'}", "--out", net]):
        assert main([str(a) for a in argv]) == 1, argv
        assert capsys.readouterr().err == (f"caffeinit: error: {net}: refusing to overwrite input file '{net}' (the "
                                           f"net that solver {solver} names)\n")
    assert net.read_text() == LENET.read_text()


def forward(tmp_path, *args):
    return main(["forward", str(LENET), "--out", str(tmp_path / "o.npz"), *map(str, args)])


def test_forward_refuses_what_it_cannot_take_faithfully(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "complex.npy", x.astype(np.complex64))
    np.save(tmp_path / "big.npy", np.where(x > 2, 1e39, x))
    np.save(tmp_path / "nan.npy", np.where(x > 2, np.nan, x))
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    big = int(np.count_nonzero(x > 2))
    cases = [
        (["--num-images", "0", "--images", ROOT / "models" / "images" / "list.txt"], "--num-images must be at least 1, "
         "got 0"),
        (["--input", f"data={tmp_path / 'x.npy'}", "--num-images", "2"], "--num-images applies to --images only"),
        (["--input", f"data={tmp_path / 'x.npy'}", "--input", f"data={tmp_path / 'big.npy'}"],
         f"--input data is given twice ('{tmp_path / 'x.npy'}' and '{tmp_path / 'big.npy'}')"),
        (["--input", f"data={tmp_path / 'complex.npy'}"], f"--input data: '{tmp_path / 'complex.npy'}' holds complex "
         "numbers (complex64)"),
        (["--input", f"data={tmp_path / 'big.npy'}"], f"--input data: '{tmp_path / 'big.npy'}' has {big} values beyond "
         "float32's range"),
        (["--input", f"data={tmp_path / 'nan.npy'}"], f"--input data: '{tmp_path / 'nan.npy'}' has {big} non-finite "
         "values"),
        (["--input", f"data={tmp_path / 'text.npy'}"], f"--input data: '{tmp_path / 'text.npy'}' holds <U1 values, "
         "not numbers"),
        (["--input", f"data={tmp_path / 'two.npz'}"], f"--input data: '{tmp_path / 'two.npz'}' holds 2 arrays (a, b): "
         "give an .npy, or an .npz with one array"),
    ]
    for argv, message in cases:
        assert forward(tmp_path, *argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"caffeinit: error: {message}") and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "o.npz").exists()


def test_forward_takes_a_one_array_npz_as_its_npy(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", anything=x)
    assert forward(tmp_path, "--input", f"data={tmp_path / 'x.npy'}", "--seed", 2**63 - 1) == 0
    want = np.load(tmp_path / "o.npz")["prob"]
    assert forward(tmp_path, "--input", f"data={tmp_path / 'x.npz'}", "--seed", 2**63 - 1) == 0  # the same fillers
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["prob"], want)


def test_forward_never_overwrites_an_input_array_or_image(tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, 28, 28), np.float32))
    before = x.read_bytes()
    assert main(["forward", str(LENET), "--input", f"data={x}", "--out", str(x)]) == 1
    assert capsys.readouterr().err == f"caffeinit: error: {x}: refusing to overwrite input file '{x}' (--input data)\n"
    image = tmp_path / "a.jpg"
    image.write_bytes((ROOT / "models" / "images" / IMAGES_FIRST).read_bytes())
    assert main(["forward", str(LENET), "--images", str(image), "--gray", "--out", str(image)]) == 1
    assert "refusing to overwrite input file" in capsys.readouterr().err
    assert x.read_bytes() == before and image.read_bytes() == (ROOT / "models" / "images" / IMAGES_FIRST).read_bytes()


IMAGES_FIRST = (ROOT / "models" / "images" / "list.txt").read_text().split()[0]


def test_forward_refuses_non_finite_blobs_naming_the_first_in_net_order(tmp_path, capsys):
    weights = lenet_weights(tmp_path, nan=True)
    np.save(tmp_path / "x.npy", np.ones((1, 1, 28, 28), np.float32))
    out = tmp_path / "o.npz"
    out.write_bytes(b"keep")
    assert forward(tmp_path, "--weights", weights, "--input", f"data={tmp_path / 'x.npy'}", "--blobs", "all") == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("caffeinit: error: blob 'conv1' has 576 non-finite values (NaN or inf)") and \
        err.endswith("nothing was written")  # all 24 x 24 outputs of conv1's channel 0
    assert forward(tmp_path, "--weights", weights, "--input", f"data={tmp_path / 'x.npy'}", "--blobs",
                   "pool2,conv2") == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("caffeinit: error: blob 'conv2' has 3200 non-finite values")  # conv2 comes first in the net
    assert out.read_bytes() == b"keep"


def test_convert_refuses_an_opset_out_of_range_and_an_unknown_input_shape(tmp_path, capsys, monkeypatch):
    from caffeinit import api
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("the work started"))
    out = tmp_path / "o.onnx"
    for args, message in [(["--opset", "0"], "ONNX opset 0 is not supported (use 18 to "),
                          (["--opset", "99"], "ONNX opset 99 is not supported (use 18 to "),
                          (["--input-shape", "nope=1,1,28,28"], "--input-shape 'nope=1,1,28,28': 'nope' is not a top "
                           "of a data layer of net 'LeNet' (the tops it can give: data)"),
                          (["--input-shape", "data=1,1,28,28", "--input-shape", "data=2,1,28,28"],
                           "--input-shape: 'data' is given twice")]:
        assert main(["convert", str(LENET), "--onnx", str(out), *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"caffeinit: error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_inspect_refuses_an_input_shape_for_a_blob_no_data_layer_gives(capsys):
    net = shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt")
    assert main(["inspect", str(net), "--phase", "train", "--input-shape", "data=64,1,28,28", "--input-shape",
                 "ip1=64,500"]) == 1
    assert capsys.readouterr().err == ("caffeinit: error: --input-shape 'ip1=64,500': 'ip1' is not a top of a data "
                                       "layer of net 'LeNet' (the tops it can give: data, label)\n")


def test_control_characters_in_names_keep_errors_on_one_line(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "in\\nput" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }\n'
                   'layer { name: "re\\nlu" type: "ReLU" bottom: "nowhere\\x1b" top: "r" }\n'
                   'layer { name: "c\\nd" type: "Convolution" bottom: "data" top: "c" }\n')
    code, _, err = run_cli("inspect", net)
    assert code == 1 and err == "caffeinit: error: layer 're\\nlu' (ReLU): unknown bottom blob 'nowhere\\x1b'\n"


def test_a_json_writer_never_writes_nan(tmp_path):
    import argparse
    import pytest
    from caffeinit.cli import _write_json
    from caffeinit.errors import CaffeinitError
    with pytest.raises(CaffeinitError, match="r.json: a figure is NaN or infinite, which JSON cannot hold; nothing "
                                             "was written"):
        _write_json(argparse.Namespace(argv=["stats"]), tmp_path / "r.json", {"std_cv": float("nan")}, [])
    assert os.listdir(tmp_path) == []


def test_inspect_with_weights_of_another_shape_names_the_file(tmp_path, capsys):
    from caffeinit.api import load
    from caffeinit.weights import write_caffemodel
    model = load(LENET)
    blobs = model.blobs()
    blobs["ip2"] = [blobs["ip2"][0][:5], blobs["ip2"][1][:5]]  # 5 outputs where the net has 10
    weights = tmp_path / "w.caffemodel"
    write_caffemodel(weights, model.net_param, blobs)
    assert main(["inspect", str(LENET), "--weights", str(weights)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"caffeinit: error: {weights}: ") and "ip2" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command, option, glob", [("run", "--plot", False), ("stats", "--json", False),
                                                   ("forward", "--out", True)])
def test_an_output_that_images_would_read_is_refused_before_any_work(tmp_path, command, option, glob):
    """An output that the next run with the same --images would read as an image (inside the folder with an image
    extension, or matched by the glob whatever its extension) is refused with one line, nothing written."""
    import shutil
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("astronaut_0.jpg", "astronaut_1.jpg"):
        shutil.copy(ROOT / "models" / "images" / name, images / name)
    spec = f"{images}/*" if glob else str(images)
    target = images / {"run": "out.png", "stats": "out.jpg", "forward": "out.npz"}[command]
    rest = ["-o", str(tmp_path / "net.caffemodel")] if command == "run" else []
    code, out, err = run_cli(command, LENET, "--images", spec, "--gray", "--device", "cpu", *rest, option, target)
    assert code == 1, err
    assert err == (f"caffeinit: error: {option} {target}: refusing to write where --images {spec} finds images "
                   "(a later run would read it as one): write it elsewhere\n")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["astronaut_0.jpg", "astronaut_1.jpg", "imgs"]
