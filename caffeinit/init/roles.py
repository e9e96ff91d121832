"""What the initialization needs to know about a layer: which layers have per-output-channel weights ("affine"
layers: Convolution, Deconvolution, InnerProduct, one-bottom Scale), how their weight splits into per-group
(outputs x fan-in) matrices, and how to read input patches for the data-dependent draws."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from caffeinit.errors import CaffeinitError
from caffeinit.net import LayerNode

AFFINE_TYPES = ("Convolution", "Deconvolution", "InnerProduct", "Scale")


@dataclass
class Affine:
    """An affine layer: top channel c = sum over its filter W_c of the inputs, plus b_c.

    ``channel_axis`` is the axis of the top that holds the outputs; ``groups`` splits inputs and outputs.
    """
    node: LayerNode
    kind: str  # conv | deconv | ip | scale
    bias: int | None  # blob index of the bias, if any
    channel_axis: int
    num_output: int
    groups: int = 1

    @property
    def name(self) -> str:
        return self.node.name

    # -- weights as per-group matrices ------------------------------------------------------------------------
    def group_matrices(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as [groups, outputs per group, fan-in per group] (a copy for Deconvolution and transposed
        InnerProduct)."""
        g = self.groups
        if self.kind == "conv":
            return weight.reshape(g, self.num_output // g, -1)
        if self.kind == "deconv":
            c_in = weight.shape[0]
            per = weight.reshape(g, c_in // g, self.num_output // g, -1)
            return per.permute(0, 2, 1, 3).reshape(g, self.num_output // g, -1)
        if self.kind == "ip":
            matrix = weight.t() if self.node.layer.transpose else weight
            return matrix.reshape(1, self.num_output, -1)
        return weight.reshape(1, self.num_output, -1)

    def from_group_matrices(self, mats: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of ``group_matrices``: a tensor shaped like the weight blob ``like``."""
        g = self.groups
        if self.kind == "deconv":
            c_in = like.shape[0]
            k = mats.shape[2] // (c_in // g)
            per = mats.reshape(g, self.num_output // g, c_in // g, k).permute(0, 2, 1, 3)
            return per.reshape(like.shape).contiguous()
        if self.kind == "ip" and self.node.layer.transpose:
            return mats.reshape(self.num_output, -1).t().contiguous()
        return mats.reshape(like.shape).contiguous()

    def scale_outputs(self, weight: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """The weight with output channel c multiplied by ``factors[c]``."""
        mats = self.group_matrices(weight)
        mats = mats * factors.to(mats.dtype).reshape(self.groups, -1, 1)
        return self.from_group_matrices(mats, weight)

    def scale_outputs_(self, weight: torch.Tensor, factors: torch.Tensor) -> None:
        """``scale_outputs`` in place (no copy where output channels are the weight's first axis)."""
        if (self.kind == "conv" or (self.kind == "ip" and not self.node.layer.transpose)) and weight.is_contiguous():
            weight.view(self.num_output, -1).mul_(factors.to(weight.dtype).reshape(-1, 1))
        else:
            weight.copy_(self.scale_outputs(weight, factors))

    # -- data ---------------------------------------------------------------------------------------------------
    def supports_patches(self) -> bool:
        """Whether the data-dependent draws can read this layer's input patches."""
        if self.kind == "ip":
            return True
        if self.kind == "conv":
            layer = self.node.layer
            return len(layer.kernel) == 2 and len(self.node.bottoms) >= 1
        return False

    def patch_count(self, x: torch.Tensor) -> int:
        """How many input patches (rows of ``patches``) the bottom ``x`` holds."""
        layer = self.node.layer
        if self.kind == "ip":
            return x.numel() // layer.inputs
        lead = math.prod(x.shape[:layer.axis])
        out = [(size + 2 * p + e - (d * (k - 1) + 1)) // s + 1 for size, k, s, p, e, d in
               zip(x.shape[layer.axis + 1:], layer.kernel, layer.stride, layer.pad, layer.extra, layer.dilation)]
        return lead * math.prod(out)

    def patches(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Input patches of every group (groups x samples x fan-in), each row in the weight's element order: all of
        them, or only the rows numbered ``rows`` (gathered directly, without unfolding the whole bottom)."""
        layer = self.node.layer
        if self.kind == "ip":
            flat = x.reshape(-1, layer.inputs)
            return (flat if rows is None else flat[rows.to(x.device)])[None]
        x = x.reshape((-1,) + tuple(x.shape[layer.axis:]))
        (eh, ew) = layer.extra  # zeros past the end that Caffe's last window reads (a window past a small input)
        if rows is None:
            if eh or ew:
                x = F.pad(x, (0, ew, 0, eh))
            cols = F.unfold(x, layer.kernel, dilation=layer.dilation, padding=layer.pad, stride=layer.stride)
            cols = cols.reshape(cols.shape[0], self.groups, -1, cols.shape[2])  # (image, group, column, place)
            return cols.permute(1, 0, 3, 2).reshape(self.groups, -1, cols.shape[2])
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel, layer.stride, layer.pad, layer.dilation
        padded = F.pad(x, (pw, pw + ew, ph, ph + eh))
        channels, height, width = padded.shape[1:]
        out_h = (height - dh * (kh - 1) - 1) // sh + 1
        out_w = (width - dw * (kw - 1) - 1) // sw + 1
        rows = rows.to(x.device)
        image, place = rows // (out_h * out_w), rows % (out_h * out_w)
        corner = image * (channels * height * width) + (place // out_w) * sh * width + (place % out_w) * sw
        c = torch.arange(channels, device=x.device)[:, None, None] * (height * width)
        ky = torch.arange(kh, device=x.device)[None, :, None] * (dh * width)
        kx = torch.arange(kw, device=x.device)[None, None, :] * dw
        offsets = (c + ky + kx).reshape(self.groups, -1)  # (channel, ky, kx) order per group, as unfold and the weight
        return padded.reshape(-1)[corner[None, :, None] + offsets[:, None, :]]


def affine_of(node: LayerNode) -> Affine | None:
    """The Affine description of ``node``, or None for layers without per-output-channel weights."""
    layer = node.layer
    if node.type in ("Convolution", "Deconvolution"):
        return Affine(node, "deconv" if node.type == "Deconvolution" else "conv", 1 if layer.bias_term else None,
                      layer.axis, layer.num_output, layer.group)
    if node.type == "InnerProduct":
        return Affine(node, "ip", 1 if layer.bias_term else None, layer.axis, layer.num_output)
    if node.type == "Scale" and not layer.two_bottoms and len(layer.blob_shapes[0]) >= 1:
        shape = layer.blob_shapes[0]
        return Affine(node, "scale", 1 if layer.bias_term else None, layer.scale_axis, shape[0])
    return None


def weight_lr_mult(node: LayerNode, blob: int, net) -> float:
    """The lr_mult Caffe applies to blob ``blob`` of ``node`` in ``net`` (default 1). A parameter shared by name takes
    the one the first of its layers that sets one gives (Net::AppendParam: the owner's unset default does not
    count; the layers that set one must agree)."""
    specs = node.param.param
    if blob >= len(specs):
        return 1.0
    spec = specs[blob]
    if spec.HasField("lr_mult") or not spec.name:
        return float(spec.lr_mult)
    for other in net.layers:
        for shared in other.param.param:
            if shared.name == spec.name and shared.HasField("lr_mult"):
                return float(shared.lr_mult)
    return 1.0


def is_frozen(node: LayerNode, net) -> bool:
    """An affine layer whose weight has lr_mult 0: never drawn, never scaled."""
    return weight_lr_mult(node, 0, net) == 0


def frozen_at_zero(node: LayerNode, blobs, net) -> bool:
    """A frozen affine layer whose weights are all zero: its output is a constant, and no gradient passes it."""
    return affine_of(node) is not None and is_frozen(node, net) and len(blobs) > 0 \
        and not bool(blobs[0].detach().any())


def check_layer_names(net, layer_blobs) -> None:
    """Refuse layers with parameters that have no name or share one: a caffemodel stores weights under layer names
    (Caffe would copy a name's weights into the first layer of that name only)."""
    named: dict[str, LayerNode] = {}
    for node in net.layers:
        if not len(layer_blobs[node.index]):
            continue
        where = f"({node.type}, top {', '.join(node.tops) or '-'})"
        if not node.name:
            raise CaffeinitError(f"a layer with parameters has no name {where}: a caffemodel stores weights under "
                                 "layer names; name it")
        first = named.setdefault(node.name, node)
        if first is not node:
            raise CaffeinitError(f"two layers with parameters are named '{node.name}' ({first.type}, top "
                                 f"{', '.join(first.tops) or '-'}; {node.type}, top {', '.join(node.tops) or '-'}): "
                                 "a caffemodel stores weights under layer names, so Caffe would load both from one; "
                                 "rename one")


def fan_in(affine: Affine) -> int:
    """Inputs per output channel."""
    weight_shape = affine.node.layer.blob_shapes[0]
    return math.prod(weight_shape) // affine.num_output
