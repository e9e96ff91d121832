"""Pooling and SPP with Caffe's exact windows (pooling_layer.cpp, spp_layer.cpp).

Caffe's ceil-mode output size, its clip rule (only with padding), pads up to kernel - 1 and windows lying wholly
outside the image (pad 0, stride > kernel) are not all expressible with torch's pooling options, so the general path
pads explicitly (-inf for MAX, 0 for AVE) up to Caffe's last window and pools in floor mode. AVE sums with
``divisor_override=1`` and divides by Caffe's window sizes; MAX replaces -inf (no pixel) by -FLT_MAX.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffeinit.layers.base import Layer
from caffeinit.layers.registry import register_layer
from caffeinit.proto import caffe_pb2

FLT_MAX = 3.4028234663852886e38
_P = caffe_pb2.PoolingParameter
METHODS = {_P.MAX: "MAX", _P.AVE: "AVE", _P.STOCHASTIC: "STOCHASTIC"}


def pooled_hw(in_hw, kernel, stride, pad, ceil: bool) -> tuple[int, int]:
    """Caffe's output height and width (pooling_layer.cpp Reshape). The clip rule (a last window starting in the
    padding is dropped) applies to both axes as soon as either has padding."""
    out = []
    for size, k, s, p in zip(in_hw, kernel, stride, pad):
        span = (size + 2 * p - k) / s
        out.append((math.ceil(span) if ceil else math.floor(span)) + 1)
    if any(pad):
        out = [o - 1 if (o - 1) * s >= size + p else o for o, size, s, p in zip(out, in_hw, stride, pad)]
    return tuple(out)


def window_sizes(size: int, out: int, kernel: int, stride: int, pad: int) -> list[int]:
    """Caffe's AVE divisor along one axis: min(start + k, size + pad) - start with start = i*s - pad, taken before
    clipping (so pad cells count, the ceil overhang past size + pad does not; may be <= 0 for a window outside)."""
    return [min(i * stride - pad + kernel, size + pad) - (i * stride - pad) for i in range(out)]


class PoolGeometry:
    """One 2-D pooling configuration and its exact forward on NCHW tensors."""

    def __init__(self, method: int, kernel, stride, pad, ceil: bool, in_hw):
        self.method, self.kernel, self.stride, self.pad, self.ceil = method, tuple(kernel), tuple(stride), \
            tuple(pad), ceil
        self.in_hw = tuple(in_hw)
        self.out_hw = pooled_hw(in_hw, kernel, stride, pad, ceil)
        # Right/bottom padding needed so floor-mode pooling from -pad reaches Caffe's last window.
        self.extra = tuple(max(0, (o - 1) * s + k - p - n)
                           for o, k, s, p, n in zip(self.out_hw, kernel, stride, pad, in_hw))
        self.torch_exact = self._torch_is_exact()
        divisor = None
        if method == _P.AVE and not self.torch_exact:
            rows = window_sizes(in_hw[0], self.out_hw[0], kernel[0], stride[0], pad[0])
            cols = window_sizes(in_hw[1], self.out_hw[1], kernel[1], stride[1], pad[1])
            divisor = torch.tensor(rows, dtype=torch.float64)[:, None] * torch.tensor(cols, dtype=torch.float64)
        self.divisor = divisor

    def _torch_is_exact(self) -> bool:
        """Whether torch's own pooling (its padding, ceil rule and AVE divisor) gives Caffe's windows here."""
        if any(2 * p > k for p, k in zip(self.pad, self.kernel)):
            return False
        for n, k, s, p, o in zip(self.in_hw, self.kernel, self.stride, self.pad, self.out_hw):
            span = n + 2 * p - k
            torch_out = (-(-span // s) if self.ceil else span // s) + 1
            if self.ceil and (torch_out - 1) * s >= n + p:
                torch_out -= 1
            if torch_out != o:
                return False
        return True

    def forward(self, x: torch.Tensor, want_mask: bool = False) -> list[torch.Tensor]:
        if self.method == _P.MAX:
            return self._max(x, want_mask)
        if self.method == _P.AVE:
            return [self._ave(x)]
        return [self._stochastic_test(x)]

    def _padded(self, x: torch.Tensor, value: float) -> torch.Tensor:
        (ph, pw), (eh, ew) = self.pad, self.extra
        return F.pad(x, (pw, pw + ew, ph, ph + eh), value=value) if (ph or pw or eh or ew) else x

    def _crop(self, y: torch.Tensor) -> torch.Tensor:
        return y[..., :self.out_hw[0], :self.out_hw[1]]

    def _max(self, x, want_mask):
        if self.torch_exact:
            if not want_mask and x.device.type == "cpu" and x.dim() == 4 and not torch.is_grad_enabled():
                # torch's CPU max pooling is 1.5-3x faster on channels-last data, conversions included; same values.
                # (Not under autograd: the conversions' backward copies cost more than the layout saves.)
                y = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), self.kernel, self.stride, self.pad,
                                 ceil_mode=self.ceil)
                return [y.contiguous() if x.is_contiguous() else y]  # in the layout it came in
            y = F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, return_indices=want_mask)
            if not want_mask:
                return [y]
            y, index = y
            return [y, index.to(x.dtype)]
        padded = self._padded(x, -math.inf)
        result = F.max_pool2d(padded, self.kernel, self.stride, return_indices=want_mask)
        y = self._crop(result[0] if want_mask else result)
        empty = y <= -FLT_MAX  # Caffe starts from -FLT_MAX and only a strictly larger pixel replaces it
        y = torch.clamp(y, min=-FLT_MAX)
        if not want_mask:
            return [y]
        index = self._crop(result[1])
        width = padded.shape[-1]
        row, col = index // width - self.pad[0], index % width - self.pad[1]
        mask = torch.where(empty, torch.full_like(index, -1), row * self.in_hw[1] + col)
        return [y, mask.to(x.dtype)]

    def _ave(self, x):
        if self.torch_exact:
            return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)
        total = self._crop(F.avg_pool2d(self._padded(x, 0.0), self.kernel, self.stride, divisor_override=1))
        return total / self.divisor.to(device=x.device, dtype=x.dtype)

    def _stochastic_test(self, x):
        """GPU TEST-phase formula (pooling_layer.cu StoPoolForwardTest): sum(x^2) / sum(x), 0 where sum <= 0."""
        eh, ew = self.extra
        total = self._crop(F.avg_pool2d(F.pad(x, (0, ew, 0, eh)), self.kernel, self.stride, divisor_override=1))
        squares = self._crop(F.avg_pool2d(F.pad(x * x, (0, ew, 0, eh)), self.kernel, self.stride,
                                          divisor_override=1))
        return torch.where(total > 0, squares / torch.where(total > 0, total, torch.ones_like(total)),
                           torch.zeros_like(total))


def _pool_settings(layer: Layer, p: caffe_pb2.PoolingParameter, in_hw) -> tuple:
    """kernel, stride, pad (each (h, w)) with Caffe's exclusivity checks (pooling_layer.cpp LayerSetUp)."""
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise layer.error("with global_pooling the kernel size cannot be given")
        kernel = tuple(in_hw)
    else:
        # Caffe's check passes kernel_size with a lone kernel_h or kernel_w (which is then ignored).
        has_hw = p.HasField("kernel_h") and p.HasField("kernel_w")
        if p.HasField("kernel_size") and has_hw:
            raise layer.error("give either kernel_size or kernel_h and kernel_w, not both")
        if not p.HasField("kernel_size") and not has_hw:
            raise layer.error("kernel_size (or both kernel_h and kernel_w) is required")
        kernel = (p.kernel_size, p.kernel_size) if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
    if any(k <= 0 for k in kernel):
        raise layer.error(f"kernel dimensions must be positive, got {list(kernel)}")

    def pair(name: str, default: int) -> tuple[int, int]:
        has_h, has_w = p.HasField(f"{name}_h"), p.HasField(f"{name}_w")
        if p.HasField(name) and (has_h or has_w):
            raise layer.error(f"give either {name} or {name}_h and {name}_w, not both")
        if has_h != has_w:
            raise layer.error(f"{name}_h and {name}_w must be given together")
        if has_h:
            return getattr(p, f"{name}_h"), getattr(p, f"{name}_w")
        value = getattr(p, name) if p.HasField(name) else default
        return value, value

    pad, stride = pair("pad", 0), pair("stride", 1)
    if any(s <= 0 for s in stride):
        raise layer.error(f"stride must be positive, got {list(stride)}")
    if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise layer.error("with global_pooling only pad 0 and stride 1 are allowed")
    if pad != (0, 0):
        if p.pool not in (_P.MAX, _P.AVE):
            raise layer.error("padding is implemented only for MAX and AVE pooling")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise layer.error(f"pad {list(pad)} must be smaller than the kernel {list(kernel)}")
    return kernel, stride, pad


