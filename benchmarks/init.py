"""Initialization speed.

Default (CPU, the first issue's setting): CaffeNet deploy, 160 synthetic images in 10 batches of 16, gaussian and
kmeans, with the between-layer step. Prints whole-process time (each run in a child process, less the reference
measurement it also makes), algorithm time, peak RSS, and the ratio of init time to one forward over the N images
plus one plain forward+backward (every weight gradient formed) over the between-layer batch, in the same process.

``--vs-hand`` (the default with ``--device cuda``; issue #5's protocol): the real images of models/images/list.txt
(cycled to ``--images``, decoded once per child process, decoding timed separately). In one child process per net
and method, with IEEE fp32 (TF32 off):
  (a) the hand-written reference: a torch module written directly (benchmarks/handwritten.py) with the same
      weights, one forward over all images plus three forward+backward passes over ``--batch`` images (N(0,1)
      gradients injected at the logits, gradients to every weight), batches copied from host memory as the init
      gets them, synchronized, after a warm-up, median of 3;
  (b) ``caffeinit.init.initialize`` on the same batches: the first call in the process (cold: what a user gets)
      and a second one on a freshly loaded model (warm), with peak GPU memory;
then (c) the whole command ``python3 -m caffeinit run NET --images list.txt --num-images N --batch-size B``, wall
time of a fresh process. Prints a markdown table for benchmarks/RESULTS.md.

    python benchmarks/init.py [--device cpu|cuda] [--net caffenet|vgg16] [--images 160] [--batch 16]
    python benchmarks/init.py --device cuda --net caffenet,vgg16 --images 1024 --batch 64
    python benchmarks/init.py --corpus   # `caffeinit run` on GoogLeNet, ResNet-50, SqueezeNet v1.1, MobileNet
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from paths import CORPUS, ROOT  # benchmarks/ is on sys.path: it is the script's folder
NETS = {
    "caffenet": os.path.join(ROOT, "models", "caffenet", "deploy.prototxt"),
    "vgg16": os.path.join(CORPUS, "soeaver__deploy_vgg16-pytorch.prototxt"),
}
IMAGE_LIST = os.path.join(ROOT, "models", "images", "list.txt")
CORPUS_NETS = ("bvlc__models_bvlc_googlenet_deploy", "kaiming__ResNet-50-deploy", "squeeze__SqueezeNet_v1.1_deploy",
               "shicai__mobilenet_deploy")
REFERENCE_BACKWARD_PASSES = 3


def child(net, method, device, images, batch):
    """The CPU benchmark: synthetic images, init time vs one forward + one forward+backward, in this process."""
    started = time.perf_counter()
    sys.path.insert(0, ROOT)
    from caffeinit.allocator import retain_freed_memory
    retain_freed_memory()  # as the CLI does: the init and the reference passes run with it
    import numpy as np
    import torch
    from caffeinit.api import load
    from caffeinit.init import InitConfig, initialize
    from caffeinit.init.scale_model import build_scale_model

    model = load(NETS[net], device=device)
    feed, shape = next(iter(model.net.feeds.items()))
    shape = (batch,) + tuple(shape[1:])
    rng = np.random.default_rng(0)
    batches = [{feed: (rng.standard_normal(shape) * 50).astype(np.float32)} for _ in range(images // batch)]
    model.reshape({feed: shape})
    config = InitConfig(method=method, num_images=images, batch_size=batch)
    t0 = time.perf_counter()
    report = initialize(model, batches, config, progress=False)
    _sync(model.device)
    algo = time.perf_counter() - t0
    # the reference point: one forward over the N images + one forward+backward over the between-layer batch
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            model.module({model.net.value_of[feed]: torch.from_numpy(b[feed]).to(model.device)},
                         keep=model.net.outputs)
    ends = build_scale_model(model.module).ends
    params = [p for p in model.module.parameters() if p.requires_grad]
    gen = torch.Generator(device=model.device).manual_seed(0)
    for b in batches[:config.between_batches]:  # plain autograd: every weight's gradient formed
        with torch.enable_grad():
            out = model.module({model.net.value_of[feed]: torch.from_numpy(b[feed]).to(model.device)}, keep=ends)
            outputs = [out[v] for v in ends]
            torch.autograd.grad(outputs, params, [torch.randn(o.shape, generator=gen, device=model.device)
                                                  for o in outputs], allow_unused=True)
    _sync(model.device)
    reference = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"algo": algo, "reference": reference, "rss_mb": rss, "parts": report.seconds,
                      "process": time.perf_counter() - started, "spread": report.spread("after"),
                      "iterations": report.between_iterations}))


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gpu_mb(device):
    import torch
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device):
    import torch
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# -- issue #5: caffeinit's init against a hand-written reference --------------------------------------------------

def decode_images(model, images, batch):
    """The net's input batches from models/images/list.txt exactly as `caffeinit run --images` makes them."""
    from caffeinit.data import batches
    from caffeinit.data.netinput import ImageOptions, net_source

    source = net_source(model.net, ImageOptions(images=IMAGE_LIST))
    return list(batches(source, batch, images, seed=0, progress=False))


