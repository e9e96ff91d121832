"""Measuring the change rates C_k = RMS(dL/dW_k) / RMS(W_k) under N(0,1) gradients injected at the net's end values,
and the probes of the non-homogeneous layers' response to scaling their input.

A gradient pass runs the net with autograd up to the last layer that reaches an end value (channels-last on the CPU,
where oneDNN's convolutions are fastest); its draws depend only on the seed, the batch and the draw (common random
numbers: the same draws after an update see only the update's effect). An InnerProduct weight's gradient is never
formed: its squared norm comes from two Gram matrices over the rows. LRN's probes are in closed form.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.executor import TorchNet, fast_layout, storage_key, tap_needs
from caffeinit.init.scale_model import ScaleModel
from caffeinit.net import LayerNode

EXPONENT_STEP = 0.1  # local exponents are measured by scaling the input by exp(-+ this)
PROBE_IMAGES = 4  # the probes look at this many images of the first batch


class ScaleProbe:
    """One approximate layer's response to scaling its input, on the input it saw in one forward: the exponents
    (g, h) with RMS(f(s x)) ~ s^g RMS(f(x)) and RMS(J(s x)^T u) ~ s^(h - 1) RMS(J(x)^T u), u fixed N(0,1)."""

    def __init__(self, layer, x: torch.Tensor, blobs, gen: torch.Generator):
        self.layer, self.x, self.blobs, self.gen = layer, x.detach(), list(blobs), gen
        self.u: torch.Tensor | None = None
        self.window_of_squares: torch.Tensor | None = None  # LRN: window(x^2), shared by every scale
        self.cache: dict[int, tuple[float, float]] = {}  # grid index -> response

    def response(self, log_scale: float) -> tuple[float, float]:
        """(log RMS f(s x), log RMS J(s x)^T u) at s = exp(log_scale), interpolated linearly between the points of
        a grid of step EXPONENT_STEP (both are smooth in log s), so that the fixed-point rounds of an update reuse a
        few layer evaluations instead of making one per round."""
        position = log_scale / EXPONENT_STEP
        low = math.floor(position + 1e-9)
        frac = position - low
        a = self._response_at(low)
        if frac < 1e-9:
            return a
        b = self._response_at(low + 1)
        return (a[0] + frac * (b[0] - a[0]), a[1] + frac * (b[1] - a[1]))

    def _response_at(self, index: int) -> tuple[float, float]:
        if index not in self.cache:
            scale = math.exp(index * EXPONENT_STEP)
            if self.layer.type_name == "LRN":
                y, g = self._lrn_response(scale)
            else:
                with torch.enable_grad():
                    xs = (self.x * scale).requires_grad_(True)
                    y = self.layer.forward([xs], self.blobs)[0]
                    # (y u).sum() rather than grad_outputs=u: the latter makes torch import sympy (~0.4 s)
                    projected = (y * self._direction(y)).sum()
                    # a layer whose output does not depend on its input (Power with scale 0) passes no gradient
                    (g,) = torch.autograd.grad(projected, xs) if projected.requires_grad else (torch.zeros_like(xs),)
            out, grad = _rms(y), _rms(g)
            self.cache[index] = (math.log(out) if out > 0 else math.nan, math.log(grad) if grad > 0 else math.nan)
        return self.cache[index]

    def _direction(self, y: torch.Tensor) -> torch.Tensor:
        if self.u is None:
            self.u = torch.randn(y.shape, generator=self.gen, device=self.gen.device).to(y.device, y.dtype)
        return self.u

    def _lrn_response(self, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """LRN's f(s x) and J(s x)^T u in closed form, without autograd: with z = s x, S = c + window(z^2) and the
        window map symmetric, f = z S^-beta and J^T u = u S^-beta - 2 beta z window(u z S^(-beta-1))."""
        layer = self.layer
        with torch.no_grad():
            if self.window_of_squares is None:
                self.window_of_squares = layer.window(self.x * self.x)
            z = self.x * scale
            base = self.window_of_squares * (scale * scale) + layer.offset
            factor = base.pow(-layer.beta)
            y = z * factor
            g = layer.input_gradient(z, base, factor, self._direction(y))
        return y, g

    def exponents(self, level: float = 0.0) -> tuple[float, float]:
        """Secant exponents between scale 1 and exp(level) (local ones, by central differences, near 0); 1 where
        not finite."""
        if abs(level) < EXPONENT_STEP:
            low, high, width = self.response(-EXPONENT_STEP), self.response(EXPONENT_STEP), 2 * EXPONENT_STEP
        else:
            low, high, width = self.response(0.0), self.response(level), level
        g, h = (high[0] - low[0]) / width, 1 + (high[1] - low[1]) / width
        return (g if math.isfinite(g) else 1.0, h if math.isfinite(h) else 1.0)


class _Tap:
    """A forward tap that acts on the layers numbered in ``acts_on`` and keeps the values named in ``wanted``;
    ``inner`` (another tap) sees every call first."""
    acts_on: set[int]
    wanted: set[str]
    inner = None

    def needs(self, node: LayerNode) -> bool:
        """Whether this tap must see ``node``'s tops (the executor may fuse the others away)."""
        return node.index in self.acts_on or any(v in self.wanted for v in node.top_values) or \
            tap_needs(self.inner, node)


