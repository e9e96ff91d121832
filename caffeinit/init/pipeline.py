"""``initialize``: the two steps in order over a model and its batches, and the report (see the package docstring)."""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict
from typing import Iterable, Mapping

import numpy as np
import torch

from caffeinit.allocator import release_free_memory, return_freed_memory
from caffeinit.api import CaffeModel, _real_array
from caffeinit.device import available_memory, current_precision, describe_device
from caffeinit.errors import CaffeinitError
from caffeinit.init.between import run_between
from caffeinit.init.rates import measure_rates, pass_bytes_per_image
from caffeinit.init.scale_model import build_scale_model
from caffeinit.init.config import InitConfig
from caffeinit.init.report import InitReport, LayerRecord
from caffeinit.init.roles import affine_of, check_layer_names, frozen_at_zero, is_frozen, weight_lr_mult
from caffeinit.init.stats import ChannelStats
from caffeinit.init.within import memory_estimate, run_within, values_per_image

BEFORE_IMAGES = 4
TIGHT_MEMORY = 0.8  # stored values above this fraction of the memory available get a warning
DEFAULT_FILL = 0.7  # a default image count is cut to fill at most this much of it: well clear of the warning
# A gradient pass's measured peak over what it keeps for backward plus a gradient in and out of its largest layer:
# FCN-8s (500 x 500, bilinear upsampling, CPU) keeps 711 MiB per image and its largest value is 119 MiB, and a pass
# over 16 images took 21.9 GiB (backward buffers, allocator fragmentation)
PASS_OVERHEAD = 1.45


def initialize(model, batches: Iterable[Mapping[str, np.ndarray | torch.Tensor]], config: InitConfig | None = None,
               *, progress: bool = True) -> InitReport:
    """Initialize ``model`` (a ``caffeinit.api.CaffeModel``) in place from ``batches`` and return the report.

    ``batches`` yields feed dicts {data-layer top: array (N, ...)} for every data-layer top of the net (images and,
    for train_val nets, labels); every batch is used. ``progress`` shows tqdm bars over layers and iterations.
    """
    if not isinstance(model, CaffeModel):
        raise CaffeinitError(f"initialize takes a model from caffeinit.load(...), not {type(model).__name__}"
                             + (f" ({model!r})" if isinstance(model, (str, os.PathLike)) else ""))
    if config is None:
        config = InitConfig()
    elif not isinstance(config, InitConfig):
        raise CaffeinitError(f"config must be an InitConfig (e.g. InitConfig(method='kmeans')), not "
                             f"{type(config).__name__}")
    if isinstance(batches, Mapping):
        raise CaffeinitError("batches must be an iterable of feed dicts {input blob: array}, not one feed dict: wrap "
                             "it in a list ([batch])")
    if not isinstance(batches, Iterable) or isinstance(batches, (str, bytes)):
        raise CaffeinitError(f"batches must be an iterable of feed dicts {{input blob: array}}, not "
                             f"{type(batches).__name__}")
    config.check()
    module, net = model.module, model.net
    if not any(len(blobs) for blobs in module.layer_blobs):
        raise CaffeinitError(f"net '{net.name}' has no layer with parameters: nothing to initialize")
    check_layer_names(net, module.layer_blobs)
    device = module.device
    started = time.perf_counter()
    budget = available_memory(device) if config.within else None  # before the images take their share

    def check(num_images: int, batch_size: int, warn: bool = True) -> bool:
        return check_memory(net, device, num_images, batch_size, warn=warn, available=budget)

    feeds = _collect_feeds(net, batches, device, check if config.within else None)
    sizes = [next(iter(f.values())).shape[0] for f in feeds]
    for feed in dict(zip(sizes, feeds)).values():
        module.check_batch(feed)  # every batch size the steps will run, before any work
    num_images, batch_size = sum(sizes), max(sizes)
    short = config.within and check(num_images, batch_size)
    chunk = None
    if config.between or config.measure_before:  # without the between step only the before pass's few images
        chunk = gradient_chunk(module, feeds, config.between_draws, None if config.between else BEFORE_IMAGES,
                               pinned=config.pass_images)
    if (short or chunk is not None) and device.type == "cpu":
        return_freed_memory()  # less fragmentation, for some speed on large tensors
    # the images that came, not the count the config asked the caller for (the API's batches need not match it)
    used = dict(asdict(config), num_images=num_images, batch_size=batch_size)
    report = InitReport(net=net.name, method=config.method, num_images=num_images, config=used,
                        environment=_environment(device))
    records = _records(net, module)
    report.layers = list(records.values())
    plan = _draw_plan(net, module, config.reinit, records)
    _warn_zero_frozen(net, module, records)
    report.seconds["load"] = time.perf_counter() - started

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # only layers that draw from torch's global generator (TRAIN Dropout) use it
        if config.measure_before:
            t0 = time.perf_counter()
            from tqdm.auto import tqdm
            # one pass, but on large nets a long one (FCN-8s: 25 s): say what runs
            with tqdm(total=1, desc="before-init rates", unit="pass",
                      disable=not progress, leave=False) as bar:
                report.before_images = _measure_before(module, feeds[0], config, records, chunk)
                bar.update(1)
            report.seconds["before"] = time.perf_counter() - t0
        if config.within:
            t0 = time.perf_counter()
            _refill(net, module, config, plan)
            run_within(module, feeds, plan, config, records, progress)
            release_free_memory()  # the within step's stored outputs are gone: the between step starts clean
            report.seconds["within"] = time.perf_counter() - t0
        if config.between:
            t0 = time.perf_counter()
            result = run_between(module, feeds[:config.between_batches], config, records, progress, chunk)
            report.gradient_chunk = chunk
            report.between_images = sum(sizes[:config.between_batches])
            report.between_iterations, report.between_converged = result.iterations, result.converged
            report.homogeneous = result.homogeneous
            report.rate_noise = result.rate_noise
            report.between_note = result.note
            start = result.rates_before * np.array(result.lr_mults)
            start = start[np.isfinite(start) & (start > 0)]
            report.spread_between_start = float(start.max() / start.min()) if len(start) else None
            if not result.homogeneous and result.iterations:  # the step's model only predicted them
                report.after_images = _measure_after(module, feeds[0], records, result.approximate_layers)
            report.seconds["between"] = time.perf_counter() - t0
    for record in report.layers:
        if record.lr_mult == 0 and record.method == "kept" and record.type != "BatchNorm":
            record.method = "frozen"
    return report


