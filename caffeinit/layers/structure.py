"""Layers that move, combine or summarize blobs: Concat, Slice, Split, Flatten, Reshape, Crop, Eltwise, Tile, Silence,
BatchReindex, Filter, Reduction, ArgMax, Softmax, Parameter, HDF5Output."""
from __future__ import annotations

import math

import torch

from caffeinit.layers.base import Layer
from caffeinit.layers.registry import register_layer
from caffeinit.proto import caffe_pb2


def canonical_axis(layer: Layer, axis: int, num_axes: int, what: str = "axis") -> int:
    """Caffe's Blob::CanonicalAxisIndex: -num_axes <= axis < num_axes, negative counts from the end."""
    if not -num_axes <= axis < num_axes:
        raise layer.error(f"{what} {axis} is out of range for a {num_axes}-D bottom")
    return axis + num_axes if axis < 0 else axis


def count(shape, start: int = 0, end: int | None = None) -> int:
    return math.prod(shape[start:end])


def legacy_dim(shape, index: int) -> int:
    """Caffe's Blob::LegacyShape (num/channels/height/width): 1 past the blob's last axis."""
    if len(shape) > 4:
        raise ValueError("legacy accessors need a blob of at most 4 axes")
    return shape[index] if -len(shape) <= index < len(shape) else 1


@register_layer
class Concat(Layer):
    type_name = "Concat"
    min_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("give either concat_param.axis or the deprecated concat_dim, not both")
        first = tuple(bottom_shapes[0])
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(self, axis, len(first))
        total = 0
        for i, shape in enumerate(bottom_shapes):
            if len(shape) != len(first):
                raise self.error(f"all bottoms need the same number of axes: bottom 0 {list(first)}, "
                                 f"bottom {i} {list(shape)}")
            for a in range(len(first)):
                if a != self.axis and shape[a] != first[a]:
                    raise self.error(f"bottom {i} {list(shape)} differs from bottom 0 {list(first)} in axis {a} "
                                     f"(only the concat axis {self.axis} may differ)")
            total += shape[self.axis]
        top = list(first)
        top[self.axis] = total
        return [tuple(top)]

    def forward(self, bottoms, blobs):
        return [torch.cat(list(bottoms), dim=self.axis)]


@register_layer
class Slice(Layer):
    type_name = "Slice"
    min_bottoms = max_bottoms = 1
    min_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("give either slice_param.axis or the deprecated slice_dim, not both")
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(self, p.slice_dim if p.HasField("slice_dim") else p.axis, len(shape))
        size, n_tops = shape[self.axis], len(self.param.top)
        points = list(p.slice_point)
        if points:
            if len(points) != n_tops - 1:
                raise self.error(f"{len(points)} slice_point values for {n_tops} tops (need {n_tops - 1})")
            if n_tops > size:
                raise self.error(f"cannot slice axis {self.axis} of size {size} into {n_tops} tops")
            bounds = [0] + points + [size]
            self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
            if any(s <= 0 for s in self.sizes):
                raise self.error(f"slice_point values {points} must increase strictly and stay inside axis "
                                 f"{self.axis} of size {size}")
        else:
            if size % n_tops:
                raise self.error(f"axis {self.axis} of size {size} does not split equally into {n_tops} tops")
            self.sizes = [size // n_tops] * n_tops
        tops = []
        for s in self.sizes:
            top = list(shape)
            top[self.axis] = s
            tops.append(tuple(top))
        return tops

    def forward(self, bottoms, blobs):
        return list(torch.split(bottoms[0], self.sizes, dim=self.axis))


@register_layer
class Split(Layer):
    type_name = "Split"
    min_bottoms = max_bottoms = 1
    min_tops = 1

    def setup(self, bottom_shapes):
        _no_in_place(self)  # split_layer.cpp Reshape: CHECK_NE(top[i], bottom[0])
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, bottoms, blobs):
        return [bottoms[0]] * len(self.param.top)


def _no_in_place(layer: Layer) -> None:
    if layer.param.top and layer.param.bottom and layer.param.top[0] == layer.param.bottom[0]:
        raise layer.error("cannot work in place (top and bottom are both "
                          f"'{layer.param.top[0]}')")


@register_layer
class Flatten(Layer):
    """Folds axes [axis, end_axis] into one; end_axis = axis - 1 inserts a size-1 axis (Caffe's count(a, a) is 1)."""
    type_name = "Flatten"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        _no_in_place(self)
        shape = tuple(bottom_shapes[0])
        p = self.param.flatten_param
        start = canonical_axis(self, p.axis, len(shape), "flatten_param.axis")
        end = canonical_axis(self, p.end_axis, len(shape), "flatten_param.end_axis")
        if end < start - 1:
            raise self.error(f"flatten_param.end_axis {p.end_axis} (axis {end}) comes before axis {p.axis} "
                             f"(axis {start}) by more than one, for a {len(shape)}-D bottom")
        self.start, self.end = start, end
        return [shape[:start] + (count(shape, start, end + 1),) + shape[end + 1:]]

    def forward(self, bottoms, blobs):
        if self.end < self.start:
            return [bottoms[0].unsqueeze(self.start)]
        return [bottoms[0].flatten(self.start, self.end)]


