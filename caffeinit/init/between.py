"""Algorithm 2, the between-layer step: equalize the effective change rates lr_mult x C_k, C_k = RMS(dL/dW_k) /
RMS(W_k), under N(0,1) gradients injected at the net's end values (no labels, no loss).

End values: the inputs of loss layers and Accuracy (labels excluded) and the net's unconsumed outputs, with trailing
Softmax / ArgMax layers stripped. Only layers that feed an end value take part.

Scale model. Each learnable affine weight W_k (Convolution, Deconvolution, InnerProduct, one-bottom Scale; a
weight shared through a ParamSpec name is one W_k) gets a variable x_k. Every value v of the net then becomes about
exp(l_v) times its old self (forward level, RMS), and the gradient reaching v about exp(m_v) times its old self
(backward level); both are linear in x. A level is kept per block of channels (axis 1): a Concat along the channels
joins its bottoms' blocks, so each branch keeps its own level. Forward: data 0; ReLU, PReLU, pooling, Dropout,
Split, AbsVal, Eltwise SUM/MAX act per channel and pass the blocks on (the bottoms of an Eltwise are constrained to
one level per channel: no factor can preserve a sum of differently scaled terms); a Concat or Slice along the
channels joins or splits blocks (along another axis: bottoms equal per channel); Flatten, Reshape, Tile, Crop, LRN
and the other layers that mix channels need one level over all channels (constrained) and pass it on; Eltwise PROD
and two-bottom Scale add; BatchNorm resets every channel to 0 (its statistics are multiplied by exp(l_c) and
exp(2 l_c) per channel), MVN (variance) to 0 from one common level; a Bias layer passes l on, its bias multiplied
by exp(l_in). An affine top has one level: l_top = mean_c l_in,c + x_k (channel-weighted); its bias is multiplied
by exp(l_top) and its weight's input-channel block b by exp(z_b), z_b = l_top - l_in,b (= x_k on an input of one
block). A layer that reads a split input compensates each block in its own weight this way: Convolution,
Deconvolution and InnerProduct with axis 1 (an InnerProduct's input channel c owns the columns c x inner), and a
one-bottom Scale on axis 1; other affine layers need one level. Frozen affine layers (lr_mult 0) and layers the
model does not know (Embed, recurrent, ...) are left untouched: their bottoms are constrained to l = 0. Every end
value is constrained to l = 0, so on a positively homogeneous net the function is preserved exactly. Backward:
m = 0 at the ends (the injected gradients do not change); an affine layer's input block b gets m_out + z_b,
BatchNorm subtracts l_in per channel, a product adds the other factors' levels; a value read by several layers
takes the per-channel mean of their contributions.

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

Non-homogeneous layers (LRN, Sigmoid, TanH, ELU, Softmax inside the net, Power, ...) get local exponents measured on
the data: scaling the input by s scales the output RMS by about s^g and the backward Jacobian by about s^(h - 1)
(for LRN ACROSS_CHANNELS g = h is about 1 - 2 beta u / (k + u), u = alpha/n sum x^2), so l_out = g l_in and
m_in = m_out + (h - 1) l_in; for one update the exponents are secants from the layer's input level now to the one
the update gives it (a fixed point on the probes alone). Such a layer changes the function (it does not scale its
output uniformly), so outputs after the step are not proportional to those before; the homogeneous part after it
is still rescaled exactly. The update is then a Newton step on a local model and is repeated. Every net is
measured once over all ``between_batches`` batches (the probes on the first); their spread gives each rate's
standard error. After an update the first batch is measured again with the same gradient draws (common random
numbers), its change is added to the all-batch rates, and a Broyden update corrects the model's response with the
difference between what the update did and what the model predicted. Once the model has mispredicted a change on
the first batch (by more than ``tolerance`` and a tenth of the change), every later update is measured on all
batches instead: the non-homogeneous layers shaped that change, so it may differ between batches, and on deep nets
the first batch's own rates also react to small weight changes beyond any scale model (GoogLeNet: scaling conv1 by
1.001 moves the rate of inception_3a/5x5_reduce by 7%, through switching ReLU and max-pooling paths); adding those
changes up would make the rates a random walk that the step then chases (it ended at 1.72x on held-out images
after 10 updates; measuring every batch: 1.31x in 6). An update that widened the spread (max/min) is taken back
(the weights are divided by what it multiplied) and retried with half the step. The iteration stops (converged)
when no rate would move by more than ``tolerance`` or NOISE_Z of its standard errors (closer than its sampling
noise an estimate cannot be equalized), or the last update narrowed the spread by less than half the tolerance, or
the step fell below 1/16, or (once updates are measured on every batch) the spread itself is no wider than K equal
rates would show from their sampling noise alone (the expected range of K normals times the median standard error:
the largest of 57 GoogLeNet moves exceeds 1.5 standard errors by chance alone, so the per-rate test kept chasing
noise to the update limit on some image sets). The update that batch 0 shows mispredicted is measured on the other
batches at once, and these all-batch rates are the new baseline (comparing later all-batch spreads with one
extrapolated from batch 0 took back good updates: GoogLeNet spent 4 of its 8 updates so, 33 gradient passes -> 13). At most
``between_iters`` updates. The reported rates after the step are these all-batch rates (measured, or with the first
batch's last changes added; exact on homogeneous nets). CaffeNet (two LRN layers) takes 4 + 1 gradient passes: one
update, predicted within 1% on its first batch.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.executor import TorchNet, fast_layout
from caffeinit.init.config import InitConfig
from caffeinit.init.report import LayerRecord
from caffeinit.init.roles import affine_of, frozen_at_zero, is_frozen, weight_lr_mult
from caffeinit.net import LayerNode, Net

STRIPPED_AT_END = ("Softmax", "ArgMax")
CHANNELWISE = ("ReLU", "PReLU", "Pooling", "Dropout", "Split", "AbsVal", "Silence", "BatchReindex")
PASS_THROUGH = ("Flatten", "Reshape", "Tile")  # the level passes on, channel blocks do not
APPROXIMATE = ("LRN", "Sigmoid", "TanH", "ELU", "BNLL", "Power", "Exp", "Log", "Clip", "Swish", "Softmax")
EXPONENT_STEP = 0.1  # local exponents are measured by scaling the input by exp(-+ this)
PROBE_IMAGES = 4  # the probes look at this many images of the first batch
MODEL_ROUNDS = 8  # fixed-point rounds for the secant exponents of one update
DAMPING = 0.03  # Tikhonov weight on x for non-homogeneous nets (a direct direction's response is 2 per unit)
MODEL_TRUST = 0.1  # a change predicted within this fraction is taken to hold on every batch
NOISE_Z = 1.5  # a rate counts as equalized once its remaining move is within this many standard errors
SOLVER_ITERS = 50  # Gauss-Newton iterations of one solve (a net without compensated blocks needs one)


def end_values(net: Net) -> list[str]:
    """Values that receive the injected gradients (see the module docstring)."""
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

    for node in net.layers:
        if node.layer.is_loss:
            for v in node.bottom_values:
                add(v)
        elif not node.layer.is_data:
            for v in node.top_values:
                if not consumers.get(v):
                    add(v)
    order = {v: i for i, v in enumerate(v for node in net.layers for v in node.top_values)}
    return sorted(ends, key=order.__getitem__)


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
    blocked: set[str] = field(default_factory=set)  # values read by inactive layers: pinned to l = 0
    bias_tops: list[list[str]] = field(default_factory=list)  # tops of the users of each shared bias
    approximate_layers: list[str] = field(default_factory=list)
    input_channels: dict[int, "_InputChannels"] = field(default_factory=dict)  # split groups' layouts (measuring)

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
                if inp.split and _compensates(node):  # per-block factors bring every block to one output level
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
                same(b)
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
        pinned(self.blocked)
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
                for v in b:
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


def build_scale_model(module: TorchNet) -> ScaleModel:
    net = module.net
    ends = end_values(net)
    if not ends:
        raise CaffeinitError(f"net '{net.name}': no output to inject gradients at (every layer is a data or loss "
                             "layer)")
    needed, active_idx = set(ends), set()
    for node in reversed(net.layers):
        if any(v in needed for v in node.top_values) and not node.layer.is_data:
            active_idx.add(node.index)
            needed.update(node.bottom_values)
    active = [node for node in net.layers if node.index in active_idx]
    model = ScaleModel(ends, active, [], [], [], {}, {node.index: _rule(node) for node in active})
    model.channels = {v: int(shape[1]) if len(shape) >= 2 else 1 for node in net.layers
                      for v, shape in zip(node.top_values, node.top_shapes)}
    index_of_weight: dict[int, int] = {}
    for node in active:
        if model.rules[node.index] != "affine":
            continue
        weight = module.layer_blobs[node.index][0]
        if id(weight) not in index_of_weight:
            index_of_weight[id(weight)] = len(model.groups)
            model.groups.append(weight)
            model.group_nodes.append([])
            model.lr_mults.append(weight_lr_mult(node, 0))
        model.var_of[node.index] = index_of_weight[id(weight)]
        model.group_nodes[index_of_weight[id(weight)]].append(node)
    produced = {v for node in active for v in node.top_values}
    for node in net.layers:  # inactive layers reading active values must see them unchanged
        if node.index not in active_idx and not node.layer.is_loss:
            model.blocked.update(v for v in node.bottom_values if v in produced)
    users: dict[int, list[str]] = {}  # a shared bias is scaled once: all its users need one top level
    for node in active:
        affine = affine_of(node)
        if affine is not None and affine.bias is not None and model.rules[node.index] == "affine":
            users.setdefault(id(module.layer_blobs[node.index][affine.bias]), []).append(node.top_values[0])
    model.bias_tops = [tops for tops in users.values() if len(tops) > 1]
    model.approximate_layers = [node.name for node in active if model.rules[node.index] == "approx"]
    return model


def _rule(node: LayerNode) -> str:
    t = node.type
    if affine_of(node) is not None:
        return "fixed" if is_frozen(node) else "affine"
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


def _compensates(node: LayerNode) -> bool:
    """Whether an affine layer can undo per-block levels of its input in its weight (input channels on axis 1)."""
    if node.type in ("Convolution", "Deconvolution", "InnerProduct"):
        return node.layer.axis == 1
    return node.type == "Scale" and node.layer.scale_axis == 1


class _InputChannels:
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


# -- measuring ---------------------------------------------------------------------------------------------------

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
                    (g,) = torch.autograd.grad((y * self._direction(y)).sum(), xs)
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


class _ProbeTap:
    """A forward tap that keeps a ScaleProbe for each of the model's approximate layers."""

    def __init__(self, module: TorchNet, model: ScaleModel, seed: int, inner=None):
        self.module, self.seed, self.inner = module, seed, inner
        self.approx = {node.index for node in model.active if model.rules[node.index] == "approx"}
        self.wanted = {node.bottom_values[0] for node in model.active if node.index in self.approx}
        self.values: dict[str, torch.Tensor] = {}
        self.probes: dict[int, ScaleProbe] = {}

    def __call__(self, node: LayerNode, tops) -> None:
        if self.inner is not None:
            self.inner(node, tops)
        if node.index in self.approx and node.bottom_values[0] in self.values:
            gen = torch.Generator(device=self.module.device)
            gen.manual_seed((int(self.seed) * 15_485_863 + 31 * node.index + 7) % (2 ** 63))
            self.probes[node.index] = ScaleProbe(node.layer, self.values[node.bottom_values[0]],
                                                 self.module.layer_blobs[node.index], gen)
        for v, t in zip(node.top_values, tops):
            if v in self.wanted:  # RMS ratios: a few images are plenty
                self.values[v] = t.detach()[:PROBE_IMAGES] if t.dim() else t.detach()


