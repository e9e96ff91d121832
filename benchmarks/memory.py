"""Peak memory of a statistics pass that keeps only the frontier, against a forward that holds every blob.

The init and `caffeinit stats` read every layer's output through a tap and keep only the values later layers still
need (the frontier); a naive pass (Caffe's own, or `keep=None`) holds every blob of the batch at once. Each mode runs
in its own child process: on CUDA the peak is ``torch.cuda.max_memory_allocated`` (VGG-16 at batch 256, as the
issue states: about 27 GiB when every blob is held); on CPU it is the child's peak RSS during the pass (VmHWM, reset just before it) less its RSS
right before it (weights and interpreter excluded), at a smaller batch.

    python benchmarks/memory.py [--device cpu|cuda] [--net vgg16] [--batch 256]
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("frontier", "every blob")


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS, so loading is not counted."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(net: str, batch: int, device: str, mode: str) -> dict:
    import torch

    from caffeinit.init.roles import affine_of
    from caffeinit.init.stats import ChannelStats
    from forward import load_net

    model, feed, x = load_net(net, batch, device)
    value = model.net.feed_values[feed]
    xs = torch.from_numpy(x).to(device)
    stats = {}

    def tap(node, tops):  # what a statistics pass does with every affine output
        affine = affine_of(node)
        if affine is not None:
            stats.setdefault(node.index, ChannelStats()).update(tops[0], affine.channel_axis)

    keep = () if mode == "frontier" else None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = status_mb("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.module({value: xs}, keep=keep, tap=tap)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        peak = status_mb("VmHWM") - base
    seconds = time.perf_counter() - t0
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in out.values()}  # views once
    held = sum(storages.values()) / 2 ** 20
    return {"peak_mb": peak, "held_mb": held, "seconds": seconds, "layers_measured": len(stats)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--net", default="vgg16")
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 16 on the CPU")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.net, args.batch, args.device, args.child)))
        return
    batch = args.batch or (256 if args.device == "cuda" else 16)
    print(f"{args.net}, batch {batch}, {args.device}: peak memory of one statistics pass (tap on every affine "
          f"output), above what the weights use")
    print("| mode | peak | values held at the end | time |")
    print("|---|---|---|---|")
    for mode in MODES:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode, "--net", args.net,
                              "--batch", str(batch), "--device", args.device], capture_output=True, text=True)
        if out.returncode:
            print(f"| {mode} | failed: {(out.stderr.strip().splitlines() or ['?'])[-1]} | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {mode} | {r['peak_mb'] / 1024:.2f} GiB | {r['held_mb'] / 1024:.2f} GiB | {r['seconds']:.2f} s |")


if __name__ == "__main__":
    main()
