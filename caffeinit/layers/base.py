"""Base class of all layer implementations: Caffe's set-up/shape rules plus a torch forward."""
from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np

from caffeinit.errors import CaffeinitError, layer_error
from caffeinit.proto import caffe_pb2

Shape = tuple[int, ...]


class Layer:
    """One Caffe layer.

    ``setup`` does what Caffe's LayerSetUp + Reshape do: check parameters and bottom shapes (Caffe's CHECKs become
    CaffeinitError naming the layer), return the top shapes, and set ``blob_shapes`` (the shapes of Caffe's
    ``layer.blobs``, in Caffe's order). ``forward`` computes the tops from the bottoms and blobs as torch tensors,
    giving Caffe's numbers and never writes to its bottoms: the executor renames in-place tops. Layers whose
    computation can overwrite bottom 0 also implement ``forward_inplace``, which the executor uses for speed when
    nothing else can see that tensor. Convolution and InnerProduct also have ``forward_inference(bottoms, blobs,
    relu_slope)``: a CPU inference-only forward through oneDNN with the following ReLU fused (``relu_slope`` its
    negative_slope, None for no ReLU), returning None where it does not apply; the executor decides when a ReLU may
    be fused (see ``TorchNet``).
    """

    type_name: ClassVar[str] = ""
    # Caffe's ExactNum/MinNum/MaxNum{Bottom,Top}Blobs; None = unconstrained.
    min_bottoms: ClassVar[int | None] = None
    max_bottoms: ClassVar[int | None] = None
    min_tops: ClassVar[int | None] = None
    max_tops: ClassVar[int | None] = None
    is_loss: ClassVar[bool] = False  # loss layers (and Accuracy) end the part of the net the init works on
    is_data: ClassVar[bool] = False  # data layers: tops are net inputs filled by caffeinit.data

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int = caffe_pb2.TEST):
        self.param = param
        self.name = param.name
        self.phase = phase
        self.blob_shapes: list[Shape] = []

    # -- shapes -------------------------------------------------------------------------------------------
    def setup(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        raise NotImplementedError

    def check_counts(self, n_bottoms: int, n_tops: int) -> None:
        """Caffe's blob-count checks (layer.hpp CheckBlobCounts)."""
        def bad(what, n, lo, hi):
            want = (f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None
                    else f"at most {hi}" if lo is None else f"{lo} to {hi}")
            raise self.error(f"takes {want} {what}, got {n}")
        if (self.min_bottoms is not None and n_bottoms < self.min_bottoms) or \
                (self.max_bottoms is not None and n_bottoms > self.max_bottoms):
            bad("bottoms", n_bottoms, self.min_bottoms, self.max_bottoms)
        if (self.min_tops is not None and n_tops < self.min_tops) or \
                (self.max_tops is not None and n_tops > self.max_tops):
            bad("tops", n_tops, self.min_tops, self.max_tops)

    def error(self, message: str) -> CaffeinitError:
        # control characters in a name (a '\n' in a prototxt string) are escaped: the error stays one line
        name = "".join(c if c.isprintable() else repr(c)[1:-1] for c in self.name)
        return layer_error(name, self.type_name, message)

    def in_place_problem(self, index: int, bottom_shape: Shape, top_shape: Shape) -> str | None:
        """Why Caffe's numbers differ from this layer's when top ``index`` is the blob of bottom ``index`` (in
        place), or None where they do not. By default a top of another shape: Caffe reshapes the shared blob
        before its forward reads the bottom (a larger one loses its data)."""
        if tuple(bottom_shape) != tuple(top_shape):
            return (f"Caffe reshapes it from {list(bottom_shape)} to the top's {list(top_shape)} before reading "
                    "it as the bottom")
        return None

    # -- blobs ----------------------------------------------------------------------------------------------
    def fill_blobs(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Initial blob values as Caffe's fillers would make them (float32, shapes ``blob_shapes``)."""
        return [np.zeros(s, np.float32) for s in self.blob_shapes]

    def learnable_blobs(self) -> list[int]:
        """Indices of blobs a solver updates (BatchNorm's statistics are not learnable)."""
        return list(range(len(self.blob_shapes)))

    # -- compute --------------------------------------------------------------------------------------------
    def forward(self, bottoms: list, blobs: list) -> list:
        """torch tensors in, torch tensors out (one per top)."""
        raise NotImplementedError

    def forward_inplace(self, bottoms: list, blobs: list) -> list | None:
        """``forward`` free to overwrite ``bottoms[0]`` and return it as top 0, with bitwise the same numbers; None
        where this layer (with its settings) cannot, and the executor then calls ``forward``. The executor calls it
        only without autograd, on a contiguous bottom 0 that no other live value, caller or parameter shares (the
        init's within-layer step also on a channels-last one: implementations must not assume a memory layout)."""
        return None