def check_memory(net, device, num_images: int, batch_size: int, warn: bool = True,
                 available: float | None = None) -> bool:
    """Refuse, before any work, a within-layer step expected to need more memory than is available (a segmentation
    net's 500 x 500 inputs: FCN-8s keeps ~125 MB per image after conv1_1, and needs ~176 MB); warn (``warn``) where
    it is expected to fill most of it. Returns whether it is expected to take more than half of it. ``available``:
    the memory measured before the images were loaded (default: now)."""
    estimate = memory_estimate(net, batch_size)
    available = available_memory(device) if available is None else available
    if available is None or estimate.where is None:
        return False
    need = estimate.total(num_images)
    kind = _memory_kind(device)
    what = (f"the within-layer step keeps every image's values ({_size(estimate.stored)} per image after layer "
            f"'{estimate.where.name}' ({estimate.where.type})): for {num_images} images it needs about {_size(need)}")
    if warn and TIGHT_MEMORY * available < need <= available:
        warnings.warn(f"{what}, most of the {_size(available)} of {kind}: it may run out (--num-images lowers it)")
    if need <= available:
        return need > available / 2
    raise CaffeinitError(f"{what}, more than the {_size(available)} of {kind} (about "
                         f"{estimate.images_within(available)} images fit): use fewer images (--num-images) or smaller "
                         "inputs")


def _environment(device) -> dict[str, str]:
    from caffeinit import __version__
    return {"caffeinit": __version__, "torch": torch.__version__, "device": describe_device(device),
            "precision": current_precision()}


