"""Algorithm 2, the between-layer step: equalize the effective change rates lr_mult x C_k, C_k = RMS(dL/dW_k) /
RMS(W_k), under N(0,1) gradients injected at the net's end values (no labels, no loss).

End values: the inputs of loss layers and Accuracy (labels excluded) and the net's unconsumed outputs, with trailing
Softmax / ArgMax layers stripped. Only layers that feed an end value take part.

Scale model. Each learnable affine weight W_k (Convolution, Deconvolution, InnerProduct, one-bottom Scale; a
weight shared through a ParamSpec name is one W_k) is multiplied by exp(x_k). Every value v of the net then becomes
about exp(l_v) times its old self (forward level, RMS), and the gradient reaching v about exp(m_v) times its old
self (backward level); both are linear in x. Forward: data 0; an affine top l_in + x_k (its bias is multiplied by
exp(l_top)); ReLU, PReLU, pooling, Dropout, Concat, Eltwise SUM/MAX, Split, Flatten, Reshape, Slice, Crop pass l on
(their bottoms are constrained to one common l); Eltwise PROD adds; BatchNorm and MVN (variance) reset l to 0 (the
BatchNorm statistics are multiplied by exp(l_in) and exp(2 l_in)); a Bias layer passes l on, its bias multiplied by
exp(l_in). Frozen affine layers (lr_mult 0) and layers the model does not know (Embed, recurrent, ...) are left
untouched: their bottoms are constrained to l = 0. Every end value is constrained to l = 0, so on a positively
homogeneous net the function is preserved exactly. Backward: m = 0 at the ends (the injected gradients do not
change); an affine layer adds x_k, BatchNorm subtracts l_in, a product adds the other factors' levels; a value
read by several layers takes the mean of their contributions. The log change rate of W_k then moves by
l_in + m_out - x_k, which is -2 x_k on a homogeneous net: one measurement gives the exact update, the least-squares
solution of "all log rates equal" on the constraints' null space (a chain is equalized exactly, a DAG as well as
its merges allow).

Non-homogeneous layers (LRN, Sigmoid, TanH, ELU, Softmax inside the net, Power, ...) get local exponents measured on
the data: scaling the input by s scales the output RMS by about s^g and the backward Jacobian by about s^(h - 1)
(for LRN ACROSS_CHANNELS g = h is about 1 - 2 beta u / (k + u), u = alpha/n sum x^2), so l_out = g l_in and
m_in = m_out + (h - 1) l_in; for one update the exponents are secants from the layer's input level now to the one
the update gives it (a fixed point on the probes alone). The update is then a Newton step on a local model and is
repeated. A homogeneous net is measured once, over the ``between_batches`` init batches, and updated once. Otherwise
the iteration measures only the first batch, with the same gradient draws every time (common random numbers: it sees
no sampling noise), and a Broyden update corrects the model's response with what each update did. When no rate
would move by more than twice ``tolerance`` (the first batch's rates differ from all batches' by about that much), or the last update narrowed the spread (max/min) by less than half of it (the
constraints or the model allow no better), the other batches are measured at the current weights (the final check);
their rates become the new baseline to which the changes seen on the first batch are added, and the iteration stops
(converged) if that baseline needs no update by more than ``tolerance`` either, else at the next such point (there is
one final check). At most ``between_iters`` updates; the step is halved when the
spread grows. The reported rates after the step are the latest all-batch ones (with the first batch's last change;
exact on homogeneous nets).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.executor import TorchNet
from caffeinit.init.config import InitConfig
from caffeinit.init.report import LayerRecord
from caffeinit.init.roles import affine_of, is_frozen, weight_lr_mult
from caffeinit.net import LayerNode, Net

STRIPPED_AT_END = ("Softmax", "ArgMax")
PASS_THROUGH = ("ReLU", "PReLU", "Pooling", "Dropout", "Split", "Flatten", "Reshape", "Concat", "Slice", "Tile",
                "AbsVal", "Silence", "BatchReindex")
APPROXIMATE = ("LRN", "Sigmoid", "TanH", "ELU", "BNLL", "Power", "Exp", "Log", "Clip", "Swish", "Softmax")
EXPONENT_STEP = 0.1  # local exponents are measured by scaling the input by exp(-+ this)
PROBE_IMAGES = 4  # the probes look at this many images of the first batch
MODEL_ROUNDS = 8
DAMPING = 0.03  # Tikhonov weight on x for non-homogeneous nets (a direct direction's response is 2 per unit)  # fixed-point rounds for the secant exponents of one update


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
class Linearization:
    """The scale model at one point: forward levels, the rates' response and the constraints, all linear in x."""
    lin: dict[str, np.ndarray]  # value -> coefficients of l_v over the variables
    response: np.ndarray  # row k: coefficients of the change of log C_k
    constraints: np.ndarray  # rows that must be 0


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
    blocked: set[str] = field(default_factory=set)  # values read by inactive layers: pinned to l = 0
    bias_tops: list[list[str]] = field(default_factory=list)  # tops of the users of each shared bias
    approximate_layers: list[str] = field(default_factory=list)

    @property
    def homogeneous(self) -> bool:
        return not self.approximate_layers

    def linearize(self, exponents: dict[int, tuple[float, float]] | None = None) -> Linearization:
        """The linear model with the given (g, h) local exponents per approximate layer (default 1, 1)."""
        exponents = exponents or {}
        n = len(self.groups)
        zero, eye = np.zeros(n), np.eye(n)
        lin: dict[str, np.ndarray] = {}
        rows: list[np.ndarray] = []

        def level(v: str) -> np.ndarray:
            return lin.get(v, zero)

        def same(values: list[str]) -> None:
            rows.extend(level(v) - level(values[0]) for v in values[1:])

        def pinned(values) -> None:
            rows.extend(level(v) for v in values if level(v).any())

        for node in self.active:
            b, rule = node.bottom_values, self.rules[node.index]
            if rule == "affine":
                same(b)
                out = level(b[0]) + eye[self.var_of[node.index]]
            elif rule in ("pass", "approx"):
                same(b)
                out = level(b[0]) * exponents.get(node.index, (1.0, 1.0))[0]
            elif rule == "first":  # Crop, Bias: bottom 0 carries the signal (a Bias bottom scales with it)
                if node.type == "Bias":
                    same(b)
                out = level(b[0])
            elif rule == "prod":
                out = sum((level(v) for v in b), zero)
            elif rule == "reset":
                out = zero
            else:  # fixed
                pinned(b)
                out = zero
            for v in node.top_values:
                lin[v] = out
        pinned(self.blocked)
        pinned(self.ends)
        for tops in self.bias_tops:
            same(tops)

        contributions: dict[str, list[np.ndarray]] = {v: [zero] for v in self.ends}
        response = -2.0 * eye  # kept for a weight no gradient reaches (its rate is not valid anyway)
        seen: dict[int, list[np.ndarray]] = {}

        def push(v: str, m: np.ndarray) -> None:
            contributions.setdefault(v, []).append(m)

        for node in reversed(self.active):
            outs = [np.mean(contributions[v], axis=0) for v in node.top_values if v in contributions]
            if not outs:
                continue
            m_out, b, rule = np.mean(outs, axis=0), node.bottom_values, self.rules[node.index]
            if rule == "affine":
                k = self.var_of[node.index]
                seen.setdefault(k, []).append(level(b[0]) + m_out - eye[k])
                push(b[0], m_out + eye[k])
            elif rule == "approx":
                push(b[0], m_out + (exponents.get(node.index, (1.0, 1.0))[1] - 1.0) * level(b[0]))
            elif rule == "prod":
                total = sum((level(v) for v in b), zero)
                for v in b:
                    push(v, m_out + total - level(v))
            elif rule == "reset":
                if node.type != "ArgMax":
                    push(b[0], m_out - level(b[0]))
            elif rule == "first" and node.type == "Crop":
                push(b[0], m_out)
            else:  # pass, fixed, Bias
                for v in b:
                    push(v, m_out)
        for k, terms in seen.items():
            response[k] = np.mean(terms, axis=0)
        constraints = np.array(rows).reshape(-1, n) if rows else np.zeros((0, n))
        return Linearization(lin, response, constraints)

    def solve(self, log_rates: np.ndarray, valid: np.ndarray, linear: Linearization | None = None) -> np.ndarray:
        """x minimizing sum over valid k of (log_rates_k + response_k x - t)^2 subject to constraints x = 0 (plus
        DAMPING |x|^2 on non-homogeneous nets)."""
        linear = linear or self.linearize()
        n = len(self.groups)
        basis = _null_space(linear.constraints, n)
        if basis.shape[1] == 0 or not valid.any():
            return np.zeros(n)
        a = np.concatenate([linear.response[valid] @ basis, -np.ones((int(valid.sum()), 1))], axis=1)
        b = -log_rates[valid]
        if not self.homogeneous:  # damp directions the approximate layers make weak (a saturated layer's input)
            a = np.concatenate([a, np.sqrt(DAMPING) * np.eye(basis.shape[1], a.shape[1])])
            b = np.concatenate([b, np.zeros(basis.shape[1])])
        sol, *_ = np.linalg.lstsq(a, b, rcond=None)
        x = basis @ sol[:-1]
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
    if t in PASS_THROUGH:
        return "pass"
    if t == "Eltwise":
        from caffeinit.proto import caffe_pb2
        return "prod" if node.layer.operation == caffe_pb2.EltwiseParameter.PROD else "pass"
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
        self.cache: dict[float, tuple[float, float]] = {}

    def response(self, log_scale: float) -> tuple[float, float]:
        """(log RMS f(s x), log RMS J(s x)^T u) at s = exp(log_scale)."""
        key = round(log_scale, 6)
        if key not in self.cache:
            with torch.enable_grad():
                xs = (self.x * math.exp(key)).requires_grad_(True)
                y = self.layer.forward([xs], self.blobs)[0]
                if self.u is None:
                    self.u = torch.randn(y.shape, generator=self.gen, device=self.gen.device).to(y.device, y.dtype)
                (g,) = torch.autograd.grad(y, xs, grad_outputs=self.u)
            out, grad = _rms(y), _rms(g)
            self.cache[key] = (math.log(out) if out > 0 else math.nan, math.log(grad) if grad > 0 else math.nan)
        return self.cache[key]

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
                  seed: int, params: list[torch.nn.Parameter], tap=None) -> np.ndarray:
    """Sum over ``draws`` N(0,1) gradient draws at the end values of mean(dL/dW^2), per param, on one batch. The
    draws depend only on ``seed``, ``batch`` and the draw."""
    stop = max(node.index for node in model.active) + 1
    sums = np.zeros(len(params))
    with torch.enable_grad():
        out = module(feed, stop=stop, keep=model.ends, tap=tap)
        gen = torch.Generator(device=module.device)
        for d in range(draws):
            gen.manual_seed((int(seed) * 7_368_787 + 104_729 * batch + 1_299_709 * d + 1) % (2 ** 63))
            loss = sum((torch.randn(out[v].shape, generator=gen, device=gen.device).to(out[v].device) * out[v]).sum()
                       for v in model.ends)
            grads = torch.autograd.grad(loss, params, retain_graph=d < draws - 1, allow_unused=True)
            for k, g in enumerate(grads):
                if g is not None:
                    sums[k] += _rms(g) ** 2
    return sums


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


