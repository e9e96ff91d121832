"""Algorithm 2, the between-layer step: equalize the effective change rates lr_mult x C_k, C_k = RMS(dL/dW_k) /
RMS(W_k), under N(0,1) gradients injected at the net's end values (no labels, no loss).

End values: the inputs of loss layers and Accuracy (labels excluded) and the net's unconsumed outputs, with trailing
Softmax / ArgMax layers stripped. Only layers that feed an end value take part.

Scale model. Each learnable affine weight W_k (Convolution, Deconvolution, InnerProduct, one-bottom Scale; a
weight shared through a ParamSpec name is one W_k) is multiplied by r_k = exp(x_k). Every value v of the net then
becomes exp(l_v) times its old self, l_v linear in x: data 0; an affine top l_in + x_k (its bias is multiplied by
exp(l_top)); ReLU, PReLU, pooling, Dropout, Concat, Eltwise SUM/MAX, Split, Flatten, Reshape, Slice, Crop pass l on
(their bottoms are constrained to one common l); Eltwise PROD adds; BatchNorm and MVN (variance) reset l to 0 (the
BatchNorm statistics are multiplied by exp(l_in) and exp(2 l_in)); a Bias layer passes l on, its bias multiplied by
exp(l_in). Frozen affine layers (lr_mult 0) and layers the model does not know (Embed, recurrent, ...) are left
untouched: their bottoms are constrained to l = 0. Every end value is constrained to l = 0, so on a positively
homogeneous net the function is preserved exactly (global output scale 1). With these rules the rates move in closed
form, C_k -> C_k exp(l_end - 2 x_k) = C_k exp(-2 x_k), so one measurement gives the exact update: minimize
sum_k (log(lr_k C_k) - 2 x_k - t)^2 subject to the constraints (least squares on the constraints' null space; a
plain chain is equalized exactly, a DAG as well as its merges allow).

Non-homogeneous layers (LRN, Sigmoid, TanH, ELU, Softmax inside the net, Power, ...) are modelled as passing l on;
the step is then approximate, so it is re-measured and repeated until no
rate would move by more than ``tolerance``, at most ``between_iters`` updates. Each layer's deviation from the
mean log-rate is divided by the fraction of its previous predicted change that was observed (a per-layer secant gain
in [0.2, 1]: LRN partly undoes a rescaling, so plain steps undershoot), and the step is halved when the spread grows. Rates are measured on the first
``between_batches`` init batches with ``between_draws`` gradient draws each; the same draws are reused on every
iteration (common random numbers), which makes the iteration deterministic.
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
class ScaleModel:
    """The linear scale model of the active part of a net (see the module docstring)."""
    ends: list[str]
    active: list[LayerNode]
    groups: list[torch.nn.Parameter]  # the scalable weights, one variable each
    group_nodes: list[list[LayerNode]]
    lr_mults: list[float]
    lin: dict[str, np.ndarray]  # value -> coefficients of l_v over the variables
    constraints: np.ndarray
    homogeneous: bool
    approximate_layers: list[str] = field(default_factory=list)

    def solve(self, log_rates: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """x minimizing sum over valid k of (log_rates_k - 2 x_k - t)^2 subject to constraints x = 0."""
        n = len(self.groups)
        basis = _null_space(self.constraints, n)
        if basis.shape[1] == 0 or not valid.any():
            return np.zeros(n)
        a = np.concatenate([2 * basis[valid], np.ones((int(valid.sum()), 1))], axis=1)
        sol, *_ = np.linalg.lstsq(a, log_rates[valid], rcond=None)
        x = basis @ sol[:-1]
        x[np.abs(x) < 1e-12] = 0.0
        return x


def build_scale_model(module: TorchNet) -> ScaleModel:
    net = module.net
    ends = end_values(net)
    if not ends:
        raise CaffeinitError(f"net '{net.name}': no output to inject gradients at (every layer is a data or loss "
                             "layer)")
    producer = {v: node for node in net.layers for v in node.top_values}
    needed, active_idx = set(ends), set()
    for node in reversed(net.layers):
        if any(v in needed for v in node.top_values) and not node.layer.is_data:
            active_idx.add(node.index)
            needed.update(node.bottom_values)
    active = [node for node in net.layers if node.index in active_idx]

    groups: list[torch.nn.Parameter] = []
    group_nodes: list[list[LayerNode]] = []
    lr_mults: list[float] = []
    var_of: dict[int, int] = {}
    for node in active:
        affine = affine_of(node)
        if affine is None or is_frozen(node):
            continue
        weight = module.layer_blobs[node.index][0]
        if id(weight) not in var_of:
            var_of[id(weight)] = len(groups)
            groups.append(weight)
            group_nodes.append([])
            lr_mults.append(weight_lr_mult(node, 0))
        group_nodes[var_of[id(weight)]].append(node)
    n = len(groups)
    zero = np.zeros(n)
    lin: dict[str, np.ndarray] = {}
    rows: list[np.ndarray] = []
    approx: list[str] = []

    def level(v: str) -> np.ndarray:
        return lin.get(v, zero)

    def same(values: list[str]) -> None:
        for v in values[1:]:
            rows.append(level(v) - level(values[0]))

    def pinned(values: list[str]) -> None:
        for v in values:
            if level(v).any():
                rows.append(level(v))

    for node in active:
        b, t = node.bottom_values, node.top_values
        rule = _rule(node)
        if rule == "affine":
            same(b)
            x = np.zeros(n)
            x[var_of[id(module.layer_blobs[node.index][0])]] = 1.0
            out = level(b[0]) + x
        elif rule == "pass":
            same(b)
            out = level(b[0])
        elif rule == "approx":
            same(b)
            out = level(b[0])
            approx.append(node.name)
        elif rule == "first":  # Crop, Bias with a second bottom as the bias: only bottom 0 carries the signal
            out = level(b[0])
            if node.type == "Bias" and len(b) > 1:
                same(b)
        elif rule == "prod":
            out = sum((level(v) for v in b), zero)
        elif rule == "reset":
            out = zero
        else:  # fixed
            pinned(b)
            out = zero
        for v in t:
            lin[v] = out
    for node in net.layers:  # inactive layers reading active values must see them unchanged
        if node.index not in active_idx and not node.layer.is_loss:
            pinned([v for v in node.bottom_values if v in lin])
    pinned(ends)
    bias_users: dict[int, list[str]] = {}  # a shared bias is scaled once: all its users need one top level
    for node in active:
        affine = affine_of(node)
        if affine is not None and affine.bias is not None and not is_frozen(node):
            bias_users.setdefault(id(module.layer_blobs[node.index][affine.bias]), []).append(node.top_values[0])
    for tops in bias_users.values():
        same(tops)
    constraints = np.array(rows).reshape(-1, n) if rows else np.zeros((0, n))
    return ScaleModel(ends, active, groups, group_nodes, lr_mults, lin, constraints, not approx, approx)


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

def measure_rates(module: TorchNet, model: ScaleModel, feeds: list[dict[str, torch.Tensor]], draws: int, seed: int,
                  params: list[torch.nn.Parameter] | None = None, tap=None) -> np.ndarray:
    """RMS(dL/dW) / RMS(W) for each of ``params`` (default: the model's groups), over ``feeds`` and ``draws`` N(0,1)
    gradient draws per batch at the end values. The draws depend only on ``seed``, the batch and the draw."""
    params = model.groups if params is None else params
    if not params:
        return np.zeros(0)
    stop = max(node.index for node in model.active) + 1
    saved = [(p, p.requires_grad) for p in module.parameters()]
    wanted = {id(p) for p in params}
    for p in module.parameters():
        p.requires_grad_(id(p) in wanted)
    square_sums = np.zeros(len(params))
    try:
        for b, feed in enumerate(feeds):
            with torch.enable_grad():
                out = module(feed, stop=stop, keep=model.ends, tap=tap)
                gen = torch.Generator(device=module.device)
                for d in range(draws):
                    gen.manual_seed((int(seed) * 7_368_787 + 104_729 * b + 1_299_709 * d + 1) % (2 ** 63))
                    loss = sum((torch.randn(out[v].shape, generator=gen, device=out[v].device) * out[v]).sum()
                               for v in model.ends)
                    grads = torch.autograd.grad(loss, params, retain_graph=d < draws - 1, allow_unused=True)
                    for k, g in enumerate(grads):
                        if g is not None:
                            square_sums[k] += float(torch.mean(g.detach().to(torch.float64) ** 2))
            tap = None  # statistics come from the first batch only
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    weight_rms = np.array([float(torch.sqrt(torch.mean(p.detach().to(torch.float64) ** 2))) for p in params])
    grad_rms = np.sqrt(square_sums / (len(feeds) * draws))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight_rms > 0, grad_rms / weight_rms, np.nan)


# -- the step ------------------------------------------------------------------------------------------------------

@dataclass
class BetweenResult:
    rates_before: np.ndarray
    rates_after: np.ndarray
    iterations: int
    converged: bool
    homogeneous: bool


def run_between(module: TorchNet, feeds: list[dict[str, torch.Tensor]], config: InitConfig,
                records: dict[str, LayerRecord], progress: bool = False) -> BetweenResult:
    """Rescale the net's learnable layers in place until their effective change rates are equal."""
    model = build_scale_model(module)
    lr = np.array(model.lr_mults)
    total_x = np.zeros(len(model.groups))
    from tqdm.auto import tqdm
    bar = tqdm(total=config.between_iters, desc="between-layer", unit="it", disable=not progress, leave=False)
    rates = measure_rates(module, model, feeds, config.between_draws, config.seed)
    first = rates.copy()
    step_size, prev_spread, iterations, converged = 1.0, math.inf, 0, False
    gain, prev_log, predicted = 1.0, None, None
    limit = math.log1p(config.tolerance) / 2
    try:
        while True:
            valid = np.isfinite(rates) & (rates > 0)
            log_rates = np.log(np.where(valid, rates * lr, 1.0))
            spread = float(np.ptp(log_rates[valid])) if valid.any() else 0.0
            if spread > prev_spread and step_size > 1 / 16:
                step_size /= 2
            prev_spread = spread
            if prev_log is not None and predicted is not None:  # secant gain: how much of the last step took effect
                seen = _centred(log_rates - prev_log, valid)
                want = _centred(predicted, valid)
                with np.errstate(divide="ignore", invalid="ignore"):
                    gain = np.where(np.abs(want) > 1e-3, np.clip(seen / want, 0.2, 1.0), 1.0)
            target = _centred(log_rates, valid) / gain
            x = model.solve(target, valid) * step_size
            prev_log, predicted = log_rates, -2 * x
            if np.max(np.abs(x), initial=0.0) <= limit:
                converged = True
                break
            if iterations == config.between_iters:
                break
            _apply(module, model, x, records)
            total_x += x
            iterations += 1
            bar.update(1)
            if model.homogeneous and step_size == 1.0:
                rates = rates * np.exp(-2 * x)  # exact on homogeneous nets (l_end = 0)
                converged = True
                break
            rates = measure_rates(module, model, feeds, config.between_draws, config.seed)
    finally:
        bar.close()
    if not converged:
        warnings.warn(f"the between-layer step did not converge in {config.between_iters} updates (non-homogeneous "
                      f"layers: {', '.join(model.approximate_layers) or 'none'}); change rates still differ by "
                      f"{math.exp(prev_spread):.2f}x")
    for k, nodes in enumerate(model.group_nodes):
        for node in nodes:
            record = records.get(node.name)
            if record is not None:
                record.rate_after = float(rates[k] * lr[k]) if np.isfinite(rates[k]) else None
                record.between_scale = float(math.exp(total_x[k]))
    return BetweenResult(first, rates, iterations, converged, model.homogeneous)


def _centred(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    v = np.where(valid, values, 0.0)
    return np.where(valid, v - v[valid].mean(), 0.0) if valid.any() else v


def _apply(module: TorchNet, model: ScaleModel, x: np.ndarray, records: dict[str, LayerRecord]) -> None:
    """Multiply each weight group by exp(x_k) and compensate biases and BatchNorm statistics (see the docstring)."""
    done: set[int] = set()

    def scale(p: torch.Tensor, factor: float) -> None:
        if id(p) not in done and factor != 1.0:
            p.data.mul_(factor)
        done.add(id(p))

    def level(v: str) -> float:
        coeffs = model.lin.get(v)
        return 0.0 if coeffs is None else float(coeffs @ x)

    for k, weight in enumerate(model.groups):
        scale(weight, math.exp(x[k]))
    for node in model.active:
        blobs = module.layer_blobs[node.index]
        rule = _rule(node)
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
