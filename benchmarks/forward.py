"""Forward-pass speed of caffeinit against OpenCV dnn (CPU) or a hand-written torch CaffeNet (GPU).

CPU (default): CaffeNet, GoogLeNet, ResNet-50 and VGG-16 deploy nets at batch 16 with random but sane weights.
caffeinit runs ``model.forward`` under ``torch.inference_mode``; OpenCV reads the same net text (round_mode
spelled as ceil_mode) and the same weights written by ``model.save_caffemodel``. Both use the same thread count;
after a warm-up the two alternate, and the median of each is reported with the ratio caffeinit / OpenCV, the
largest relative difference of the outputs (max |ours - theirs| / max |theirs|, on the net output and on the input
of a final Softmax, whose probabilities saturate) and each engine's peak RSS (in its own child process).
``--unfused`` adds caffeinit with its oneDNN fusion switched off (``TorchNet.fuse_inference``) to the alternation:
the paired gain of the fusion.

GPU (``--device cuda``): images/s of caffeinit (IEEE fp32) on the same nets, and for CaffeNet the ratio to a
hand-written torch module (nn.Sequential with the same weights) run the same way.

    python benchmarks/forward.py [--device cpu|cuda] [--batch 16] [--repeats 7] [--threads 2] [--nets caffenet,...]
                                 [--no-rss] [--unfused]
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

import numpy as np
import torch
from torch import nn

from paths import CORPUS, ROOT  # benchmarks/ is on sys.path: it is the script's folder
sys.path.insert(0, ROOT)
NETS = {
    "caffenet": os.path.join(ROOT, "models", "caffenet", "deploy.prototxt"),
    "googlenet": os.path.join(CORPUS, "bvlc__models_bvlc_googlenet_deploy.prototxt"),
    "resnet50": os.path.join(CORPUS, "kaiming__ResNet-50-deploy.prototxt"),
    "vgg16": os.path.join(CORPUS, "soeaver__deploy_vgg16-pytorch.prototxt"),
}


# -- the nets and their weights -------------------------------------------------------------------------------

def load_net(name, batch, device, seed=0):
    """(model, feed blob name, input batch) with sane random weights, reshaped to ``batch``."""
    from caffeinit.api import load
    from caffeinit.fillers import scaled_random_blobs

    path = NETS[name]
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found (the corpus nets live in ../shared)")
    rng = np.random.default_rng(seed)
    model = load(path, weights=scaled_random_blobs(load(path).net, rng), device=device)
    (feed, shape), = model.net.feeds.items()
    shape = (batch,) + tuple(shape[1:])
    model.reshape({feed: shape})
    x = rng.standard_normal(shape).astype(np.float32)
    return model, feed, x


def compared_blobs(model):
    """The net's outputs, plus the input of a final Softmax (probabilities saturate and hide differences)."""
    last = model.net.layers[-1]
    names = list(model.net.outputs)
    if last.type == "Softmax" and last.bottoms[0] not in names:
        names.insert(0, last.bottoms[0])
    return names


def opencv_net(model, workdir):
    """OpenCV dnn reading the model's net text (round_mode spelled as ceil_mode) and its saved caffemodel."""
    import cv2
    from caffeinit.prototxt import format_net_with_ceil_mode

    text = format_net_with_ceil_mode(model.net_param)
    proto_path, weights_path = os.path.join(workdir, "net.prototxt"), os.path.join(workdir, "w.caffemodel")
    with open(proto_path, "w") as f:
        f.write(text)
    model.save_caffemodel(weights_path)
    net = cv2.dnn.readNetFromCaffe(proto_path, weights_path)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def producer_of(model, blob):
    """The name of the layer whose top is ``blob`` last (OpenCV names its outputs by layer)."""
    return [node.name for node in model.net.layers if blob in node.tops][-1]