def gradient_chunk(module, feeds, draws: int, images: int | None = None, pinned: int | None = None) -> int | None:
    """At most how many images one gradient pass over ``feeds`` (at most ``images`` of each) may hold, where a
    whole batch's would not fit in the memory available; None: whole batches. Refuses where not even one image
    fits. ``pinned`` (``InitConfig.pass_images``): at most that many whatever the memory, refused where that many
    would not fit."""
    batch = max(next(iter(f.values())).shape[0] for f in feeds)
    batch = min(batch, images or batch)
    wanted = None if pinned is None or pinned >= batch else pinned
    if pinned is not None:
        batch = min(batch, pinned)
    available = available_memory(module.device)
    if available is None:
        return wanted
    gradients = draws * sum(4.0 * p.numel() for p in module.parameters())  # at most one per draw
    budget = TIGHT_MEMORY * available - gradients
    values, largest = values_per_image(module.net)
    if PASS_OVERHEAD * (values + 2 * largest) * batch <= budget:  # even keeping every value of the net fits
        return wanted
    model = build_scale_model(module)
    kept = pass_bytes_per_image(module, model, feeds[0], model.groups) if model.groups else None
    if kept is None:
        return wanted
    # and the backward's own: a gradient in and out of the largest layer
    per_image = PASS_OVERHEAD * (kept + 2 * largest)
    if per_image * batch <= budget:
        return wanted
    fits = int(budget // per_image) if budget > 0 else 0
    kind = _memory_kind(module.device)
    if pinned is not None and fits >= 1:
        raise CaffeinitError(f"pass-images {pinned}: a gradient pass of {batch} images would keep about "
                             f"{_size(per_image * batch)}, more than the {_size(available)} of {kind} allows: at "
                             f"most {fits} fit")
    # as few equal chunks as fit: the size changes only when the memory available crosses a whole step
    chunk = math.ceil(batch / math.ceil(batch / fits)) if fits else 0
    if chunk < 1:
        raise CaffeinitError(f"the between-layer step's gradient passes keep {_size(per_image)} per image for their "
                             f"backward, besides {_size(gradients)} of gradients: more than the {_size(available)} of "
                             f"{kind} allows (--no-between skips that step)")
    warnings.warn(f"the between-layer step's gradient passes would keep about {_size(per_image * batch)} for a batch "
                  f"of {batch} images, more than the {_size(available)} of {kind} allows: they run {chunk} images at "
                  "a time (the same change rates up to float rounding)")
    return chunk


def _memory_kind(device) -> str:
    return "free GPU memory" if device.type == "cuda" else "memory available"


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2 ** 30:.1f} GiB" if num_bytes >= 2 ** 30 else f"{num_bytes / 2 ** 20:.1f} MiB"


def images_that_fit(net, device, batch_size: int, wanted: int) -> int:
    """``wanted``, or fewer where the within-layer step for ``wanted`` images would not fit in the memory available
    now (as many as fill at most DEFAULT_FILL of it, at least one batch): for a default image count, not a user's."""
    available = available_memory(device)
    estimate = memory_estimate(net, batch_size)
    if available is None or estimate.where is None or estimate.total(wanted) <= DEFAULT_FILL * available:
        return wanted
    return max(min(batch_size, wanted), min(wanted, estimate.images_within(DEFAULT_FILL * available)))


