"""Data-dependent initialization of Caffe nets (Krähenbühl et al., ICLR 2016): the within-layer step (Algorithm 1,
``within.py``) and the between-layer step (Algorithm 2, ``between.py``).

>>> model = caffeinit.load("deploy.prototxt")
>>> report = initialize(model, caffeinit.data.batches(source, 16, 160), InitConfig(method="kmeans"))
>>> model.save_caffemodel("init.caffemodel"); print(report.table())

Which layers are drawn: Convolution, Deconvolution, InnerProduct (also on 4-D bottoms: fc6's patches are whole
pool5 maps) and Scale (gamma = 1, then normalized); BatchNorm gets statistics from the data; PReLU keeps its filler
slopes; Embed, Bias and recurrent layers keep their fillers. Layers whose weight has lr_mult 0 are frozen: never drawn,
never scaled. A weight shared through a ParamSpec name is drawn by its first user and scaled once.
With ``reinit="missing"`` (the default) layers that came with loaded weights are kept (the between-layer step still
rescales them: their direction is kept); ``"all"`` draws every layer; a layer name draws that layer and all later ones.

The package imports torch only when ``initialize`` (or the report classes) are first used, so the CLI's parser and
``InitConfig`` load fast.
"""
import importlib

from caffeinit.init.config import DATA_METHODS, METHODS, InitConfig

_LAZY = {"initialize": "caffeinit.init.pipeline", "InitReport": "caffeinit.init.report",
         "LayerRecord": "caffeinit.init.report"}

__all__ = ["DATA_METHODS", "METHODS", "InitConfig", "InitReport", "LayerRecord", "initialize"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'caffeinit.init' has no attribute {name!r}")
