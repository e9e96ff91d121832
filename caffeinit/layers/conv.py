"""Convolution, Deconvolution and Im2col (Caffe's base_conv_layer.cpp, conv_layer.cpp, deconv_layer.cpp,
im2col_layer.cpp): N-D geometry parsed from convolution_param, computed with torch's convolutions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffeinit.fillers import fill
from caffeinit.layers.base import Layer
from caffeinit.layers.registry import register_layer
from caffeinit.layers.structure import canonical_axis

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def relu_attr(relu_slope: float | None) -> tuple[str, list]:
    """oneDNN's post-op for Caffe's ReLU: x > 0 ? x : slope * x, which is max(x, 0) + slope * min(x, 0) exactly."""
    if relu_slope is None:
        return "none", []
    return ("relu", []) if relu_slope == 0 else ("leaky_relu", [float(relu_slope)])


class OptionalOp:
    """``torch.ops.mkldnn.<name>`` (torch's oneDNN kernels with a fused activation), absent where this torch build
    has no oneDNN or no such op, and switching itself off (returning None, so callers fall back to their plain path)
    the first time this build rejects a call: the ops are internal and their signatures may change."""

    def __init__(self, name: str):
        try:
            self.op = getattr(torch.ops.mkldnn, name) if torch.backends.mkldnn.is_available() else None
        except (AttributeError, RuntimeError):
            self.op = None

    @property
    def available(self) -> bool:
        return self.op is not None

    def __call__(self, *args):
        if self.op is None:
            return None
        try:
            return self.op(*args)
        except (RuntimeError, TypeError):
            self.op = None
            return None


_CONV_POINTWISE = OptionalOp("_convolution_pointwise")


def _per_axis(layer: Layer, name: str, values, n_spatial: int, default: int | None) -> list[int]:
    """A repeated field given once (for every spatial axis) or once per spatial axis; empty gives ``default``."""
    values = list(values)
    if not values and default is not None:
        return [default] * n_spatial
    if len(values) == 1:
        return values * n_spatial
    if len(values) != n_spatial:
        raise layer.error(f"{name} must be given once or once per spatial axis ({name} given {len(values)} times; "
                          f"{n_spatial} spatial axes)")
    return values


def _geometry(layer: Layer, n_spatial: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, stride, pad, dilation per spatial axis, with Caffe's exclusivity checks (base_conv_layer.cpp)."""
    p = layer.param.convolution_param

    def pick(name: str, repeated_name: str, default: int | None) -> list[int]:
        repeated = getattr(p, repeated_name)
        if p.HasField(f"{name}_h") or p.HasField(f"{name}_w"):
            if n_spatial != 2:
                raise layer.error(f"{name}_h & {name}_w can only be used for 2-D convolution "
                                  f"(bottom has {n_spatial} spatial axes)")
            if len(repeated):
                raise layer.error(f"give either {repeated_name} or {name}_h/{name}_w, not both")
            return [getattr(p, f"{name}_h"), getattr(p, f"{name}_w")]
        return _per_axis(layer, repeated_name, repeated, n_spatial, default)

    kernel = pick("kernel", "kernel_size", None)
    if any(k <= 0 for k in kernel):
        raise layer.error(f"kernel dimensions must be positive, got {kernel}")
    stride = pick("stride", "stride", 1)
    if any(s <= 0 for s in stride):
        raise layer.error(f"stride must be positive, got {stride}")
    pad = pick("pad", "pad", 0)
    dilation = _per_axis(layer, "dilation", p.dilation, n_spatial, 1)
    if any(d <= 0 for d in dilation):
        raise layer.error(f"dilation must be positive, got {dilation}")
    return kernel, stride, pad, dilation


def conv_output_size(layer: Layer, size: int, kernel: int, stride: int, pad: int, dilation: int,
                     shape) -> tuple[int, int]:
    """Caffe's output size along one axis, (size + 2 pad - extent) / stride + 1 with C++'s division truncating
    toward zero, and how many zeros past the padded input its last window reads (im2col reads zeros outside the
    input): a window larger than the padded input by less than the stride still gives one output."""
    extent = dilation * (kernel - 1) + 1
    span = size + 2 * pad - extent
    out = (span // stride if span >= 0 else -(-span // stride)) + 1
    if out <= 0:
        raise layer.error(f"kernel extent {extent} exceeds the padded input size {size + 2 * pad} by at least the "
                          f"stride {stride}: Caffe's output would be empty (bottom shape {list(shape)})")
    return out, max(0, -span)


class _ConvBase(Layer):
    """Shared set-up of the convolution family: axis, geometry and per-bottom shape checks."""
    min_bottoms = 1
    min_tops = 1

    def _setup_geometry(self, bottom_shapes) -> tuple[tuple[int, ...], list[int]]:
        """Checks bottoms/tops and returns (first bottom shape, spatial sizes); sets the geometry attributes."""
        if len(bottom_shapes) != len(self.param.top):
            raise self.error(f"needs as many tops as bottoms, got {len(bottom_shapes)} bottoms and "
                             f"{len(self.param.top)} tops")
        shape = tuple(bottom_shapes[0])
        for i, other in enumerate(bottom_shapes[1:], 1):
            if tuple(other) != shape:
                raise self.error(f"all bottoms need the same shape: bottom 0 {list(shape)}, bottom {i} {list(other)}")
        self.axis = canonical_axis(self, self.param.convolution_param.axis, len(shape), "convolution_param.axis")
        n_spatial = len(shape) - self.axis - 1
        if n_spatial < 1:
            raise self.error(f"needs at least one spatial axis after the channel axis {self.axis}, "
                             f"got bottom shape {list(shape)}")
        self.kernel, self.stride, self.pad, self.dilation = _geometry(self, n_spatial)
        self.channels = shape[self.axis]
        self.extra = [0] * n_spatial  # zeros past each spatial axis's end pad (see conv_output_size)
        return shape, list(shape[self.axis + 1:])

    def _output_spatial(self, shape, spatial) -> list[int]:
        """Caffe's output sizes of a convolution (not a deconvolution); sets ``extra``."""
        sizes = [conv_output_size(self, *axis, shape)
                 for axis in zip(spatial, self.kernel, self.stride, self.pad, self.dilation)]
        self.extra = [extra for _, extra in sizes]
        return [out for out, _ in sizes]

    def _as_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Fold the axes before the channel axis into one batch axis (Caffe's num_)."""
        return x.reshape((-1,) + tuple(x.shape[self.axis:]))

    def _pad_extra(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the zeros past its end that Caffe's last window reads (a copy only where there are any)."""
        if not any(self.extra):
            return x
        return F.pad(x, [amount for extra in reversed(self.extra) for amount in (0, extra)])

    def _check_rank(self, n_spatial: int) -> None:
        if n_spatial not in _CONV:
            raise self.error(f"{n_spatial} spatial axes are not supported (torch convolves 1 to 3)")


class _WeightedConv(_ConvBase):
    """Convolution and Deconvolution: num_output, group, bias_term, weight and bias blobs."""
    transposed = False

    def setup(self, bottom_shapes):
        shape, spatial = self._setup_geometry(bottom_shapes)
        self._check_rank(len(spatial))
        p = self.param.convolution_param
        self.num_output, self.group, self.bias_term = p.num_output, p.group, p.bias_term
        if self.num_output <= 0:
            raise self.error("num_output must be positive")
        if self.group <= 0:
            raise self.error("group must be positive")
        if self.channels % self.group:
            raise self.error(f"group {self.group} does not divide the {self.channels} input channels")
        if self.num_output % self.group:
            raise self.error(f"group {self.group} does not divide num_output {self.num_output}")
        if self.transposed:
            out_spatial = [s * (size - 1) + d * (k - 1) + 1 - 2 * pad
                           for size, k, s, pad, d in zip(spatial, self.kernel, self.stride, self.pad, self.dilation)]
        else:
            out_spatial = self._output_spatial(shape, spatial)
        if min(out_spatial) <= 0:
            raise self.error(f"output size {out_spatial} is not positive for bottom shape {list(shape)}")
        weight_io = (self.channels, self.num_output // self.group) if self.transposed else \
            (self.num_output, self.channels // self.group)
        self.blob_shapes = [weight_io + tuple(self.kernel)]
        if self.bias_term:
            self.blob_shapes.append((self.num_output,))
        top = shape[:self.axis] + (self.num_output,) + tuple(out_spatial)
        return [top] * len(bottom_shapes)

    def in_place_problem(self, index, bottom_shape, top_shape):
        problem = super().in_place_problem(index, bottom_shape, top_shape)
        if problem is None and all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride) and \
                not any(self.pad):
            # Caffe's 1x1 path multiplies the bottom itself (no column buffer), writing the top over it
            return "Caffe's 1x1 matrix product would write the top over the bottom it reads"
        return problem

    def fill_blobs(self, rng):
        p = self.param.convolution_param
        blobs = [fill(p.weight_filler, self.blob_shapes[0], rng, f"layer '{self.name}' weight")]
        if self.bias_term:
            blobs.append(fill(p.bias_filler, self.blob_shapes[1], rng, f"layer '{self.name}' bias"))
        return blobs

    def forward(self, bottoms, blobs):
        weight = blobs[0]
        bias = blobs[1].reshape(-1) if self.bias_term else None
        tops = []
        for x in bottoms:
            lead = tuple(x.shape[:self.axis])
            y = self._convolve(self._pad_extra(self._as_batch(x)), weight.to(x.dtype),
                               None if bias is None else bias.to(x.dtype))
            tops.append(y.reshape(lead + tuple(y.shape[1:])))
        return tops

    def forward_inference(self, bottoms, blobs, relu_slope: float | None = None):
        """Inference-only CPU forward through oneDNN with Caffe's ReLU (``relu_slope``: its negative_slope) fused.
        Bottoms are made channels-last and so are the tops (oneDNN's fast layout, up to 2x faster than NCHW); the
        values are ``forward``'s then the ReLU's up to float rounding. None where it does not apply (no ReLU to fuse,
        not a 2-D convolution of float32 CPU tensors, autograd on, no oneDNN): the caller then runs ``forward``.
        Without a ReLU the channels-last top would only slow down the BatchNorm and Scale that usually follow (they
        could no longer run in place)."""
        x = bottoms[0]
        if relu_slope is None or self.transposed or not _CONV_POINTWISE.available or torch.is_grad_enabled() or \
                self.axis != 1 or x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32 or \
                blobs[0].dtype != torch.float32:
            return None
        weight = blobs[0]
        bias = blobs[1].reshape(-1) if self.bias_term else None
        attr, scalars = relu_attr(relu_slope)
        tops = []
        for x in bottoms:
            x = self._pad_extra(x)
            if not x.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
            y = _CONV_POINTWISE(x, weight, bias, self.pad, self.stride, self.dilation, self.group, attr, scalars, "")
            if y is None:
                return None
            tops.append(y)
        return tops

    def _convolve(self, x, weight, bias):
        n = len(self.kernel)
        if self.transposed:
            return _CONV_T[n](x, weight, bias, stride=self.stride, padding=self.pad, groups=self.group,
                              dilation=self.dilation)
        return _CONV[n](x, weight, bias, stride=self.stride, padding=self.pad, dilation=self.dilation,
                        groups=self.group)


@register_layer
class Convolution(_WeightedConv):
    """Weight [num_output, C/group, k...]; output (in + 2p - (d(k-1)+1)) / s + 1 (C++ division)."""
    type_name = "Convolution"


@register_layer
class Deconvolution(_WeightedConv):
    """Weight [C, num_output/group, k...] (Caffe's reversed dimensions); output s(in-1) + d(k-1) + 1 - 2p."""
    type_name = "Deconvolution"
    transposed = True


@register_layer
class Im2col(_ConvBase):
    """Column buffer of a 2-D convolution: channel axis becomes C*kh*kw (channel-major), as F.unfold orders it."""
    type_name = "Im2col"
    max_bottoms = 1
    max_tops = 1

    def setup(self, bottom_shapes):
        shape, spatial = self._setup_geometry(bottom_shapes)
        if len(spatial) != 2:
            raise self.error(f"only 2-D Im2col is supported, bottom has {len(spatial)} spatial axes")
        self.out_spatial = tuple(self._output_spatial(shape, spatial))
        return [shape[:self.axis] + (self.channels * math.prod(self.kernel),) + self.out_spatial]

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        lead = tuple(x.shape[:self.axis])
        cols = F.unfold(self._pad_extra(self._as_batch(x)), self.kernel, dilation=self.dilation, padding=self.pad,
                        stride=self.stride)
        return [cols.reshape(lead + (cols.shape[1],) + self.out_spatial)]
