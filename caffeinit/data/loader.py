"""Batching: decode and transform in a thread pool with prefetch, deterministic for a given seed."""
from __future__ import annotations

import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import cv2
import numpy as np

from caffeinit.data.sources import DummySource, SkipItem, Source, sample_rng
from caffeinit.errors import CaffeinitError


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def batches(source: Source, batch_size: int, num_images: int, seed: int = 0, num_threads: int | None = None,
            progress: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """``num_images`` items of ``source`` as dicts {top: array} of up to ``batch_size`` items (the last may be
    smaller); labels are float32 of shape (batch,), as Caffe's label blobs.

    Items are decoded by ``num_threads`` threads (OpenCV releases the GIL; its own threading is set to 1 meanwhile
    to avoid oversubscription) a few batches ahead. Item i gets its random crop/mirror from (seed, i) alone, so
    the result does not depend on the thread count. A skipped bad image (``source.skip_bad``) is counted in
    ``source.skipped`` and reported with one warning at the end.
    """
    if batch_size <= 0 or num_images <= 0:
        raise CaffeinitError(f"batch size and image count must be positive, got {batch_size} and {num_images}")
    if isinstance(source, DummySource):
        yield from _dummy_batches(source, batch_size, num_images, seed)
        return
    num_threads = num_threads or default_threads()
    prefetch = max(2 * batch_size, 4 * num_threads)
    tasks = source.tasks(seed)
    source.skipped = 0
    skipped: list[str] = []
    old_cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="caffeinit-data")
    bar = _progress_bar(num_images, progress, source)
    try:
        pending: deque = deque()
        submitted = 0

        def top_up():
            nonlocal submitted
            while len(pending) < prefetch:
                task = next(tasks)
                pending.append(pool.submit(source.decode, task, sample_rng(seed, submitted)))
                submitted += 1

        items: list[tuple] = []
        produced, failures_in_a_row = 0, 0
        while produced < num_images:
            top_up()
            try:
                item = pending.popleft().result()
            except SkipItem as e:
                skipped.append(str(e))
                failures_in_a_row += 1
                if failures_in_a_row >= len(source):
                    raise CaffeinitError(f"no item of {source.describe()} could be read (first: {skipped[0]})") \
                        from None
                continue
            failures_in_a_row = 0
            items.append(item)
            produced += 1
            if bar is not None:
                bar.update(1)
            if len(items) == batch_size or produced == num_images:
                yield {top: np.stack([it[k] for it in items]) for k, top in enumerate(source.tops)}
                items = []
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        cv2.setNumThreads(old_cv_threads)
        if bar is not None:
            bar.close()
        source.skipped = len(skipped)
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable images (first: {skipped[0]})", stacklevel=2)
        truncated = getattr(source, "truncated", None)
        if truncated:
            path, where = source.first_truncated()
            many = len(truncated) > 1
            warnings.warn(f"{len(truncated)} image{'s are truncated JPEGs' if many else ' is a truncated JPEG'}, used "
                          f"as decoded in part (the rest grey), as Caffe does ({'first: ' if many else ''}{where}: "
                          f"'{path}')", stacklevel=2)


def _dummy_batches(source: DummySource, batch_size: int, num_images: int, seed: int):
    for b, start in enumerate(range(0, num_images, batch_size)):
        size = min(batch_size, num_images - start)
        yield source.batch(size, np.random.default_rng([int(seed) & 0xFFFFFFFF, 5, b]))


def _progress_bar(total: int, progress: bool, source: Source):
    if not progress:
        return None
    from tqdm import tqdm
    # delay: only loads that take a while show a bar
    return tqdm(total=total, unit="img", desc="loading " + source.describe(), delay=1.0, leave=False)
