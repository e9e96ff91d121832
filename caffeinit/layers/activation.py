"""Element-wise layers: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold, Clip, Swish,
Dropout. Each keeps the bottom's shape and follows the formula (and float order) of Caffe's CPU code."""
from __future__ import annotations

import math

import numpy as np
import torch

from caffeinit.layers.base import Layer
from caffeinit.layers.registry import register_layer
from caffeinit.proto import caffe_pb2


class _Elementwise(Layer):
    """One bottom, one top of the same shape."""
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, blobs):
        return [self.apply(bottoms[0])]

    def forward_inplace(self, bottoms, blobs):
        y = self.apply_inplace(bottoms[0])
        return None if y is None else [y]

    def apply(self, x):
        raise NotImplementedError

    def apply_inplace(self, x):
        """``apply`` overwriting ``x`` (the same operations in the same order), or None."""
        return None


def caffe_sigmoid(x):
    """Caffe's CPU sigmoid: 0.5 * tanh(0.5 * x) + 0.5 with C++ double literals, so computed in double and rounded
    once (in float, x = -20 would give 0, not 2.06e-9)."""
    return (0.5 * torch.tanh(0.5 * x.double()) + 0.5).to(x.dtype)


@register_layer
class ReLU(_Elementwise):
    type_name = "ReLU"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        self.negative_slope = float(param.relu_param.negative_slope)

    # torch's relu / leaky_relu compute Caffe's values and, unlike clamps, Caffe's gradient at 0 (the slope for
    # x <= 0), in one kernel each way
    def apply(self, x):
        if self.negative_slope == 0:
            return torch.relu(x)
        return torch.nn.functional.leaky_relu(x, self.negative_slope)

    def apply_inplace(self, x):
        if self.negative_slope == 0:
            return x.relu_()
        if self.negative_slope < 0:  # torch's in-place leaky_relu refuses negative slopes under autograd
            return None
        return torch.nn.functional.leaky_relu_(x, self.negative_slope)


@register_layer
class PReLU(_Elementwise):
    """Learned slopes on axis 1 (a bottom of 2 to 4 axes): one per channel, or one 0-axis blob when
    ``channel_shared``."""
    type_name = "PReLU"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        self.channel_shared = bool(param.prelu_param.channel_shared)

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2:
            raise self.error(f"bottom must have at least 2 axes, got shape {list(shape)}")
        if len(shape) > 4:  # Caffe reads the channels with the legacy accessor, which refuses more than 4 axes
            raise self.error(f"bottom must have at most 4 axes, got shape {list(shape)}")
        self.blob_shapes = [()] if self.channel_shared else [(shape[1],)]
        return [shape]

    def fill_blobs(self, rng):
        from caffeinit.fillers import fill  # fillers imports nothing from layers; late import keeps modules apart
        if self.param.prelu_param.HasField("filler"):
            filler = self.param.prelu_param.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        slopes = fill(filler, self.blob_shapes[0], rng, f"layer '{self.name}' slopes")
        return [np.asarray(slopes, dtype=np.float32).reshape(self.blob_shapes[0])]

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        slope = blobs[0].to(x.dtype)
        if not self.channel_shared:
            slope = slope.reshape((1, -1) + (1,) * (x.dim() - 2))
        return [torch.clamp(x, min=0) + slope * torch.clamp(x, max=0)]


@register_layer
class ELU(_Elementwise):
    type_name = "ELU"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        self.alpha = float(param.elu_param.alpha)

    def apply(self, x):
        return torch.clamp(x, min=0) + self.alpha * (torch.exp(torch.clamp(x, max=0)) - 1)


@register_layer
class Sigmoid(_Elementwise):
    type_name = "Sigmoid"

    def apply(self, x):
        return caffe_sigmoid(x)

    def apply_inplace(self, x):
        return x.copy_(caffe_sigmoid(x))


@register_layer
class TanH(_Elementwise):
    type_name = "TanH"

    def apply(self, x):
        return torch.tanh(x)

    def apply_inplace(self, x):
        return x.tanh_()


@register_layer
class AbsVal(_Elementwise):
    type_name = "AbsVal"

    def apply(self, x):
        return torch.abs(x)

    def apply_inplace(self, x):
        return x.abs_()


@register_layer
class BNLL(_Elementwise):
    """log(1 + e^x) in Caffe's split form, which never exponentiates a large positive number. Caffe adds the
    exponential to the double 1., so the tiny values of very negative x survive (x = -20 gives 2.06e-9, not 0):
    computed in float64 and rounded once."""
    type_name = "BNLL"

    def apply(self, x):
        wide = x.double()
        positive = wide + torch.log(1 + torch.exp(-torch.clamp(wide, min=0)))
        negative = torch.log(1 + torch.exp(torch.clamp(wide, max=0)))
        return torch.where(wide > 0, positive, negative).to(x.dtype)


