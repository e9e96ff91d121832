"""caffeinit: data-dependent initialization of Caffe networks, run as PyTorch graphs with Caffe's numbers.

    import caffeinit
    from caffeinit.data import batches
    from caffeinit.data.netinput import ImageOptions, net_source

    model = caffeinit.load("deploy.prototxt", weights="net.caffemodel", device="auto")
    out = model.forward({"data": images})                   # {"prob": array}, Caffe's output names
    source = net_source(model.net, ImageOptions(images="list.txt"))
    report = caffeinit.initialize(model, batches(source, 16, 160), caffeinit.InitConfig(method="kmeans"))
    print(report.table())
    model.save_caffemodel("init.caffemodel")                # what Caffe's Net::ToProto writes
    caffeinit.export_onnx(model, "init.onnx")               # checked against ONNX Runtime

``load`` gives a ``CaffeModel`` (``forward``, ``reshape``, ``blobs``, ``save_caffemodel``); ``initialize`` runs the
initialization with an ``InitConfig`` and returns a ``caffeinit.init.InitReport``; ``export_onnx`` writes ONNX.
Bad input raises ``CaffeinitError``, whose one-line message names the culprit. Lower level: ``read_net_param``,
``build_net`` and ``Net``; the modules ``caffeinit.prototxt``, ``caffeinit.weights`` and ``caffeinit.data``.

The public API is imported lazily, so ``from caffeinit.proto import caffe_pb2`` does not load torch.
"""
import importlib

__version__ = "0.1.0"

_API = {
    "CaffeModel": "caffeinit.api", "load": "caffeinit.api", "read_net_param": "caffeinit.api",
    "CaffeinitError": "caffeinit.errors", "export_onnx": "caffeinit.onnx_export",
    "initialize": "caffeinit.init", "InitConfig": "caffeinit.init", "Net": "caffeinit.net",
    "build_net": "caffeinit.net",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'caffeinit' has no attribute {name!r}")


def __dir__():
    """The lazily imported API too, so that ``dir(caffeinit)`` and ``help(caffeinit)`` show it."""
    return sorted({*globals(), *_API})
