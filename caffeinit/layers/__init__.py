"""Layer implementations, one module per family; importing this package registers them all."""
from caffeinit.layers.base import Layer, Shape
from caffeinit.layers.registry import known_layer_types, layer_class, register_layer

from caffeinit.layers import (  # noqa: F401  (registration side effects)
    activation,
    conv,
    data,
    inner_product,
    loss,
    normalization,
    pooling,
    recurrent,
    structure,
)

__all__ = ["Layer", "Shape", "known_layer_types", "layer_class", "register_layer"]