@register_layer
class Reshape(Layer):
    """reshape_param.shape replaces axes [axis, axis + num_axes); dim 0 copies the bottom's, one -1 is inferred."""
    type_name = "Reshape"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        _no_in_place(self)
        self.set_up_rows = bottom_shapes[0][0] if len(bottom_shapes[0]) else None
        return [self.top_shape(tuple(bottom_shapes[0]))]

    def forward(self, bottoms, blobs):
        # From the runtime shape: a batch other than the prototxt's passes through dims 0 and -1, as in Caffe.
        x = bottoms[0]
        p = self.param.reshape_param
        if p.axis == 0 and p.num_axes != 0 and len(p.shape.dim) and p.shape.dim[0] > 0 and x.dim() and \
                x.shape[0] != self.set_up_rows:
            # a fixed first dim does not follow the batch: the images would no longer lie along the first axis
            raise self.error(f"reshape_param.shape fixes the first axis at {p.shape.dim[0]}, so the net runs only "
                             f"with batches of exactly {self.set_up_rows} images, not {x.shape[0]} (--batch-size "
                             f"{self.set_up_rows} and a --num-images that is a multiple of it; or make that dim 0, "
                             "which copies the batch)")
        return [x.reshape(self.top_shape(tuple(x.shape)))]

    def top_shape(self, shape):
        p = self.param.reshape_param
        dims = list(p.shape.dim)
        if dims.count(-1) > 1:
            raise self.error("reshape_param.shape has more than one -1 dim")
        if any(d < -1 for d in dims):
            raise self.error(f"reshape_param.shape {dims} has a dim below -1")
        start = p.axis if p.axis >= 0 else len(shape) + p.axis + 1
        if not 0 <= start <= len(shape):
            raise self.error(f"reshape_param.axis {p.axis} is out of range for a {len(shape)}-D bottom")
        if p.num_axes < -1:
            raise self.error(f"reshape_param.num_axes must be >= 0, or -1 for all; got {p.num_axes}")
        end = len(shape) if p.num_axes == -1 else start + p.num_axes
        if end > len(shape):
            raise self.error(f"reshape_param axis {p.axis} + num_axes {p.num_axes} exceed the bottom's "
                             f"{len(shape)} axes")
        top = list(shape[:start]) + dims + list(shape[end:])
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= len(shape):
                    raise self.error(f"reshape_param.shape dim {i} is 0 but the bottom has no axis {start + i} "
                                     "to copy")
                top[start + i] = shape[start + i]
        if -1 in dims:
            known = math.prod(d for d in top if d != -1)
            if known == 0 or count(shape) % known:
                raise self.error(f"bottom count {count(shape)} ({list(shape)}) is not divisible by the product "
                                 f"{known} of the other dims of {dims}")
            top[start + dims.index(-1)] = count(shape) // known
        if count(top) != count(shape):
            raise self.error(f"output count {count(top)} ({top}) does not match input count {count(shape)} "
                             f"({list(shape)})")
        return tuple(top)


@register_layer
class Crop(Layer):
    """Crops bottom 0 to bottom 1's size in every axis from ``axis`` on, starting at ``offset``."""
    type_name = "Crop"
    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        big, ref = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(big) != len(ref):
            raise self.error(f"bottoms need the same number of axes: {list(big)} vs {list(ref)}")
        p = self.param.crop_param
        start = canonical_axis(self, p.axis, len(big), "crop_param.axis")
        offsets = list(p.offset)
        if len(offsets) > 1 and len(offsets) != len(big) - start:
            raise self.error(f"crop_param.offset must have 1 or {len(big) - start} values, got {len(offsets)}")
        self.slices, top = [], []
        for i in range(len(big)):
            if i < start:
                self.slices.append(slice(None))
                top.append(big[i])
                continue
            off = 0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - start]
            if big[i] - off < ref[i]:
                raise self.error(f"invalid crop in axis {i}: offset {off} + size {ref[i]} exceeds {big[i]}")
            self.slices.append(slice(off, off + ref[i]))
            top.append(ref[i])
        return [tuple(top)]

    def forward(self, bottoms, blobs):
        return [bottoms[0][tuple(self.slices)]]