class HandCaffeNet(nn.Module):
    """BVLC reference CaffeNet written directly in torch (no Caffe machinery), for the GPU comparison."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
            nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))

    def forward(self, x):
        return torch.softmax(self.classifier(self.features(x)), dim=1)

    @classmethod
    def from_model(cls, model):
        """The same weights as a caffeinit CaffeNet model."""
        hand = cls()
        blobs = model.blobs()
        layers = [m for m in list(hand.features) + list(hand.classifier) if isinstance(m, (nn.Conv2d, nn.Linear))]
        for module, name in zip(layers, ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]):
            weight, bias = blobs[name]
            module.weight.data.copy_(torch.from_numpy(weight).reshape(module.weight.shape))
            module.bias.data.copy_(torch.from_numpy(bias))
        return hand.eval()


def hand_forward(hand, xs):
    with torch.inference_mode():
        return hand(xs)


def rel_err(mine, theirs):
    theirs = np.asarray(theirs).reshape(mine.shape)
    return float(np.abs(mine - theirs).max() / max(float(np.abs(theirs).max()), 1e-30))


def peak_rss_mb():
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry the forking parent's peak over)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- CPU: caffeinit vs OpenCV -----------------------------------------------------------------------------------

def caffeinit_runner(model, feed, x, fuse=True):
    def run():
        model.module.fuse_inference = fuse
        with torch.inference_mode():
            return model.forward({feed: x})
    return run


def opencv_runner(net, feed, x, out_layers):
    def run():
        net.setInput(x, feed)
        return net.forward(out_layers)
    return run


def cpu_compare(name, batch, repeats, threads, workdir, unfused=False):
    """Interleaved timing of both engines in this process; returns the row (without RSS). Leaves the net text for
    OpenCV, the caffemodel, the input and the compared layers in ``workdir`` for the RSS children."""
    import cv2

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    model, feed, x = load_net(name, batch, "cpu")
    blobs = compared_blobs(model)
    cv_net = opencv_net(model, workdir)
    out_layers = [producer_of(model, b) for b in blobs]
    np.save(os.path.join(workdir, "x.npy"), x)
    with open(os.path.join(workdir, "outputs.json"), "w") as f:
        json.dump({"feed": feed, "layers": out_layers}, f)
    ours_run, theirs_run = caffeinit_runner(model, feed, x), opencv_runner(cv_net, feed, x, out_layers)
    engines = {"caffeinit": ours_run, "opencv": theirs_run}
    if name == "caffenet":  # plain torch with the same weights: what the Caffe machinery costs on top
        hand, xs = HandCaffeNet.from_model(model), torch.from_numpy(x)
        engines["torch"] = lambda: hand_forward(hand, xs)
    if unfused:
        engines["unfused"] = caffeinit_runner(model, feed, x, fuse=False)

    with torch.inference_mode():
        ours = model.forward({feed: x}, blobs=blobs)
    theirs = theirs_run()
    errors = {b: rel_err(ours[b], t) for b, t in zip(blobs, theirs)}
    for run in engines.values():  # warm-up (allocations, kernel selection)
        run()
    times = {engine: [] for engine in engines}
    for _ in range(repeats):
        for engine, run in engines.items():
            t0 = time.perf_counter()
            run()
            times[engine].append(time.perf_counter() - t0)
    ms = {engine: 1000 * statistics.median(t) for engine, t in times.items()}
    return {"net": name, "caffeinit_ms": ms["caffeinit"], "opencv_ms": ms["opencv"], "torch_ms": ms.get("torch"),
            "unfused_ms": ms.get("unfused"),
            "ratio": ms["caffeinit"] / ms["opencv"], "max_rel_err": errors}


def rss_child(name, engine, threads, workdir):
    """Peak RSS of one engine alone, as a user runs it: load the net and the saved caffemodel, two forwards."""
    import cv2

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    base = peak_rss_mb()
    x = np.load(os.path.join(workdir, "x.npy"))
    with open(os.path.join(workdir, "outputs.json")) as f:
        outputs = json.load(f)
    weights = os.path.join(workdir, "w.caffemodel")
    if engine == "caffeinit":
        from caffeinit.api import load
        model = load(NETS[name], weights=weights, device="cpu")
        run = caffeinit_runner(model, outputs["feed"], x)
    else:
        net = cv2.dnn.readNetFromCaffe(os.path.join(workdir, "net.prototxt"), weights)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        run = opencv_runner(net, outputs["feed"], x, outputs["layers"])
    run()
    run()
    return {"peak": peak_rss_mb(), "base": base}


def in_child(*args):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- GPU: caffeinit vs a hand-written CaffeNet -------------------------------------------------------------------

def gpu_images_per_second(run, batch, repeats):
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            run()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / 10)
    return batch / statistics.median(times)


def gpu_bench(names, batch, repeats):
    from caffeinit.device import select_device

    device = select_device("cuda", precision="ieee")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, IEEE fp32, batch {batch}")
    print("| net | caffeinit images/s | hand-written torch images/s | ratio | max rel err |")
    print("|---|---|---|---|---|")
    for name in names:
        model, feed, x = load_net(name, batch, device)
        value = model.net.feed_values[feed]
        xs = torch.from_numpy(x).to(device)
        keep = [model.net.value_of[b] for b in model.net.outputs]

        def ours():
            with torch.inference_mode():
                return model.module({value: xs}, keep=keep)
        ours_ips = gpu_images_per_second(ours, batch, repeats)
        if name != "caffenet":
            print(f"| {name} | {ours_ips:.0f} | | | |")
            continue
        hand = HandCaffeNet.from_model(model).to(device)

        def theirs():
            with torch.inference_mode():
                return hand(xs)
        hand_ips = gpu_images_per_second(theirs, batch, repeats)
        fc8 = model.forward({feed: x}, blobs=["fc8"])["fc8"]
        with torch.inference_mode():
            hand_fc8 = hand.classifier(hand.features(xs)).cpu().numpy()
        print(f"| {name} | {ours_ips:.0f} | {hand_ips:.0f} | {ours_ips / hand_ips:.2f} | {rel_err(fc8, hand_fc8):.1e} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--no-rss", action="store_true", help="skip the per-engine peak RSS child processes")
    parser.add_argument("--unfused", action="store_true", help="also time caffeinit without its oneDNN fusion")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(rss_child(*json.loads(args.child))))
        return
    names = [n for n in args.nets.split(",") if n]
    unknown = [n for n in names if n not in NETS]
    if unknown:
        parser.error(f"unknown net {unknown[0]} (choose from {', '.join(NETS)})")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print(f"CUDA is not available (torch {torch.__version__}): skipping the GPU benchmark")
            return
        gpu_bench(names, args.batch, args.repeats)
        return

    import cv2
    print(f"CPU, {args.threads} threads for both, batch {args.batch}, median of {args.repeats} interleaved runs; "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}")
    print("| net | caffeinit ms/batch | OpenCV ms/batch | ratio | caffeinit peak RSS | OpenCV peak RSS | max rel err |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for name in names:
        with tempfile.TemporaryDirectory() as workdir:
            row = cpu_compare(name, args.batch, args.repeats, args.threads, workdir, args.unfused)
            rss = {} if args.no_rss else {e: in_child(name, e, args.threads, workdir) for e in ("caffeinit", "opencv")}
        if rss:
            notes.append(f"{name}: peak RSS includes {rss['caffeinit']['base']:.0f} MB of interpreter, torch and cv2")
            rss = {e: r["peak"] for e, r in rss.items()}
        errors = ", ".join(f"{b} {e:.1e}" for b, e in row["max_rel_err"].items())
        if row["torch_ms"] is not None:
            notes.append(f"{name}: hand-written torch module with the same weights {row['torch_ms']:.0f} ms/batch "
                         f"(caffeinit / torch {row['caffeinit_ms'] / row['torch_ms']:.2f})")
        if row["unfused_ms"] is not None:
            notes.append(f"{name}: caffeinit without fusion {row['unfused_ms']:.0f} ms/batch "
                         f"(fused / unfused {row['caffeinit_ms'] / row['unfused_ms']:.2f})")
        rss_text = {e: f"{rss[e]:.0f} MB" if e in rss else "-" for e in ("caffeinit", "opencv")}
        print(f"| {name} | {row['caffeinit_ms']:.0f} | {row['opencv_ms']:.0f} | {row['ratio']:.2f} | "
              f"{rss_text['caffeinit']} | {rss_text['opencv']} | {errors} |", flush=True)
    for note in notes:
        print(note)
    if hasattr(os, "getloadavg"):
        print("load average at the end (1, 5, 15 min): %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
