"""Algorithm 1, the within-layer step, processed layer-major over all init batches.

Every value a later layer still needs is kept for all batches on the device. Layers run one at a time over all
batches. A drawn affine layer (Convolution, Deconvolution, InnerProduct, Scale) runs with zero bias; its own output
(before any nonlinearity: in-place tops are separate SSA values) gives per-channel mean mu_c and std sigma_c (float64
Chan merge over batches); then W_c <- W_c / sigma_c, b_c <- beta - mu_c / sigma_c, and the stored outputs get the same
affine map, so no second forward is needed. A channel with sigma_c = 0 keeps its draw and gets b_c = beta (counted and
warned). A layer without bias_term only gets the 1/sigma_c scaling. BatchNorm layers that are drawn, or sit below a
changed layer, get their statistics from the data: mean and population variance over all images and positions with
scale factor 1, so the TEST net (global statistics) computes what the TRAIN net does; where a BatchNorm reads a
normalized affine output, those statistics follow from that layer's own (not measured again). Scale layers are drawn
as gamma = 1 and then normalized like any affine layer (after a BatchNorm this gives gamma ~ 1, beta ~ the target;
its input statistics are then known from the BatchNorm's); PReLU keeps its filler slopes; Embed, Bias and recurrent
layers keep their fillers. Values are freed after their last use. A normalized output is kept as its stored tensors
plus the per-channel map, applied once a layer reads it; a TEST-phase BatchNorm or a fresh Scale reading it only
composes the map, so ResNet's conv -> BatchNorm -> Scale costs one pass over the data instead of five (ResNet-50
within-layer step 15.3 -> 11 s; weights within 2e-5 relative of the pass-by-pass result, float32 rounding).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch

from caffeinit import fillers
from caffeinit.errors import CaffeinitError
from caffeinit.executor import TorchNet, fast_layout, storage_key
from caffeinit.init import draws
from caffeinit.init.config import DATA_METHODS, InitConfig
from caffeinit.init.report import LayerRecord
from caffeinit.init.roles import Affine, affine_of, fan_in
from caffeinit.init.stats import ChannelStats
from caffeinit.layers.base import Layer
from caffeinit.net import LayerNode

SAMPLES_PER_OUTPUT = 10  # data-dependent draws gather about this many patches per filter (and >= 2 x fan-in)
MIN_SAMPLES = 256  # and at least this many (depthwise 3x3: 18 patches would whiten only 4 of 9 directions)
# fewer samples than twice the inputs (fan-ins above max_samples / 2: FCN's fc6, a 7x7x512 convolution) are drawn in
# a random projection to samples / 8 dimensions (draws.from_patches), whose cost grows with the square of their count
# (n x fan-in x n / 8 to project, and as much to map back): at most this many, or one per output
GRAM_SAMPLES = 4096


def layer_generator(seed: int, node: LayerNode, device) -> torch.Generator:
    """A generator private to one layer, so a layer's draw depends only on the seed and its position."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + 7919 * (node.index + 1)) % (2 ** 63))
    return gen


