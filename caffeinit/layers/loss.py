"""Loss layers and Accuracy. Losses output a 0-axis scalar (shape ()), as Caffe's LossLayer::Reshape."""
from __future__ import annotations

import numpy as np
import torch
from google.protobuf.message import DecodeError

from caffeinit.layers.base import Layer
from caffeinit.layers.registry import register_layer
from caffeinit.layers.structure import caffe_softmax, canonical_axis, count, legacy_dim
from caffeinit.proto import caffe_pb2

FLT_MIN = float(np.finfo(np.float32).tiny)
LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD
Norm = caffe_pb2.LossParameter


class LossLayer(Layer):
    """Caffe's LossLayer: two bottoms with the same first dimension, one scalar top."""
    is_loss = True
    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def setup(self, bottom_shapes):
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if not a or not b:  # LossLayer::Reshape reads shape(0) of both, which CHECK-fails on a 0-axis blob
            raise self.error(f"data {list(a)} and label {list(b)} need at least one axis")
        if a[0] != b[0]:
            raise self.error(f"data {list(a)} and label {list(b)} must have the same first dimension")
        self.check_shapes([tuple(s) for s in bottom_shapes])
        return [()] + self.extra_tops([tuple(s) for s in bottom_shapes])

    def check_shapes(self, bottom_shapes):
        pass

    def extra_tops(self, bottom_shapes):
        return []

    def legacy(self, shape, index):
        if len(shape) > 4:
            raise self.error(f"needs a bottom of at most 4 axes, got {list(shape)}")
        return legacy_dim(shape, index)


def _labels(layer, label, num_classes, mask):
    """Labels as int64 (C's truncation toward zero); labels outside [0, num_classes) that count are an error."""
    index = label.to(torch.int64)
    bad = mask & ((index < 0) | (index >= num_classes))
    if bool(bad.any()):
        raise layer.error(f"label {int(index[bad][0])} is outside [0, {num_classes})")
    return torch.where(mask, index, torch.zeros_like(index))


def _normalization(layer, loss_param, default_if_unset=None):
    """Caffe's choice of normalization mode: ``normalization``, else the legacy ``normalize`` flag."""
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return Norm.VALID if loss_param.normalize else Norm.BATCH_SIZE
    if default_if_unset is not None and not loss_param.HasField("normalization"):
        return default_if_unset
    return loss_param.normalization


def _normalizer(mode, outer, inner, valid):
    if mode == Norm.FULL:
        value = outer * inner
    elif mode == Norm.VALID:
        value = valid
    elif mode == Norm.BATCH_SIZE:
        value = outer
    else:
        value = 1
    return max(1.0, float(value))


class _ClassLoss(LossLayer):
    """Shared set-up of losses over a class axis (SoftmaxWithLoss, InfogainLoss): labels per outer x inner."""
    max_tops = 2

    def class_axis_setup(self, shape, label_shape, axis):
        self.axis = canonical_axis(self, axis, len(shape))
        self.outer, self.inner = count(shape, 0, self.axis), count(shape, self.axis + 1)
        self.num_classes = shape[self.axis]
        if self.outer * self.inner != count(label_shape):
            raise self.error(f"label count {count(label_shape)} ({list(label_shape)}) must match the number of "
                             f"predictions {self.outer * self.inner} (prediction {list(shape)}, class axis "
                             f"{self.axis})")
        lp = self.param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None

    def extra_tops(self, bottom_shapes):
        return [bottom_shapes[0]] if len(self.param.top) > 1 else []

    def prob_and_labels(self, scores, label):
        prob = caffe_softmax(scores, self.axis).reshape(self.outer, self.num_classes, self.inner)
        label = label.reshape(self.outer, self.inner)
        mask = torch.ones_like(label, dtype=torch.bool) if self.ignore_label is None else \
            label.to(torch.int64) != self.ignore_label
        return prob, _labels(self, label, self.num_classes, mask), mask