@register_layer
class Eltwise(Layer):
    """PROD, SUM (with optional per-bottom coeff) or MAX over bottoms of identical shape."""
    type_name = "Eltwise"
    min_bottoms = 2
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.eltwise_param
        self.operation = p.operation
        coeffs = list(p.coeff)
        if coeffs and len(coeffs) != len(bottom_shapes):
            raise self.error(f"eltwise_param.coeff needs one value per bottom: {len(coeffs)} for "
                             f"{len(bottom_shapes)} bottoms")
        if coeffs and self.operation == caffe_pb2.EltwiseParameter.PROD:
            raise self.error("eltwise_param.coeff is only allowed with operation SUM")
        self.coeffs = coeffs or [1.0] * len(bottom_shapes)
        first = tuple(bottom_shapes[0])
        for i, shape in enumerate(bottom_shapes[1:], start=1):
            if tuple(shape) != first:
                raise self.error(f"bottoms need identical shapes: bottom {i} {list(shape)} vs bottom 0 "
                                 f"{list(first)}")
        return [first]

    def in_place_problem(self, index, bottom_shape, top_shape):
        if self.operation == caffe_pb2.EltwiseParameter.SUM:
            return "Caffe's CPU code sets the top to 0 before adding bottom 0 to it"
        if self.operation == caffe_pb2.EltwiseParameter.MAX:
            return "Caffe's CPU code sets the top to -FLT_MAX before comparing bottom 0 (its GPU code differs)"
        return super().in_place_problem(index, bottom_shape, top_shape)  # PROD multiplies element by element

    def forward(self, bottoms, blobs):
        if self.operation == caffe_pb2.EltwiseParameter.PROD:
            top = bottoms[0] * bottoms[1]
            for b in bottoms[2:]:
                top = top * b
        elif self.operation == caffe_pb2.EltwiseParameter.SUM:
            top = None
            for c, b in zip(self.coeffs, bottoms):
                term = b if c == 1 else b * c
                top = term if top is None else top + term
        else:
            top = torch.maximum(bottoms[0], bottoms[1])
            for b in bottoms[2:]:
                top = torch.maximum(top, b)
        return [top]


@register_layer
class Tile(Layer):
    """Repeats the block of axes [axis:] ``tiles`` times."""
    type_name = "Tile"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles is required")
        if p.tiles <= 0:
            raise self.error(f"tile_param.tiles must be positive, got {p.tiles}")
        self.axis = canonical_axis(self, p.axis, len(shape), "tile_param.axis")
        self.tiles = p.tiles
        top = list(shape)
        top[self.axis] *= self.tiles
        return [tuple(top)]

    def forward(self, bottoms, blobs):
        repeats = [1] * bottoms[0].dim()
        repeats[self.axis] = self.tiles
        return [bottoms[0].repeat(*repeats)]


@register_layer
class Silence(Layer):
    type_name = "Silence"
    min_bottoms = 1
    min_tops = max_tops = 0

    def setup(self, bottom_shapes):
        return []

    def forward(self, bottoms, blobs):
        return []


@register_layer
class HDF5Output(Silence):
    """A sink. Caffe writes its two bottoms to ``hdf5_output_param.file_name``; caffeinit never writes that file,
    so the forward does nothing."""
    type_name = "HDF5Output"
    min_bottoms = max_bottoms = 2


@register_layer
class BatchReindex(Layer):
    """top[i] = bottom 0[int(bottom 1[i])]."""
    type_name = "BatchReindex"
    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        data, permut = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(permut) != 1:
            raise self.error(f"bottom 1 (the indices) must have exactly 1 axis, got {list(permut)}")
        if len(data) < 1:
            raise self.error("bottom 0 must have at least 1 axis")
        return [(permut[0],) + data[1:]]

    def in_place_problem(self, index, bottom_shape, top_shape):
        return "Caffe copies item by item, so items read after being overwritten give other values"

    def forward(self, bottoms, blobs):
        data, permut = bottoms
        # Caffe checks the float values (so -0.5 and NaN fail) before truncating them to ints
        bad = ~((permut >= 0) & (permut < data.shape[0]))
        if bool(bad.any()):
            raise self.error(f"index out of range [0, {data.shape[0]}) in bottom 1: "
                             f"{[float(i) for i in permut[bad][:5]]}")
        return [data.index_select(0, permut.to(torch.int64))]


