"""ONNX export that reproduces Caffe's numbers in any ONNX runtime.

The graph is built directly from the net's layer list (one converter per Caffe layer type, see ``registry``), with
TEST-phase semantics, Caffe blob names as graph input/output names, weights as initializers and a dynamic batch
dimension ``N`` unless ``static_batch``. Pooling never relies on a runtime's ceil_mode (see ``pooling``).

>>> model = caffeinit.load("deploy.prototxt", weights="net.caffemodel")
>>> result = export_onnx(model, "net.onnx")
>>> print(result.summary())
"""
from __future__ import annotations

import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from caffeinit.errors import CaffeinitError
from caffeinit.onnx_export import (  # noqa: F401  (registration side effects)
    activation, conv, inner_product, normalization, pooling, recurrent, structure)
from caffeinit.onnx_export.graph import DEFAULT_OPSET, ExportGraph, build_model, check_exportable
from caffeinit.onnx_export.registry import exportable_types
from caffeinit.onnx_export.verify import Verification, check_model, compare_with_torch, ort_session, random_inputs

__all__ = ["DEFAULT_OPSET", "ExportGraph", "ExportResult", "Verification", "build_model", "check_exportable",
           "export_onnx", "exportable_types"]

MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one serialized message


@dataclass
class ExportResult:
    path: str
    opset: int
    num_nodes: int
    num_bytes: int
    export_seconds: float  # graph building and writing, without the verification
    verification: Verification | None  # None with check=False
    batch_note: str | None = None  # why the graph's batch is static where a dynamic one was asked for

    def summary(self) -> str:
        text = f"wrote {self.path} (opset {self.opset}, {self.num_nodes} nodes, {self.num_bytes / 2**20:.1f} MiB)"
        if self.verification is not None:
            v = self.verification
            text += (f"; onnx.checker passed; ONNX Runtime ({v.provider}) vs torch on random inputs: max relative "
                     f"error {v.max_rel_error:.3g}")
        if self.batch_note:
            text += f"; {self.batch_note}"
        return text


def export_onnx(model, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, static_batch: bool = False,
                check: bool = True, device: str = "cpu", tolerance: float = 1e-4, inputs: Iterable = (),
                seed: int = 0) -> ExportResult:
    """Write ``model`` (a :class:`caffeinit.api.CaffeModel` or a :class:`caffeinit.executor.TorchNet`) to ``path``.

    With ``check`` the written file passes ``onnx.checker`` (full check) and an ONNX Runtime session on ``device``
    ("cpu", "cuda" or "auto") reproduces the torch graph on random inputs (seed ``seed``) to a relative error of
    ``tolerance``; otherwise a CaffeinitError is raised. The file is written atomically: on any failure an existing
    ``path`` is left untouched. ``inputs``: the command's input files, which ``path`` must not overwrite.
    """
    from caffeinit.api import INT32_MAX, SEED_MAX, CaffeModel, _integer, _path
    from caffeinit.executor import TorchNet

    if not isinstance(model, (CaffeModel, TorchNet)):
        raise CaffeinitError(f"export_onnx takes a model from caffeinit.load(...), not {type(model).__name__}"
                             + (f" ({model!r})" if isinstance(model, (str, os.PathLike)) else ""))
    path = _path(path, "the ONNX path")
    if isinstance(inputs, (str, bytes, os.PathLike)) or not isinstance(inputs, Iterable):
        raise CaffeinitError(f"inputs must be a list of paths, not {type(inputs).__name__}")
    inputs = [_path(p, "each of export_onnx's inputs") for p in inputs]
    opset = _integer(opset, "opset", 0, INT32_MAX)  # the opsets supported are checked with the graph
    seed = _integer(seed, "seed", 0, SEED_MAX)
    for name, value in (("static_batch", static_batch), ("check", check)):
        if not isinstance(value, bool):
            raise CaffeinitError(f"{name} must be True or False, not {value!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0 <= tolerance < math.inf:
        raise CaffeinitError(f"tolerance must be a finite number, at least 0, not {tolerance!r}")
    module = getattr(model, "module", model)
    net = module.net
    start = time.perf_counter()
    blobs = module.blobs_numpy(copy=False)  # read only: the graph builder copies what it keeps
    for layer, arrays in blobs.items():  # no NaN or infinity ever reaches a written file
        for k, array in enumerate(arrays):
            if not np.isfinite(array).all():
                raise CaffeinitError(f"layer '{layer}' blob {k} has non-finite values (NaN or inf); nothing was "
                                     "written")
    graph = build_model(net, blobs, opset=opset, static_batch=static_batch)
    data = graph.model.SerializeToString() if graph.model.ByteSize() <= MAX_PROTO_BYTES else None
    if data is None:
        raise CaffeinitError(f"net '{net.name}' is too large for a single-file ONNX model (over 2 GiB of weights)")

    from caffeinit.fileio import atomic_output

    with atomic_output(path, inputs) as temp:
        with open(temp, "wb") as f:
            f.write(data)
        seconds = time.perf_counter() - start
        verification = None
        if check:
            check_model(temp)
            session, provider = ort_session(temp, device)
            shapes = {name: tuple(net.value_shapes[name]) for name in graph.inputs}
            try:
                verification = compare_with_torch(session, provider, graph, module, random_inputs(shapes, seed))
            except CaffeinitError as e:  # e.g. an index input (Embed, BatchReindex) that random data cannot fill
                raise CaffeinitError(f"cannot verify the export on random inputs: {e} (export without the check "
                                     "to skip it)") from None
            if not verification.max_rel_error <= tolerance:
                worst = max(verification.errors, key=verification.errors.get)
                raise CaffeinitError(f"ONNX Runtime ({provider}) disagrees with the torch graph: relative error "
                                     f"{verification.max_rel_error:.3g} on output '{worst}' exceeds {tolerance:g}")
    return ExportResult(os.fspath(path), opset, len(graph.model.graph.node), len(data), seconds, verification,
                        graph.fixed_batch_by and
                        f"static batch {next(iter(graph.inputs.values()))[0]}: {graph.fixed_batch_by}")