@register_layer
class SoftmaxWithLoss(_ClassLoss):
    """Mean of -log softmax(x)[label] over the non-ignored labels, normalized as loss_param says."""
    type_name = "SoftmaxWithLoss"

    def check_shapes(self, bottom_shapes):
        self.class_axis_setup(bottom_shapes[0], bottom_shapes[1], self.param.softmax_param.axis)
        self.normalization = _normalization(self, self.param.loss_param)

    def forward(self, bottoms, blobs):
        prob, index, mask = self.prob_and_labels(bottoms[0], bottoms[1])
        picked = prob.gather(1, index.unsqueeze(1)).squeeze(1)
        terms = -torch.log(torch.clamp(picked, min=FLT_MIN))
        loss = torch.where(mask, terms, torch.zeros_like(terms)).sum()
        valid = int(mask.sum())
        tops = [loss / _normalizer(self.normalization, self.outer, self.inner, valid)]
        if len(self.param.top) > 1:
            tops.append(prob.reshape(bottoms[0].shape))
        return tops


def _read_blob_file(layer, path):
    """One BlobProto from a binary file (Caffe's ReadProtoFromBinaryFile + Blob::FromProto), as float32."""
    from caffeinit.weights import blob_to_array
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise layer.error(f"cannot read infogain matrix '{path}': {e.strerror or e}") from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except DecodeError:
        raise layer.error(f"'{path}' is not a valid binaryproto (truncated or corrupt protobuf data)") from None
    return blob_to_array(blob, path)


@register_layer
class InfogainLoss(_ClassLoss):
    """-sum_l H[label, l] log softmax(x)[l]; H from bottom 2 or the binaryproto ``infogain_loss_param.source``."""
    type_name = "InfogainLoss"
    max_bottoms = 3

    def __init__(self, param, phase=caffe_pb2.TEST):
        super().__init__(param, phase)
        self.matrix = None

    def check_shapes(self, bottom_shapes):
        if self.param.loss_param.HasField("normalize"):
            raise self.error("loss_param.normalize is deprecated for InfogainLoss; use normalization")
        self.normalization = self.param.loss_param.normalization
        self.class_axis_setup(bottom_shapes[0], bottom_shapes[1], self.param.infogain_loss_param.axis)
        n = self.num_classes
        if len(bottom_shapes) == 3:
            if count(bottom_shapes[2]) != n * n:
                raise self.error(f"infogain matrix (bottom 2) {list(bottom_shapes[2])} must have {n}x{n} values")
            return
        p = self.param.infogain_loss_param
        if not p.HasField("source"):
            raise self.error("the infogain matrix needs a third bottom or infogain_loss_param.source")
        matrix = _read_blob_file(self, p.source).reshape(-1)
        if matrix.size != n * n:
            raise self.error(f"infogain matrix '{p.source}' has {matrix.size} values, need {n}x{n}")
        self.matrix = torch.from_numpy(matrix.reshape(n, n))

    def forward(self, bottoms, blobs):
        prob, index, mask = self.prob_and_labels(bottoms[0], bottoms[1])
        n = self.num_classes
        matrix = bottoms[2].reshape(n, n) if len(bottoms) == 3 else self.matrix.to(prob.dtype)
        rows = matrix[index]  # [outer, inner, n]: H[label, l]
        logs = torch.log(torch.clamp(prob, min=LOG_THRESHOLD)).permute(0, 2, 1)  # [outer, inner, n]
        terms = -(rows * logs).sum(dim=2)
        loss = torch.where(mask, terms, torch.zeros_like(terms)).sum()
        tops = [loss / _normalizer(self.normalization, self.outer, self.inner, int(mask.sum()))]
        if len(self.param.top) > 1:
            tops.append(prob.reshape(bottoms[0].shape))
        return tops


