"""Images/s for decode + transform of 256x256 JPEGs into 227x227 crops (random crop, mirror, mean), by thread count.

Uses the shipped sample images (models/images/, 256x256 JPEGs) cycled to ``--images`` items, fed through
caffeinit.data.batches exactly as a run does. Run: python benchmarks/data.py [--images 1200] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from caffeinit.data import ImageSource, Preprocess, batches  # noqa: E402
from caffeinit.proto import caffe_pb2  # noqa: E402

LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "images", "list.txt")


def images_per_second(num_images: int, threads: int, batch_size: int = 50, repeats: int = 3) -> float:
    pre = Preprocess(phase=caffe_pb2.TRAIN, crop_size=227, mirror=True, mean_values=(104.0, 117.0, 123.0))
    source = ImageSource(LIST, pre)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(len(b["data"]) for b in batches(source, batch_size, num_images, seed=0, num_threads=threads,
                                                    progress=False))
        best = max(best, count / (time.perf_counter() - start))
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.images} images, best of 3")
    print("| threads | images/s |")
    print("|---|---|")
    for threads in args.threads:
        print(f"| {threads} | {images_per_second(args.images, threads):.0f} |")


if __name__ == "__main__":
    main()