def _check_4d(layer: Layer, shape) -> None:
    if len(shape) != 4:
        raise layer.error(f"bottom must have 4 axes (num, channels, height, width), got shape {list(shape)}")


@register_layer
class Pooling(Layer):
    """MAX (optional second top: argmax index h*W + w as float, -1 for an empty window), AVE, STOCHASTIC (TEST)."""
    type_name = "Pooling"
    min_bottoms = max_bottoms = 1
    min_tops = 1
    max_tops = 2

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        p = param.pooling_param
        self.method = p.pool
        self.ceil = p.round_mode == _P.CEIL
        if self.method not in METHODS:
            raise self.error(f"unknown pooling method {self.method}")
        if self.method == _P.STOCHASTIC and phase != caffe_pb2.TEST:
            raise self.error("STOCHASTIC pooling in TRAIN samples at random and is not implemented (Caffe's CPU "
                             "code has none either); use the TEST phase")

    def check_counts(self, n_bottoms, n_tops):
        super().check_counts(n_bottoms, n_tops)
        if n_tops > 1 and self.method != _P.MAX:
            raise self.error(f"only MAX pooling has a second (mask) top; {METHODS[self.method]} takes one top")

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        _check_4d(self, shape)
        kernel, stride, pad = _pool_settings(self, self.param.pooling_param, shape[2:])
        self.geometry = PoolGeometry(self.method, kernel, stride, pad, self.ceil, shape[2:])
        top = shape[:2] + self.geometry.out_hw
        if min(self.geometry.out_hw) <= 0:
            raise self.error(f"output size {list(self.geometry.out_hw)} is not positive for bottom {list(shape)}")
        return [top] * len(self.param.top)

    def in_place_problem(self, index, bottom_shape, top_shape):
        return "Caffe's forward first sets the top to -FLT_MAX (MAX) or 0 (AVE), then reads the bottom"

    def forward(self, bottoms, blobs):
        return self.geometry.forward(bottoms[0], want_mask=len(self.param.top) > 1)


