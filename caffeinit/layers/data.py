"""Data layers (Input, Data, ImageData, HDF5Data, MemoryData, DummyData, WindowData): shape inference only.

Their tops are net inputs: the executor receives them from :mod:`caffeinit.data` (or the caller), so ``forward`` is
never used. ``setup`` gets the top shapes as Caffe's set-up does, reading the first record or image if needed.
"""
from __future__ import annotations

from caffeinit.errors import CaffeinitError
from caffeinit.layers.base import Layer
from caffeinit.layers.registry import register_layer


class DataLayer(Layer):
    is_data = True
    min_bottoms = 0
    max_bottoms = 0
    min_tops = 1
    max_tops = 2  # Caffe's BaseDataLayer: data and an optional label

    def setup(self, bottom_shapes):
        from caffeinit.data.sources import peek_top_shapes
        try:
            return peek_top_shapes(self.param, self.phase)
        except CaffeinitError as e:
            message = str(e)
            if f"layer '{self.name}'" in message:
                raise
            raise self.error(message) from None

    def forward(self, bottoms, blobs):
        raise self.error("data layers have no forward: their tops are fed from caffeinit.data")


@register_layer
class InputLayer(DataLayer):
    type_name = "Input"
    max_tops = None


@register_layer
class DataLayerDB(DataLayer):
    type_name = "Data"


@register_layer
class ImageDataLayer(DataLayer):
    type_name = "ImageData"


@register_layer
class HDF5DataLayer(DataLayer):
    type_name = "HDF5Data"
    max_tops = None


@register_layer
class MemoryDataLayer(DataLayer):
    type_name = "MemoryData"
    min_tops = 2


@register_layer
class DummyDataLayer(DataLayer):
    type_name = "DummyData"
    max_tops = None


@register_layer
class WindowDataLayer(DataLayer):
    type_name = "WindowData"
