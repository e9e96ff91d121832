"""Converters from Caffe layers to ONNX nodes, keyed by Caffe type name (one module per layer family).

A converter is ``fn(g, node, inputs, outputs, blobs)``: ``g`` is the :class:`~caffeinit.onnx_export.graph.
GraphBuilder`, ``node`` the built :class:`~caffeinit.net.LayerNode`, ``inputs``/``outputs`` the ONNX value names of
its bottoms and tops, ``blobs`` its parameter arrays (float32, Caffe's ``layer.blobs`` order). It must add nodes that
produce every name in ``outputs``.
"""
from __future__ import annotations

from typing import Callable

from caffeinit.errors import CaffeinitError, layer_error

Converter = Callable[..., None]
_CONVERTERS: dict[str, Converter] = {}


def converter(*type_names: str) -> Callable[[Converter], Converter]:
    """Decorator: register ``fn`` for each Caffe type in ``type_names``; a second registration is an error."""
    def register(fn: Converter) -> Converter:
        for name in type_names:
            if name in _CONVERTERS:
                raise ValueError(f"an ONNX converter for layer type '{name}' is already registered "
                                 f"({_CONVERTERS[name].__module__}.{_CONVERTERS[name].__name__})")
            _CONVERTERS[name] = fn
        return fn
    return register


def exportable_types() -> list[str]:
    return sorted(_CONVERTERS)


def converter_for(node) -> Converter:
    """The converter for ``node``'s type; a miss names the layer and type and lists the exportable types."""
    try:
        return _CONVERTERS[node.type]
    except KeyError:
        pass
    if getattr(node.layer, "is_loss", False):
        raise layer_error(node.name, node.type, "is a loss/accuracy layer, which has no inference meaning and "
                          "cannot be exported to ONNX; export a deploy net without it")
    raise CaffeinitError(f"layer '{node.name}' has type '{node.type}', which cannot be exported to ONNX "
                         f"(exportable types: {', '.join(exportable_types())})")
