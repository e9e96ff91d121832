"""The change-rate spread of an initialization on images it did not see (issue #5's quality figure).

`caffeinit run` initializes the net on the images of models/images/list.txt with line number % 3 != 1 (18 of 28,
cycled to --num-images), then `caffeinit stats --draws D` measures every layer's change rate on the other 10 and,
for comparison, on the first 10 init images; the spread is max/min over the layers.

    python benchmarks/held_out.py                      # CaffeNet, the defaults
    python benchmarks/held_out.py --net googlenet -- --between-iters 3
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from paths import CORPUS, ROOT

NETS = {"caffenet": os.path.join(ROOT, "models", "caffenet", "deploy.prototxt"),
        "googlenet": os.path.join(CORPUS, "bvlc__models_bvlc_googlenet_deploy.prototxt")}
IMAGE_LIST = os.path.join(ROOT, "models", "images", "list.txt")


def caffeinit(*args):
    out = subprocess.run([sys.executable, "-m", "caffeinit", *map(str, args)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        sys.exit(f"caffeinit {args[0]} failed: {out.stderr.strip()}")


def write_list(path, lines):
    folder = os.path.dirname(IMAGE_LIST)
    with open(path, "w") as f:
        f.writelines(os.path.join(folder, line) for line in lines)


def spread(net, weights, image_list, draws, tmp):
    stats = os.path.join(tmp, "stats.json")
    caffeinit("stats", net, "--weights", weights, "--images", image_list, "--num-images", 10, "--batch-size", 10,
              "--draws", draws, "--json", stats, "--quiet")
    return json.load(open(stats))["spread"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="caffenet", help="caffenet, googlenet or a prototxt")
    parser.add_argument("--draws", type=int, default=4, help="gradient draws per image batch for the measurement")
    parser.add_argument("run_args", nargs="*", help="more `caffeinit run` options (after --)")
    args = parser.parse_args()
    net = NETS.get(args.net, args.net)
    lines = open(IMAGE_LIST).readlines()
    with tempfile.TemporaryDirectory() as tmp:
        init_list, held_list = os.path.join(tmp, "init.txt"), os.path.join(tmp, "held.txt")
        write_list(init_list, [line for n, line in enumerate(lines, 1) if n % 3 != 1])
        write_list(held_list, [line for n, line in enumerate(lines, 1) if n % 3 == 1])
        weights, report = os.path.join(tmp, "init.caffemodel"), os.path.join(tmp, "report.json")
        t0 = time.perf_counter()
        caffeinit("run", net, "--images", init_list, "-o", weights, "--report", report, "--quiet", *args.run_args)
        seconds = time.perf_counter() - t0
        r = json.load(open(report))
        held = spread(net, weights, held_list, args.draws, tmp)
        seen = spread(net, weights, init_list, args.draws, tmp)
    noise = f"+-{100 * r['rate_noise']:.0f}%" if r.get("rate_noise") is not None else "-"
    print("| net | run options | whole run | between-layer step | updates | reported | rates measured to "
          "| held-out spread | init-image spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.net} | {' '.join(args.run_args) or 'defaults'} | {seconds:.1f} s | "
          f"{r['seconds'].get('between', 0):.1f} s | {r['between_iterations']} "
          f"({'converged' if r['between_converged'] else 'not converged'}) | {r['spread_after']:.2f}x | {noise} | "
          f"**{held:.2f}x** | {seen:.2f}x |")


if __name__ == "__main__":
    main()
