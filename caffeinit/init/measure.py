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
        rate = rate_of.get(id(module.layer_blobs[node.index][0]))
        out.append(LayerMeasure(node.name, node.type, int(std.numel()), float(s.mean.mean()), mean_std,
                                float(std.std(correction=0)) / mean_std if mean_std > 0 else math.nan,
                                rate if rate is not None and math.isfinite(rate) else None,
                                abs(weight_lr_mult(node, 0))))
    return out


def spread(measures: list[LayerMeasure]) -> float | None:
    """max/min of the effective change rates of the layers that learn."""
    rates = [m.effective_rate for m in measures if m.effective_rate]
    return max(rates) / min(rates) if rates else None


def measure_table(measures: list[LayerMeasure]) -> str:
    rows = [("layer", "type", "channels", "mean", "std", "std CV", "rate", "|lr_mult| x rate")]
    for m in measures:
        rows.append((m.name, m.type, str(m.channels), f"{m.mean:.4g}", f"{m.std:.4g}", f"{m.std_cv:.3g}",
                     "-" if m.rate is None else f"{m.rate:.4g}",
                     "-" if m.effective_rate is None else f"{m.effective_rate:.4g}"))
    text = format_table(rows)
    overflow = next((m.name for m in measures if not (math.isfinite(m.mean) and math.isfinite(m.std))), None)
    if overflow is not None:
        text += (f"\nnote: these weights overflow float32 from layer '{overflow}' on: its and later layers' "
                 "statistics are inf or nan, and their rates cannot be measured (Caffe computes the same)")
    s = spread(measures)
    return text + (f"\nchange-rate spread (max/min): {s:.3g}x" if s else "")


def measures_to_dict(measures: list[LayerMeasure]) -> dict:
    """Plain data for JSON; a non-finite figure (std_cv of a layer whose outputs do not vary, statistics of weights
    that overflow float32) becomes None, as in ``InitReport.to_dict``."""
    def plain(value):
        return None if isinstance(value, float) and not math.isfinite(value) else value

    layers = [{key: plain(value) for key, value in {**asdict(m), "effective_rate": m.effective_rate}.items()}
              for m in measures]
    return {"layers": layers, "spread": plain(spread(measures))}
