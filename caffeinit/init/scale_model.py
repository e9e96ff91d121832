"""The between-layer step's scale model: how rescaling each learnable weight moves every value of the net and each
weight's change rate C_k = RMS(dL/dW_k) / RMS(W_k), and the function-preserving update that equalizes the rates
(caffeinit/init/between.py runs the step; caffeinit/init/rates.py measures the rates).

End values: the inputs of loss layers and Accuracy (labels excluded) and the net's unconsumed outputs, with trailing
Softmax / ArgMax layers stripped; nothing computed from a loss's output counts (the net proper stops at its last
non-loss layer). Only layers that feed an end value take part.

Scale model. Each learnable affine weight W_k (Convolution, Deconvolution, InnerProduct, one-bottom Scale; a weight
shared through a ParamSpec name is one W_k) gets a variable x_k. Every value v of the net then becomes about exp(l_v)
times its old self (forward level, RMS), and the gradient reaching v about exp(m_v) times its old self (backward
level); both are linear in x. A level is kept per block of channels (axis 1): a Concat along the channels joins its
bottoms' blocks, so each branch keeps its own level. Forward: data 0; ReLU, PReLU, pooling, Dropout, Split, AbsVal,
Eltwise SUM/MAX act per channel and pass the blocks on (the bottoms of an Eltwise are constrained to one level per
channel: no factor can preserve a sum of differently scaled terms); a Concat or Slice along the channels joins or
splits blocks (along another axis: bottoms equal per channel); Flatten, Reshape, Tile, Crop, LRN and the other layers
that mix channels need one level over all channels (constrained) and pass it on; Eltwise PROD and two-bottom Scale
add; BatchNorm resets every channel to 0 (its mean is multiplied by exp(l_c) and var + eps by exp(2 l_c) per channel:
its TEST-phase output is unchanged exactly), MVN (variance) to 0 from one common level; a Bias layer passes l on, its
bias multiplied by exp(l_in). An affine top has one level: l_top = mean_c l_in,c + x_k (channel-weighted); its bias is
multiplied by exp(l_top) and its weight's input-channel block b by exp(z_b), z_b = l_top - l_in,b (= x_k on an input
of one block). A layer that reads a split input compensates each block in its own weight this way: Convolution,
Deconvolution and InnerProduct with axis 1 (an InnerProduct's input channel c owns the columns c x inner), and a
one-bottom Scale on axis 1; other affine layers, and layers with pretrained weights (whose direction is kept), need
one level. Frozen affine layers (weight lr_mult 0) keep their weight: one whose bias is absent, learnable or zero
passes one level over all channels on (its bias scaled with it); one with a fixed nonzero bias, and layers the model
does not know (Embed, recurrent, ...), are left untouched: their bottoms are constrained to l = 0. Every end value is
constrained to l = 0, so on a positively homogeneous net the function is preserved exactly. Backward: m = 0 at the
ends (the injected gradients do not change); an affine layer's input block b gets m_out + z_b, BatchNorm subtracts
l_in per channel, a product adds the other factors' levels; a value read by several layers takes the per-channel mean
of their contributions.

Rates. The gradient of W_k's block b is (input block b) x (output gradient), so it moves by exp(l_in,b + m_out)
while the block moves by exp(z_b): with s_b and w_b the blocks' shares of |dL/dW_k|^2 and |W_k|^2 (per input
channel, measured in the same gradient pass), log C_k moves by
  1/2 log sum_b s_b exp(2 (l_in,b + m_out))  -  1/2 log sum_b w_b exp(2 z_b)
(averaged over a shared weight's users), i.e. l_in + m_out - x_k for a weight of one block. On a positively
homogeneous net whose function is preserved the gradient at every value moves by exactly exp(-l) per channel
(m = -l), so the change is 1/2 log sum_b s_b exp(-2 z_b) - 1/2 log sum_b w_b exp(2 z_b): exact for any x, given
the shares at the current weights (-2 x_k for one block). The update is the least-squares solution of "all log
rates equal" on the constraints' null space, found by Gauss-Newton on this model (one step, the exact solution,
when no weight is split: the model is then linear). A homogeneous net is therefore measured once, over the
``between_batches`` init batches, and updated once, Concat or not: chains are equalized exactly, and so are
Concat-merged branches (GoogLeNet-, SqueezeNet-like: every branch's last layer and every consumer has its own x);
Eltwise merges still share one level per channel.

ResNet-50 (kaiming, 4.1x after the step): every conv is followed by BatchNorm, so its rate has a free x of its own;
what cannot be equalized are the Scale layers on each stage's residual stream. branch2c's Scale of every block of
a stage and the projection branch's Scale are summed into one stream, identity shortcuts carry it from block to
block, so all of them share one level per channel; their rates differ by up to 4.1x within stage 4 (res4a's two
Scales 1.96 and res4f's branch2c 0.47 x the median), and no uniform or per-block factor changes their ratio. The
only function-preserving freedom left is a separate level per channel of the stream, common to every layer of the
stage. It moves the stage's rates apart only through channels whose gradient shares differ between its layers, and
those differ little: measured on 8 images, bringing stage 4 from 4.1x to 2.1-2.9x took per-channel factors spanning
50x to 8000x within each of its weights (a few channels carrying the whole change), so it is not used. In TRAIN nets
BatchNorm normalizes each batch, so moving scale between BatchNorm's statistics and the following Scale is no
freedom either.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.executor import TorchNet
from caffeinit.init.roles import affine_of, is_frozen, weight_lr_mult
from caffeinit.net import LayerNode, Net

STRIPPED_AT_END = ("Softmax", "ArgMax")
CHANNELWISE = ("ReLU", "PReLU", "Pooling", "Dropout", "Split", "AbsVal", "Silence", "BatchReindex")
PASS_THROUGH = ("Flatten", "Reshape", "Tile")  # the level passes on, channel blocks do not
APPROXIMATE = ("LRN", "Sigmoid", "TanH", "ELU", "BNLL", "Power", "Exp", "Log", "Clip", "Swish", "Softmax")
DAMPING = 0.03  # Tikhonov weight on x for non-homogeneous nets (a direct direction's response is 2 per unit)
SOLVER_ITERS = 50  # Gauss-Newton iterations of one solve (a net without compensated blocks needs one)


def _signal_bottoms(node: LayerNode) -> list[str]:
    """The bottoms whose values a layer's top carries: all of them but BatchReindex's index input (it only picks
    images; tying its level to the data's pinned the layers before it)."""
    return node.bottom_values[:1] if node.type == "BatchReindex" else node.bottom_values


def end_values(net: Net, after_loss: set[str] | None = None) -> list[str]:
    """Values that receive the injected gradients (see the module docstring); ``after_loss``: the net's
    ``values_after_loss`` where the caller has them."""
    producer = {v: node for node in net.layers for v in node.top_values}
    consumers = net.consumers()
    ends: list[str] = []

    def add(v: str) -> None:
        node = producer.get(v)
        if node is None or node.layer.is_data or node.layer.is_loss:
            return
        if node.type in STRIPPED_AT_END:
            for b in node.bottom_values:
                add(b)
            return
        if v not in ends:
            ends.append(v)

    if after_loss is None:
        after_loss = values_after_loss(net)
    for node in net.layers:
        if any(v in after_loss for v in node.bottom_values):
            continue
        if node.layer.is_loss:
            for v in node.bottom_values:
                add(v)
        elif not node.layer.is_data:
            for v in node.top_values:
                if not consumers.get(v):
                    add(v)
    order = {v: i for i, v in enumerate(v for node in net.layers for v in node.top_values)}
    return sorted(ends, key=order.__getitem__)


def values_after_loss(net: Net) -> set[str]:
    """Values computed from a loss's output: the net proper ends before them."""
    after: set[str] = set()
    for node in net.layers:
        if node.layer.is_loss or any(v in after for v in node.bottom_values):
            after.update(node.top_values)
    return after


@dataclass
class Segments:
    """A level (forward or backward) per block of channels (axis 1) of one value: ``widths[i]`` channels whose level
    has the coefficients ``rows[i]`` over the variables. Adjacent blocks never have equal rows."""
    widths: list[int]
    rows: list[np.ndarray]

    @classmethod
    def uniform(cls, channels: int, row: np.ndarray) -> "Segments":
        return cls([channels], [row])

    @classmethod
    def joined(cls, widths, rows) -> "Segments":
        """Blocks in order, adjacent equal rows merged."""
        out = cls([], [])
        for w, r in zip(widths, rows):
            if out.rows and np.array_equal(out.rows[-1], r):
                out.widths[-1] += int(w)
            elif w > 0:
                out.widths.append(int(w))
                out.rows.append(r)
        return out

    @property
    def channels(self) -> int:
        return sum(self.widths)

    @property
    def split(self) -> bool:
        return len(self.rows) > 1

    def mean(self) -> np.ndarray:
        """The channel-weighted mean row: the level of the whole value."""
        if not self.split:
            return self.rows[0]
        return sum(w * r for w, r in zip(self.widths, self.rows)) / self.channels

    def shifted(self, row: np.ndarray, sign: float = 1.0) -> "Segments":
        """``row + sign * level`` per block."""
        return Segments(list(self.widths), [row + sign * r for r in self.rows])

    def per_channel(self, x: np.ndarray) -> np.ndarray:
        return np.repeat([float(r @ x) for r in self.rows], self.widths)

    def sliced(self, start: int, stop: int) -> "Segments":
        widths, rows, at = [], [], 0
        for w, r in zip(self.widths, self.rows):
            width = min(stop, at + w) - max(start, at)
            if width > 0:
                widths.append(width)
                rows.append(r)
            at += w
        return Segments(widths, rows)


def _aligned(parts: list[Segments]) -> tuple[list[int], list[list[np.ndarray]]]:
    """The common refinement of levels over the same channels: widths and, per block, each part's row (parts over
    different channel counts are compared as whole values)."""
    if len({p.channels for p in parts}) > 1:
        return [parts[0].channels], [[p.mean() for p in parts]]
    if not any(p.split for p in parts):
        return [parts[0].channels], [[p.rows[0] for p in parts]]
    ends = sorted({int(e) for p in parts for e in np.cumsum(p.widths)})
    starts = [0] + ends[:-1]
    picks = [np.searchsorted(np.cumsum(p.widths), starts, side="right") for p in parts]
    return list(np.diff([0] + ends)), [[p.rows[i[j]] for p, i in zip(parts, picks)] for j in range(len(ends))]


def _average(parts: list[Segments]) -> Segments:
    """The per-channel mean of several levels of one value."""
    if len(parts) == 1:
        return parts[0]
    widths, pieces = _aligned(parts)
    return Segments.joined(widths, [np.mean(piece, axis=0) for piece in pieces])


@dataclass
class Linearization:
    """The scale model at one point, all levels linear in x. The predicted change of log C_k is
    mean over the users u of k of 1/2 log sum_b s_b exp(2 gain_ub x)  -  1/2 log sum_b w_b exp(2 factor_b x)
    over the blocks b of W_k's input channels (s_b, w_b: the blocks' shares of |dL/dW_k|^2 and |W_k|^2)."""
    lin: dict[str, Segments]  # value -> forward level per channel block
    gains: list[list[Segments]]  # per group, per user: the level of its weight gradient (l_in + m_out) per block
    factors: list[Segments]  # per group: the log factor of its weight per input-channel block
    factor_nodes: list[LayerNode]  # per group: the user whose input-channel layout ``factors`` follows
    constraints: np.ndarray  # rows that must be 0

    def level(self, v: str, x: np.ndarray) -> float:
        """The whole-value level of v under x (0 for values the model does not see)."""
        seg = self.lin.get(v)
        return 0.0 if seg is None else float(seg.mean() @ x)

    def split_groups(self) -> dict[int, LayerNode]:
        """Groups whose weight is scaled per input-channel block: group -> the node its layout follows."""
        return {k: self.factor_nodes[k] for k in range(len(self.factors))
                if self.factors[k].split or any(g.split for g in self.gains[k])}

    def change(self, x: np.ndarray, shares: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The predicted change of every log rate under x and its Jacobian; ``shares[k]`` = (gradient, weight)
        squares per input channel of a split group (block widths stand in where missing)."""
        shares = shares or {}
        n = len(self.factors)
        f, jac = np.zeros(n), np.zeros((n, len(x)))
        for k in range(n):
            grad_shares, weight_shares = shares.get(k, (None, None))
            for gain in self.gains[k]:
                value, slope = _half_log_mean_exp(gain, grad_shares, x)
                f[k] += value / len(self.gains[k])
                jac[k] += slope / len(self.gains[k])
            value, slope = _half_log_mean_exp(self.factors[k], weight_shares, x)
            f[k] -= value
            jac[k] -= slope
        return f, jac


def _half_log_mean_exp(seg: Segments, squares: np.ndarray | None, x: np.ndarray) -> tuple[float, np.ndarray]:
    """1/2 log sum_b p_b exp(2 row_b x) over the blocks of ``seg`` (p_b: the block's share of ``squares`` per channel,
    of the channels without them) and its gradient sum_b p'_b row_b (p' the reweighted shares)."""
    if not seg.split:
        return float(seg.rows[0] @ x), seg.rows[0]
    widths = np.array(seg.widths)
    if squares is None or len(squares) != seg.channels or not squares.sum() > 0:
        p = widths / widths.sum()
    else:
        p = np.add.reduceat(squares, np.concatenate([[0], np.cumsum(widths)[:-1]])) / squares.sum()
    keep = p > 0
    rows = np.array(seg.rows)[keep]
    a = 2 * (rows @ x) + np.log(p[keep])
    top = a.max()
    e = np.exp(a - top)
    return 0.5 * (top + math.log(e.sum())), (e / e.sum()) @ rows


@dataclass
class ScaleModel:
    """The structure of the active part of a net for the scale model (see the module docstring)."""
    ends: list[str]
    active: list[LayerNode]
    groups: list[torch.nn.Parameter]  # the scalable weights, one variable each
    group_nodes: list[list[LayerNode]]
    lr_mults: list[float]
    var_of: dict[int, int]  # node index of an affine layer -> its variable
    rules: dict[int, str]  # node index -> rule (see _rule)
    channels: dict[str, int] = field(default_factory=dict)  # value -> channels (axis 1; 1 without one)
    unreached: list[str] = field(default_factory=list)  # learnable layers that feed no end (their own weights)
    whole: set[str] = field(default_factory=set)  # layers whose weight keeps its direction: no per-block factors
    bias_tops: list[list[str]] = field(default_factory=list)  # tops of the users of each shared bias
    approximate_layers: list[str] = field(default_factory=list)
    input_channels: dict[int, "InputChannels"] = field(default_factory=dict)  # split groups' layouts (measuring)

    @property
    def homogeneous(self) -> bool:
        return not self.approximate_layers

    def linearize(self, exponents: dict[int, tuple[float, float]] | None = None) -> Linearization:
        """The linear model with the given (g, h) local exponents per approximate layer (default 1, 1)."""
        exponents = exponents or {}
        n = len(self.groups)
        zero, eye = np.zeros(n), np.eye(n)
        lin: dict[str, Segments] = {}
        rows: list[np.ndarray] = []
        factors: list[Segments | None] = [None] * n
        factor_nodes: list[LayerNode | None] = [None] * n
        user_factor: dict[int, Segments] = {}

        def width(v: str) -> int:
            return self.channels.get(v, 1)

        def level(v: str) -> Segments:
            return lin.get(v) or Segments.uniform(width(v), zero)

        def same(values: list[str]) -> None:  # channel by channel
            if len(values) > 1:
                for piece in _aligned([level(v) for v in values])[1]:
                    rows.extend(r - piece[0] for r in piece[1:])

        def uniform(v: str) -> np.ndarray:  # all channels of v at one level: that level
            seg = level(v)
            rows.extend(r - seg.rows[0] for r in seg.rows[1:])
            return seg.mean()

        def pinned(values) -> None:
            rows.extend(r for v in values for r in level(v).rows if r.any())

        def fits(seg: Segments, v: str) -> Segments:  # a top over other channels than its bottom: uniform
            if seg.channels == width(v):
                return seg
            rows.extend(r - seg.rows[0] for r in seg.rows[1:])
            return Segments.uniform(width(v), seg.mean())

        for node in self.active:
            b, rule, tops = node.bottom_values, self.rules[node.index], node.top_values
            out: Segments | list[Segments] | None = None
            if rule == "affine":
                same(b)
                k, inp = self.var_of[node.index], level(b[0])
                if inp.split and _compensates(node) and node.name not in self.whole:
                    # per-block factors bring every block to one output level
                    top = inp.mean() + eye[k]
                    factor = inp.shifted(top, -1.0)
                else:
                    top = uniform(b[0]) + eye[k]
                    factor = Segments.uniform(inp.channels, eye[k])
                user_factor[node.index] = factor
                if factors[k] is not None:  # a shared weight: every user sees the same factors
                    rows.extend(p[1] - p[0] for p in _aligned([factors[k], factor])[1])
                if factors[k] is None or (factor.split and not factors[k].split):
                    factors[k], factor_nodes[k] = factor, node
                out = Segments.uniform(width(tops[0]) if tops else 1, top)
            elif rule == "channelwise":
                same(_signal_bottoms(node))
                out = level(b[0]) if b else None
            elif rule == "concat":
                if node.layer.axis == 1:
                    parts = [level(v) for v in b]
                    out = Segments.joined([w for p in parts for w in p.widths], [r for p in parts for r in p.rows])
                else:
                    same(b)
                    out = level(b[0])
            elif rule == "slice":
                seg, at, out = level(b[0]), 0, []
                for v, size in zip(tops, node.layer.sizes):
                    out.append(seg.sliced(at, at + size) if node.layer.axis == 1 else seg)
                    at += size
            elif rule == "pass":
                out = Segments.uniform(1, uniform(b[0]))
            elif rule == "approx":
                same(b)
                out = Segments.uniform(1, uniform(b[0]) * exponents.get(node.index, (1.0, 1.0))[0])
            elif rule == "first":  # Crop, Bias: bottom 0 carries the signal (a Bias bottom scales with it)
                if node.type == "Bias":
                    same(b)
                out = Segments.uniform(1, uniform(b[0]))
            elif rule == "prod":
                out = Segments.uniform(1, sum((uniform(v) for v in b), zero))
            elif rule == "reset":  # BatchNorm normalizes per channel; MVN and ArgMax see whole values
                if node.type != "BatchNorm":
                    uniform(b[0])
                out = Segments.uniform(1, zero)
            else:  # fixed
                pinned(b)
                out = Segments.uniform(1, zero)
            for i, v in enumerate(tops):
                seg = out[i] if isinstance(out, list) else out
                lin[v] = fits(seg, v) if seg.split else Segments.uniform(width(v), seg.rows[0])
        pinned(self.ends)
        for tops in self.bias_tops:
            same(tops)

        contributions: dict[str, list[Segments]] = {v: [Segments.uniform(width(v), zero)] for v in self.ends}
        gains: list[list[Segments]] = [[] for _ in range(n)]

        def push(v: str, m: Segments) -> None:
            contributions.setdefault(v, []).append(m if m.channels == width(v) else
                                                   Segments.uniform(width(v), m.mean()))

        for node in reversed(self.active):
            tops = [v for v in node.top_values if v in contributions]
            if not tops:
                continue
            b, rule = node.bottom_values, self.rules[node.index]
            if rule == "slice":
                parts = [_average(contributions[v]) if v in contributions else Segments.uniform(width(v), zero)
                         for v in node.top_values]
                m_in = Segments.joined([w for p in parts for w in p.widths], [r for p in parts for r in p.rows]) \
                    if node.layer.axis == 1 else _average(parts)
                push(b[0], m_in)
                continue
            m_out = _average([_average(contributions[v]) for v in tops])
            mo = m_out.mean()
            if rule == "affine":
                k, inp, factor = self.var_of[node.index], level(b[0]), user_factor[node.index]
                gains[k].append(inp.shifted(mo) if factor.split else Segments.uniform(inp.channels, mo + inp.mean()))
                for v in b:
                    push(v, factor.shifted(mo))
            elif rule == "approx":
                push(b[0], Segments.uniform(width(b[0]), mo + (exponents.get(node.index, (1.0, 1.0))[1] - 1.0)
                                            * level(b[0]).mean()))
            elif rule == "prod":
                total = sum((level(v).mean() for v in b), zero)
                for v in b:
                    push(v, Segments.uniform(width(v), mo + total - level(v).mean()))
            elif rule == "reset":
                if node.type == "BatchNorm":
                    widths, pieces = _aligned([m_out, level(b[0])])
                    push(b[0], Segments.joined(widths, [p[0] - p[1] for p in pieces]))
                elif node.type != "ArgMax":
                    push(b[0], Segments.uniform(width(b[0]), mo - level(b[0]).mean()))
            elif rule == "concat" and node.layer.axis == 1:
                at = 0
                for v in b:
                    push(v, m_out.sliced(at, at + width(v)))
                    at += width(v)
            elif rule in ("channelwise", "concat"):
                for v in _signal_bottoms(node):
                    push(v, m_out)
            elif rule == "first" and node.type == "Crop":
                push(b[0], Segments.uniform(width(b[0]), mo))
            else:  # pass, fixed, Bias
                for v in b:
                    push(v, Segments.uniform(width(v), mo))
        for k in range(n):
            if not gains[k]:  # no gradient reaches this weight (its rate is not valid anyway)
                gains[k] = [factors[k].shifted(zero, -1.0)]
        constraints = np.array(rows).reshape(-1, n) if rows else np.zeros((0, n))
        return Linearization(lin, gains, factors, factor_nodes, constraints)

    def solve(self, log_rates: np.ndarray, valid: np.ndarray, linear: Linearization | None = None,
              shares: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
              correction: np.ndarray | None = None) -> np.ndarray:
        """x minimizing sum over valid k of (log_rates_k + change_k(x) + (correction x)_k - t)^2 subject to
        constraints x = 0 (plus DAMPING |x|^2 on non-homogeneous nets), by Gauss-Newton from x = 0 (one step when
        no weight is split into blocks: the model is then linear)."""
        linear = linear or self.linearize()
        n = len(self.groups)
        basis = _null_space(linear.constraints, n)
        if basis.shape[1] == 0 or not valid.any():
            return np.zeros(n)
        correction = np.zeros((n, n)) if correction is None else correction
        damping = 0.0 if self.homogeneous else DAMPING
        dim = basis.shape[1]

        def residual(sol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = basis @ sol[:-1]
            f, jac = linear.change(x, shares)
            r = log_rates[valid] + (f + correction @ x)[valid] - sol[-1]
            a = np.concatenate([(jac + correction)[valid] @ basis, -np.ones((len(r), 1))], axis=1)
            if damping:  # damp directions the approximate layers make weak (a saturated layer's input)
                r = np.concatenate([r, math.sqrt(damping) * sol[:-1]])
                a = np.concatenate([a, math.sqrt(damping) * np.eye(dim, dim + 1)])
            return r, a

        sol = np.zeros(dim + 1)
        r, a = residual(sol)
        cost = float(r @ r)
        for _ in range(SOLVER_ITERS):
            step, *_ = np.linalg.lstsq(a, -r, rcond=None)
            size = 1.0
            while True:  # halve the step until the cost falls
                trial = sol + size * step
                r_new, a_new = residual(trial)
                new_cost = float(r_new @ r_new)
                if new_cost < cost or size < 1e-3:
                    break
                size /= 2
            if not new_cost < cost:
                break
            sol, r, a, gained, cost = trial, r_new, a_new, cost - new_cost, new_cost
            if gained <= 1e-12 * (1.0 + cost):
                break
        x = basis @ sol[:-1]
        if not np.isfinite(x).all():  # never write a non-finite factor
            return np.zeros(n)
        x[np.abs(x) < 1e-12] = 0.0
        return x


def build_scale_model(module: TorchNet, whole: Iterable[str] = ()) -> ScaleModel:
    """The scale model of ``module``'s net; the layers named in ``whole`` (pretrained weights) are only scaled as a
    whole, so the blocks of a split input they read share one level."""
    net = module.net
    after_loss = values_after_loss(net)
    ends = end_values(net, after_loss)
    if not ends:
        raise CaffeinitError(f"net '{net.name}': no output to inject gradients at (every layer is a data or loss "
                             "layer)")
    needed, active_idx = set(ends), set()
    for node in reversed(net.layers):
        if any(v in needed for v in node.top_values) and not node.layer.is_data:
            active_idx.add(node.index)
            needed.update(node.bottom_values)
    active = [node for node in net.layers if node.index in active_idx]
    rules = {node.index: _rule(node, net) for node in active}
    model = ScaleModel(ends, active, [], [], [], {}, rules, whole=set(whole))
    model.channels = {v: int(shape[1]) if len(shape) >= 2 else 1 for node in net.layers
                      for v, shape in zip(node.top_values, node.top_shapes)}
    for node in active:  # a frozen layer without a fixed nonzero bias scales with its input: the level passes on
        if model.rules[node.index] == "fixed" and affine_of(node) is not None \
                and _scales_with_input(node, module.layer_blobs[node.index], net):
            model.rules[node.index] = "pass"
    index_of_weight: dict[int, int] = {}
    for node in active:
        if model.rules[node.index] != "affine":
            continue
        weight = module.layer_blobs[node.index][0]
        if id(weight) not in index_of_weight:
            index_of_weight[id(weight)] = len(model.groups)
            model.groups.append(weight)
            model.group_nodes.append([])
            model.lr_mults.append(abs(weight_lr_mult(node, 0, net)))  # a negative one ascends, as fast
        model.var_of[node.index] = index_of_weight[id(weight)]
        model.group_nodes[index_of_weight[id(weight)]].append(node)
    # Layers that feed no end (a branch into Silence, layers after a loss) are not constrained: what they compute
    # reaches no output. Their own learnable weights are not measured.
    model.unreached = [node.name for node in net.layers if node.index not in active_idx
                       and affine_of(node) is not None and not is_frozen(node, net)
                       and not any(v in after_loss for v in node.bottom_values)
                       and id(module.layer_blobs[node.index][0]) not in index_of_weight]
    users: dict[int, list[str]] = {}  # a shared bias is scaled once: all its users need one top level
    for node in active:
        affine = affine_of(node)
        if affine is not None and affine.bias is not None and model.rules[node.index] == "affine":
            users.setdefault(id(module.layer_blobs[node.index][affine.bias]), []).append(node.top_values[0])
    model.bias_tops = [tops for tops in users.values() if len(tops) > 1]
    model.approximate_layers = [node.name for node in active if model.rules[node.index] == "approx"]
    return model


def _rule(node: LayerNode, net) -> str:
    t = node.type
    if affine_of(node) is not None:
        return "fixed" if is_frozen(node, net) else "affine"
    if t in CHANNELWISE:
        return "channelwise"
    if t == "Concat":
        return "concat"
    if t == "Slice":
        return "slice"
    if t in PASS_THROUGH:
        return "pass"
    if t == "Eltwise":
        from caffeinit.proto import caffe_pb2
        return "prod" if node.layer.operation == caffe_pb2.EltwiseParameter.PROD else "channelwise"
    if t == "Crop":
        return "first"
    if t == "Bias":
        return "first"
    if t == "Scale":  # two bottoms (the one-bottom form is affine)
        return "prod"
    if t == "BatchNorm" or t == "ArgMax" or (t == "MVN" and node.layer.normalize_variance):
        return "reset"
    if t == "MVN":
        return "pass"
    if t in APPROXIMATE:
        return "approx"
    return "fixed"


def _scales_with_input(node: LayerNode, blobs, net) -> bool:
    """Whether a frozen affine layer's output scales with its input: it has no bias, a learnable one (scaled with
    the output) or an all-zero one."""
    bias = affine_of(node).bias
    return bias is None or weight_lr_mult(node, bias, net) != 0 or not bool(blobs[bias].detach().any())


def _compensates(node: LayerNode) -> bool:
    """Whether an affine layer can undo per-block levels of its input in its weight (input channels on axis 1)."""
    if node.type in ("Convolution", "Deconvolution", "InnerProduct"):
        return node.layer.axis == 1
    return node.type == "Scale" and node.layer.scale_axis == 1


class InputChannels:
    """A compensating layer's weight seen per input channel: squares summed per channel, and per-channel factors."""

    def __init__(self, node: LayerNode, weight_shape: tuple[int, ...]):
        layer = node.layer
        if node.type == "Convolution":  # (outputs, inputs / group, kernel...): channel = group * per + index
            g, c = layer.group, layer.channels
            self.view, self.factor_shape = (g, -1, c // g, math.prod(weight_shape[2:])), (g, 1, c // g, 1)
            self.axes = (1, 3)
        elif node.type == "InnerProduct" and not layer.transpose:  # (outputs, channels x inner)
            c = node.bottom_shapes[0][1]
            self.view, self.factor_shape, self.axes = (weight_shape[0], c, -1), (1, c, 1), (0, 2)
        else:  # Deconvolution, transposed InnerProduct, Scale: input channels first
            c = node.bottom_shapes[0][1] if node.type == "InnerProduct" else weight_shape[0]
            self.view, self.factor_shape, self.axes = (c, -1), (c, 1), (1,)
        self.channels = c

    def squares(self, t: torch.Tensor) -> np.ndarray:
        return (t.detach().double().reshape(self.view) ** 2).sum(self.axes).reshape(-1).cpu().numpy()

    def scale(self, weight: torch.Tensor, factors: np.ndarray) -> None:
        f = torch.as_tensor(factors, dtype=weight.dtype, device=weight.device).reshape(self.factor_shape)
        weight.data.copy_((weight.data.reshape(self.view) * f).reshape(weight.shape))


def _null_space(a: np.ndarray, n: int) -> np.ndarray:
    if a.shape[0] == 0:
        return np.eye(n)
    _, s, vt = np.linalg.svd(a, full_matrices=True)
    rank = int((s > 1e-9 * max(1.0, s.max(initial=0.0))).sum())
    return vt[rank:].T
