"""caffeinit: data-dependent initialization of Caffe networks, run as PyTorch graphs with Caffe's numbers.

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
