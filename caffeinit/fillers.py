"""Caffe's weight fillers (include/caffe/filler.hpp): the same distributions, drawn from a numpy Generator (large
blobs: from torch generators seeded by it).

The values follow Caffe's distributions, not its random stream. Fan-in and fan-out are Caffe's:
``fan_in = count / shape[0]`` and ``fan_out = count / shape[1]`` (``count`` for a 1-axis blob).

Gaussian and uniform blobs of more than ``CHUNK`` values (fc6 of CaffeNet: 37.7M) are drawn in chunks of ``CHUNK``
values, each by torch's CPU generator (2.5x numpy's float32 Gaussian rate) seeded from a SeedSequence whose entropy
comes from ``rng``, on a few threads (torch releases the GIL while it fills a tensor). The chunking depends on the
count alone, so the values are a function of ``rng``'s state whatever the number of threads.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2

_NORM = caffe_pb2.FillerParameter

CHUNK = 1 << 20  # values per independently drawn chunk (4 MB of float32, cache-sized for the in-place scaling)
MAX_THREADS = 8  # so that a many-core machine does not start dozens of threads for one blob


def fill(filler: caffe_pb2.FillerParameter, shape: Sequence[int], rng: np.random.Generator,
         where: str = "filler", threads: int | None = None) -> np.ndarray:
    """A float32 array of ``shape`` filled as Caffe's ``filler.type`` would; ``where`` names the blob in errors.
    ``threads``: how many threads draw large blobs (default: the CPUs this process may use, at most
    ``MAX_THREADS``); the values do not depend on it."""
    shape = tuple(int(d) for d in shape)
    count = math.prod(shape)
    kind = filler.type
    if count == 0:
        raise CaffeinitError(f"{where}: cannot fill an empty blob of shape {list(shape)}")
    if filler.sparse < -1:
        raise CaffeinitError(f"{where}: filler sparse must be >= -1, got {filler.sparse}")
    if filler.sparse != -1 and kind != "gaussian":
        raise CaffeinitError(f"{where}: sparse is only supported by the gaussian filler, not '{kind}'")

    if kind in ("positive_unitball", "xavier", "msra") and not shape:
        # Caffe reads blob->shape(0), which CHECK-fails on a 0-axis blob (PReLU channel_shared, a scalar Scale)
        raise CaffeinitError(f"{where}: the {kind} filler needs a blob with at least one axis, got a 0-axis blob")

    if kind == "constant":
        values = np.full(count, filler.value, np.float32)
    elif kind == "uniform":
        if not filler.min <= filler.max:  # caffe_rng_uniform: CHECK_LE(a, b)
            raise CaffeinitError(f"{where}: uniform filler min {filler.min:g} exceeds max {filler.max:g}")
        values = _uniform(rng, filler.min, filler.max, count, threads)
    elif kind == "gaussian":
        if not filler.std > 0:  # caffe_rng_gaussian: CHECK_GT(sigma, 0)
            raise CaffeinitError(f"{where}: gaussian filler std must be > 0, got {filler.std:g}")
        values = _normal(rng, filler.mean, filler.std, count, threads)
        if filler.sparse >= 0:
            if not shape:
                raise CaffeinitError(f"{where}: sparse gaussian filling needs a blob with at least one axis")
            probability = filler.sparse / shape[0]
            if probability > 1:
                raise CaffeinitError(f"{where}: sparse {filler.sparse} exceeds the {shape[0]} outputs of the blob")
            values *= _uniform(rng, 0.0, 1.0, count, threads) < probability  # Caffe's Bernoulli mask
    elif kind == "positive_unitball":
        rows = shape[0]
        values = rng.uniform(0.0, 1.0, (rows, count // rows))
        values = (values / values.sum(axis=1, keepdims=True)).ravel()
    elif kind in ("xavier", "msra"):
        n = _fan(filler, shape, count)
        if kind == "xavier":
            scale = math.sqrt(3.0 / n)
            values = _uniform(rng, -scale, scale, count, threads)
        else:
            values = _normal(rng, 0.0, math.sqrt(2.0 / n), count, threads)
    elif kind == "bilinear":
        if len(shape) != 4:
            raise CaffeinitError(f"{where}: the bilinear filler needs a 4-axis blob, got shape {list(shape)}")
        if shape[2] != shape[3]:
            raise CaffeinitError(f"{where}: the bilinear filler needs a square kernel, got shape {list(shape)}")
        values = np.broadcast_to(bilinear_kernel(shape[3]), shape).ravel()
    else:
        raise CaffeinitError(f"{where}: unknown filler type '{kind}' (known: constant, uniform, gaussian, "
                             "positive_unitball, xavier, msra, bilinear)")
    return np.asarray(values, np.float32).reshape(shape)


def _normal(rng: np.random.Generator, mean: float, std: float, count: int, threads: int | None) -> np.ndarray:
    def draw(generator: np.random.Generator, out: np.ndarray) -> None:
        # float32 draws: four times faster than float64 ones on fc-sized blobs
        generator.standard_normal(dtype=np.float32, out=out)
        out *= np.float32(std)
        out += np.float32(mean)

    return _draw(rng, count, draw, lambda piece, generator: piece.normal_(mean, std, generator=generator), threads)


def _uniform(rng: np.random.Generator, low: float, high: float, count: int, threads: int | None) -> np.ndarray:
    def draw(generator: np.random.Generator, out: np.ndarray) -> None:
        generator.random(dtype=np.float32, out=out)
        out *= np.float32(high - low)
        out += np.float32(low)

    return _draw(rng, count, draw, lambda piece, generator: piece.uniform_(low, high, generator=generator), threads)


def _draw(rng: np.random.Generator, count: int, draw: Callable[[np.random.Generator, np.ndarray], None],
          fill_piece: Callable, threads: int | None) -> np.ndarray:
    """``count`` float32 values: ``draw(rng, out)`` up to ``CHUNK`` values, else ``fill_in_chunks`` with
    ``fill_piece``, the chunks' seeds from the children of a SeedSequence drawn from ``rng``."""
    values = np.empty(count, np.float32)
    if count <= CHUNK:
        draw(rng, values)
        return values
    import torch
    root = np.random.SeedSequence([int(word) for word in rng.integers(0, 2**32, size=8, dtype=np.uint64)])
    seeds = [int(child.generate_state(1, np.uint64)[0]) >> 1 for child in root.spawn(chunk_count(count))]
    fill_in_chunks(torch.from_numpy(values), seeds, fill_piece, threads)
    return values