class ProbeTap(_Tap):
    """A forward tap that keeps, for each of the model's approximate layers, the first PROBE_IMAGES images of its
    input (RMS ratios: a few are plenty), gathered over the chunks of a split pass; ``probes()`` then gives their
    ScaleProbes."""

    def __init__(self, module: TorchNet, model: ScaleModel, seed: int, inner=None):
        self.module, self.seed, self.inner = module, seed, inner
        self.approximate = [node for node in model.active if model.rules[node.index] == "approx"]
        self.acts_on = {node.index for node in self.approximate}  # the layers the probes model run unfused
        self.wanted = {node.bottom_values[0] for node in self.approximate}
        self.values: dict[str, torch.Tensor] = {}

    def __call__(self, node: LayerNode, tops) -> None:
        if self.inner is not None:
            self.inner(node, tops)
        for v, t in zip(node.top_values, tops):
            have = self.values.get(v)
            if v in self.wanted and (have is None or (t.dim() and have.shape[0] < PROBE_IMAGES)):
                t = t.detach()
                part = t[:PROBE_IMAGES - (0 if have is None else have.shape[0])] if t.dim() else t
                self.values[v] = part if have is None else torch.cat([have, part])

    def probes(self) -> dict[int, ScaleProbe]:
        """A ScaleProbe per approximate layer whose input the forward reached, by node index."""
        out = {}
        for node in self.approximate:
            if node.bottom_values[0] in self.values:
                gen = torch.Generator(device=self.module.device)
                gen.manual_seed((int(self.seed) * 15_485_863 + 31 * node.index + 7) % (2 ** 63))
                out[node.index] = ScaleProbe(node.layer, self.values[node.bottom_values[0]],
                                             self.module.layer_blobs[node.index], gen)
        return out


def _rms(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach())) / math.sqrt(max(t.numel(), 1))


