"""Initialization speed on CaffeNet deploy (the issue's setting): 160 images in 10 batches of 16, gaussian and
kmeans, with the between-layer step. Prints whole-process time (each run in a child process, less the reference
measurement it also makes), algorithm time, peak
RSS, and the ratio of init time to one forward over the N images plus one forward+backward over the between-layer
batch, measured in the same process. Images are synthetic (decoding excluded: see the data benchmark).

    python benchmarks/init.py [--device cpu|cuda] [--images 160] [--batch 16]
    python benchmarks/init.py --corpus   # `caffeinit run` on GoogLeNet, ResNet-50, SqueezeNet v1.1, MobileNet
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "..", "shared", "corpus")
NET = os.path.join(CORPUS, "bvlc__models_bvlc_reference_caffenet_deploy.prototxt")
CORPUS_NETS = ("bvlc__models_bvlc_googlenet_deploy", "kaiming__ResNet-50-deploy", "squeeze__SqueezeNet_v1.1_deploy",
               "shicai__mobilenet_deploy")


def child(method, device, images, batch):
    started = time.perf_counter()
    sys.path.insert(0, ROOT)
    import numpy as np
    import torch
    from caffeinit.api import load
    from caffeinit.init import InitConfig, initialize
    from caffeinit.init.between import build_scale_model, measure_rates

    model = load(NET, device=device)
    feed = list(model.net.feeds)[0]
    rng = np.random.default_rng(0)
    batches = [{feed: (rng.standard_normal((batch, 3, 227, 227)) * 50).astype(np.float32)}
               for _ in range(images // batch)]
    model.reshape({feed: (batch, 3, 227, 227)})
    config = InitConfig(method=method, num_images=images, batch_size=batch)
    t0 = time.perf_counter()
    report = initialize(model, batches, config, progress=False)
    if device != "cpu":
        torch.cuda.synchronize()
    algo = time.perf_counter() - t0
    # the reference point: one forward over the N images + one forward+backward over the between-layer batch
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            model.module({model.net.value_of[feed]: torch.from_numpy(b[feed]).to(model.device)},
                         keep=model.net.outputs)
    sm = build_scale_model(model.module)
    feeds = [{model.net.value_of[feed]: torch.from_numpy(b[feed]).to(model.device)}
             for b in batches[:config.between_batches]]
    measure_rates(model.module, sm, feeds, 1, 0)
    if device != "cpu":
        torch.cuda.synchronize()
    reference = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"algo": algo, "reference": reference, "rss_mb": rss, "parts": report.seconds,
                      "process": time.perf_counter() - started, "spread": report.spread("after"),
                      "iterations": report.between_iterations}))


def corpus():
    """The real command on corpus nets at their own input size, 8 images of models/images in batches of 4."""
    import math
    import tempfile
    for name in CORPUS_NETS:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "caffeinit", "run", os.path.join(CORPUS, name + ".prototxt"),
                                  "--images", os.path.join(ROOT, "models", "images", "list.txt"), "--num-images", "8",
                                  "--batch-size", "4", "-o", os.path.join(tmp, "x.caffemodel"), "--report",
                                  os.path.join(tmp, "r.json"), "--quiet"], capture_output=True, text=True, cwd=ROOT)
            whole = time.perf_counter() - t0
            if out.returncode:
                print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.load(open(os.path.join(tmp, "r.json")))
        finite = all(math.isfinite(v) for layer in r["layers"] for k, v in layer.items()
                     if k.startswith(("mean", "std", "rate")) and v is not None)
        print(f"{name}: {whole:.1f} s, spread {r['spread_between_start']:.3g}x -> {r['spread_after']:.3g}x in "
              f"{r['between_iterations']} update(s), converged {r['between_converged']}, all finite {finite}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--methods", default="gaussian,kmeans")
    parser.add_argument("--corpus", action="store_true", help="run `caffeinit run` on four corpus nets instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.corpus:
        return corpus()
    if args.child:
        return child(args.child, args.device, args.images, args.batch)
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", method, "--device", args.device, "--images",
                              str(args.images), "--batch", str(args.batch)], capture_output=True, text=True)
        whole = time.perf_counter() - t0
        if out.returncode:
            print(out.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        whole -= r["reference"]  # the reference measurement runs in the same child, after the init
        print(f"{method}: whole process {whole:.2f} s, init {r['algo']:.2f} s "
              f"({', '.join(f'{k} {v:.2f}' for k, v in r['parts'].items())}), reference fwd+fwd/bwd "
              f"{r['reference']:.2f} s, ratio {r['algo'] / r['reference']:.2f}, peak RSS {r['rss_mb']:.0f} MB, "
              f"spread {r['spread']:.3f}, between updates {r['iterations']}")


if __name__ == "__main__":
    main()