@register_layer
class Filter(Layer):
    """Keeps the items (axis 0) whose selector (last bottom) is nonzero.

    The number of kept items depends on the data. ``setup`` returns the upper bound (every item kept), which is
    what Caffe's first Reshape gives too; ``forward`` returns the items actually selected.
    """
    type_name = "Filter"
    min_bottoms = 2
    min_tops = 1

    def setup(self, bottom_shapes):
        n_tops = len(self.param.top)
        if n_tops != len(bottom_shapes) - 1:
            raise self.error(f"needs one top per filtered bottom: {len(bottom_shapes) - 1} bottoms to filter, "
                             f"{n_tops} tops")
        selector = tuple(bottom_shapes[-1])
        if len(selector) < 1 or any(d != 1 for d in selector[1:]):
            raise self.error(f"selector (last bottom) must have shape [N] or [N, 1, ...], got {list(selector)}")
        tops = []
        for i, shape in enumerate(bottom_shapes[:-1]):
            if len(shape) < 1 or shape[0] != selector[0]:
                raise self.error(f"bottom {i} {list(shape)} and the selector {list(selector)} differ in axis 0")
            tops.append(tuple(shape))
        return tops

    def forward(self, bottoms, blobs):
        keep = torch.nonzero(bottoms[-1].reshape(bottoms[-1].shape[0]) != 0).reshape(-1)
        return [b.index_select(0, keep) for b in bottoms[:-1]]


@register_layer
class Reduction(Layer):
    """SUM, ASUM, SUMSQ or MEAN over axes [axis:], times ``coeff``; the top keeps axes [:axis]."""
    type_name = "Reduction"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.param.reduction_param
        self.operation = p.operation
        self.axis = canonical_axis(self, p.axis, len(shape), "reduction_param.axis")
        self.coeff = float(p.coeff)
        if self.operation == caffe_pb2.ReductionParameter.MEAN:
            self.coeff = self.coeff / count(shape, self.axis)
        return [shape[:self.axis]]

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        flat = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        op = self.operation
        if op == caffe_pb2.ReductionParameter.ASUM:
            flat = torch.abs(flat)
        elif op == caffe_pb2.ReductionParameter.SUMSQ:
            flat = flat * flat
        top = flat.sum(dim=-1)
        return [top if self.coeff == 1 else top * self.coeff]


@register_layer
class ArgMax(Layer):
    """Indices (and with ``out_max_val`` values) of the ``top_k`` largest entries; ties go to the larger index as in
    Caffe's sort of (value, index) pairs."""
    type_name = "ArgMax"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.param.argmax_param
        self.top_k, self.out_max_val = p.top_k, p.out_max_val
        if self.top_k < 1:
            raise self.error("argmax_param.top_k must be at least 1")
        self.has_axis = p.HasField("axis")
        if self.has_axis:
            self.axis = canonical_axis(self, p.axis, len(shape), "argmax_param.axis")
            if self.top_k > shape[self.axis]:
                raise self.error(f"top_k {self.top_k} exceeds the size {shape[self.axis]} of axis {self.axis}")
            top = list(shape)
            top[self.axis] = self.top_k
        else:
            if len(shape) < 1 or self.top_k > count(shape, 1):
                raise self.error(f"top_k {self.top_k} exceeds the {count(shape, 1)} values per item of "
                                 f"{list(shape)}")
            top = [1] * max(len(shape), 3)
            top[0] = shape[0]
            top[2] = self.top_k
            if self.out_max_val:
                top[1] = 2
        self.top_shape = tuple(top)
        return [self.top_shape]

    def _top_k(self, x, dim):
        """Values and indices of the k largest along ``dim``, ties to the larger index."""
        size = x.shape[dim]
        flipped = torch.flip(x, dims=[dim])  # a stable descending sort then keeps larger original indices first
        values, order = torch.sort(flipped, dim=dim, descending=True, stable=True)
        values = values.narrow(dim, 0, self.top_k)
        indices = (size - 1 - order.narrow(dim, 0, self.top_k)).to(x.dtype)
        return values, indices

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        if self.has_axis:
            values, indices = self._top_k(x, self.axis)
            return [values if self.out_max_val else indices]
        values, indices = self._top_k(x.reshape(x.shape[0], -1), 1)
        top = torch.stack([indices, values], dim=1) if self.out_max_val else indices.unsqueeze(1)
        return [top.reshape((x.shape[0],) + self.top_shape[1:])]


@register_layer
class Softmax(Layer):
    """Softmax over ``axis`` (default 1), max-subtracted."""
    type_name = "Softmax"
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(self, self.param.softmax_param.axis, len(shape), "softmax_param.axis")
        return [shape]

    def forward(self, bottoms, blobs):
        return [caffe_softmax(bottoms[0], self.axis)]


def caffe_softmax(x, axis: int):
    shifted = x - torch.amax(x, dim=axis, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=axis, keepdim=True)


@register_layer
class Parameter(Layer):
    """Exposes its one blob (shape ``parameter_param.shape``) as its top."""
    type_name = "Parameter"
    min_bottoms = max_bottoms = 0
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise self.error(f"parameter_param.shape {list(shape)} has a negative dim")
        self.blob_shapes = [shape]
        return [shape]

    def forward(self, bottoms, blobs):
        return [blobs[0]]