def _rms(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach())) / math.sqrt(max(t.numel(), 1))


def _square_grads(module: TorchNet, model: ScaleModel, feed: dict[str, torch.Tensor], batch: int, draws: int,
                  seed: int, params: list[torch.nn.Parameter], tap=None,
                  channel_sums: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Sum over ``draws`` N(0,1) gradient draws at the end values of mean(dL/dW^2), per param, on one batch. The
    draws depend only on ``seed``, ``batch`` and the draw. ``channel_sums[k]`` (split groups, ``params`` being the
    model's groups) gets the sums of dL/dW_k^2 per input channel added. InnerProduct weights never get their
    gradient formed (see _GramTap)."""
    stop = max(node.index for node in model.active) + 1
    sums = np.zeros(len(params))
    feed = fast_layout(feed)
    grams = _GramTap(module, model, params, feed, tap)
    direct = [k for k in range(len(params)) if k not in grams.readers]
    with torch.enable_grad():
        out = module(feed, stop=stop, keep=model.ends, tap=grams)
        gram_keys = [k for k in grams.readers if k in grams.outputs]
        gen = torch.Generator(device=module.device)
        for d in range(draws):
            gen.manual_seed((int(seed) * 7_368_787 + 104_729 * batch + 1_299_709 * d + 1) % (2 ** 63))
            loss = sum((torch.randn(out[v].shape, generator=gen, device=gen.device).to(out[v].device) * out[v]).sum()
                       for v in model.ends)
            wanted = [params[k] for k in direct] + [grams.outputs[k] for k in gram_keys]
            grads = torch.autograd.grad(loss, wanted, retain_graph=d < draws - 1, allow_unused=True)
            for k, g in zip(direct, grads):
                if g is not None:
                    sums[k] += _rms(g) ** 2
                    if channel_sums is not None and k in channel_sums:
                        channel_sums[k] += model.input_channels[k].squares(g)
            for k, g in zip(gram_keys, grads[len(direct):]):
                if g is not None:
                    split = channel_sums is not None and k in channel_sums
                    squares = grams.squares(k, g, per_channel=split)
                    sums[k] += float(squares.sum()) / params[k].numel()
                    if split:
                        channel_sums[k] += squares
    return sums


class _GramTap:
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

    def squares(self, k: int, grad: torch.Tensor, per_channel: bool) -> np.ndarray:
        """The sum of the squared weight gradient, or its sums per input channel (axis 1 of the input, as
        _InputChannels counts them)."""
        node = self.readers[k]
        dy = grad.detach().double().reshape(-1, node.layer.num_output)
        rows = dy.shape[0]
        gram_dy = dy @ dy.t()
        x = self.inputs[k].double().reshape(rows, -1)
        if not per_channel:
            return (x @ x.t() * gram_dy).sum().clamp_min(0).reshape(1).cpu().numpy()
        x = x.reshape(rows, int(node.bottom_shapes[0][1]), -1).transpose(0, 1)  # (channels, rows, inner)
        return (torch.bmm(x, x.transpose(1, 2)) * gram_dy).sum(dim=(1, 2)).clamp_min(0).cpu().numpy()


class _GradsOnly:
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


def _weight_rms(params) -> np.ndarray:
    return np.array([_rms(p) for p in params])


def _rates(square_sums: np.ndarray, count: int, weight_rms: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight_rms > 0, np.sqrt(square_sums / count) / weight_rms, np.nan)


def measure_rates(module: TorchNet, model: ScaleModel, feeds: list[dict[str, torch.Tensor]], draws: int, seed: int,
                  params: list[torch.nn.Parameter] | None = None, tap=None) -> np.ndarray:
    """RMS(dL/dW) / RMS(W) for each of ``params`` (default: the model's groups), over ``feeds`` and ``draws`` N(0,1)
    gradient draws per batch at the end values. ``tap`` sees the forward of the first batch."""
    params = model.groups if params is None else params
    if not params:
        return np.zeros(0)
    sums = np.zeros(len(params))
    with _GradsOnly(module, params):
        for b, feed in enumerate(feeds):
            sums += _square_grads(module, model, feed, b, draws, seed, params, tap if b == 0 else None)
    return _rates(sums, len(feeds) * draws, _weight_rms(params))


# -- the step ------------------------------------------------------------------------------------------------------

@dataclass
class BetweenResult:
    """Rates are C_k per weight group (without lr_mult): ``rates_before`` as first measured (all batches on a
    homogeneous net, else the first batch), ``rates_after`` the final all-batch ones."""
    rates_before: np.ndarray
    rates_after: np.ndarray
    iterations: int
    converged: bool
    homogeneous: bool
    lr_mults: list[float]
    rate_noise: float | None = None  # median relative standard error of the all-batch rates (None: one batch)
    note: str | None = None  # why rates still differ after convergence, when they do beyond tolerance and noise


def run_between(module: TorchNet, feeds: list[dict[str, torch.Tensor]], config: InitConfig,
                records: dict[str, LayerRecord], progress: bool = False) -> BetweenResult:
    """Rescale the net's learnable layers in place until their effective change rates are equal."""
    model = build_scale_model(module)
    params, draws, seed = model.groups, config.between_draws, config.seed
    lr = np.array(model.lr_mults)
    if not params:  # nothing learnable (every layer frozen)
        return BetweenResult(np.zeros(0), np.zeros(0), 0, True, model.homogeneous, model.lr_mults)
    if not _reached_by_gradient(module, model).any():  # e.g. every path ends in a frozen all-zero layer
        nothing = np.full(len(params), np.nan)
        _warn_without_gradient(model, np.full(len(params), -np.inf), records)
        return BetweenResult(nothing, nothing, 0, True, model.homogeneous, model.lr_mults)
    model.input_channels = {k: _InputChannels(node, tuple(params[k].shape))
                            for k, node in model.linearize().split_groups().items()}
    start_rms = _weight_rms(params)
    from tqdm.auto import tqdm
    bar = tqdm(total=config.between_iters, desc="between-layer", unit="it", disable=not progress, leave=False)
    with _GradsOnly(module, params):

        def measure(batches: range):
            """Log effective rates over ``batches``, of the first of them alone and of each, the probes seen on the
            first and the split groups' gradient squares per input channel."""
            tap = _ProbeTap(module, model, seed)
            channel_sums = {k: np.zeros(reader.channels) for k, reader in model.input_channels.items()}
            per_batch = [_square_grads(module, model, feeds[b], b, draws, seed, params, tap if b == batches[0] else None,
                                       channel_sums) for b in batches]
            weight_rms = _weight_rms(params)
            with np.errstate(divide="ignore"):
                log_rates = np.log(_rates(sum(per_batch), len(batches) * draws, weight_rms) * lr)
                log_first = np.log(_rates(per_batch[0], draws, weight_rms) * lr)
                log_each = np.array([np.log(_rates(sums, draws, weight_rms) * lr) for sums in per_batch])
            return log_rates, log_first, tap.probes, channel_sums, log_each

        # every batch at the start (their spread: the rates' standard errors); afterwards batch 0, or every batch
        # once the model has mispredicted an update
        log_rates, log_first, probes, sums, log_each = measure(range(len(feeds)))
        valid = np.isfinite(log_rates) & np.isfinite(log_first)
        _warn_without_gradient(model, log_rates, records)
        standard_error = _rate_noise(log_each, valid)
        noise = NOISE_Z * standard_error
        noise_range = _noise_range(standard_error, valid)
        first_rates = np.exp(log_rates) / lr
        step_size, prev_spread, iterations, converged = 1.0, math.inf, 0, False
        correction = np.zeros((len(params), len(params)))  # learnt error of the model's response (Broyden)
        limit = math.log1p(config.tolerance)
        undo = None  # the last update and the state before it
        distrust = False  # the model mispredicted a change: later updates are measured on every batch
        try:
            while True:
                spread = float(np.ptp(log_rates[valid])) if valid.any() else 0.0
                if undo is not None and spread > undo[0]:  # the update made it worse: take it back, halve the step
                    spread, x, linear, state = undo
                    _apply(module, model, linear, -x, records)
                    log_rates, log_first, probes, sums, valid = state
                    step_size /= 2
                    stalled = step_size < 1 / 16  # the sampling noise or the model's limits are reached
                else:
                    stalled = prev_spread - spread < limit / 2  # the constraints allow no better
                undo, prev_spread = None, spread
                bar.set_postfix_str(f"spread {math.exp(spread):.3g}x", refresh=True)
                x, linear, move = _model_step(model, probes, np.where(valid, log_rates, 0.0), valid, correction,
                                              _shares(model, sums))
                # a rate is done when its move is within the tolerance or the sampling noise of its estimate
                bound = np.maximum(limit, noise)
                if np.all(np.abs(move[valid]) <= bound[valid]) or stalled or (distrust and spread <= noise_range):
                    converged = True
                    break
                if iterations == config.between_iters:
                    break
                x, move = x * step_size, move * step_size
                undo = (spread, x, linear, (log_rates, log_first, probes, sums, valid.copy()))
                _apply(module, model, linear, x, records)
                iterations += 1
                bar.update(1)
                if model.homogeneous and step_size == 1.0:
                    log_rates = log_rates + move  # exact on homogeneous nets (split groups too)
                    prev_spread = float(np.ptp(log_rates[valid])) if valid.any() else 0.0
                    converged = True
                    break
                every_batch = distrust and len(feeds) > 1
                log_all, log_now, probes, sums, _ = measure(range(len(feeds)) if every_batch else range(1))
                valid &= np.isfinite(log_now) & np.isfinite(log_all)
                seen = np.where(valid, log_now - log_first, 0.0)
                if np.max(np.abs(x)) >= limit:  # smaller steps say more about the noise than about the model
                    correction += np.outer(seen - np.where(valid, move, 0.0), x) / float(x @ x)
                # a change the model mispredicted on batch 0 (by more than the tolerance and a tenth of the change:
                # the non-homogeneous layers shaped it) may differ between batches, and batch 0's own rates may
                # react to small weight changes beyond what the model knows (switching ReLU and max-pooling
                # paths): from then on updates are measured on every batch
                error = np.max(np.abs(seen - move)[valid], initial=0.0)
                trusted = max(limit, MODEL_TRUST * np.max(np.abs(move[valid]), initial=0.0))
                mispredicted = len(feeds) > 1 and error > trusted
                if every_batch:
                    log_rates = log_all
                elif mispredicted:  # batch 0's change says little of the others: measure them now, a new baseline
                    rest, _, _, sums_rest, _ = measure(range(1, len(feeds)))
                    log_rates = 0.5 * np.log((np.exp(2 * log_now) + (len(feeds) - 1) * np.exp(2 * rest)) / len(feeds))
                    sums = {k: sums[k] + sums_rest[k] for k in sums}
                    valid &= np.isfinite(log_rates)
                    undo, prev_spread = None, math.inf
                else:
                    log_rates = log_rates + seen
                distrust |= mispredicted
                log_first = log_now
        finally:
            bar.close()
    noise_level = float(np.expm1(np.median(standard_error[valid]))) if len(feeds) > 1 and valid.any() else None
    if not converged:
        noise_note = f", each measured to +-{100 * noise_level:.0f}%" if noise_level is not None else ""
        warnings.warn(f"the between-layer step did not converge in {config.between_iters} updates (non-homogeneous "
                      f"layers: {', '.join(model.approximate_layers) or 'none'}); change rates still differ by "
                      f"{math.exp(prev_spread):.2f}x{noise_note} (--between-iters allows more updates)")
    note = _structural_spread_note(model, log_rates, valid, max(limit, noise_range)) if converged else None
    rates = np.where(valid, np.exp(log_rates) / lr, np.nan)
    end_rms = _weight_rms(params)
    for k, nodes in enumerate(model.group_nodes):
        for node in nodes:
            record = records.get(node.name)
            if record is not None:
                record.rate_after = float(rates[k] * lr[k]) if np.isfinite(rates[k]) else None
                record.between_scale = end_rms[k] / start_rms[k] if start_rms[k] > 0 else 1.0
                if record.rate_after is not None and standard_error[k] > 0:
                    record.rate_noise = float(np.expm1(standard_error[k]))
    return BetweenResult(first_rates, rates, iterations, converged, model.homogeneous, model.lr_mults, noise_level,
                         note)


def _noise_range(standard_error: np.ndarray, valid: np.ndarray) -> float:
    """The spread (range of log rates) that K equal rates show from sampling noise alone: the expected range of K
    standard normals (twice Blom's estimate of the largest) times the median standard error."""
    k = int(valid.sum())
    if k < 2:
        return 0.0
    from statistics import NormalDist
    return 2 * NormalDist().inv_cdf((k - 0.375) / (k + 0.25)) * float(np.median(standard_error[valid]))


def _structural_spread_note(model: ScaleModel, log_rates: np.ndarray, valid: np.ndarray,
                            allowed: float) -> str | None:
    """After convergence, rates whose spread is wider than ``allowed`` (the tolerance, or what their noise alone
    gives) are held apart by the net's structure (the step's update is the least-squares solution over the
    rescalings that keep the function): say so, with the extremes, so a large spread (ResNet-50: ~4x) is not read
    as a failure to converge."""
    if valid.sum() < 2:
        return None
    idx = np.flatnonzero(valid)
    hi, lo = idx[np.argmax(log_rates[idx])], idx[np.argmin(log_rates[idx])]
    if log_rates[hi] - log_rates[lo] <= allowed:
        return None
    reasons = []
    if any(n.type == "Eltwise" and model.rules.get(n.index) == "channelwise" for n in model.active):
        reasons.append("the inputs of each Eltwise sum share one scale per channel (residual streams)")
    if any(len(nodes) > 1 for nodes in model.group_nodes):
        reasons.append("layers that share parameters share one scale")
    frozen = [n.name for n in model.active if model.rules.get(n.index) == "fixed" and affine_of(n) is not None]
    if frozen:
        reasons.append(f"frozen layers ({', '.join(frozen[:4])}{', ...' if len(frozen) > 4 else ''}) keep their "
                       "scale, and so do the layers that feed them")
    if not model.homogeneous:
        names = ", ".join(model.approximate_layers[:4]) + (", ..." if len(model.approximate_layers) > 4 else "")
        reasons.append(f"the non-homogeneous layers ({names}) respond to scaling only approximately")
    why = "; ".join(reasons) or "layers that mix channels tie the scales of the layers around them"
    return (f"the rates still differ by {math.exp(log_rates[hi] - log_rates[lo]):.2f}x after the best rescaling "
            f"that keeps the net's function (least squares on the log rates): {why}; highest "
            f"{model.group_nodes[hi][0].name}, lowest {model.group_nodes[lo][0].name}")


def _rate_noise(log_each: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Standard error of each all-batch log rate, from how the batches' own log rates spread (per layer, pooled
    with the median layer's: a few batches give a rough per-layer figure); zero with a single batch."""
    count = log_each.shape[0]
    valid = valid & np.isfinite(log_each).all(axis=0)
    if count < 2 or not valid.any():
        return np.zeros(log_each.shape[1])
    sd = np.where(valid, np.std(np.where(valid, log_each, 0.0), axis=0, ddof=1), 0.0)
    pooled = float(np.median(sd[valid]))
    return np.where(valid, np.sqrt((sd ** 2 + pooled ** 2) / 2) / math.sqrt(count), 0.0)


def _reached_by_gradient(module: TorchNet, model: ScaleModel) -> np.ndarray:
    """Per weight group: whether a gradient injected at the ends can reach it at all (frozen all-zero layers pass
    none back)."""
    carrying = set(model.ends)
    for node in reversed(model.active):
        if any(v in carrying for v in node.top_values) and not frozen_at_zero(node, module.layer_blobs[node.index]):
            carrying.update(node.bottom_values)
    return np.array([any(v in carrying for node in nodes for v in node.top_values) for nodes in model.group_nodes])


def _warn_without_gradient(model: ScaleModel, log_rates: np.ndarray, records: dict[str, LayerRecord]) -> None:
    """Learnable layers the random output gradients never reach (log rate -inf: zero gradient, nonzero weight)."""
    names = [model.group_nodes[k][0].name for k in np.flatnonzero(np.isneginf(log_rates))]
    for name in names:
        if name in records and not records[name].note:
            records[name].note = "no gradient reaches it from the net's outputs: not rescaled"
    if names:
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        warnings.warn(f"no gradient reaches {len(names)} learnable layer{'s' if len(names) > 1 else ''} from the "
                      f"net's outputs ({shown}): the between-layer step leaves {'them' if len(names) > 1 else 'it'}"
                      f" as the within-layer step set {'them' if len(names) > 1 else 'it'}")


def _model_step(model: ScaleModel, probes: dict[int, ScaleProbe], log_rates: np.ndarray, valid: np.ndarray,
                correction: np.ndarray, shares: dict[int, tuple[np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, Linearization, np.ndarray]:
    """The update x, the model it was solved on and the change of the log rates it predicts (``correction``
    included). The approximate layers' exponents are secants up to the input level the update gives them (a fixed
    point, found by a few rounds on the probes alone: no net passes)."""
    bottom = {node.index: node.bottom_values[0] for node in model.active if node.index in probes}
    levels = {i: 0.0 for i in probes}
    for _ in range(MODEL_ROUNDS):
        linear = model.linearize({i: probe.exponents(levels[i]) for i, probe in probes.items()})
        x = model.solve(log_rates, valid, linear, shares, correction)
        new = {i: linear.level(v, x) for i, v in bottom.items()}
        if all(abs(new[i] - levels[i]) < 1e-3 for i in levels):
            break
        levels = new
    return x, linear, linear.change(x, shares)[0] + correction @ x


def _shares(model: ScaleModel, channel_sums: dict[int, np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per split group: (gradient squares, weight squares) per input channel."""
    return {k: (sums, model.input_channels[k].squares(model.groups[k])) for k, sums in channel_sums.items()}


def _apply(module: TorchNet, model: ScaleModel, linear: Linearization, x: np.ndarray,
           records: dict[str, LayerRecord]) -> None:
    """Multiply each weight group by its factors (exp(x_k), per input-channel block where split) and compensate
    biases and BatchNorm statistics (see the docstring)."""
    done: set[int] = set()

    def scale(p: torch.Tensor, factor: float) -> None:
        if id(p) not in done and factor != 1.0:
            p.data.mul_(factor)
        done.add(id(p))

    def level(v: str) -> float:
        return linear.level(v, x)

    for k, weight in enumerate(model.groups):
        factors = linear.factors[k]
        if k in model.input_channels:
            model.input_channels[k].scale(weight, np.exp(factors.per_channel(x)))
            done.add(id(weight))
        else:
            scale(weight, math.exp(float(factors.rows[0] @ x)))
    for node in model.active:
        blobs = module.layer_blobs[node.index]
        rule = model.rules[node.index]
        affine = affine_of(node)
        if rule == "affine" and affine.bias is not None:
            scale(blobs[affine.bias], math.exp(level(node.top_values[0])))
        elif node.type == "BatchNorm":  # per channel: its input may be split into blocks
            seg = linear.lin.get(node.bottom_values[0])
            if seg is not None and seg.split and id(blobs[0]) not in done and seg.channels == blobs[0].numel():
                factor = torch.as_tensor(np.exp(seg.per_channel(x)), dtype=blobs[0].dtype, device=blobs[0].device)
                blobs[0].data.mul_(factor)
                blobs[1].data.mul_(factor * factor)
                done.update((id(blobs[0]), id(blobs[1])))
            else:
                factor = math.exp(level(node.bottom_values[0]))
                scale(blobs[0], factor)
                scale(blobs[1], factor * factor)
        elif node.type == "Bias" and len(blobs):
            scale(blobs[0], math.exp(level(node.bottom_values[0])))
        elif node.type == "Scale" and rule == "prod" and node.layer.bias_term:
            scale(blobs[-1], math.exp(level(node.top_values[0])))
        record = records.get(node.name)
        if record is not None and record.mean_after is not None and node.top_values:
            factor = math.exp(level(node.top_values[0]))
            record.mean_after *= factor
            record.std_after *= factor