def _collect_feeds(net, batches, device, check=None) -> list[dict[str, torch.Tensor]]:
    """The batches as {value name: float32 tensor on the device}, checked against the net's data-layer tops;
    ``check(images so far, batch size, warn=False)`` after each batch refuses as soon as they would not fit."""
    value_of_feed = {blob: v for node in net.layers if node.layer.is_data
                     for blob, v in zip(node.tops, node.top_values)}
    feeds, count, largest = [], 0, 0
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping):
            raise CaffeinitError(f"init batch {i} must be a feed dict {{input blob: array}}, not "
                                 f"{type(batch).__name__}")
        missing = [b for b in net.feeds if b not in batch]
        if missing:
            raise CaffeinitError(f"init batch {i}: no values for input '{missing[0]}' (the net's inputs: "
                                 f"{', '.join(net.feeds)})")
        feed, size = {}, None
        for blob, array in batch.items():
            if blob not in net.feeds:
                raise CaffeinitError(f"init batch {i}: unknown input '{blob}' (the net's inputs: "
                                     f"{', '.join(net.feeds)})")
            if torch.is_tensor(array) and array.dtype == torch.float32:
                tensor = array.detach().to(device)
            else:  # complex, strings and objects refused, as by CaffeModel.forward
                values = _real_array(array, f"init batch {i}: input '{blob}'")
                with warnings.catch_warnings():  # a read-only array (np.load's mmap) is only read
                    warnings.simplefilter("ignore", UserWarning)
                    tensor = torch.from_numpy(values).to(device)
            want = net.feeds[blob]
            if tensor.dim() != len(want) or tuple(tensor.shape[1:]) != tuple(want[1:]):
                raise CaffeinitError(f"init batch {i}: input '{blob}' has shape {tuple(tensor.shape)}, the net "
                                     f"expects {tuple(want)} (only the batch size may differ)")
            if size is not None and tensor.shape[0] != size:
                raise CaffeinitError(f"init batch {i}: inputs have different batch sizes")
            size = tensor.shape[0]
            feed[value_of_feed[blob]] = tensor
        if size:
            feeds.append(feed)
            count, largest = count + size, max(largest, size)
            if check is not None:
                check(count, largest, warn=False)
    if not feeds:
        raise CaffeinitError("no images to initialize from")
    return feeds


def _records(net, module) -> dict[str, LayerRecord]:
    records = {}
    for node in net.layers:
        if affine_of(node) is not None or node.type in ("BatchNorm", "PReLU"):
            lr = 0.0 if node.type == "BatchNorm" else weight_lr_mult(node, 0, net)
            records[node.name] = LayerRecord(node.name, node.type, lr_mult=lr)
    return records


def _draw_plan(net, module, reinit: str, records: dict[str, LayerRecord]) -> dict[int, str]:
    """node index -> "affine" (draw and normalize) or "bn" (statistics from the data)."""
    missing = set(module.missing)
    start = _reinit_start(net, reinit)
    plan: dict[int, str] = {}
    owner: dict[int, str] = {}
    for node in net.layers:  # a weight that a kept layer holds is kept for every layer sharing it
        if node.name in records and len(module.layer_blobs[node.index]) \
                and not (node.index >= start or node.name in missing):
            owner.setdefault(id(module.layer_blobs[node.index][0]), node.name)
    for node in net.layers:
        if node.name not in records or not (node.index >= start or node.name in missing):
            continue
        record = records[node.name]
        if node.type == "BatchNorm":
            plan[node.index] = "bn"
            record.method = "batchnorm"
        elif node.type == "PReLU":
            record.method = "filler"
        elif is_frozen(node, net):
            record.method = "frozen"
        else:
            weight = module.layer_blobs[node.index][0]
            if id(weight) in owner:
                record.method = f"shared ({owner[id(weight)]})"
                continue
            owner[id(weight)] = node.name
            plan[node.index] = "affine"
    return plan


def _refill(net, module, config: InitConfig, plan: dict[int, str]) -> None:
    """Layers that ``--reinit`` covers but the init does not draw (PReLU, Bias, Embed, recurrent layers) start from
    their fillers, as in a net without weights; frozen ones (weight lr_mult 0) and weights a kept layer holds keep
    what was loaded."""
    missing = set(module.missing)
    start = _reinit_start(net, config.reinit)
    held = {id(blob) for node in net.layers if node.index < start and node.name not in missing
            for blob in module.layer_blobs[node.index]}
    for node in net.layers:
        blobs = module.layer_blobs[node.index]
        if node.index < start or node.name in missing or not len(blobs) or node.index in plan \
                or affine_of(node) is not None or node.type == "BatchNorm" or is_frozen(node, net) \
                or any(id(blob) in held for blob in blobs):
            continue
        rng = np.random.default_rng([config.seed, node.index])
        with torch.no_grad():
            for blob, value in zip(blobs, node.layer.fill_blobs(rng)):
                blob.copy_(torch.from_numpy(np.asarray(value, np.float32).reshape(tuple(blob.shape))))


def _reinit_start(net, reinit: str) -> int:
    """The index of the first layer ``reinit`` draws anew (past the last layer for ``missing``)."""
    if reinit == "missing":
        return len(net.layers)
    if reinit == "all":
        return 0
    return net.layer(reinit).index  # raises a CaffeinitError naming the unknown layer


