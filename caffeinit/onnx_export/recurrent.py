"""LSTMUnit (one LSTM time step). RNN and LSTM, which Caffe unrolls into an inner net, are not exported."""
from __future__ import annotations

from caffeinit.onnx_export.registry import converter


@converter("LSTMUnit")
def lstm_unit(g, node, inputs, outputs, blobs):
    """Gates in Caffe's order i, f, o, g; cont == 0 zeroes the forget gate."""
    c_prev, gates, cont = inputs
    name, hidden = node.name, node.layer.hidden
    parts = g.op("Split", [gates, g.ints([hidden] * 4, f"{name}/sizes")], f"{name}/gate", n_out=4, axis=2)
    i, f, o = (g.op("Sigmoid", [p], f"{name}/{what}") for p, what in zip(parts[:3], "ifo"))
    cell_input = g.op("Tanh", [parts[3]], f"{name}/g")
    keep = g.op("Unsqueeze", [cont, g.ints([-1], f"{name}/axis")], f"{name}/cont")
    forget = g.op("Mul", [f, keep], f"{name}/forget")
    c = g.op("Add", [g.op("Mul", [forget, c_prev], f"{name}/kept"), g.op("Mul", [i, cell_input], f"{name}/new")],
             name, out=outputs[0])
    g.op("Mul", [o, g.op("Tanh", [c], f"{name}/tanh_c")], name, out=outputs[1])
