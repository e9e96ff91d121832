"""Registry of layer implementations keyed by Caffe type name (as in Caffe's layer_factory)."""
from __future__ import annotations

from caffeinit.errors import CaffeinitError

_LAYERS: dict[str, type] = {}

# Layer types found in popular Caffe forks, and the fork they come from, for a helpful error.
FORK_LAYERS = {
    "Permute": "SSD (weiliu89/caffe)",
    "PriorBox": "SSD (weiliu89/caffe)",
    "DetectionOutput": "SSD (weiliu89/caffe)",
    "DetectionEvaluate": "SSD (weiliu89/caffe)",
    "Normalize": "SSD (weiliu89/caffe)",
    "MultiBoxLoss": "SSD (weiliu89/caffe)",
    "AnnotatedData": "SSD (weiliu89/caffe)",
    "ROIPooling": "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    "SmoothL1Loss": "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    "PSROIPooling": "R-FCN (daijifeng001/caffe-rfcn)",
    "Upsample": "SegNet (alexgkendall/caffe-segnet) or YOLO forks",
    "Interp": "PSPNet / DeepLab (hszhao/PSPNet)",
    "ReLU6": "MobileNet-v2 forks",
    "ShuffleChannel": "ShuffleNet forks",
    "ConvolutionDepthwise": "MobileNet forks (yonghenglh6/DepthwiseConvolution)",
    "DepthwiseConvolution": "MobileNet forks (yonghenglh6/DepthwiseConvolution)",
    "BN": "SegNet / PSPNet forks (bn_param)",
    "Axpy": "SENet forks (hujie-frank/SENet)",
    "Region": "YOLO forks",
    "Reorg": "YOLO forks",
}


def register_layer(cls: type) -> type:
    """Class decorator: register ``cls`` under ``cls.type_name``; a second registration is an error."""
    name = cls.type_name
    if not name:
        raise ValueError(f"{cls.__name__} has no type_name")
    if name in _LAYERS:
        raise ValueError(f"layer type '{name}' already registered by {_LAYERS[name].__name__}")
    _LAYERS[name] = cls
    return cls


def known_layer_types() -> list[str]:
    return sorted(_LAYERS)


def layer_class(type_name: str, layer_name: str = "?") -> type:
    """The implementation of Caffe layer type ``type_name``; a miss names the layer and lists the known types."""
    try:
        return _LAYERS[type_name]
    except KeyError:
        pass
    if type_name == "Python":
        raise CaffeinitError(f"layer '{layer_name}' is a Python layer: its code lives outside the prototxt and "
                             "cannot be run by caffeinit")
    if type_name in FORK_LAYERS:
        raise CaffeinitError(f"layer '{layer_name}' has type '{type_name}', which is not in BVLC Caffe; it likely "
                             f"comes from the {FORK_LAYERS[type_name]} fork")
    raise CaffeinitError(f"layer '{layer_name}' has unknown type '{type_name}' (known types: "
                         f"{', '.join(known_layer_types())})")
