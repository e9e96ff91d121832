"""`caffeinit run` interrupted (Ctrl-C, SIGTERM, SIGHUP) in the middle of the work or of writing its outputs, and
out of file space: one line, the conventional exit code, existing outputs untouched, no temporary file left."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from caffeinit.cli import main
from tests.conftest import ROOT

CIFAR = ROOT / "models" / "cifar10_quick" / "deploy.prototxt"
IMAGES = ROOT / "models" / "images" / "list.txt"
FAST = ["--num-images", "8", "--batch-size", "4", "--between-iters", "2", "--device", "cpu"]

# Runs the CLI with one of its steps replaced by a wait for the signal the test sends ("ready" says it waits).
DRIVER = textwrap.dedent("""
    import importlib, signal, sys, time
    import caffeinit.cli as cli
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the test runner's shell ignores it
    module, step = sys.argv[1].split(":")
    module = importlib.import_module(module)
    original = getattr(module, step)

    def waiting(*args, **kwargs):
        print("ready", flush=True)
        time.sleep(60)
        return original(*args, **kwargs)

    setattr(module, step, waiting)
    sys.exit(cli.main(sys.argv[2:]))
""")


def run_argv(tmp_path):
    return ["run", str(CIFAR), "--images", str(IMAGES), "-o", str(tmp_path / "out.caffemodel"),
            "--report", str(tmp_path / "r.json"), "--quiet", *FAST]


def with_old_outputs(tmp_path):
    """Existing outputs, which a failed run must leave as they are."""
    for name in ("out.caffemodel", "r.json"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    return {"out.caffemodel", "r.json"}


def contents(tmp_path):
    return {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "driver.py"}


# in the work; in writing, the caffemodel written and waiting for the report
@pytest.mark.parametrize("step", ["caffeinit.init:initialize", "caffeinit.cli:_write_json"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_leaves_existing_outputs_untouched_and_no_temporary_file(tmp_path, step, signum):
    with_old_outputs(tmp_path)
    before = contents(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(driver), step, *run_argv(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert err.count("\n") == 1 and err.startswith("caffeinit: "), err
    assert "Traceback" not in err
    assert contents(tmp_path) == before  # no temporary file either


def test_a_full_disk_leaves_existing_outputs_untouched_and_no_temporary_file(tmp_path):
    """RLIMIT_FSIZE makes a write past the limit fail with EFBIG, as a full disk fails it with ENOSPC."""
    with_old_outputs(tmp_path)
    before = contents(tmp_path)
    small_files = ("import resource, sys; from caffeinit.cli import main; "
                   "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]));"
                   " sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", small_files, *run_argv(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.endswith(f"caffeinit: error: {tmp_path / 'out.caffemodel'}: cannot write: File too large\n")
    assert proc.stderr.count("\n") == 1
    assert contents(tmp_path) == before


def test_progress_bars_are_only_drawn_on_a_terminal(tmp_path, capsys):
    """Under pytest stderr is no terminal (a log file): no bar redraws itself there with carriage returns."""
    assert not sys.stderr.isatty()
    code = main(["run", str(CIFAR), "--images", str(IMAGES), "-o", str(tmp_path / "out.caffemodel"), *FAST,
                 "--num-images", "32"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "\r" not in err and "\r" not in out
    assert "conv1" in out  # the table is still printed
    assert f"wrote {tmp_path / 'out.caffemodel'}" in err


def test_quiet_prints_no_table_and_no_notes(tmp_path, capsys):
    code = main(["run", str(CIFAR), "--images", str(IMAGES), "-o", str(tmp_path / "out.caffemodel"), "--quiet",
                 *FAST])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "" and err == ""


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_reader_that_leaves_ends_the_command_quietly(json_flag):
    """`caffeinit inspect NET | head -1`: stdout's reader is gone; like a tool killed by SIGPIPE, exit 141 with
    nothing said (no 'internal error', no 'Exception ignored')."""
    proc = subprocess.Popen([sys.executable, "-m", "caffeinit", "inspect", str(CIFAR), *json_flag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert err == b""


def test_run_whose_stdout_reader_leaves_still_writes_its_outputs(tmp_path):
    """`caffeinit run ... | head`: the table goes to stdout after the outputs are in place, so they are written
    (exit 141, quietly, as any tool whose reader left)."""
    argv = [a for a in run_argv(tmp_path) if a != "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "caffeinit", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 128 + signal.SIGPIPE, err
    assert (tmp_path / "out.caffemodel").stat().st_size > 0 and (tmp_path / "r.json").stat().st_size > 0
    assert "error" not in err and sorted(os.listdir(tmp_path)) == ["out.caffemodel", "r.json"]