@register_layer
class Accuracy(Layer):
    """Share of labels whose score is among the top_k (ties count against the label, as Caffe's >= count); a
    second top gives the accuracy per class."""
    type_name = "Accuracy"
    is_loss = True
    min_bottoms = max_bottoms = 2
    min_tops, max_tops = 1, 2

    def setup(self, bottom_shapes):
        shape, label_shape = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        p = self.param.accuracy_param
        self.top_k = p.top_k
        if count(label_shape) == 0 or self.top_k > count(shape) // count(label_shape):
            raise self.error(f"top_k {self.top_k} exceeds the number of classes "
                             f"{count(shape) // max(count(label_shape), 1)}")
        self.axis = canonical_axis(self, p.axis, len(shape), "accuracy_param.axis")
        self.outer, self.inner = count(shape, 0, self.axis), count(shape, self.axis + 1)
        self.num_classes = shape[self.axis]
        if self.outer * self.inner != count(label_shape):
            raise self.error(f"label count {count(label_shape)} ({list(label_shape)}) must match the number of "
                             f"predictions {self.outer * self.inner} (prediction {list(shape)}, axis {self.axis})")
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        return [()] + ([(self.num_classes,)] if len(self.param.top) > 1 else [])

    def forward(self, bottoms, blobs):
        scores = bottoms[0].reshape(self.outer, self.num_classes, self.inner)
        label = bottoms[1].reshape(self.outer, self.inner)
        mask = torch.ones_like(label, dtype=torch.bool) if self.ignore_label is None else \
            label.to(torch.int64) != self.ignore_label
        index = _labels(self, label, self.num_classes, mask)
        true_score = scores.gather(1, index.unsqueeze(1))
        better = (scores >= true_score).sum(dim=1) - 1  # the true class counts itself
        hit = (better < self.top_k) & mask
        valid = int(mask.sum())
        accuracy = hit.sum().to(scores.dtype) / valid if valid else torch.zeros((), dtype=scores.dtype)
        tops = [accuracy.reshape(())]
        if len(self.param.top) > 1:
            seen = torch.zeros(self.num_classes, dtype=scores.dtype).index_add_(
                0, index[mask], torch.ones(valid, dtype=scores.dtype))
            right = torch.zeros(self.num_classes, dtype=scores.dtype).index_add_(
                0, index[hit], torch.ones(int(hit.sum()), dtype=scores.dtype))
            tops.append(torch.where(seen > 0, right / torch.clamp(seen, min=1), torch.zeros_like(seen)))
        return tops


@register_layer
class EuclideanLoss(LossLayer):
    """sum((a - b)^2) / N / 2."""
    type_name = "EuclideanLoss"

    def check_shapes(self, bottom_shapes):
        a, b = bottom_shapes
        if count(a, 1) != count(b, 1):
            raise self.error(f"inputs must have the same dimension: {list(a)} vs {list(b)}")
        self.num = self.legacy(a, 0)

    def forward(self, bottoms, blobs):
        diff = bottoms[0].reshape(-1) - bottoms[1].reshape(-1)
        return [torch.dot(diff, diff) / self.num / 2]


@register_layer
class HingeLoss(LossLayer):
    """sum over items and classes of max(0, 1 - t * x) (t = +1 at the label, -1 elsewhere), L1 or squared (L2),
    divided by N."""
    type_name = "HingeLoss"

    def check_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.num = self.legacy(shape, 0)
        self.dim = count(shape) // self.num
        if count(bottom_shapes[1]) < self.num:
            raise self.error(f"label {list(bottom_shapes[1])} needs one value per item ({self.num})")
        self.norm = self.param.hinge_loss_param.norm

    def forward(self, bottoms, blobs):
        x = bottoms[0].reshape(self.num, self.dim)
        label = bottoms[1].reshape(-1)[:self.num]
        index = _labels(self, label, self.dim, torch.ones_like(label, dtype=torch.bool))
        sign = torch.ones_like(x).scatter(1, index.unsqueeze(1), -1.0)
        margins = torch.clamp(1 + sign * x, min=0)
        if self.norm == caffe_pb2.HingeLossParameter.L2:
            return [(margins * margins).sum() / self.num]
        return [margins.sum() / self.num]