def chunk_count(count: int) -> int:
    """How many ``CHUNK``-sized pieces ``count`` values make."""
    return -(-count // CHUNK)


def fill_in_chunks(flat, seeds: Sequence[int], fill_piece: Callable, threads: int | None = None) -> None:
    """``fill_piece(piece, generator)`` for the k-th ``CHUNK``-sized piece of the 1-D CPU tensor ``flat``, with a torch
    generator seeded by ``seeds[k]``, on up to ``threads`` threads (default: the usable CPUs, at most
    ``MAX_THREADS``; torch releases the GIL while it fills). The values do not depend on the thread count."""
    import torch
    pieces = [flat[start:start + CHUNK] for start in range(0, flat.numel(), CHUNK)]

    def work(k: int) -> None:
        fill_piece(pieces[k], torch.Generator().manual_seed(seeds[k]))
    workers = min(threads or min(_usable_cpus(), MAX_THREADS), len(pieces))
    if workers <= 1:
        for k in range(len(pieces)):
            work(k)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(len(pieces))))


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _fan(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...], count: int) -> float:
    """The n of xavier/msra: fan_in, fan_out or their average, as chosen by ``variance_norm``."""
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    if filler.variance_norm == _NORM.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if filler.variance_norm == _NORM.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def bilinear_kernel(size: int) -> np.ndarray:
    """The size x size upsampling kernel of Caffe's bilinear filler, bit for bit: Caffe computes
    ``(1 - |x/f - c|) * (1 - |y/f - c|)`` in float (``c`` rounded once from double), which differs from a
    double computation rounded at the end by an ulp for many sizes (5, 6, 9, 10, ...)."""
    f = math.ceil(size / 2.0)
    c = np.float32((size - 1) / (2.0 * f))
    ramp = np.float32(1) - np.abs(np.arange(size, dtype=np.float32) / np.float32(f) - c)
    return np.outer(ramp, ramp)  # float32 * float32 products, as Caffe's


def scaled_random_blobs(net, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Random blobs for every layer of a built ``net`` that keep activations O(1) through deep nets (for tests,
    benchmarks and comparisons with other runtimes): N(0, 1/fan_in) filters, N(0, 0.1) biases and other blobs,
    Scale near 1, BatchNorm statistics with variances around 1 and scale factor 1."""
    blobs = {}
    for node in net.layers:
        shapes = node.layer.blob_shapes
        if not shapes:
            continue
        if node.type == "BatchNorm":
            c = shapes[0]
            blobs[node.name] = [rng.normal(0, 0.1, c).astype(np.float32),
                                rng.uniform(0.5, 1.5, c).astype(np.float32), np.array([1.0], np.float32)]
            continue
        arrays = []
        for k, s in enumerate(shapes):
            if k == 0 and node.type == "Scale":
                arrays.append((1 + rng.normal(0, 0.1, s)).astype(np.float32))
            elif k == 0 and len(s) >= 2 and node.type not in ("Bias", "PReLU"):
                fan_in = int(s[0] * np.prod(s[2:])) if node.type == "Deconvolution" else int(np.prod(s[1:]))
                arrays.append(rng.normal(0, 1 / np.sqrt(fan_in), s).astype(np.float32))
            else:
                arrays.append(rng.normal(0, 0.1, s).astype(np.float32))
        blobs[node.name] = arrays
    return blobs
