"""A readable summary of a built net: a table for people, a JSON object for programs."""
from __future__ import annotations

import math

from caffeinit.net import Net
from caffeinit.tables import format_table


def net_summary(net: Net) -> dict:
    """The ``inspect --json`` object: name, inputs, outputs, blobs (after their last writer), layers."""
    return {
        "name": net.name,
        "inputs": {b: list(s) for b, s in net.inputs.items()},
        "outputs": list(net.outputs),
        "blobs": {b: list(s) for b, s in net.blob_shapes.items()},
        "layers": [{"name": n.name, "type": n.type, "bottoms": n.bottoms, "tops": n.tops,
                    "top_shapes": [list(s) for s in n.top_shapes],
                    "params": [list(s) for s in n.layer.blob_shapes]} for n in net.layers],
    }


def net_table(net: Net) -> str:
    """One row per layer: name, type, bottoms -> tops, top shapes, parameter shapes and count."""
    rows = [("layer", "type", "bottoms -> tops", "top shapes", "params", "#params")]
    total = 0
    for n in net.layers:
        count = sum(math.prod(s) for s in n.layer.blob_shapes)
        total += count
        rows.append((n.name, n.type, f"{','.join(n.bottoms) or '-'} -> {','.join(n.tops) or '-'}",
                     " ".join(_shape(s) for s in n.top_shapes) or "-",
                     " ".join(_shape(s) for s in n.layer.blob_shapes) or "-", f"{count:,}" if count else "-"))
    lines = [format_table(rows), ""]
    lines.append(f"net '{net.name}': {len(net.layers)} layers, {total:,} parameters; inputs "
                 f"{', '.join(f'{b} {_shape(s)}' for b, s in net.feeds.items()) or '-'}; outputs "
                 f"{', '.join(net.outputs) or '-'}")
    return "\n".join(lines)


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "()"
