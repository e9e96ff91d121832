"""Algorithm 2, the between-layer step: equalize the effective change rates |lr_mult| x C_k, C_k = RMS(dL/dW_k) /
RMS(W_k), under N(0,1) gradients injected at the net's end values (no labels, no loss).
The scale model (which rescalings preserve the function, how they move each rate) is caffeinit/init/scale_model.py;
measuring the rates is caffeinit/init/rates.py.

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
extrapolated from batch 0 took back good updates: GoogLeNet spent 4 of its 8 updates so, 33 gradient passes -> 13).
At most ``between_iters`` updates. The reported rates after the step are these all-batch rates (measured, or with
the first batch's last changes added; exact on homogeneous nets). CaffeNet (two LRN layers) takes 4 + 1 gradient
passes: one update, predicted within 1% on its first batch.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from caffeinit.executor import TorchNet
from caffeinit.init.config import InitConfig
from caffeinit.init.rates import GradsOnly, ProbeTap, ScaleProbe, change_rates, square_grads, weight_rms
from caffeinit.init.report import LayerRecord
from caffeinit.init.roles import affine_of, frozen_at_zero
from caffeinit.init.scale_model import InputChannels, Linearization, ScaleModel, build_scale_model

MODEL_ROUNDS = 8  # fixed-point rounds for the secant exponents of one update
MODEL_TRUST = 0.1  # a change predicted within this fraction is taken to hold on every batch
NOISE_Z = 1.5  # a rate counts as equalized once its remaining move is within this many standard errors


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
    approximate_layers: list[str] = field(default_factory=list)  # what makes the net non-homogeneous


def run_between(module: TorchNet, feeds: list[dict[str, torch.Tensor]], config: InitConfig,
                records: dict[str, LayerRecord], progress: bool = False, chunk: int | None = None) -> BetweenResult:
    """Rescale the net's learnable layers in place until their effective change rates are equal. ``chunk``: at
    most this many images per gradient pass (see ``rates.square_grads``)."""
    missing = set(module.missing)  # layers that started from fillers
    pretrained = [name for name, record in records.items() if record.method == "kept" and name not in missing]
    model = build_scale_model(module, whole=pretrained)
    params, draws, seed = model.groups, config.between_draws, config.seed
    lr = np.array(model.lr_mults)
    if not params:  # nothing learnable (every layer frozen)
        _warn_without_gradient(model, np.zeros(0), records)
        return BetweenResult(np.zeros(0), np.zeros(0), 0, True, model.homogeneous, model.lr_mults)
    if not _reached_by_gradient(module, model).any():  # e.g. every path ends in a frozen all-zero layer
        nothing = np.full(len(params), np.nan)
        _warn_without_gradient(model, np.full(len(params), -np.inf), records)
        return BetweenResult(nothing, nothing, 0, True, model.homogeneous, model.lr_mults)
    model.input_channels = {k: InputChannels(node, tuple(params[k].shape))
                            for k, node in model.linearize().split_groups().items()}
    start_rms = weight_rms(params)
    from tqdm.auto import tqdm
    bar = tqdm(total=config.between_iters, desc="between-layer", unit="it", disable=not progress, leave=False)
    shown = [""]  # the spread so far; the gradient pass under way is added while rates are measured

    def show(passes: str = "") -> None:
        bar.set_postfix_str(", ".join(t for t in (shown[0], passes) if t), refresh=True)

    with GradsOnly(module, params):

        def measure(batches: range):
            """Log effective rates over ``batches``, of the first of them alone and of each, the probes seen on the
            first and the split groups' gradient squares per input channel."""
            tap = ProbeTap(module, model, seed)
            channel_sums = {k: np.zeros(reader.channels) for k, reader in model.input_channels.items()}
            per_batch = []
            for i, b in enumerate(batches):
                if len(batches) > 1:  # on large nets a pass takes a while: say which
                    show(f"gradient pass {i + 1}/{len(batches)}")
                per_batch.append(square_grads(module, model, feeds[b], b, draws, seed, params,
                                              tap if b == batches[0] else None, channel_sums, chunk=chunk))
            norms = weight_rms(params)
            with np.errstate(divide="ignore"):
                log_rates = np.log(change_rates(sum(per_batch), len(batches) * draws, norms) * lr)
                log_first = np.log(change_rates(per_batch[0], draws, norms) * lr)
                log_each = np.array([np.log(change_rates(sums, draws, norms) * lr) for sums in per_batch])
            return log_rates, log_first, tap.probes(), channel_sums, log_each

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
                shown[0] = f"spread {math.exp(spread):.3g}x"
                show()
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
    end_rms = weight_rms(params)
    for k, nodes in enumerate(model.group_nodes):
        for node in nodes:
            record = records.get(node.name)
            if record is not None:
                record.rate_after = float(rates[k] * lr[k]) if np.isfinite(rates[k]) else None
                record.between_scale = end_rms[k] / start_rms[k] if start_rms[k] > 0 else 1.0
                if record.rate_after is not None and standard_error[k] > 0:
                    record.rate_noise = float(np.expm1(standard_error[k]))
    return BetweenResult(first_rates, rates, iterations, converged, model.homogeneous, model.lr_mults, noise_level,
                         note, list(model.approximate_layers))


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
    if any(n.type == "Bias" and len(n.bottom_values) == 2 for n in model.active):
        reasons.append("the two inputs of each two-bottom Bias layer (a sum) share one scale")
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
        zero = frozen_at_zero(node, module.layer_blobs[node.index], module.net)
        if any(v in carrying for v in node.top_values) and not zero:
            carrying.update(node.bottom_values)
    return np.array([any(v in carrying for node in nodes for v in node.top_values) for nodes in model.group_nodes])