def hand_reference(hand, batches, feed, device, repeats=3):
    """Seconds of one forward over ``batches`` + three forward+backward passes over its first batches (median of
    ``repeats`` after a warm-up), as (forward, forward+backward) medians."""
    import torch
    from handwritten import hand_logits

    gen = torch.Generator(device=device)

    def forward_all():
        with torch.no_grad():
            for b in batches:
                hand(torch.from_numpy(b[feed]).to(device))

    def forward_backward():
        for b in batches[:REFERENCE_BACKWARD_PASSES]:
            hand.zero_grad(set_to_none=True)
            out = hand_logits(hand, torch.from_numpy(b[feed]).to(device))
            out.backward(torch.randn(out.shape, generator=gen, device=device))

    forward_all()  # warm-up: allocations, kernel selection
    forward_backward()
    _sync(device)
    forward, backward = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward_all()
        _sync(device)
        t1 = time.perf_counter()
        forward_backward()
        _sync(device)
        forward.append(t1 - t0)
        backward.append(time.perf_counter() - t1)
    return statistics.median(forward), statistics.median(backward)


def hand_child(net, method, device_spec, images, batch):
    """One net and method in this process: context, decoding, cold and warm init, the hand-written reference."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from caffeinit.allocator import retain_freed_memory
    retain_freed_memory()
    import numpy as np
    import torch
    from caffeinit.api import load
    from caffeinit.device import select_device
    from caffeinit.init import InitConfig, initialize
    from handwritten import HAND_NETS, hand_logits

    t0 = time.perf_counter()
    device = select_device(device_spec, precision="ieee")
    if device.type == "cuda":
        torch.zeros(1, device=device)  # the CUDA context, kept out of every figure below
        _sync(device)
    result = {"context_s": time.perf_counter() - t0, "device": str(device), "torch": torch.__version__,
              "conv_fp32_precision": getattr(torch.backends.cudnn.conv, "fp32_precision", "?"),
              "matmul_fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", "?")}
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)

    model = load(NETS[net], device=device_spec)
    feed = next(iter(model.net.feeds))
    t0 = time.perf_counter()
    batches = decode_images(model, images, batch)
    result["decode_s"] = time.perf_counter() - t0
    config = InitConfig(method=method, num_images=images, batch_size=batch)

    for run in ("cold", "warm"):
        if run == "warm":
            del model
            model = load(NETS[net], device=device_spec)
        _reset_peak(device)
        t0 = time.perf_counter()
        report = initialize(model, batches, config, progress=False)
        _sync(device)
        result[run] = {"s": time.perf_counter() - t0, "parts": report.seconds, "peak_gpu_mb": _peak_gpu_mb(device),
                       "spread_after": report.spread("after"), "iterations": report.between_iterations,
                       "converged": report.between_converged}

    # the reference gets the initialized weights (sane activations) and must compute the same function
    hand = HAND_NETS[net].from_model(model).to(device)
    check = {feed: batches[0][feed][:4]}
    ours = model.forward(check, blobs=[model.net.layers[-1].bottoms[0]])
    ours = next(iter(ours.values()))
    with torch.no_grad():
        theirs = hand_logits(hand, torch.from_numpy(check[feed]).to(device)).cpu().numpy()
    result["hand_rel_err"] = float(np.abs(ours - theirs).max() / max(float(np.abs(theirs).max()), 1e-30))
    del model
    _reset_peak(device)
    forward, backward = hand_reference(hand, batches, feed, device)
    result["hand"] = {"forward_s": forward, "fwd_bwd_s": backward, "s": forward + backward,
                      "peak_gpu_mb": _peak_gpu_mb(device)}
    print(json.dumps(result))


def whole_command(net, method, device, images, batch, timeout=None):
    """Wall time of `python3 -m caffeinit run` in a fresh process, and its report."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "caffeinit", "run", NETS[net], "--images", IMAGE_LIST, "--num-images",
                str(images), "--batch-size", str(batch), "--device", device, "--method", method,
                "-o", os.path.join(tmp, "x.caffemodel"), "--report", os.path.join(tmp, "r.json"), "--quiet"]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        try:
            out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"stopped after {timeout} s"}
        wall = time.perf_counter() - t0
        if out.returncode:
            return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
        with open(os.path.join(tmp, "r.json")) as f:
            report = json.load(f)
    return {"s": wall, "init_s": sum(report["seconds"].values()), "spread_after": report["spread_after"]}