def _rates(square_sums: np.ndarray, count: int, params) -> np.ndarray:
    weight_rms = np.array([_rms(p) for p in params])
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
    return _rates(sums, len(feeds) * draws, params)


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


def run_between(module: TorchNet, feeds: list[dict[str, torch.Tensor]], config: InitConfig,
                records: dict[str, LayerRecord], progress: bool = False) -> BetweenResult:
    """Rescale the net's learnable layers in place until their effective change rates are equal."""
    model = build_scale_model(module)
    params, draws, seed = model.groups, config.between_draws, config.seed
    lr = np.array(model.lr_mults)
    total_x = np.zeros(len(params))
    from tqdm.auto import tqdm
    bar = tqdm(total=config.between_iters, desc="between-layer", unit="it", disable=not progress, leave=False)
    with _GradsOnly(module, params):

        def measure(batches: range, probe: bool):
            """Log effective rates over ``batches`` and the probes seen on the first of them."""
            tap = _ProbeTap(module, model, seed) if probe else None
            sums = sum(_square_grads(module, model, feeds[b], b, draws, seed, params, tap if b == batches[0] else None)
                       for b in batches)
            with np.errstate(divide="ignore"):
                return np.log(_rates(sums, len(batches) * draws, params) * lr), tap.probes if tap else {}

        # a homogeneous net needs one measurement, over all batches; otherwise iterate on batch 0 (its last
        # measurement, ``log_first``, taken at the current weights) and rebase on all batches at the end
        everything = range(len(feeds))
        log_first, probes = measure(everything if model.homogeneous else range(1), True)
        log_all, checked = log_first.copy(), model.homogeneous or len(feeds) == 1
        valid = np.isfinite(log_first)
        log_rates, first_rates = log_first.copy(), np.exp(log_first) / lr
        step_size, prev_spread, iterations, converged = 1.0, math.inf, 0, False
        final_checked = False
        correction = np.zeros((len(params), len(params)))  # learnt error of the model's response (Broyden)
        limit = math.log1p(config.tolerance)
        try:
            while True:
                spread = float(np.ptp(log_rates[valid])) if valid.any() else 0.0
                if spread > prev_spread and step_size > 1 / 16:
                    step_size /= 2
                stalled = prev_spread - spread < limit / 2  # the constraints or the noise allow no better
                prev_spread = spread
                x, linear = _model_step(model, probes, np.where(valid, log_rates, 0.0), valid, correction)
                move = linear.response @ x
                # batch 0 alone is taken no closer than its sampling noise: twice the tolerance before the check
                threshold = limit if checked or final_checked else 2 * limit
                if np.max(np.abs(move[valid]), initial=0.0) <= threshold or stalled:
                    if checked or final_checked:
                        converged = True
                        break
                    # the final check: the other batches at the current weights, merged with batch 0's measurement
                    rest, _ = measure(range(1, len(feeds)), False)
                    log_all = 0.5 * np.log((np.exp(2 * log_first) + (len(feeds) - 1) * np.exp(2 * rest)) / len(feeds))
                    log_rates, checked, final_checked = log_all.copy(), True, True
                    valid &= np.isfinite(log_all)
                    prev_spread, step_size = math.inf, 1.0  # a new baseline: no comparison with the last spread
                    continue
                if iterations == config.between_iters:
                    break
                x, move = x * step_size, move * step_size
                _apply(module, model, linear, x, records)
                total_x += x
                iterations += 1
                bar.update(1)
                if model.homogeneous and step_size == 1.0:
                    log_rates = log_rates + move  # exact on homogeneous nets
                    prev_spread = float(np.ptp(log_rates[valid])) if valid.any() else 0.0
                    converged = True
                    break
                log_now, probes = measure(range(1), True)
                valid &= np.isfinite(log_now)
                seen = np.where(valid, log_now - log_first, 0.0)
                if np.max(np.abs(x)) >= limit:  # smaller steps say more about the noise than about the model
                    correction += np.outer(np.where(valid, seen - move, 0.0), x) / float(x @ x)
                log_rates = log_all + (log_now - log_first)  # the change seen on batch 0: no sampling noise
                log_all, log_first, checked = log_rates.copy(), log_now, len(feeds) == 1
        finally:
            bar.close()
    if not converged:
        warnings.warn(f"the between-layer step did not converge in {config.between_iters} updates (non-homogeneous "
                      f"layers: {', '.join(model.approximate_layers) or 'none'}); change rates still differ by "
                      f"{math.exp(prev_spread):.2f}x")
    rates = np.where(valid, np.exp(log_rates) / lr, np.nan)
    for k, nodes in enumerate(model.group_nodes):
        for node in nodes:
            record = records.get(node.name)
            if record is not None:
                record.rate_after = float(rates[k] * lr[k]) if np.isfinite(rates[k]) else None
                record.between_scale = float(math.exp(total_x[k]))
    return BetweenResult(first_rates, rates, iterations, converged, model.homogeneous, model.lr_mults)