@register_layer
class MultinomialLogisticLoss(LossLayer):
    """-mean log p[label] of given probabilities (clamped at 1e-20)."""
    type_name = "MultinomialLogisticLoss"

    def check_shapes(self, bottom_shapes):
        shape, label = bottom_shapes
        if (self.legacy(label, 1), self.legacy(label, 2), self.legacy(label, 3)) != (1, 1, 1):
            raise self.error(f"label must have shape [N, 1, 1, 1] (one label per item), got {list(label)}")
        self.num = self.legacy(shape, 0)
        self.dim = count(shape) // self.num

    def forward(self, bottoms, blobs):
        prob = bottoms[0].reshape(self.num, self.dim)
        label = bottoms[1].reshape(self.num)
        index = _labels(self, label, self.dim, torch.ones_like(label, dtype=torch.bool))
        picked = prob.gather(1, index.unsqueeze(1)).squeeze(1)
        return [-torch.log(torch.clamp(picked, min=LOG_THRESHOLD)).sum() / self.num]


@register_layer
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross-entropy of sigmoid(x) against targets in [0, 1], in Caffe's stable form; ignore_label and
    normalization (default BATCH_SIZE here) as in Caffe."""
    type_name = "SigmoidCrossEntropyLoss"

    def check_shapes(self, bottom_shapes):
        a, b = bottom_shapes
        if count(a) != count(b):
            raise self.error(f"inputs must have the same count: {list(a)} vs {list(b)}")
        self.outer, self.inner = a[0], count(a, 1)
        lp = self.param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        self.normalization = _normalization(self, lp, default_if_unset=Norm.BATCH_SIZE)

    def forward(self, bottoms, blobs):
        x, target = bottoms[0].reshape(-1), bottoms[1].reshape(-1).to(bottoms[0].dtype)
        positive = (x >= 0).to(x.dtype)
        terms = -(x * (target - positive) - torch.log(1 + torch.exp(x - 2 * x * positive)))
        if self.ignore_label is None:
            mask = torch.ones_like(x, dtype=torch.bool)
        else:
            mask = bottoms[1].reshape(-1).to(torch.int64) != self.ignore_label
        loss = torch.where(mask, terms, torch.zeros_like(terms)).sum()
        return [loss / _normalizer(self.normalization, self.outer, self.inner, int(mask.sum()))]


@register_layer
class ContrastiveLoss(LossLayer):
    """Similar pairs (y != 0): d^2; dissimilar: max(margin - d, 0)^2 (legacy: max(margin - d^2, 0)); sum / N / 2."""
    type_name = "ContrastiveLoss"
    min_bottoms = max_bottoms = 3

    def check_shapes(self, bottom_shapes):
        a, b, y = bottom_shapes
        if self.legacy(a, 1) != self.legacy(b, 1):
            raise self.error(f"bottoms 0 and 1 need the same channels: {list(a)} vs {list(b)}")
        for i, shape in ((0, a), (1, b)):
            if self.legacy(shape, 2) != 1 or self.legacy(shape, 3) != 1:
                raise self.error(f"bottom {i} must have height and width 1, got {list(shape)}")
        if (self.legacy(y, 1), self.legacy(y, 2), self.legacy(y, 3)) != (1, 1, 1):
            raise self.error(f"bottom 2 (similarity) must have shape [N, 1, 1, 1], got {list(y)}")
        self.num, self.channels = self.legacy(a, 0), self.legacy(a, 1)
        if self.legacy(y, 0) < self.num:  # Caffe reads one similarity per pair; only a and b's first dims are checked
            raise self.error(f"bottom 2 (similarity) {list(y)} has fewer items than the {self.num} pairs")
        p = self.param.contrastive_loss_param
        self.margin, self.legacy_version = float(np.float32(p.margin)), p.legacy_version

    def forward(self, bottoms, blobs):
        a = bottoms[0].reshape(self.num, self.channels)
        b = bottoms[1].reshape(self.num, self.channels)
        similar = bottoms[2].reshape(-1)[:self.num].to(torch.int64) != 0
        diff = a - b
        dist_sq = (diff * diff).sum(dim=1)
        if self.legacy_version:
            apart = torch.clamp(self.margin - dist_sq, min=0)
        else:
            apart = torch.clamp(self.margin - torch.sqrt(dist_sq), min=0)
            apart = apart * apart
        return [torch.where(similar, dist_sq, apart).sum() / self.num / 2]
