"""Recurrent layers. LSTMUnit (one LSTM time step) runs; RNN and LSTM, which Caffe runs as an unrolled inner net,
are registered so that a net using them fails with one clear error."""
from __future__ import annotations

import torch

from caffeinit.layers.base import Layer
from caffeinit.layers.registry import register_layer


def _sigmoid(x):
    """lstm_unit_layer.cpp's sigmoid<float>: 1. / (1. + exp(-x)), the exponential in float, the rest in double (C++
    double literals), rounded once."""
    return (1 / (1 + torch.exp(-x).double())).to(x.dtype)


def _tanh(x):
    """lstm_unit_layer.cpp's tanh: 2. * sigmoid(2. * x) - 1., whose double argument makes it all double, rounded
    once (in float, tanh of small values loses most digits)."""
    wide = 2 * x.double()
    return (2 / (1 + torch.exp(-wide)) - 1).to(x.dtype)


@register_layer
class LSTMUnit(Layer):
    """One LSTM step. Bottoms: c_prev [1, N, H], gate inputs [1, N, 4H] (order i, f, o, g), cont [1, N].
    Tops: c, h [1, N, H]. cont == 0 zeroes the forget gate (a new sequence starts)."""
    type_name = "LSTMUnit"
    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 2

    def setup(self, bottom_shapes):
        c_prev, gates, cont = (tuple(s) for s in bottom_shapes)
        for i, shape in enumerate((c_prev, gates, cont)):
            axes = 2 if i == 2 else 3
            if len(shape) != axes or shape[0] != 1 or shape[1] != c_prev[1]:
                raise self.error(f"bottom {i} must have shape [1, {c_prev[1] if len(c_prev) > 1 else 'N'}"
                                 f"{', ...' if axes == 3 else ''}], got {list(shape)}")
        self.hidden = c_prev[2]
        if gates[2] != 4 * self.hidden:
            raise self.error(f"bottom 1 (gate inputs) needs 4 x {self.hidden} = {4 * self.hidden} values on axis 2, "
                             f"got {gates[2]}")
        return [c_prev, c_prev]

    def forward(self, bottoms, blobs):
        c_prev, gates, cont = bottoms
        h = self.hidden
        i = _sigmoid(gates[..., :h])
        cont = cont.unsqueeze(-1).to(gates.dtype)
        f = torch.where(cont == 0, torch.zeros_like(i), cont * _sigmoid(gates[..., h:2 * h]))
        o = _sigmoid(gates[..., 2 * h:3 * h])
        g = _tanh(gates[..., 3 * h:])
        c = f * c_prev + i * g
        return [c, o * _tanh(c)]


class _Unsupported(Layer):
    def setup(self, bottom_shapes):
        raise self.error("recurrent layers (RNN, LSTM) are not supported by caffeinit")


@register_layer
class RNN(_Unsupported):
    type_name = "RNN"


@register_layer
class LSTM(_Unsupported):
    type_name = "LSTM"
