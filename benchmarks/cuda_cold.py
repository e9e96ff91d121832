"""Where a cold CUDA process spends its first seconds: first vs second call of the operations CaffeNet's init uses.

The init benchmark (benchmarks/init.py) shows the first `initialize` in a process taking seconds longer than the
second, almost all of it in the between-layer step. This times, in a fresh process, the first and the second call
(synchronized) of each forward+backward the step runs at CaffeNet's shapes (batch 64, IEEE fp32), then a cold
`initialize` after those warm-ups with its parts.

    python benchmarks/cuda_cold.py
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to measure")
        return
    from google.protobuf import text_format

    from caffeinit.device import select_device
    from caffeinit.layers.registry import layer_class
    from caffeinit.proto import caffe_pb2

    device = select_device("cuda")
    t_ctx = timed(lambda: torch.zeros(1, device=device))
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; CUDA context {t_ctx:.2f} s")
    lrn_param = text_format.Parse('name: "norm1" type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }',
                                  caffe_pb2.LayerParameter())
    lrn = layer_class("LRN")(lrn_param)
    lrn.setup([(64, 96, 27, 27)])

    def conv_case(shape, out, k, stride, pad, groups):
        x = torch.randn(shape, device=device)
        w = torch.randn(out, shape[1] // groups, k, k, device=device, requires_grad=True)

        def run():
            y = F.conv2d(x, w, stride=stride, padding=pad, groups=groups)
            torch.autograd.grad(y, w, torch.ones_like(y))
        return run

    def lrn_case():
        x = torch.randn(64, 96, 27, 27, device=device, requires_grad=True)

        def run():
            y = lrn.forward([x], [])[0]
            torch.autograd.grad(y, x, torch.ones_like(y))
        return run

    def pool_case():
        x = torch.randn(64, 96, 55, 55, device=device, requires_grad=True)

        def run():
            y = F.max_pool2d(x, 3, 2)
            torch.autograd.grad(y, x, torch.ones_like(y))
        return run

    def linear_case():
        x = torch.randn(64, 9216, device=device)
        w = torch.randn(4096, 9216, device=device, requires_grad=True)

        def run():
            y = F.linear(x, w)
            torch.autograd.grad(y, w, torch.ones_like(y))
        return run

    cases = [("conv1 11x11/4 fwd+bwd(w)", conv_case((64, 3, 227, 227), 96, 11, 4, 0, 1)),
             ("conv2 5x5 group 2 fwd+bwd(w)", conv_case((64, 96, 27, 27), 256, 5, 1, 2, 2)),
             ("conv2 5x5 group 1 fwd+bwd(w)", conv_case((64, 96, 27, 27), 256, 5, 1, 2, 1)),
             ("conv4 3x3 group 2 fwd+bwd(w)", conv_case((64, 384, 13, 13), 384, 3, 1, 1, 2)),
             ("LRN fwd+bwd(x)", lrn_case()), ("max pool fwd+bwd(x)", pool_case()),
             ("fc6 fwd+bwd(w)", linear_case())]
    print("| operation (batch 64) | first call | second call |")
    print("|---|---|---|")
    for name, run in cases:
        first, second = timed(run), timed(run)
        print(f"| {name} | {first * 1e3:.1f} ms | {second * 1e3:.2f} ms |")

    from caffeinit.api import load
    from caffeinit.init import InitConfig, initialize
    model = load(os.path.join(ROOT, "models", "caffenet", "deploy.prototxt"), device=device)
    (feed, shape), = model.net.feeds.items()
    model.reshape({feed: (64,) + tuple(shape[1:])})
    rng = np.random.default_rng(0)
    batches = [{feed: (rng.standard_normal((64,) + tuple(shape[1:])) * 50).astype(np.float32)} for _ in range(4)]
    for label in ("first initialize after the warm-ups", "second initialize"):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        report = initialize(model, batches, InitConfig(num_images=256, batch_size=64), progress=False)
        torch.cuda.synchronize()
        parts = ", ".join(f"{k} {v:.2f}" for k, v in report.seconds.items())
        print(f"{label}: {time.perf_counter() - t0:.2f} s ({parts})")


if __name__ == "__main__":
    main()