def _model_step(model: ScaleModel, probes: dict[int, ScaleProbe], log_rates: np.ndarray, valid: np.ndarray,
                correction: np.ndarray) -> tuple[np.ndarray, Linearization]:
    """The update x and the linear model it was solved on (its response plus ``correction``). The approximate
    layers' exponents are secants up to the input level the update gives them (a fixed point, found by a few rounds
    on the probes alone: no net passes)."""
    bottom = {node.index: node.bottom_values[0] for node in model.active if node.index in probes}
    levels = {i: 0.0 for i in probes}
    for _ in range(MODEL_ROUNDS):
        linear = model.linearize({i: probe.exponents(levels[i]) for i, probe in probes.items()})
        linear.response = linear.response + correction
        x = model.solve(log_rates, valid, linear)
        new = {i: float(linear.lin.get(v, np.zeros(len(x))) @ x) for i, v in bottom.items()}
        if all(abs(new[i] - levels[i]) < 1e-3 for i in levels):
            break
        levels = new
    return x, linear


def _apply(module: TorchNet, model: ScaleModel, linear: Linearization, x: np.ndarray,
           records: dict[str, LayerRecord]) -> None:
    """Multiply each weight group by exp(x_k) and compensate biases and BatchNorm statistics (see the docstring)."""
    done: set[int] = set()

    def scale(p: torch.Tensor, factor: float) -> None:
        if id(p) not in done and factor != 1.0:
            p.data.mul_(factor)
        done.add(id(p))

    def level(v: str) -> float:
        coeffs = linear.lin.get(v)
        return 0.0 if coeffs is None else float(coeffs @ x)

    for k, weight in enumerate(model.groups):
        scale(weight, math.exp(x[k]))
    for node in model.active:
        blobs = module.layer_blobs[node.index]
        rule = model.rules[node.index]
        affine = affine_of(node)
        if rule == "affine" and affine.bias is not None:
            scale(blobs[affine.bias], math.exp(level(node.top_values[0])))
        elif node.type == "BatchNorm":
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