@register_layer
class SPP(Layer):
    """Spatial pyramid pooling: level i pools into 2^i x 2^i bins; levels flattened and concatenated on axis 1
    (a pyramid of height 1 gives the single pooling's 4-D top)."""
    type_name = "SPP"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        p = param.spp_param
        self.method = p.pool
        self.height = p.pyramid_height
        if self.height < 1:
            raise self.error("spp_param.pyramid_height must be at least 1")
        if self.method == _P.STOCHASTIC and phase != caffe_pb2.TEST:
            raise self.error("STOCHASTIC pooling in TRAIN samples at random and is not implemented; use TEST")

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        _check_4d(self, shape)
        height, width = shape[2:]
        if height <= 0 or width <= 0:
            raise self.error(f"input dimensions cannot be zero, got shape {list(shape)}")
        self.levels = []
        for level in range(self.height):
            bins = 2 ** level
            kernel = (math.ceil(height / bins), math.ceil(width / bins))
            pad = tuple((k * bins - n + 1) // 2 for k, n in zip(kernel, (height, width)))
            if pad != (0, 0) and self.method == _P.STOCHASTIC:
                raise self.error(f"pyramid level {level} needs padding {list(pad)}, which STOCHASTIC pooling lacks")
            if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                raise self.error(f"pyramid level {level} needs pad {list(pad)} >= kernel {list(kernel)} "
                                 f"for a {height}x{width} bottom")
            self.levels.append(PoolGeometry(self.method, kernel, kernel, pad, True, (height, width)))
        if self.height == 1:
            return [shape[:2] + self.levels[0].out_hw]
        return [(shape[0], sum(shape[1] * math.prod(g.out_hw) for g in self.levels))]

    def in_place_problem(self, index, bottom_shape, top_shape):
        return "Caffe's pooling first sets the top to -FLT_MAX (MAX) or 0 (AVE), then reads the bottom"

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        if self.height == 1:
            return self.levels[0].forward(x)
        return [torch.cat([g.forward(x)[0].reshape(x.shape[0], -1) for g in self.levels], dim=1)]
