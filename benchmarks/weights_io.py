"""Benchmark: write and read a synthetic ~500 MB caffemodel with caffeinit.weights and the naive protobuf way.

Each measurement runs in its own child process, which reports its wall time and peak RSS (VmHWM), so that one
measurement's memory does not hide another's. Usage: python benchmarks/weights_io.py [--mb 500] [--dir /tmp]

``--caffenet`` instead times the fixed costs of ``caffeinit run`` on models/caffenet: loading the net without
weights (fillers, parameters) and saving it, one child per round; ``--compare TREE`` alternates those children
with children importing caffeinit from another source tree (e.g. an older checkout) and prints paired ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N_LAYERS = 4


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def synthetic_net(total_mb: int):
    """A net of N_LAYERS InnerProduct layers with big weights (total_mb MB of floats in all) and their arrays."""
    import numpy as np

    from caffeinit.proto import caffe_pb2

    outputs = 1000
    inputs = int(total_mb * 2**20 / 4 / N_LAYERS / outputs)
    net = caffe_pb2.NetParameter(name="bench")
    blobs = {}
    rng = np.random.default_rng(0)
    for i in range(N_LAYERS):
        layer = net.layer.add(name=f"fc{i}", type="InnerProduct", phase=caffe_pb2.TEST)
        layer.bottom.append("data" if i == 0 else f"fc{i - 1}")
        layer.top.append(f"fc{i}")
        layer.inner_product_param.num_output = outputs
        blobs[layer.name] = [rng.standard_normal((outputs, inputs), dtype=np.float32),
                             rng.standard_normal(outputs, dtype=np.float32)]
    return net, blobs


def child(mode: str, path: str, total_mb: int) -> dict:
    import numpy as np

    from caffeinit import weights
    from caffeinit.proto import caffe_pb2

    if mode.endswith("write"):
        net, blobs = synthetic_net(total_mb)
        start_rss = peak_rss_mb()
        start = time.perf_counter()
        if mode == "write":
            weights.write_caffemodel(path, net, blobs)
        elif mode == "raw-write":  # the machine's ceiling: the arrays' bytes alone, no protobuf framing
            with open(path, "wb") as f:
                for arrays in blobs.values():
                    for array in arrays:
                        f.write(memoryview(array).cast("B"))
        else:  # naive: fill the repeated fields from Python lists, serialize, write
            proto = caffe_pb2.NetParameter(name=net.name)
            for layer in net.layer:
                saved = proto.layer.add()
                saved.CopyFrom(layer)
                for array in blobs[layer.name]:
                    blob = saved.blobs.add()
                    blob.shape.dim.extend(array.shape)
                    blob.data.extend(array.ravel().tolist())
            with open(path, "wb") as f:
                f.write(proto.SerializeToString())
    else:
        start_rss = peak_rss_mb()
        start = time.perf_counter()
        if mode == "read":
            arrays = weights.load_weights(path)
        else:  # naive: parse, then build arrays through Python lists of floats
            proto = caffe_pb2.NetParameter()
            with open(path, "rb") as f:
                proto.ParseFromString(f.read())
            arrays = {layer.name: [np.array(list(b.data), np.float32).reshape(tuple(b.shape.dim))
                                   for b in layer.blobs] for layer in proto.layer if len(layer.blobs)}
        assert sum(a.size for v in arrays.values() for a in v) > 0
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": start_rss}


def caffenet_child(path: str) -> dict:
    import caffeinit
    import caffeinit.api  # caffeinit imports its API (and torch) lazily: not part of what is timed

    start = time.perf_counter()
    model = caffeinit.load(ROOT / "models" / "caffenet" / "deploy.prototxt", device="cpu", seed=1)
    loaded = time.perf_counter()
    model.save_caffemodel(path)
    saved = time.perf_counter()
    return {"load": loaded - start, "save": saved - loaded, "tree": str(Path(caffeinit.__file__).parent.parent)}


def caffenet_main(args) -> None:
    trees = [ROOT] + ([Path(args.compare).resolve()] if args.compare else [])
    times: dict[Path, list[dict]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for _ in range(args.rounds):
            for tree in trees:
                python_path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
                env = {**os.environ, "PYTHONPATH": python_path}
                out = subprocess.run([sys.executable, __file__, "--child", "caffenet",
                                      "--path", str(Path(folder, "caffenet.caffemodel"))],
                                     check=True, capture_output=True, text=True, env=env)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                assert Path(result["tree"]) == tree, f"child imported caffeinit from {result['tree']}, not {tree}"
                times[tree].append(result)
    print(f"load average before/after: {args.load_before} / {os.getloadavg()}")
    for tree in trees:
        for part in ("load", "save"):
            values = sorted(r[part] for r in times[tree])
            listed = ", ".join(f"{v:.3f}" for v in values)
            print(f"{str(tree):30} {part}: median {values[len(values) // 2]:.3f} s  ({listed})")
    if args.compare:
        for part in ("load", "save"):
            ratios = sorted(a[part] / b[part] for a, b in zip(times[ROOT], times[trees[1]]))
            print(f"{part}: this tree / {trees[1]} = {ratios[len(ratios) // 2]:.2f} (median of {len(ratios)} pairs)")


def run_child(mode: str, path: Path, total_mb: int) -> dict:
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--path", str(path), "--mb", str(total_mb)],
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": python_path})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="total size of the weights (MB)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the temporary caffemodels")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--caffenet", action="store_true", help="time loading and saving models/caffenet instead")
    parser.add_argument("--compare", metavar="TREE", help="with --caffenet: also run caffeinit from this tree")
    parser.add_argument("--rounds", type=int, default=5, help="with --caffenet: children per tree")
    args = parser.parse_args()
    if args.child:
        result = caffenet_child(args.path) if args.child == "caffenet" else child(args.child, args.path, args.mb)
        print(json.dumps(result))
        return
    if args.caffenet:
        args.load_before = os.getloadavg()
        caffenet_main(args)
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        ours_path, naive_path = Path(folder, "ours.caffemodel"), Path(folder, "naive.caffemodel")
        results = {}
        for mode, path in [("raw-write", Path(folder, "raw.bin")), ("write", ours_path), ("naive-write", naive_path),
                           ("read", ours_path), ("naive-read", naive_path)]:
            results[mode] = run_child(mode, path, args.mb)
        size_mb = ours_path.stat().st_size / 2**20
        same = ours_path.read_bytes() == naive_path.read_bytes()

    import google.protobuf
    from google.protobuf.internal import api_implementation

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus; "
          f"python {platform.python_version()}; protobuf {google.protobuf.__version__} ({api_implementation.Type()}); {time.strftime('%Y-%m-%d')}")
    print(f"file: {size_mb:.1f} MB ({N_LAYERS} InnerProduct layers); ours == naive bytes: {same}")
    print(f"{'mode':12} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12} {'RSS/file':>9} {'RSS before':>11}")
    for mode, r in results.items():
        print(f"{mode:12} {r['seconds']:8.2f} {size_mb / r['seconds']:8.0f} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_rss_mb'] / size_mb:9.2f} {r['rss_before_mb']:11.0f}")
    for way in ("write", "read"):
        print(f"{way}: ours is {results['naive-' + way]['seconds'] / results[way]['seconds']:.1f}x faster than naive")


if __name__ == "__main__":
    main()
