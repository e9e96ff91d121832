"""Benchmark: ONNX export time, and ONNX Runtime (CPU) inference of the exported net vs OpenCV dnn on the same
random weights (a caffemodel written by caffeinit.weights), the two runtimes alternated in one process.

Usage: python benchmarks/onnx.py [--batch 1] [--repeats 10] [--append]   (--append adds the section to
benchmarks/RESULTS.md)
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, where this file would shadow the onnx package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

NETS = {
    "CaffeNet": ROOT / "models" / "caffenet" / "deploy.prototxt",
    "ResNet-50": ROOT.parent / "shared" / "corpus" / "kaiming__ResNet-50-deploy.prototxt",
}


def bench_net(name, prototxt, batch, repeats, workdir):
    import cv2
    import numpy as np

    import caffeinit
    from caffeinit.onnx_export import export_onnx
    from caffeinit.onnx_export.verify import ort_session, relative_error
    from caffeinit.fillers import scaled_random_blobs
    from caffeinit.prototxt import format_net_with_ceil_mode
    from caffeinit.weights import write_caffemodel

    shape_net = caffeinit.load(prototxt).net
    feed = next(iter(shape_net.inputs))
    shape = (batch,) + tuple(shape_net.inputs[feed][1:])
    blobs = scaled_random_blobs(shape_net, np.random.default_rng(0))
    model = caffeinit.load(prototxt, weights=blobs, input_shapes={feed: shape})

    onnx_path = workdir / f"{name}.onnx"
    start = time.perf_counter()
    result = export_onnx(model, onnx_path, check=False)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    checked = export_onnx(model, workdir / f"{name}-checked.onnx")
    check_s = time.perf_counter() - start - checked.export_seconds

    caffemodel = workdir / f"{name}.caffemodel"
    write_caffemodel(caffemodel, model.net_param, blobs)
    proto_path = workdir / f"{name}.prototxt"
    proto_path.write_text(format_net_with_ceil_mode(model.net_param))
    cv_net = cv2.dnn.readNetFromCaffe(str(proto_path), str(caffemodel))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    session, provider = ort_session(onnx_path, "cpu")
    output = session.get_outputs()[0].name
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    def run_ort():
        return session.run([output], {feed: x})[0]

    def run_cv():
        cv_net.setInput(x, feed)
        return cv_net.forward(output)

    ours, theirs = run_ort(), run_cv()  # warm-up (and OpenCV's lazy set-up)
    agreement = relative_error(theirs.reshape(ours.shape), ours)
    ort_times, cv_times = [], []
    for _ in range(repeats):
        for run, times in ((run_ort, ort_times), (run_cv, cv_times)):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return dict(net=name, batch=batch, nodes=result.num_nodes, mb=result.num_bytes / 2**20, export_s=export_s,
                check_s=check_s, rel_err=checked.verification.max_rel_error, provider=provider,
                ort_ms=1000 * statistics.median(ort_times), cv_ms=1000 * statistics.median(cv_times),
                ort_vs_cv=agreement)


def markdown(rows, batch, repeats) -> str:
    import cv2
    import onnx
    import onnxruntime

    lines = [
        "## ONNX",
        "",
        f"`python benchmarks/onnx.py --batch {batch} --repeats {repeats}` ({platform.machine()}, {os.cpu_count()} "
        f"cores shared with other jobs; Python {platform.python_version()}, onnx {onnx.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, OpenCV {cv2.__version__}). Random He-scaled weights; the same weights go to "
        "OpenCV dnn through a caffemodel written by `caffeinit.weights.write_caffemodel`. Export = graph building "
        "and writing (opset 21, dynamic batch); check = `onnx.checker` full check + an ORT session + the ORT-vs-torch "
        "comparison on random inputs. Inference: median of the alternated runs (ORT, then OpenCV, "
        "repeated), default threads in both.",
        "",
        "| net | batch | ONNX nodes | size | export | check | ORT vs torch (rel.) | ORT CPU | OpenCV dnn "
        "| ORT / OpenCV | OpenCV vs ORT (rel.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['net']} | {r['batch']} | {r['nodes']} | {r['mb']:.0f} MB | {r['export_s']:.2f} s | "
                     f"{r['check_s']:.2f} s | {r['rel_err']:.1e} | {r['ort_ms']:.1f} ms | {r['cv_ms']:.1f} ms | "
                     f"{r['ort_ms'] / r['cv_ms']:.2f} | {r['ort_vs_cv']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--append", action="store_true", help="append the section to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batch:
            for name, prototxt in NETS.items():
                if not Path(prototxt).is_file():
                    print(f"skipping {name}: {prototxt} not found", file=sys.stderr)
                    continue
                rows.append(bench_net(name, prototxt, batch, args.repeats, Path(tmp)))
                print(rows[-1], file=sys.stderr)
    text = markdown(rows, " ".join(map(str, args.batch)), args.repeats)
    print(text)
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
