"""Recurrent layers: LSTMUnit against a loop transcription of Caffe's lstm_unit_layer.cpp; RNN/LSTM refused."""
import numpy as np
import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.layers import recurrent  # noqa: F401  (registers the layers)
from tests.layers.helpers import close, make, rand, run


def lstm_unit_oracle(c_prev, gates, cont):
    """lstm_unit_layer.cpp Forward_cpu, loop for loop (gate order i, f, o, g)."""
    def sig(v):
        return 1.0 / (1.0 + np.exp(-v))
    n, h = c_prev.shape[1], c_prev.shape[2]
    c, hid = np.zeros((1, n, h)), np.zeros((1, n, h))
    for k in range(n):
        x = gates[0, k].astype(np.float64)
        for d in range(h):
            i = sig(x[d])
            f = 0.0 if cont[0, k] == 0 else cont[0, k] * sig(x[h + d])
            o = sig(x[2 * h + d])
            g = 2 * sig(2 * x[3 * h + d]) - 1
            c[0, k, d] = f * c_prev[0, k, d] + i * g
            hid[0, k, d] = o * (2 * sig(2 * c[0, k, d]) - 1)
    return c, hid


def test_lstm_unit():
    c_prev, gates = rand(1, 3, 4), rand(1, 3, 16, seed=1) * 2
    cont = np.array([[1, 0, 1]], np.float32)
    c, h = run(make("LSTMUnit", n_bottoms=3, n_tops=2), c_prev, gates, cont)
    want_c, want_h = lstm_unit_oracle(c_prev, gates, cont)
    close(c, want_c)
    close(h, want_h)
    with pytest.raises(CaffeinitError, match="\\(LSTMUnit\\).*4 x 4 = 16"):
        make("LSTMUnit", n_bottoms=3, n_tops=2).setup([(1, 3, 4), (1, 3, 12), (1, 3)])
    with pytest.raises(CaffeinitError, match="\\(LSTMUnit\\).*bottom 2 must have shape"):
        make("LSTMUnit", n_bottoms=3, n_tops=2).setup([(1, 3, 4), (1, 3, 16), (3,)])


def test_lstm_unit_tanh_is_computed_in_double():
    """Caffe's tanh(x) = 2. * sigmoid(2. * x) - 1. runs sigmoid<double>: small values keep their digits (in float the
    cell values below had relative errors up to 1e-3)."""
    gates = np.zeros((1, 1, 8), np.float32)
    gates[0, 0, 6:] = [1e-4, -3e-3]  # g inputs
    c, h = run(make("LSTMUnit", n_bottoms=3, n_tops=2), np.zeros((1, 1, 2), np.float32), gates,
               np.zeros((1, 1), np.float32))
    want_c, want_h = lstm_unit_oracle(np.zeros((1, 1, 2)), gates, np.zeros((1, 1)))
    close(c, want_c, rtol=1e-6, atol=0)
    close(h, want_h, rtol=1e-6, atol=0)


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_rnn_lstm_are_refused_clearly(type_name):
    with pytest.raises(CaffeinitError, match=f"layer 'L' \\({type_name}\\): recurrent layers .* not supported"):
        make(type_name, "recurrent_param { num_output: 4 }", 2).setup([(5, 2, 3), (5, 2)])