def dead_channels(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Channels whose output is constant on the data (up to float32 rounding of the statistics)."""
    return std <= torch.clamp(1e-6 * mean.abs(), min=1e-30)


def _last_uses(net) -> dict[str, int]:
    """Value name -> index of the last layer of the init (losses are not part of it) that reads it."""
    return {v: node.index for node in net.layers if not node.layer.is_loss for v in node.bottom_values}


def _declared_batch(net) -> int:
    """The batch size the net's shapes were inferred for: per-image sizes divide by it."""
    return next((shape[0] for shape in net.feeds.values() if shape), 1) or 1


def values_per_image(net) -> tuple[float, float]:
    """Bytes of every value the net computes before its losses (an upper bound on what a gradient pass keeps), and
    of the largest one, per image."""
    declared = _declared_batch(net)
    sizes = [4.0 * math.prod(shape) / declared for node in net.layers if not node.layer.is_data
             and not node.layer.is_loss for shape in node.top_shapes]
    return sum(sizes), max(sizes, default=0.0)


def stored_peak(net) -> tuple[float, LayerNode | None]:
    """The most the within-layer step must hold at once, in bytes per image, and after which layer: every value a
    later layer reads, for every image, as float32, once each layer's dying inputs are gone (a lower bound: a layer
    also holds its inputs while it makes its outputs, and those that die there are released a batch at a time)."""
    last_use = _last_uses(net)
    declared = _declared_batch(net)
    live: dict[str, float] = {}
    peak, where = 0.0, None
    for node in net.layers:
        if node.layer.is_loss:
            continue
        for v, shape in zip(node.top_values, node.top_shapes):
            if v in last_use:
                live[v] = 4.0 * math.prod(shape) / declared
        for v in node.bottom_values:
            if last_use.get(v, -1) <= node.index:
                live.pop(v, None)
        total = sum(live.values())
        if total > peak and not node.layer.is_data:
            peak, where = total, node
    return peak, where


# The within step's measured peak over its stored lower bound, per image: FCN-8s (500 x 500, CPU) takes 176 MiB per
# image against the 122 MiB stored after conv1_1 (a layer's outputs stack up while its input goes a batch at a
# time, layout copies, allocator fragmentation); VGG-16 at 224 x 224 stays below it
STORED_OVERHEAD = 1.45


@dataclass
class MemoryEstimate:
    """What the within-layer step needs at its peak (bytes) beyond the loaded model: ``per_image`` for each image
    (the stored lower bound at layer ``where`` with its overhead, and the input batches), plus ``fixed`` (one
    batch's input and output of the largest layer)."""
    per_image: float
    fixed: float
    stored: float  # the lower bound per image, at ``where`` (``stored_peak``)
    where: LayerNode | None

    def total(self, num_images: int) -> float:
        return self.per_image * num_images + self.fixed

    def images_within(self, available: float) -> int:
        """How many images fit in ``available`` bytes (0 where not even one does)."""
        return max(0, int((available - self.fixed) // self.per_image)) if self.per_image > 0 else 2 ** 31


def memory_estimate(net, batch_size: int) -> MemoryEstimate:
    """The within-layer step's expected peak memory for ``net``, with batches of ``batch_size`` images."""
    stored, where = stored_peak(net)
    feeds = sum(4.0 * math.prod(shape) for shape in net.feeds.values()) / _declared_batch(net)
    largest = values_per_image(net)[1]
    return MemoryEstimate(STORED_OVERHEAD * stored + feeds, 2 * largest * batch_size, stored, where)


def run_within(module: TorchNet, batches: list[dict[str, torch.Tensor]], draw: dict[int, str], config: InitConfig,
               records: dict[str, LayerRecord], progress: bool = False) -> None:
    """Initialize the layers in ``draw`` (node index -> "affine" | "bn") in place, over ``batches`` (feeds keyed by
    value name). Fills the "after" statistics of every affine layer in ``records``."""
    net = module.net
    last_use = _last_uses(net)
    values: dict[str, list[torch.Tensor]] = {}
    # exact per-channel (axis 1) mean and variance over all batches, float64, of values whose statistics follow
    # from a layer's own: a normalized affine top, a TEST-phase BatchNorm's output
    known: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for feed in batches:
        for v, t in fast_layout(feed).items():  # channels-last: faster convolutions and pooling
            values.setdefault(v, []).append(t)
    changed: set[str] = set()
    # values held as a per-channel (axis 1) affine map of stored tensors, applied once a layer needs them: a
    # normalized affine top, and after it a TEST-phase BatchNorm and a fresh Scale (ResNet's conv -> BatchNorm ->
    # Scale) are one pass over the data instead of five
    pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    protected = {storage_key(t) for feed in batches for t in feed.values()}  # the caller's tensors

    def owned(v: str) -> bool:
        """Whether the tensors of ``v`` may be overwritten: no other live value or caller holds their memory."""
        mine = {storage_key(t) for t in values[v]}
        others = (storage_key(t) for u, ts in values.items() if u != v for t in ts)
        return not mine & protected and not any(key in mine for key in others)

    def materialize(v: str) -> None:
        if v in pending:
            gain, shift = pending.pop(v)
            values[v] = _apply_affine(values[v], gain, shift, 1, in_place=owned(v))

    from tqdm.auto import tqdm
    for node in tqdm(net.layers, desc="within-layer", unit="layer", disable=not progress, leave=False):
        if node.layer.is_data or node.layer.is_loss:
            continue
        if any(v not in values for v in node.bottom_values):  # computed from a loss's output
            if node.name in records and node.index in draw:
                records[node.name].note = "reads a loss's output: not part of the init, keeps its weights"
            continue
        blobs = list(module.layer_blobs[node.index])
        action = draw.get(node.index)
        upstream_changed = any(v in changed for v in node.bottom_values)
        affine = affine_of(node)
        source = node.bottom_values[0] if node.bottom_values else None
        given = known.get(source)
        if given is None and node.type == "BatchNorm" and node.layer.use_global_stats and len(node.top_values) == 1 \
                and (action == "bn" or upstream_changed) and len(node.bottom_shapes[0]) >= 2:
            # its statistics are measured anyway: measured first, it composes like one whose input's are known
            materialize(source)
            given = known[source] = _stats_of(values[source])
        composes = given is not None and len(node.top_values) == 1 and (
            (action == "affine" and affine is not None and _output_is_input(affine))
            or (node.type == "BatchNorm" and node.layer.use_global_stats and (action == "bn" or upstream_changed)))
        # a Concat along the channels of pending values (DenseNet's growing stacks) stays pending: the concatenated
        # stored tensors under the concatenated maps, its statistics those of its inputs
        joins = node.type == "Concat" and node.layer.axis == 1 and any(v in pending for v in node.bottom_values)
        for v in node.bottom_values if not (composes or joins) else ():
            materialize(v)
        bottoms = [values[v] for v in node.bottom_values]
        # inputs that die here and are no one else's: each batch is dropped (or overwritten) once its output is made,
        # so a layer holds one copy of its data at a time (VGG-16's conv1_2: 2 GB instead of 4 GB)
        dying = {v for v in node.bottom_values if last_use.get(v) == node.index and owned(v)}
        released = list({id(values[v]): values[v] for v in dying}.values())
        top_map = None  # (gain, shift) of the top over the stored tensors of ``tops``
        with torch.no_grad():
            if action == "affine" and affine is not None:
                given = given if _output_is_input(affine) else None
                try:
                    tops, stats, top_map = _init_affine(affine, blobs, bottoms, config, records[node.name], given,
                                                        released)
                except (_NotFinite, torch.linalg.LinAlgError):  # the latter: an eigendecomposition of NaN patches
                    error = _not_finite_error(module, batches, node)
                    if error is None:
                        raise
                    raise error from None
                if affine.channel_axis == 1 and len(tops) == 1:
                    known[node.top_values[0]] = stats
                else:  # not a per-channel map along axis 1: apply it now (fresh tensors)
                    tops = [_apply_affine(top, *top_map, affine.channel_axis, in_place=True) for top in tops]
                    top_map = None
            elif composes:  # TEST-phase BatchNorm with known input statistics: y = (x - mean) / sqrt(var + eps)
                _set_batchnorm_stats(blobs, bottoms[0], given)
                mean, var = node.layer._global_stats(blobs, torch.float64)
                inv = 1.0 / torch.sqrt(var + node.layer.eps)
                top_map = (inv, -mean * inv)
                tops = [bottoms[0]]
                known[node.top_values[0]] = (torch.zeros_like(given[1]), given[1] / (given[1] + node.layer.eps))
                action = "bn"
            elif joins:
                tops, top_map, known[node.top_values[0]] = _join_channels(node, bottoms, pending, known)
            else:
                if node.type == "BatchNorm" and (action == "bn" or upstream_changed):
                    _set_batchnorm_stats(blobs, bottoms[0], given)
                    action = "bn"
                # in place where the bottom dies here and is this value's alone (VGG-16's ReLUs: 2 GB less peak)
                v = node.bottom_values[0] if node.bottom_values else None
                in_place = type(node.layer).forward_inplace is not Layer.forward_inplace and v in dying and \
                    node.bottom_values.count(v) == 1
                tops = _per_batch(lambda b: _forward(node.layer, b, blobs, in_place), bottoms, released)
                if affine is not None and node.name in records:
                    stats = ChannelStats()
                    for top in tops:
                        for t in top:
                            stats.update(t, affine.channel_axis)
                    records[node.name].after_stats(stats.mean, stats.std)
        if top_map is not None and composes and source in pending:  # compose with the input's own map
            (g0, s0), (g1, s1) = pending[source], top_map
            top_map = (g0 * g1, s0 * g1 + s1)
        for v, t in zip(node.top_values, tops):
            if v in last_use:
                values[v] = t
                if top_map is not None:
                    pending[v] = top_map
            if action or upstream_changed:
                changed.add(v)
        for v in node.bottom_values:
            if last_use.get(v, -1) <= node.index:
                values.pop(v, None)
                pending.pop(v, None)


def _per_batch(run, bottoms: list[list[torch.Tensor]], released: list[list[torch.Tensor]]
               ) -> list[list[torch.Tensor]]:
    """``run`` on each batch of ``bottoms`` (per bottom, per batch); tops per top, per batch. Each list in
    ``released`` has its batch dropped as soon as that batch's tops are made."""
    tops = []
    for i in range(len(bottoms[0])):
        tops.append(run([b[i] for b in bottoms]))
        for stored in released:
            stored[i] = None
    return [list(t) for t in zip(*tops)]


def _forward(layer: Layer, bottoms: list[torch.Tensor], blobs: list[torch.Tensor], in_place: bool
             ) -> list[torch.Tensor]:
    """``layer``'s tops, overwriting bottom 0 where ``in_place`` and the layer can."""
    tops = layer.forward_inplace(bottoms, blobs) if in_place else None
    return tops if tops is not None else layer.forward(bottoms, blobs)


def _join_channels(node: LayerNode, bottoms: list[list[torch.Tensor]],
                   pending: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   known: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """A channel Concat of values some of which are pending maps: (tops, map, statistics) with the stored tensors
    concatenated, the maps concatenated (identity for plain inputs) and the per-channel statistics concatenated
    (measured here for inputs without known ones)."""
    like = next(pending[v][0] for v in node.bottom_values if v in pending)
    gains, shifts, means, variances = [], [], [], []
    for v, stored in zip(node.bottom_values, bottoms):
        channels = stored[0].shape[1]
        gain, shift = pending.get(v, (like.new_ones(channels), like.new_zeros(channels)))
        if v not in known:
            known[v] = _stats_of(stored)
        gains.append(gain)
        shifts.append(shift)
        means.append(known[v][0])
        variances.append(known[v][1])
    tops = [[torch.cat([b[i] for b in bottoms], dim=1) for i in range(len(bottoms[0]))]]
    return tops, (torch.cat(gains), torch.cat(shifts)), (torch.cat(means), torch.cat(variances))


def _stats_of(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (axis 1; a 1-D value is one channel) float64 mean and population variance over the batches."""
    stats = ChannelStats()
    for x in tensors:
        stats.update(x if x.dim() > 1 else x[:, None], 1)
    return stats.mean, stats.var


def _output_is_input(affine: Affine) -> bool:
    """A drawn Scale starts as gamma = 1 with zero bias: before its normalization its output is its input."""
    return affine.kind == "scale" and affine.channel_axis == 1 and len(affine.node.layer.blob_shapes[0]) == 1


def _init_affine(affine: Affine, blobs: list[torch.Tensor], bottoms: list[list[torch.Tensor]], config: InitConfig,
                 record: LayerRecord, given: tuple[torch.Tensor, torch.Tensor] | None = None,
                 released: list[list[torch.Tensor]] = ()) -> tuple[list[list[torch.Tensor]],
                                                                   tuple[torch.Tensor, torch.Tensor],
                                                                   tuple[torch.Tensor, torch.Tensor]]:
    """Draw and normalize the layer; return its tops before the normalization (per top, per batch), their exact
    statistics after it (mean, var) and the normalization (gain, shift) per output channel: the tops are t * gain +
    shift. ``given``: the statistics of the output before normalization where they are known (not measured again;
    the layer is then a fresh Scale, whose output before normalization is its input, returned as it is).
    ``released``: bottoms whose batches are dropped once their output is computed (see ``_per_batch``)."""
    node = affine.node
    weight = blobs[0]
    gen = layer_generator(config.seed, node, weight.device)
    drawn = _draw_weight(affine, weight, bottoms, config, gen, record)
    if drawn.data_ptr() != weight.data_ptr():  # drawn in place (gaussian) or a new tensor
        weight.data.copy_(drawn)
    if affine.bias is not None:
        blobs[affine.bias].data.zero_()

    if given is not None:
        tops = [bottoms[0]]
        mean, std = given[0], torch.sqrt(given[1])
    else:
        tops = _per_batch(lambda b: node.layer.forward(b, blobs), bottoms, released)
        stats = ChannelStats()
        for top in tops:
            for t in top:
                stats.update(t, affine.channel_axis)
        mean, std = stats.mean, stats.std
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise _NotFinite()
    dead = dead_channels(mean, std)
    gain = torch.where(dead, torch.ones_like(std), 1.0 / torch.where(dead, torch.ones_like(std), std))
    if affine.bias is not None:
        shift = torch.where(dead, torch.full_like(mean, config.bias), config.bias - mean * gain)
    else:
        shift = torch.zeros_like(mean)
    affine.scale_outputs_(weight.data, gain.to(weight.dtype))
    if affine.bias is not None:
        bias = blobs[affine.bias]  # (outputs, ...): a Scale over several axes has a bias per position too
        bias.data.copy_(shift.to(weight.dtype).reshape(-1, *[1] * (bias.dim() - 1)).expand_as(bias))
    if int(dead.sum()):
        record.dead = int(dead.sum())
    if record.dead and given is None:  # given: they follow from a normalized layer before, which has warned
        warnings.warn(f"layer '{node.name}': {record.dead} of {len(std)} output channels are constant on the init "
                      f"images (dead); they keep their draw and get bias {config.bias}")
    record.after_stats(mean * gain + shift, std * gain)
    return tops, (mean * gain + shift, (std * gain) ** 2), (gain, shift)


class _NotFinite(Exception):
    """A layer's output statistics on the init images are not finite."""


def _not_finite_error(module: TorchNet, batches: list[dict[str, torch.Tensor]], node: LayerNode
                      ) -> CaffeinitError | None:
    """Where the non-finite values reaching ``node`` on the init images come from: the first input or layer (in net
    order, on the first batch that has them) whose output has NaN or infinity; None where none does."""
    culprit: list[str] = []

    class Found(Exception):
        pass

    def tap(other: LayerNode, tops) -> None:
        if not all(bool(torch.isfinite(t).all()) for t in tops):
            culprit.append(f"layer '{other.name}' ({other.type})")
            raise Found

    for i, feed in enumerate(batches):
        for value, tensor in feed.items():
            if not bool(torch.isfinite(tensor).all()):
                culprit.append(f"the data itself (input '{value}')")
                break
        if not culprit:
            with torch.no_grad(), contextlib.suppress(Found):
                module(feed, stop=node.index, keep=(), tap=tap)
        if culprit:
            return CaffeinitError(f"layer '{node.name}' ({node.type}): its input on the init images is not finite "
                                  f"(NaN or infinity), from {culprit[0]} on init batch {i}: nothing can be set "
                                  "from it")
    return None


def _apply_affine(tensors: list[torch.Tensor], gain: torch.Tensor, shift: torch.Tensor, axis: int,
                  in_place: bool) -> list[torch.Tensor]:
    """t * gain + shift per channel (along ``axis``) for each tensor, in one pass; in place where allowed."""
    shape = [1] * tensors[0].dim()
    shape[axis] = -1
    g = gain.to(tensors[0].dtype).reshape(shape)
    s = shift.to(tensors[0].dtype).reshape(shape)
    return [torch.addcmul(s, t, g, out=t) if in_place else torch.addcmul(s, t, g) for t in tensors]


def _draw_weight(affine: Affine, weight: torch.Tensor, bottoms: list[list[torch.Tensor]], config: InitConfig,
                 gen: torch.Generator, record: LayerRecord) -> torch.Tensor:
    """A fresh weight blob (before normalization) by ``config.method``."""
    device = weight.device
    if affine.kind == "scale":
        record.method = "scale"
        return torch.ones_like(weight)
    method = config.method
    if method in DATA_METHODS and not affine.supports_patches():
        record.note = f"{method} needs input patches, which {affine.node.type} does not have: gaussian"
        method = "gaussian"
    if method == "gaussian":
        record.method = "gaussian"
        return _standard_normal_(weight.data, gen)
    groups, n_out, width = affine.groups, affine.num_output // affine.groups, fan_in(affine)
    if method == "orthogonal":
        record.method = "orthogonal"
        mats = torch.stack([draws.orthogonal(n_out, width, gen, device) for _ in range(groups)])
        return affine.from_group_matrices(mats, weight)
    mats, flat = [], []
    target = min(config.max_samples, max(SAMPLES_PER_OUTPUT * n_out, 2 * width, MIN_SAMPLES))
    if target < width:
        target = min(target, max(GRAM_SAMPLES, n_out))
    per_batch = math.ceil(target / len(bottoms[0]))
    available = sum(min(affine.patch_count(x), per_batch) for x in bottoms[0])  # what _gather_patches finds
    if available < n_out:  # the very draw --method gaussian makes for this layer
        record.method = "gaussian"
        record.note = (f"{method}: only {available} input samples for {n_out} outputs"
                       f"{' per group' if groups > 1 else ''}: gaussian")
        warnings.warn(f"layer '{affine.name}': {record.note}")
        return _standard_normal_(weight.data, gen)
    every_group = _gather_patches(affine, bottoms[0], per_batch, gen)
    if n_out == 1 and groups > 1 and every_group.shape[1] >= width:  # depthwise: all groups at once
        filters, ok = draws.single_filters(method, every_group, gen)
        flat = (~ok).nonzero().flatten().tolist()
        if flat:  # patches (nearly) constant: dead input channels
            filters[~ok] = torch.randn(len(flat), width, generator=gen, device=gen.device).to(filters.device)
        mats = list(filters[:, None, :].to(device))
    else:
        for g in range(groups):
            filters = draws.from_patches(method, every_group[g], n_out, gen, config.kmeans_iters)
            if filters is None:  # patches (nearly) constant: a dead input channel
                flat.append(g)
                filters = torch.randn(n_out, width, generator=gen, device=gen.device)
            mats.append(filters.to(device))
    record.method = method if len(flat) < groups else "gaussian"
    if flat:
        which = "its input patches" if groups == 1 else f"{len(flat)} of {groups} groups' input patches"
        record.note = f"{method}: {which} do not vary enough: gaussian" + (" for those" if len(flat) < groups else "")
        warnings.warn(f"layer '{affine.name}': {record.note}")
    return affine.from_group_matrices(torch.stack(mats), weight)


def _standard_normal_(weight: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``weight`` filled in place with N(0, 1) draws from ``gen``; on the CPU a large weight (fc6) in chunks, each
    from its own generator seeded by ``gen``, on a few threads (the same values for any thread count)."""
    flat = weight.view(-1)
    if flat.device.type != "cpu" or flat.numel() <= fillers.CHUNK:
        return weight.normal_(generator=gen)
    seeds = torch.randint(0, 2 ** 62, (fillers.chunk_count(flat.numel()),), generator=gen).tolist()
    fillers.fill_in_chunks(flat, seeds, lambda piece, generator: piece.normal_(generator=generator))
    return weight


def _gather_patches(affine: Affine, inputs: list[torch.Tensor], per_batch: int, gen: torch.Generator
                    ) -> torch.Tensor:
    """Input patches of every group (groups x samples x fan-in), at the same places for every group: up to
    ``per_batch`` drawn at random from each batch."""
    rows = []
    for x in inputs:
        count = affine.patch_count(x)
        if count > per_batch:
            index = torch.randperm(count, generator=gen, device=gen.device)[:per_batch]
            rows.append(affine.patches(x, index))
        else:
            rows.append(affine.patches(x))
    return torch.cat(rows, dim=1)


def _set_batchnorm_stats(blobs: list[torch.Tensor], inputs: list[torch.Tensor],
                         given: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Mean and population variance of the inputs (``given`` where known), scale factor 1."""
    if given is None:
        given = _stats_of(inputs)
    blobs[0].data.copy_(given[0].to(blobs[0].dtype))
    blobs[1].data.copy_(given[1].to(blobs[1].dtype))
    blobs[2].data.fill_(1.0)
