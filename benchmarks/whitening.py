"""The whitening of the data-dependent draws (caffeinit/init/draws.py): float64 vs the float32 path, on real patches.

CaffeNet deploy on the real images of models/images/list.txt (cycled to 160, batches of 16): one kmeans
within-layer step (no between step) records the patches every data-dependent layer (and group) whitens. For each
patch matrix it prints the paired time of ``whitening(p, exact=True)`` (float64 throughout) and ``whitening(p)``
(alternated, median of the per-round ratios), whether the float32 path was taken, and how far its whitening is from
the float64 one: the metric M = V S^2 V^T (relative Frobenius norm), the metric seen by the data (P M P^T on 1000
patches) and max |S V^T C V S - S^2 Lambda| (C the float64 covariance, Lambda its float64 eigenvalues). Then the
whole kmeans within step, float32 path on vs off, paired the same way.

    python benchmarks/whitening.py [--rounds 5] [--method kmeans]
"""
import argparse
import os
import statistics
import sys
import time

import torch

from paths import ROOT  # benchmarks/ is on sys.path: it is the script's folder

sys.path.insert(0, ROOT)

from caffeinit.api import load  # noqa: E402
from caffeinit.data import batches  # noqa: E402
from caffeinit.data.netinput import ImageOptions, net_source  # noqa: E402
from caffeinit.init import InitConfig, draws, initialize  # noqa: E402

NET = os.path.join(ROOT, "models", "caffenet", "deploy.prototxt")
IMAGE_LIST = os.path.join(ROOT, "models", "images", "list.txt")


def load_batches(num_images=160, batch_size=16):
    model = load(NET)
    source = net_source(model.net, ImageOptions(images=IMAGE_LIST))
    return list(batches(source, batch_size, num_images, progress=False))


def within_step(data, method, float32_path):
    """Seconds of one within-layer step (and the patches whitened in it), the float32 path on or off."""
    model = load(NET)
    seen = []
    whitening, fast = draws.whitening, draws._whitening_from_float32

    def recording(patches, exact=False):
        seen.append(patches)
        return whitening(patches, exact)

    draws.whitening = recording
    if not float32_path:
        draws._whitening_from_float32 = lambda patches: None
    try:
        report = initialize(model, data, InitConfig(method=method, between=False), progress=False)
    finally:
        draws.whitening, draws._whitening_from_float32 = whitening, fast
    return report.seconds["within"], seen


def metric(vec, gain):
    return (vec * gain**2) @ vec.t()


def accuracy(patches, generator):
    """(float32 path taken, |dM|/|M|, |P dM P^T|/|P M P^T|, max |S V^T C V S - S^2 Lambda|)."""
    exact = metric(*draws.whitening(patches, exact=True))
    vec, gain = draws.whitening(patches)
    fast = metric(vec, gain)
    x = patches.to(torch.float64)
    x = x - x.mean(dim=0)
    cov = x.t() @ x / x.shape[0]
    lam = torch.linalg.eigvalsh(cov).flip(0)
    want = lam[:len(gain)] / (lam[:len(gain)] + draws.EIG_FLOOR * lam[0])
    whitened = (gain[:, None] * vec.t()) @ cov @ (vec * gain)
    sample = x[torch.randperm(x.shape[0], generator=generator)[:1000]]
    seen_by_data = (sample @ (fast - exact) @ sample.t()).norm() / (sample @ exact @ sample.t()).norm()
    taken = draws._whitening_from_float32(patches) is not None
    return (taken, float((fast - exact).norm() / exact.norm()), float(seen_by_data),
            float((whitened - torch.diag(want)).abs().max()))


def timed(fn):
    def seconds():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return seconds


def paired(seconds_a, seconds_b, rounds):
    """Medians of A's and B's seconds and of the per-round ratio B / A, A and B alternated."""
    a, b = [], []
    for _ in range(rounds):
        a.append(seconds_a())
        b.append(seconds_b())
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in zip(a, b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--method", default="kmeans")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}; torch threads {torch.get_num_threads()}")
    data = load_batches()
    _, patches = within_step(data, args.method, True)
    generator = torch.Generator().manual_seed(0)
    print("| patches | float64 s | float32 path s | ratio | float32 path | dM/M | data | whitening residual |")
    print("|---|---|---|---|---|---|---|---|")
    total64 = total32 = 0.0
    for p in patches:
        t64, t32, ratio = paired(timed(lambda: draws.whitening(p, exact=True)), timed(lambda: draws.whitening(p)),
                                 args.rounds)
        total64, total32 = total64 + t64, total32 + t32
        taken, dm, data_dm, residual = accuracy(p, generator)
        print(f"| {p.shape[0]}x{p.shape[1]} | {t64:.3f} | {t32:.3f} | {ratio:.2f} | {'yes' if taken else 'no'} "
              f"| {dm:.1e} | {data_dm:.1e} | {residual:.1e} |")
    print(f"whitening, all layers: float64 {total64:.2f} s, float32 path {total32:.2f} s")
    old, new, ratio = paired(lambda: within_step(data, args.method, False)[0],
                             lambda: within_step(data, args.method, True)[0], args.rounds)
    print(f"{args.method} within step: float64 {old:.2f} s, float32 path {new:.2f} s, ratio {ratio:.2f}")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