def _warn_zero_frozen(net, module, records: dict[str, LayerRecord]) -> None:
    """A frozen layer with all-zero weights (a deploy net's upsampling Deconvolution without its caffemodel) outputs
    a constant: nothing before it can be measured through it."""
    for node in net.layers:
        if frozen_at_zero(node, module.layer_blobs[node.index], net):
            note = ("frozen (lr_mult 0) with all-zero weights: its output does not depend on its input; give it a "
                    "filler (Caffe's 'bilinear' for upsampling) or load its weights with --weights")
            records[node.name].note = note
            warnings.warn(f"layer '{node.name}': {note}")


def _measure_after(module, feed, records, approximate: list[str]) -> int | None:
    """The 'after' output statistics of the layers after an ``approximate`` one (a Sigmoid, an LRN: the between
    step's rescaling changes what follows them other than its model predicts), measured with the final weights on
    ``feed`` (the between-layer step's first batch); the others' predictions are exact. Returns the number of
    images, None where no layer needed it."""
    after: set[str] = set()  # values computed from an approximate layer's output
    nodes = []
    for node in module.net.layers:
        if node.name in approximate or any(v in after for v in node.bottom_values):
            after.update(node.top_values)
            record = records.get(node.name)
            if affine_of(node) is not None and record is not None and record.mean_after is not None \
                    and node.name not in approximate:
                nodes.append(node)
    if not nodes:
        return None
    stats = {node.index: ChannelStats() for node in nodes}

    def tap(node, tops):
        if node.index in stats:
            for t in tops:
                stats[node.index].update(t, affine_of(node).channel_axis)

    with torch.no_grad():
        module(feed, stop=max(node.index for node in nodes) + 1, keep=(), tap=tap)
    for node in nodes:
        records[node.name].after_stats(stats[node.index].mean, stats[node.index].std)
    return int(next(iter(feed.values())).shape[0])


def _measure_before(module, feed, config, records, chunk: int | None = None) -> int:
    """Output statistics and change rates under the starting weights, for the report only: on the first
    ``BEFORE_IMAGES`` images of the first batch, so that it costs little. Returns how many images it used."""
    model = build_scale_model(module)
    nodes = [node for node in model.active if affine_of(node) is not None]
    params, seen = [], set()
    for node in nodes:
        weight = module.layer_blobs[node.index][0]
        if id(weight) not in seen:
            seen.add(id(weight))
            params.append(weight)

    seen_stats: dict[str, ChannelStats] = {}

    def tap(node, tops):  # called once per chunk where the gradient pass is split: the statistics add up
        record = records.get(node.name)
        affine = affine_of(node)
        if record is not None and affine is not None:
            stats = seen_stats.setdefault(node.name, ChannelStats())
            for t in tops:
                stats.update(t, affine.channel_axis)
            record.mean_before, record.std_before = float(stats.mean.mean()), float(stats.std.mean())

    # all-zero starting weights (a deploy net without fillers): no rate to measure, the statistics need a forward
    forward_only = not any(bool(p.detach().any()) for p in params)

    def measure(batch) -> np.ndarray | None:
        if forward_only:
            with torch.no_grad():
                module(batch, keep=(), tap=tap)
            return None
        return measure_rates(module, model, [batch], 1, config.seed, params=params, tap=tap, chunk=chunk)

    used = next(iter(feed.values())).shape[0]
    try:
        rates = measure({v: t[:BEFORE_IMAGES] for v, t in feed.items()})
        used = min(used, BEFORE_IMAGES)
    except CaffeinitError:  # a layer that needs the declared batch size (e.g. a Reshape with a fixed first dim)
        rates = measure(feed)
    if rates is None:
        return used
    rate_of = {id(p): r for p, r in zip(params, rates)}
    for node in nodes:
        rate, lr_mult = rate_of[id(module.layer_blobs[node.index][0])], abs(weight_lr_mult(node, 0, module.net))
        if np.isfinite(rate) and lr_mult > 0:  # a frozen layer has no change rate (as after the between step)
            records[node.name].rate_before = float(rate * lr_mult)
    return used