def vs_hand(args, names, methods):
    print(f"issue #5 protocol: {args.images} images of models/images (cycled), batch {args.batch}, device "
          f"{args.device}, IEEE fp32; one child process per net and method", flush=True)
    head = ("| net | method | hand-written ref: fwd N + 3 fwd/bwd | init cold | init warm | warm / ref | cold / ref "
            "| init parts (warm: load / before / within / between) | peak GPU mem init / ref | spread after "
            "| decode N alone | whole command |")
    rows, notes = [], []
    for name in names:
        for k, method in enumerate(methods):
            try:
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--hand-child", name, method,
                                      "--device", args.device, "--images", str(args.images), "--batch", str(args.batch)],
                                     capture_output=True, text=True, timeout=args.child_timeout)
            except subprocess.TimeoutExpired:
                print(f"{name} {method}: child stopped after {args.child_timeout} s", flush=True)
                continue
            if out.returncode:
                print(f"{name} {method}: child failed: {out.stderr.strip()[-2000:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            command = whole_command(name, method, args.device, args.images, args.batch,
                                    args.child_timeout) if k == 0 else None
            ref, cold, warm = r["hand"]["s"], r["cold"]["s"], r["warm"]["s"]
            parts = " / ".join(f"{r['warm']['parts'].get(p, 0):.2f}" for p in ("load", "before", "within", "between"))
            mem = f"{_mb(r['cold']['peak_gpu_mb'])} / {_mb(r['hand']['peak_gpu_mb'])}"
            if command is None:
                whole = "-"
            elif "error" in command:
                whole = f"failed: {command['error']}"
            else:
                whole = f"{command['s']:.2f} s (init {command['init_s']:.2f} s)"
            row = (f"| {name} | {method} | {ref:.3f} s ({r['hand']['forward_s']:.3f} + {r['hand']['fwd_bwd_s']:.3f}) "
                   f"| {cold:.2f} s | {warm:.2f} s | {warm / ref:.2f} | {cold / ref:.2f} | {parts} | {mem} "
                   f"| {r['warm']['spread_after']:.3g}x ({r['warm']['iterations']} updates) | {r['decode_s']:.2f} s "
                   f"| {whole} |")
            rows.append(row)
            print(row, flush=True)  # as it comes: a run cut short still shows the finished rows
            notes.append(f"{name} {method}: {r.get('device_name', r['device'])}, torch {r['torch']}, fp32 precision "
                         f"conv {r['conv_fp32_precision']} / matmul {r['matmul_fp32_precision']}; CUDA context "
                         f"{r['context_s']:.2f} s (excluded); hand-written vs caffeinit logits rel. err "
                         f"{r['hand_rel_err']:.1e}; cold parts "
                         + ", ".join(f"{p} {v:.2f}" for p, v in r["cold"]["parts"].items()))
    print()
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for row in rows:
        print(row)
    for note in notes:
        print(note)


def _mb(value):
    return "-" if value is None else f"{value / 1024:.1f} GiB"


def corpus():
    """The real command on corpus nets at their own input size, 8 images of models/images in batches of 4."""
    import math
    for name in CORPUS_NETS:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "caffeinit", "run", os.path.join(CORPUS, name + ".prototxt"),
                                  "--images", IMAGE_LIST, "--num-images", "8",
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--net", default="caffenet", help="caffenet, vgg16 or both comma-separated")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--methods", default="gaussian,kmeans")
    parser.add_argument("--vs-hand", action="store_true",
                        help="issue #5's protocol against a hand-written reference (the default with --device cuda)")
    parser.add_argument("--child-timeout", type=float, help="with --vs-hand: stop a net and method after this many s")
    parser.add_argument("--corpus", action="store_true", help="run `caffeinit run` on four corpus nets instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--hand-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n for n in args.net.split(",") if n]
    unknown = [n for n in names if n not in NETS]
    if unknown:
        parser.error(f"unknown net {unknown[0]} (choose from {', '.join(NETS)})")
    missing = [NETS[n] for n in names if not os.path.exists(NETS[n])]
    if missing:
        parser.error(f"{missing[0]} not found (the corpus nets live in ../shared or shared/)")
    methods = [m for m in args.methods.split(",") if m]
    if args.corpus:
        return corpus()
    if args.hand_child:
        return hand_child(*args.hand_child, args.device, args.images, args.batch)
    if args.child:
        return child(names[0], args.child, args.device, args.images, args.batch)
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            print(f"CUDA is not available (torch {torch.__version__}): skipping the GPU benchmark")
            return
    if args.vs_hand or args.device.startswith("cuda"):
        return vs_hand(args, names, methods)
    for name in names:
        for method in methods:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", method, "--net", name, "--device", args.device,
                                  "--images", str(args.images), "--batch", str(args.batch)],
                                 capture_output=True, text=True)
            whole = time.perf_counter() - t0
            if out.returncode:
                print(out.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            whole -= r["reference"]  # the reference measurement runs in the same child, after the init
            print(f"{name} {method}: whole process {whole:.2f} s, init {r['algo']:.2f} s "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in r['parts'].items())}), reference fwd+fwd/bwd "
                  f"{r['reference']:.2f} s, ratio {r['algo'] / r['reference']:.2f}, peak RSS {r['rss_mb']:.0f} MB, "
                  f"spread {r['spread']:.3f}, between updates {r['iterations']}")


if __name__ == "__main__":
    main()
