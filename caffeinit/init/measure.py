"""The paper's diagnostic (the reference implementation's measure_stat.py): for every learnable affine layer, the
per-channel statistics of its output (before any in-place nonlinearity) and its change rate
RMS(dL/dW) / RMS(W) under N(0,1) gradients at the last non-loss layer, for the weights a net has now."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.init.rates import measure_rates
from caffeinit.init.scale_model import build_scale_model
from caffeinit.init.roles import affine_of, weight_lr_mult
from caffeinit.init.stats import ChannelStats
from caffeinit.tables import format_table

NO_GRADIENT = "no gradient reaches it from the net's outputs (it feeds none of them, or only through layers " \
    "with all-zero weights): no change rate"
ZERO_WEIGHTS = "all-zero weights: no change rate (RMS(W) is 0)"
NOTE_NAMES = 8  # layers named per table note at most


@dataclass
class LayerMeasure:
    name: str
    type: str
    channels: int
    mean: float  # average over channels of the channel means
    std: float  # average over channels of the channel standard deviations
    std_cv: float  # coefficient of variation of the channel standard deviations (0: all units alike)
    rate: float | None  # RMS(dL/dW) / RMS(W)
    lr_mult: float
    note: str = ""  # why a layer has no rate, where that is not overflow (see NO_GRADIENT, ZERO_WEIGHTS)

    @property
    def effective_rate(self) -> float | None:
        return None if self.rate is None else self.rate * self.lr_mult


def measure(model, batches: Iterable[Mapping[str, np.ndarray | torch.Tensor]], *, draws: int = 1,
            seed: int = 0, pass_images: int | None = None, progress: bool = False) -> list[LayerMeasure]:
    """Measure ``model`` (a CaffeModel) on ``batches`` of feed dicts {data-layer top: array}; weights unchanged.
    ``pass_images``: at most this many images per gradient pass (as ``InitConfig.pass_images``). ``progress``: a
    tqdm bar over the forward and the gradient passes."""
    from tqdm.auto import tqdm
    from caffeinit.allocator import return_freed_memory
    from caffeinit.init.pipeline import _collect_feeds, gradient_chunk

    for name, value in (("draws", draws), ("pass-images", pass_images)):
        if value is not None and value < 1:
            raise CaffeinitError(f"{name} must be at least 1, got {value}")
    module, net = model.module, model.net
    feeds = _collect_feeds(net, batches, module.device)
    chunk = gradient_chunk(module, feeds, draws, pinned=pass_images)  # before any work: refused where none fits
    if chunk is not None and module.device.type == "cpu":
        return_freed_memory()
    nodes = [node for node in net.layers if affine_of(node) is not None]
    stats = {node.index: ChannelStats() for node in nodes}

    def tap(node, tops):
        if node.index in stats:
            stats[node.index].update(tops[0], affine_of(node).channel_axis)

    params, seen = [], set()
    for node in nodes:
        weight = module.layer_blobs[node.index][0]
        if id(weight) not in seen and weight.requires_grad:
            seen.add(id(weight))
            params.append(weight)
    passes = len(feeds) * (2 if params else 1)
    with tqdm(total=passes, desc="stats", unit="pass", disable=not progress, leave=False) as bar:
        with torch.no_grad():
            for feed in feeds:
                module(feed, stop=max(n.index for n in nodes) + 1 if nodes else 0, keep=(), tap=tap)
                bar.update(1)
        rates = measure_rates(module, build_scale_model(module), feeds, draws, seed, params=params, chunk=chunk,
                              done=lambda: bar.update(1)) if params else []
    rate_of = {id(p): float(r) for p, r in zip(params, rates)}

    out = []
    for node in nodes:
        s = stats[node.index]
        std = s.std
        mean_std = float(std.mean())
        weight = module.layer_blobs[node.index][0]
        rate = rate_of.get(id(weight))
        note = ""
        if rate is not None and not bool(weight.detach().any()):
            rate, note = None, ZERO_WEIGHTS
        elif rate == 0:  # no gradient at all (a layer after a loss, into a Silence): not a rate of a learning layer
            rate, note = None, NO_GRADIENT
        out.append(LayerMeasure(node.name, node.type, int(std.numel()), float(s.mean.mean()) + 0.0, mean_std,
                                float(std.std(correction=0)) / mean_std if mean_std > 0 else math.nan,
                                rate if rate is not None and math.isfinite(rate) else None,
                                abs(weight_lr_mult(node, 0, net)), note))
    return out


def spread(measures: list[LayerMeasure]) -> float | None:
    """max/min of the effective change rates of the layers that learn."""
    rates = [m.effective_rate for m in measures if m.effective_rate]
    return max(rates) / min(rates) if rates else None


def measure_table(measures: list[LayerMeasure]) -> str:
    rows = [("layer", "type", "channels", "mean", "std", "std CV", "rate", "|lr_mult| x rate")]
    for m in measures:
        rows.append((m.name, m.type, str(m.channels), _figure(m.mean, 4), _figure(m.std, 4),
                     # the CV of a layer whose outputs do not vary (std 0) is undefined
                     "-" if math.isnan(m.std_cv) else _figure(m.std_cv, 3),
                     _figure(m.rate, 4), _figure(m.effective_rate, 4)))
    text = format_table(rows)
    if not measures:
        text += ("\nnote: no learnable affine layer (Convolution, Deconvolution, InnerProduct, Scale): nothing to "
                 "measure")
    for note in dict.fromkeys(m.note for m in measures if m.note):
        names = [m.name for m in measures if m.note == note]
        shown = ", ".join(names[:NOTE_NAMES]) + (f" and {len(names) - NOTE_NAMES} more" if len(names) > NOTE_NAMES
                                                 else "")
        text += f"\nnote: {shown}: {note}"
    overflow = next((m.name for m in measures if not (math.isfinite(m.mean) and math.isfinite(m.std))), None)
    if overflow is not None:
        text += (f"\nnote: these weights overflow float32 from layer '{overflow}' on: its and later layers' "
                 "statistics are inf or nan, and their rates cannot be measured (Caffe computes the same)")
    s = spread(measures)
    return text + (f"\nchange-rate spread (max/min): {s:.3g}x" if s else "")


def _figure(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` significant digits; "-" for None, never "-0"."""
    return "-" if value is None else f"{value + 0.0:.{digits}g}"


def measures_to_dict(measures: list[LayerMeasure]) -> dict:
    """Plain data for JSON; a non-finite figure (std_cv of a layer whose outputs do not vary, statistics of weights
    that overflow float32) becomes None, as in ``InitReport.to_dict``."""
    def plain(value):
        return None if isinstance(value, float) and not math.isfinite(value) else value

    layers = [{key: plain(value) for key, value in {**asdict(m), "effective_rate": m.effective_rate}.items()}
              for m in measures]
    return {"layers": layers, "spread": plain(spread(measures))}