def square_grads(module: TorchNet, model: ScaleModel, feed: dict[str, torch.Tensor], batch: int, draws: int,
                 seed: int, params: list[torch.nn.Parameter], tap=None,
                 channel_sums: dict[int, np.ndarray] | None = None, chunk: int | None = None) -> np.ndarray:
    """Sum over ``draws`` N(0,1) gradient draws at the end values of mean(dL/dW^2), per param, on one batch. The
    draws depend only on ``seed``, ``batch`` and the draw. ``channel_sums[k]`` (split groups, ``params`` being the
    model's groups) gets the sums of dL/dW_k^2 per input channel added. InnerProduct weights never get their
    gradient formed (see _GramTap). ``chunk``: at most this many images per forward and backward, their gradients
    summed (the same draws, so the same result up to float rounding, in less memory); ``tap`` sees each of them."""
    stop = max(node.index for node in model.active) + 1
    sums = np.zeros(len(params))
    feed = fast_layout(feed)
    size = next(iter(feed.values())).shape[0]
    chunks = [(lo, min(lo + chunk, size)) for lo in range(0, size, chunk)] if chunk and chunk < size else [(0, size)]
    whole = len(chunks) == 1
    # per draw: param index -> summed gradient (direct ones) or the output gradients' rows (Gram ones)
    pending: list[dict[int, torch.Tensor | list[torch.Tensor]]] = [{} for _ in range(draws)]
    gram_inputs: dict[int, list[torch.Tensor]] = {}
    readers: dict[int, LayerNode] = {}
    noise: list[dict[str, torch.Tensor]] = []  # each draw's noise over the whole batch, per end value

    def finish(d: int) -> None:
        for k, g in pending[d].items():
            if isinstance(g, list):
                squares = _gram_squares(readers[k], torch.cat(g), torch.cat(gram_inputs[k]),
                                        per_channel=channel_sums is not None and k in channel_sums)
                sums[k] += float(squares.sum()) / params[k].numel()
                if channel_sums is not None and k in channel_sums:
                    channel_sums[k] += squares
            else:
                sums[k] += _rms(g) ** 2
                if channel_sums is not None and k in channel_sums:
                    channel_sums[k] += model.input_channels[k].squares(g)
        pending[d], noise[d] = {}, {}

    with torch.enable_grad():
        for c, (lo, hi) in enumerate(chunks):
            part = feed if whole else {v: t[lo:hi] for v, t in feed.items()}
            grams = _GramTap(module, model, params, part, tap)
            readers = grams.readers
            direct = [k for k in range(len(params)) if k not in readers]
            out = module(part, stop=stop, keep=model.ends, tap=grams)
            gram_keys = [k for k in readers if k in grams.outputs]
            for k in gram_keys:
                gram_inputs.setdefault(k, []).append(grams.inputs[k])
            for d in range(draws):
                if c == 0:  # the draw over the whole batch (sliced per chunk)
                    gen = torch.Generator(device=module.device)
                    gen.manual_seed((int(seed) * 7_368_787 + 104_729 * batch + 1_299_709 * d + 1) % (2 ** 63))
                    noise.append({v: torch.randn((size,) + tuple(out[v].shape[1:]), generator=gen,
                                                 device=gen.device).to(out[v].device) for v in model.ends})
                if whole:
                    loss = sum((noise[d][v] * out[v]).sum() for v in model.ends)
                else:
                    for v in model.ends:
                        if out[v].dim() == 0 or out[v].shape[0] != hi - lo:
                            raise CaffeinitError(f"value '{v}' does not keep the images along its first axis: the "
                                                 "gradient passes cannot be split into smaller batches")
                    loss = sum((noise[d][v][lo:hi] * out[v]).sum() for v in model.ends)
                wanted = [params[k] for k in direct] + [grams.outputs[k] for k in gram_keys]
                grads = torch.autograd.grad(loss, wanted, retain_graph=d < draws - 1, allow_unused=True)
                for k, g in zip(direct, grads):
                    if g is not None:
                        pending[d][k] = g if k not in pending[d] else pending[d][k] + g
                for k, g in zip(gram_keys, grads[len(direct):]):
                    if g is not None:
                        pending[d].setdefault(k, []).append(g.detach())
                if whole:
                    finish(d)
            del out, grams
        if not whole:
            for d in range(draws):
                finish(d)
    return sums