@register_layer
class Power(_Elementwise):
    """(shift + scale * x) ^ power; a constant when power * scale == 0 (as Caffe)."""
    type_name = "Power"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        p = param.power_param
        self.power, self.scale, self.shift = np.float32(p.power), np.float32(p.scale), np.float32(p.shift)

    def apply(self, x):
        if self.power * self.scale == 0:
            value = 1.0 if self.power == 0 else float(np.power(self.shift, self.power))
            return torch.full_like(x, value)
        y = x
        if self.scale != 1:
            y = y * float(self.scale)
        if self.shift != 0:
            y = y + float(self.shift)
        if self.power != 1:
            y = torch.pow(y, float(self.power))
        return y


@register_layer
class Exp(_Elementwise):
    """base ^ (shift + scale * x), computed as Caffe does: exp(ln(base) * scale * x) * base ^ shift."""
    type_name = "Exp"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        p = param.exp_param
        base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        if base != -1 and not base > 0:
            raise self.error(f"exp_param.base must be strictly positive (or -1 for e), got {base:g}")
        if math.isinf(base):
            raise self.error("exp_param.base inf gives an infinite log(base)")
        # float arithmetic, as Caffe's Dtype: log(base) rounded to float before the product
        log_base = np.float32(1.0 if base == -1 else math.log(base))
        self.inner_scale = log_base * np.float32(scale)
        if shift == 0:
            self.outer_scale = np.float32(1)
        else:
            self.outer_scale = np.float32(math.exp(shift) if base == -1 else base ** shift)

    def apply(self, x):
        y = x if self.inner_scale == 1 else x * float(self.inner_scale)
        y = torch.exp(y)
        return y if self.outer_scale == 1 else y * float(self.outer_scale)


@register_layer
class Log(_Elementwise):
    """log_base(shift + scale * x); base -1 means e."""
    type_name = "Log"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        p = param.log_param
        base = float(p.base)
        if base != -1 and not base > 0:
            raise self.error(f"log_param.base must be strictly positive (or -1 for e), got {base:g}")
        if math.isinf(base):
            raise self.error("log_param.base inf gives an infinite log(base)")
        if base == 1:
            raise self.error("log_param.base 1 gives an infinite 1/log(base)")
        # float arithmetic, as Caffe's Dtype: log(base) rounded to float before the division
        self.base_scale = np.float32(1) / np.float32(1.0 if base == -1 else math.log(base))
        self.scale, self.shift = np.float32(p.scale), np.float32(p.shift)

    def apply(self, x):
        y = x
        if self.scale != 1:
            y = y * float(self.scale)
        if self.shift != 0:
            y = y + float(self.shift)
        y = torch.log(y)
        return y if self.base_scale == 1 else y * float(self.base_scale)


@register_layer
class Threshold(_Elementwise):
    """1 where x > threshold (strictly), else 0."""
    type_name = "Threshold"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        self.threshold = float(np.float32(param.threshold_param.threshold))

    def apply(self, x):
        return (x > self.threshold).to(x.dtype)


@register_layer
class Clip(_Elementwise):
    type_name = "Clip"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        p = param.clip_param
        if not (param.HasField("clip_param") and p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param.min and clip_param.max are required")
        self.min, self.max = float(p.min), float(p.max)

    def apply(self, x):
        return torch.clamp(torch.clamp(x, max=self.max), min=self.min)


@register_layer
class Swish(_Elementwise):
    """x * sigmoid(beta * x)."""
    type_name = "Swish"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        self.beta = float(param.swish_param.beta)

    def apply(self, x):
        return x * caffe_sigmoid(x * self.beta)


@register_layer
class Dropout(_Elementwise):
    """TEST: identity. TRAIN: inverted dropout x * mask / (1 - ratio), the mask drawn with torch's RNG."""
    type_name = "Dropout"

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        self.ratio = float(param.dropout_param.dropout_ratio)
        if phase == caffe_pb2.TRAIN and not 0 <= self.ratio < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")

    def apply(self, x):
        if self.phase != caffe_pb2.TRAIN:
            return x
        keep = torch.bernoulli(torch.full_like(x, 1.0 - self.ratio))
        scale = float(np.float32(1.0 / (1.0 - self.ratio)))
        return x * keep * scale
