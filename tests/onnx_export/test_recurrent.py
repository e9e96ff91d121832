"""LSTMUnit exported to ONNX: ORT CPU vs the torch graph, including cont = 0 (a new sequence)."""
import numpy as np

from tests.onnx_export.common import export_and_compare, input_layer, layer

NETS = [input_layer("c_prev", (1, 3, 4)) + input_layer("x", (1, 3, 16)) + input_layer("cont", (1, 3))
        + layer("LSTMUnit", ("c_prev", "x", "cont"), ("c", "h"), name="lstm")]


def test_lstm_unit_matches_torch():
    rng = np.random.default_rng(0)
    feeds = {"c_prev": rng.standard_normal((1, 3, 4)).astype(np.float32),
             "x": rng.standard_normal((1, 3, 16)).astype(np.float32) * 2,
             "cont": np.array([[1, 0, 1]], np.float32)}
    errors, _, _ = export_and_compare(NETS[0], feeds=feeds)
    assert set(errors) == {"c", "h"}
