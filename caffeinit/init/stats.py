"""Streaming per-channel statistics: float64 mean and M2 merged batch by batch with Chan et al.'s formula."""
from __future__ import annotations

import math

import torch


class ChannelStats:
    """Per-channel count, mean and M2 (sum of squared deviations) over every element but the channel axis.

    Each batch is viewed as (outer, channels, inner) without a copy and reduced on its device with torch's
    ``var_mean`` (a stable two-pass reduction, not a sum of squares; float32 inputs stay float32, good to ~1e-5
    relative), then the per-batch results are merged in float64: n = n_a + n_b, d = m_b - m_a, m = m_a + d n_b / n,
    M2 = M2_a + M2_b + d^2 n_a n_b / n.
    """

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor, channel_axis: int = 1) -> None:
        x = x.detach()
        channels = x.shape[channel_axis]
        outer = math.prod(x.shape[:channel_axis])
        inner = math.prod(x.shape[channel_axis + 1:])
        if outer * inner == 0:
            return
        rows = x.reshape(outer, channels, inner)  # a view for contiguous batches: no copy of a large output
        var, mean = torch.var_mean(rows, dim=(0, 2), correction=0)
        var, mean = var.to(torch.float64), mean.to(torch.float64)
        n = outer * inner
        m2 = var * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    @property
    def var(self) -> torch.Tensor:
        """Population variance per channel."""
        return self.m2 / self.count

    @property
    def std(self) -> torch.Tensor:
        return torch.sqrt(self.var)
