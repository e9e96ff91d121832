"""The initialization's memory estimates against measured peaks (CPU).

Within-layer step: for each image count, ``within.memory_estimate`` (and the stored lower bound) next to the peak
RSS of a child process running ``initialize`` without the between step on that many synthetic images.
Between-layer step: one gradient pass over a batch (``initialize`` with only the between step, one batch, one
update), its peak RSS above the loaded model, with the passes whole and then split as ``initialize`` chooses when the
memory available is taken as ``--available`` GiB (default: what the kernel says).

    python benchmarks/init_memory.py NET.prototxt [--images 16,48] [--batch 16] [--between] [--available 20]

FCN-8s with bilinear upsampling (its corpus deploy has no fillers there): give its Deconvolution layers
``weight_filler { type: "bilinear" }`` in a copy of the prototxt.
"""
import argparse
import json
import os
import subprocess
import sys

from paths import ROOT  # benchmarks/ is on sys.path: it is the script's folder


def child(net, images, batch, mode, available):
    import resource
    sys.path.insert(0, ROOT)
    from caffeinit.allocator import retain_freed_memory
    retain_freed_memory()
    import numpy as np
    from caffeinit.api import load
    from caffeinit.init import InitConfig, initialize, pipeline

    model = load(net)
    feed, shape = next(iter(model.net.feeds.items()))
    rng = np.random.default_rng(0)
    batches = [{feed: (rng.standard_normal((min(batch, images - i),) + tuple(shape[1:])) * 50).astype(np.float32)}
               for i in range(0, images, batch)]
    if available is not None:
        pipeline.available_memory = lambda device: available * 2 ** 30
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if mode == "within":
        config = InitConfig(between=False, measure_before=False)
    else:
        config = InitConfig(within=False, measure_before=False, between_batches=1, between_iters=1)
    report = initialize(model, batches, config, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"base": base, "peak": peak, "chunk": report.gradient_chunk}))


def run_child(*args):
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("net", nargs="?")
    parser.add_argument("--images", default="16,48")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--between", action="store_true", help="measure a gradient pass instead")
    parser.add_argument("--available", type=float, help="GiB the chunking decision takes as available")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(*json.loads(args.child))
        return
    sys.path.insert(0, ROOT)
    from caffeinit.api import load
    from caffeinit.init.within import memory_estimate

    gib = 2 ** 30
    if args.between:
        print("| gradient pass | images | chunk | peak above the model |\n|---|---|---|---|")
        for available in (None, args.available) if args.available else (None,):
            r = run_child(args.net, args.batch, args.batch, "between", available)
            print(f"| {'whole' if r['chunk'] is None else 'split'} | {args.batch} | {r['chunk'] or '-'} | "
                  f"{(r['peak'] - r['base']) / gib:.1f} GiB |")
        return
    estimate = memory_estimate(load(args.net).net, args.batch)
    print(f"{os.path.basename(args.net)}: stored {estimate.stored / 2 ** 20:.0f} MiB per image after "
          f"'{estimate.where.name}'")
    print("| images | stored lower bound | estimate | measured peak RSS (whole process) |\n|---|---|---|---|")
    for n in map(int, args.images.split(",")):
        r = run_child(args.net, n, args.batch, "within", None)
        print(f"| {n} | {estimate.stored * n / gib:.1f} GiB | {estimate.total(n) / gib:.1f} GiB | "
              f"{r['peak'] / gib:.1f} GiB |")


if __name__ == "__main__":
    main()