def _compensate_batchnorm(blobs, factor: np.ndarray, eps: float) -> None:
    """Global statistics for an input scaled by ``factor`` per channel that give the same output: the mean times
    the factor and var + eps times its square, so (x - mean) / sqrt(var + eps) is unchanged exactly, even where
    the variance is near eps (scaling var alone would not be). The stored blobs are the statistics times the scale
    factor s; s = 0 (Caffe then uses zero statistics) becomes 1."""
    s = float(blobs[2].detach().reshape(-1)[0]) if len(blobs) > 2 and blobs[2].numel() else 1.0
    mean, var = (b.detach().double().cpu().numpy() for b in blobs[:2])
    if s == 0:
        s, mean, var = 1.0, np.zeros_like(mean), np.zeros_like(var)
    else:
        mean, var = mean / s, var / s
    new_var = factor ** 2 * (var + eps) - eps  # may fall below 0 (not below -eps): var + eps stays positive
    for blob, value in zip(blobs, (factor * mean * s, new_var * s, np.full(1, s))):
        blob.data.copy_(torch.as_tensor(value, dtype=blob.dtype).reshape(blob.shape))


def _warn_without_gradient(model: ScaleModel, log_rates: np.ndarray, records: dict[str, LayerRecord]) -> None:
    """Learnable layers the random output gradients never reach (log rate -inf: zero gradient, nonzero weight)."""
    names = [model.group_nodes[k][0].name for k in np.flatnonzero(np.isneginf(log_rates))] + model.unreached
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
        if affine is not None and rule in ("affine", "pass") and affine.bias is not None:  # pass: a frozen weight
            scale(blobs[affine.bias], math.exp(level(node.top_values[0])))
        elif node.type == "BatchNorm" and id(blobs[0]) not in done:
            seg = linear.lin.get(node.bottom_values[0])
            if seg is not None and seg.split and seg.channels == blobs[0].numel():  # its input in blocks
                factor = np.exp(seg.per_channel(x))
            else:
                factor = np.full(blobs[0].numel(), math.exp(level(node.bottom_values[0])))
            if not (factor == 1.0).all():
                _compensate_batchnorm(blobs, factor, node.layer.eps)
            done.update(id(b) for b in blobs)
        elif node.type == "Bias" and len(blobs):
            scale(blobs[0], math.exp(level(node.bottom_values[0])))
        elif node.type == "Scale" and rule == "prod" and node.layer.bias_term:
            scale(blobs[-1], math.exp(level(node.top_values[0])))
        record = records.get(node.name)
        if record is not None and record.mean_after is not None and node.top_values:
            factor = math.exp(level(node.top_values[0]))
            record.mean_after *= factor
            record.std_after *= factor