def pass_bytes_per_image(module: TorchNet, model: ScaleModel, feed: dict[str, torch.Tensor],
                         params: list[torch.nn.Parameter], images: int = 2) -> float | None:
    """What a gradient pass keeps per image until its backward (the tensors autograd saves, the end values, the
    Gram tap's inputs; not the parameters), measured on a forward of the first ``images`` images of ``feed`` (two by
    default: a single image's tensors may take other layouts, a channels-last one flattening without a copy); None
    where the net cannot run that many (a layer that needs the declared batch size)."""
    images = min(images, next(iter(feed.values())).shape[0])
    one = fast_layout({v: t[:images].clone() for v, t in feed.items()})
    stop = max(node.index for node in model.active) + 1
    shared = {storage_key(p) for p in module.parameters()}
    kept: dict[int, int] = {}

    def count(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in shared:
            kept[key] = t.untyped_storage().nbytes()
        return t

    try:
        with GradsOnly(module, params), torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            grams = _GramTap(module, model, params, one)
            out = module(one, stop=stop, keep=model.ends, tap=grams)
            for t in list(out.values()) + list(grams.inputs.values()):
                count(t)
    except CaffeinitError:
        return None
    return float(sum(kept.values())) / images


def _gram_squares(node: LayerNode, grad: torch.Tensor, inputs: torch.Tensor, per_channel: bool) -> np.ndarray:
    """An InnerProduct weight gradient's sum of squares (or its sums per input channel: axis 1 of the input, as
    InputChannels counts them) from the output gradient and the input, over the rows, never forming it."""
    dy = grad.detach().double().reshape(-1, node.layer.num_output)
    rows = dy.shape[0]
    gram_dy = dy @ dy.t()
    x = inputs.double().reshape(rows, -1)
    if not per_channel:
        return (x @ x.t() * gram_dy).sum().clamp_min(0).reshape(1).cpu().numpy()
    x = x.reshape(rows, int(node.bottom_shapes[0][1]), -1).transpose(0, 1)  # (channels, rows, inner)
    return (torch.bmm(x, x.transpose(1, 2)) * gram_dy).sum(dim=(1, 2)).clamp_min(0).cpu().numpy()


class _GramTap(_Tap):
    """A forward tap that keeps the input X (rows x D) and output Y of every InnerProduct whose weight is one of
    ``params`` and has no other user. Its weight gradient is dY^T X (or its transpose), whose squared norm per
    input channel c is sum_ij (dY dY^T)_ij (X_c X_c^T)_ij: two small Gram matrices over the rows instead of the
    outputs x D gradient (fc6 of CaffeNet: 16 x 16 instead of 37.7M values per pass)."""

    def __init__(self, module: TorchNet, model: ScaleModel, params: list[torch.nn.Parameter],
                 feed: dict[str, torch.Tensor], inner=None):
        self.inner = inner
        users: dict[int, list[LayerNode]] = {}
        for node in module.net.layers:
            blobs = module.layer_blobs[node.index]
            if len(blobs):
                users.setdefault(id(blobs[0]), []).append(node)
        active = {node.index for node in model.active}
        self.readers: dict[int, LayerNode] = {}
        for k, p in enumerate(params):
            nodes = users.get(id(p), [])
            if len(nodes) == 1 and nodes[0].type == "InnerProduct" and nodes[0].index in active:
                layer = nodes[0].layer
                rows = math.prod(nodes[0].bottom_shapes[0][:layer.axis])
                if rows * (layer.num_output + layer.inputs) < layer.num_output * layer.inputs:  # Grams are cheaper
                    self.readers[k] = nodes[0]
        self.key_of = {node.index: k for k, node in self.readers.items()}
        self.acts_on = set(self.key_of)
        self.wanted = {node.bottom_values[0] for node in self.readers.values()}
        self.values = {v: t for v, t in feed.items() if v in self.wanted}
        self.outputs: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, torch.Tensor] = {}

    def __call__(self, node: LayerNode, tops) -> None:
        if self.inner is not None:
            self.inner(node, tops)
        k = self.key_of.get(node.index)
        if k is not None and node.bottom_values[0] in self.values:
            self.outputs[k] = tops[0]
            self.inputs[k] = self.values[node.bottom_values[0]].detach()
        for v, t in zip(node.top_values, tops):
            if v in self.wanted:
                self.values[v] = t


class GradsOnly:
    """Within the block only ``params`` require gradients."""

    def __init__(self, module: TorchNet, params):
        self.module, self.wanted = module, {id(p) for p in params}

    def __enter__(self):
        self.saved = [(p, p.requires_grad) for p in self.module.parameters()]
        for p in self.module.parameters():
            p.requires_grad_(id(p) in self.wanted)

    def __exit__(self, *exc):
        for p, flag in self.saved:
            p.requires_grad_(flag)


def weight_rms(params) -> np.ndarray:
    return np.array([_rms(p) for p in params])


def change_rates(square_sums: np.ndarray, count: int, weight_rms: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight_rms > 0, np.sqrt(square_sums / count) / weight_rms, np.nan)


def measure_rates(module: TorchNet, model: ScaleModel, feeds: list[dict[str, torch.Tensor]], draws: int, seed: int,
                  params: list[torch.nn.Parameter] | None = None, tap=None, chunk: int | None = None,
                  done: Callable[[], None] | None = None) -> np.ndarray:
    """RMS(dL/dW) / RMS(W) for each of ``params`` (default: the model's groups), over ``feeds`` and ``draws`` N(0,1)
    gradient draws per batch at the end values. ``tap`` sees the forward of the first batch (chunk by chunk, where
    passes are split); ``done`` is called after each batch (a progress bar)."""
    params = model.groups if params is None else params
    if not params:
        return np.zeros(0)
    sums = np.zeros(len(params))
    with GradsOnly(module, params):
        for b, feed in enumerate(feeds):
            sums += square_grads(module, model, feed, b, draws, seed, params, tap if b == 0 else None, chunk=chunk)
            if done is not None:
                done()
    return change_rates(sums, len(feeds) * draws, weight_rms(params))
