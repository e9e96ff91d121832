"""Run a built Net as a torch graph: an interpreter over the layer list and a value-name -> tensor map."""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np
import torch

from caffeinit.errors import CaffeinitError, layer_error
from caffeinit.layers.activation import ReLU
from caffeinit.layers.normalization import BatchNorm, Scale, batchnorm_scale
from caffeinit.layers.base import Layer
from caffeinit.net import LayerNode, Net, changed_parameters, reshaped, shapes_at_batch, shapes_text
from caffeinit.proto import caffe_pb2

Tap = Callable[[LayerNode, list], None]


class TorchNet(torch.nn.Module):
    """A Caffe net as a torch module.

    Parameters live in ``layer_blobs[i]`` (an ``nn.ParameterList`` per layer, Caffe's ``layer.blobs`` order); blobs
    shared through a ParamSpec name are the same Parameter object. Non-learnable blobs (BatchNorm statistics) have
    ``requires_grad=False``. A layer starts from its arrays in ``blobs`` (a caffemodel's), else from the blobs written
    in its prototxt definition, else from its fillers (``missing`` lists those layers); a shared blob holds what the
    last of its layers in ``blobs``' order brings (Caffe copies a caffemodel's layers in file order into memory the
    sharers share), else its first user's values. Under autograd, a bottom with ``propagate_down: false`` passes no
    gradient, as in Caffe. ``forward`` can run any slice of layers from cached values, call a tap
    after every layer (the taps see each layer's tops before any in-place successor replaces them), and free values
    after their last use. Without autograd, taps and with ``keep`` given, a layer that can (``Layer.forward_inplace``)
    overwrites a bottom that dies there, as Caffe does, when no other value, input or parameter shares its memory.

    On that same inference path on the CPU, layers with a ``forward_inference`` (Convolution, InnerProduct) run
    through oneDNN, and a ReLU that alone reads such a layer's top, which nobody asked to keep, runs fused into it
    (its value up to float rounding; convolution tops are then channels-last inside the run, returned values
    contiguous). ``fuse_inference = False`` keeps every layer on its plain ``forward``.

    Under autograd, with ``keep`` given, a BatchNorm with global statistics and the Scale (and ReLU) that alone
    read its top run as one autograd node (``normalization.batchnorm_scale``: values up to float rounding, half the
    memory kept for backward) where no value between them is kept or needed by the tap. ``fuse_gradients = False``
    runs them one by one.
    """

    fuse_inference = True
    fuse_gradients = True

    def __init__(self, net: Net, blobs: Mapping[str, list[np.ndarray]] | None = None, *,
                 seed: int = 0, device: str | torch.device = "cpu", copy_blobs: bool = True, source: str = ""):
        """``copy_blobs=False`` lets the parameters share the memory of the arrays in ``blobs`` (for arrays nobody
        else holds, such as those just read from a file); filler values are never copied. ``source`` names the
        weights (a file) in errors about them."""
        super().__init__()
        self.net = net
        blobs = dict(blobs or {})
        position = {name: i for i, name in enumerate(blobs)}  # Caffe copies a caffemodel's layers in file order
        rng = np.random.default_rng(seed)
        self.missing: list[str] = []  # layers with blobs that got filler values
        starting: dict[int, _Start] = {}
        targets: dict[str, LayerNode] = {}  # CopyTrainedLayersFrom copies a layer's blobs into the first of its name
        for node in net.layers:
            targets.setdefault(node.name, node)
        for name, arrays in blobs.items():
            if name in targets and not targets[name].layer.blob_shapes:
                try:
                    _fit_layer_blobs(targets[name], arrays)
                except CaffeinitError as e:
                    raise CaffeinitError(f"{source}: {e}" if source else str(e)) from None
        for node in net.layers:
            if not node.layer.blob_shapes:
                continue
            arrays = blobs.pop(node.name, None) if targets[node.name] is node else None
            if arrays is not None:
                try:
                    arrays = _fit_layer_blobs(node, arrays)
                except CaffeinitError as e:
                    raise CaffeinitError(f"{source}: {e}" if source else str(e)) from None
                starting[node.index] = _Start(arrays, position[node.name], not copy_blobs)
            elif len(node.param.blobs):
                starting[node.index] = _Start(_prototxt_blobs(node), -1, True)
            else:
                starting[node.index] = _Start(_fit_layer_blobs(node, node.layer.fill_blobs(rng)), -1, True)
                self.missing.append(node.name)
        shared_values = _shared_values(net, starting)
        shared: dict[str, torch.nn.Parameter] = {}
        self.layer_blobs = torch.nn.ModuleList()
        self._parameters_finite: bool | None = None  # see ``_finite``
        for node in net.layers:
            plist = torch.nn.ParameterList()
            start = starting.get(node.index)
            learnable = set(node.layer.learnable_blobs())
            for k, array in enumerate(start.arrays if start else []):
                key = _share_name(node, k)
                if key in shared:
                    plist.append(shared[key])
                    continue
                owned = start.owned
                if key:
                    array, owned = shared_values[key]
                p = torch.nn.Parameter(_tensor_of(array, owned), requires_grad=k in learnable)
                if key:
                    shared[key] = p
                plist.append(p)
            self.layer_blobs.append(plist)
        self.unused_weights = sorted(blobs)  # source layers not in this net (Caffe ignores them)
        self._last_use = _last_uses(net)
        self._can_run_inplace = {node.index for node in net.layers
                                 if type(node.layer).forward_inplace is not Layer.forward_inplace}
        self._readers = net.consumers()
        # Caffe's propagate_down: false stops the gradient at that bottom (Net::Init's bottom_need_backward)
        self._no_gradient = {node.index: {j for j, down in enumerate(node.param.propagate_down) if not down}
                             for node in net.layers if not all(node.param.propagate_down)}
        self.to(device)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def blobs_numpy(self, copy: bool = True) -> dict[str, list[np.ndarray]]:
        """Every layer's blobs as float32 numpy arrays, by layer name (for writing a caffemodel). ``copy=False``
        gives views of the parameters where they are float32 CPU tensors (valid until the parameters change)."""
        def to_numpy(p: torch.nn.Parameter) -> np.ndarray:
            array = p.detach().cpu().numpy()  # a view on the CPU, a fresh copy from other devices
            return array.astype(np.float32, copy=copy and p.device.type == "cpu")
        return {node.name: [to_numpy(p) for p in self.layer_blobs[node.index]]
                for node in self.net.layers if len(self.layer_blobs[node.index])}

    def forward(self, feeds: Mapping[str, torch.Tensor], *, start: int = 0, stop: int | None = None,
                keep: Iterable[str] | None = None, tap: Tap | None = None) -> dict[str, torch.Tensor]:
        """Run layers ``start..stop-1``.

        ``feeds`` maps value names (data-layer tops, or any cached value such as a frontier) to tensors.
        ``keep``: value names to return; None keeps everything. Values not kept are freed after their last use.
        """
        layers = self._net_for_batch(feeds).layers[start:stop]
        values = dict(feeds)
        keep_set = None if keep is None else set(keep)
        # In place needs every value that dies to be freed (keep), nothing that reads tops later (tap) and no graph
        # that may have saved a bottom for backward (an earlier consumer's, too: so no grad mode at all).
        live = _LiveStorage(self, feeds) if keep_set is not None and tap is None and not torch.is_grad_enabled() \
            else None
        fusible = live is not None and self.fuse_inference and self.device.type == "cpu"
        fuse_chains = self.fuse_gradients and torch.is_grad_enabled() and keep_set is not None
        fused_away: set[int] = set()  # layers already run inside a layer before them (ReLUs, Scales)
        for node in layers:
            if node.index in fused_away:
                continue
            if node.layer.is_data:
                for blob, v in zip(node.tops, node.top_values):
                    if v not in values:
                        raise CaffeinitError(f"missing input '{blob}' (fed by layer '{node.name}')")
                continue
            try:
                bottoms = [values[v] for v in node.bottom_values]
            except KeyError as e:
                raise CaffeinitError(f"layer '{node.name}' needs value {e.args[0]!r}, which was neither fed nor "
                                     "computed in this run") from None
            if node.index in self._no_gradient and torch.is_grad_enabled():
                bottoms = [b.detach() if j in self._no_gradient[node.index] else b for j, b in enumerate(bottoms)]
            blobs = list(self.layer_blobs[node.index])
            tops = None
            top_values, last = node.top_values, node  # last: the layer whose tops these are (fused ones: the end)
            if fusible and hasattr(node.layer, "forward_inference"):
                relu = self._fusible_relu(node, layers, keep_set)
                if relu is not None and not self._finite(bottoms[0]):
                    relu = None  # oneDNN's fused ReLU turns NaN into 0, where Caffe's (and torch's) keeps it
                tops = node.layer.forward_inference(bottoms, blobs, None if relu is None else relu.layer.negative_slope)
                if tops is not None and relu is not None:
                    fused_away.add(relu.index)
                    top_values = relu.top_values
            if fuse_chains and isinstance(node.layer, BatchNorm):
                chain = self._batchnorm_chain(node, layers, keep_set, tap)
                if chain:
                    scale = chain[0]
                    tops = batchnorm_scale(node.layer, blobs, scale.layer, list(self.layer_blobs[scale.index]),
                                           bottoms[0], relu=len(chain) == 2)
                    if tops is not None:
                        tops = [tops]
                        fused_away.update(n.index for n in chain)
                        top_values, last = chain[-1].top_values, chain[-1]
            if tops is None and live is not None and node.index in self._can_run_inplace:
                v = node.bottom_values[0]
                if v not in keep_set and self._last_use.get(v) == node.index and \
                        node.bottom_values.count(v) == 1 and live.only_owner(bottoms[0]):
                    tops = node.layer.forward_inplace(bottoms, blobs)
            if tops is None:
                tops = node.layer.forward(bottoms, blobs)
            for v, t in zip(top_values, tops):
                if live is not None:
                    if v in values:
                        live.drop(values[v])
                    live.add(t)
                values[v] = t
            if tap is not None:
                tap(last, tops)
            if keep_set is not None:
                for v in node.bottom_values:
                    if v not in keep_set and self._last_use.get(v, -1) <= node.index and v in values:
                        t = values.pop(v)
                        if live is not None:
                            live.drop(t)
        if keep_set is not None:
            values = {v: t.contiguous() if fusible and torch.is_tensor(t) else t
                      for v, t in values.items() if v in keep_set}
        return values

    def _finite(self, x: torch.Tensor) -> bool:
        """Whether ``x`` and every parameter hold no NaN or infinity. The parameters are looked at once, on the
        first fused call (weights set to NaN later through ``.data`` are not seen)."""
        if self._parameters_finite is None:
            self._parameters_finite = all(bool(torch.isfinite(p).all()) for p in self.parameters())
        # one reduction pass: NaN or infinity makes the sum non-finite (so does an overflowing sum of huge values,
        # which then just runs unfused)
        return self._parameters_finite and math.isfinite(float(x.sum()))

    def _fusible_relu(self, node: LayerNode, layers: list[LayerNode], keep: set[str]) -> LayerNode | None:
        """The ReLU that may run fused into ``node``: in this run and the only reader of ``node``'s single top,
        whose pre-activation value nobody asked to keep."""
        if len(node.top_values) != 1 or node.top_values[0] in keep:
            return None
        readers = self._readers.get(node.top_values[0], [])
        if len(readers) != 1 or not layers or not layers[0].index <= readers[0] <= layers[-1].index:
            return None
        reader = layers[readers[0] - layers[0].index]
        return reader if isinstance(reader.layer, ReLU) else None

    def _batchnorm_chain(self, node: LayerNode, layers: list[LayerNode], keep: set[str],
                         tap: Tap | None) -> list[LayerNode]:
        """The Scale (and ReLU) that may run with BatchNorm ``node`` as one autograd node (``batchnorm_scale``): each
        the only reader of the value before it, in this run, those values not asked for (``keep``) and their layers
        not needed by the tap (see ``tap_needs``). Empty where there is none."""
        chain: list[LayerNode] = []
        current = node
        for kind in (Scale, ReLU):
            if len(current.top_values) != 1 or current.top_values[0] in keep or \
                    (current is not node and tap_needs(tap, current)):
                break
            readers = self._readers.get(current.top_values[0], [])
            if len(readers) != 1 or not layers[0].index <= readers[0] <= layers[-1].index:
                break
            reader = layers[readers[0] - layers[0].index]
            if not isinstance(reader.layer, kind) or len(reader.bottom_values) != 1 or \
                    reader.index in self._no_gradient or \
                    (kind is ReLU and reader.layer.negative_slope != 0):
                break
            chain.append(reader)
            current = reader
        return chain if chain and not tap_needs(tap, node) else []

    def check_batch(self, feeds: Mapping[str, torch.Tensor]) -> None:
        """Raise a CaffeinitError, naming the layer, where the net cannot run the batch size of ``feeds`` (a fixed
        first dim before a layer with parameters), before any work."""
        self._net_for_batch(feeds)

    def _net_for_batch(self, feeds: Mapping[str, torch.Tensor]) -> Net:
        """The net set up for the batch size of ``feeds`` (Caffe reshapes every layer on each forward): layers
        whose shape bookkeeping depends on the batch (losses, ArgMax, ...) then see the right one. The batch is the
        first dim of the first fed value whose first dim differs from its declared one (an input with a first dim of
        its own, such as a 1x3 image-info blob, fed as declared, changes nothing); each fed data-layer top takes
        the first dim it is fed with, the others that follow the declared batch the new one. Nets for other batch
        sizes are built once (in the net's own state: phase, stages, level) and cached."""
        batch = declared = None
        for v, t in feeds.items():
            shape = self.net.value_shapes.get(v)
            if shape and torch.is_tensor(t) and t.dim() and int(t.shape[0]) != shape[0]:
                batch, declared = int(t.shape[0]), shape[0]
                break
        if batch is None:
            return self.net
        fed = {blob: int(t.shape[0]) for blob in self.net.feeds
               if torch.is_tensor(t := feeds.get(self.net.feed_values.get(blob))) and t.dim()}
        shapes = shapes_at_batch(self.net, declared, batch, fed)
        key = tuple(sorted(shapes.items()))
        cached = getattr(self, "_nets_by_batch", None)
        if cached is None or cached[0] is not self.net:
            cached = self._nets_by_batch = (self.net, {})
        net = cached[1].get(key)
        if net is None:
            net = reshaped(self.net, shapes)
            changed = changed_parameters(net, self.net)
            if changed is not None:
                node, twin = changed
                raise CaffeinitError(
                    f"layer '{node.name}' ({node.type}): with batches of {batch} its parameters would have to be "
                    f"{shapes_text(node.layer.blob_shapes)}, not {shapes_text(twin.layer.blob_shapes)}: a layer "
                    f"before it does not follow the batch size (a fixed first dim), so the net runs only with "
                    f"batches of exactly {declared} images (--batch-size {declared} and a --num-images that is a "
                    "multiple of it)")
            cached[1][key] = net
        return net


def tap_needs(tap: Tap | None, node: LayerNode) -> bool:
    """Whether ``tap`` must see ``node``'s tops: a tap with a ``needs(node)`` method says; any other sees every
    layer."""
    if tap is None:
        return False
    needs = getattr(tap, "needs", None)
    return True if needs is None else bool(needs(node))


class _LiveStorage:
    """How many live values of one forward sit on each storage, and the storages that are never overwritten: the
    caller's feeds and the parameters."""

    def __init__(self, module: TorchNet, feeds: Mapping[str, torch.Tensor]):
        self.module = module
        self.count: Counter = Counter()
        self.protected = {storage_key(t) for t in feeds.values() if torch.is_tensor(t)}
        self.params_added = False
        for t in feeds.values():
            self.add(t)

    def add(self, t) -> None:
        if torch.is_tensor(t):
            self.count[storage_key(t)] += 1

    def drop(self, t) -> None:
        if torch.is_tensor(t):
            self.count[storage_key(t)] -= 1

    def only_owner(self, t) -> bool:
        """Whether ``t`` may be overwritten: contiguous, non-empty, its storage held by one live value (itself) and
        neither fed nor a parameter (a layer may return a parameter or a view of one)."""
        if not (torch.is_tensor(t) and t.numel() and t.is_contiguous()):
            return False
        key = storage_key(t)
        if self.count[key] != 1:
            return False
        if not self.params_added:
            self.protected.update(storage_key(p) for p in self.module.parameters())
            self.params_added = True
        return key not in self.protected


def storage_key(t: torch.Tensor) -> int:
    """Identifies the memory ``t`` lives in (shared by its views and by tensors on the same storage)."""
    return t.untyped_storage().data_ptr()


def frontier(net: Net, start: int) -> list[str]:
    """Values that layers ``start..`` read but earlier layers produced: what a run resuming at ``start`` needs."""
    produced_before = {v for node in net.layers[:start] for v in node.top_values}
    need = []
    for node in net.layers[start:]:
        for v in node.bottom_values:
            if v in produced_before and v not in need:
                need.append(v)
    return need


def _last_uses(net: Net) -> dict[str, int]:
    last: dict[str, int] = {}
    for node in net.layers:
        for v in node.bottom_values:
            last[v] = node.index
    return last


def _tensor_of(array: np.ndarray, owned: bool) -> torch.Tensor:
    """A contiguous float32 CPU tensor of ``array``'s values; it shares ``array``'s memory only when ``owned``."""
    values = np.ascontiguousarray(array, np.float32)
    if values.ndim != np.ndim(array):  # np.ascontiguousarray turns a 0-axis array into 1-D
        values = values.reshape(np.shape(array))
    if (owned and values.flags.writeable) or not np.may_share_memory(values, array):
        return torch.from_numpy(values)
    return torch.from_numpy(values.copy())


def _fit_layer_blobs(node: LayerNode, arrays: list[np.ndarray], where: str = "in the weights") -> list[np.ndarray]:
    from caffeinit.weights import fit_blob

    shapes = node.layer.blob_shapes
    if len(arrays) != len(shapes):
        raise layer_error(node.name, node.type, f"{len(arrays)} blobs {where}, but the layer has {len(shapes)}")
    return [fit_blob(np.asarray(a), tuple(s), node.name, k, where, node.type)
            for k, (a, s) in enumerate(zip(arrays, shapes))]


def _prototxt_blobs(node: LayerNode) -> list[np.ndarray]:
    """The blobs written in the layer's own definition (Caffe's Layer constructor copies them and LayerSetUp then
    skips the fillers), checked as a caffemodel's are."""
    from caffeinit.weights import blob_to_array

    arrays = [blob_to_array(blob, f"layer '{node.name}' blob {k} in the prototxt")
              for k, blob in enumerate(node.param.blobs)]
    return _fit_layer_blobs(node, arrays, "in the prototxt")


class _Start(NamedTuple):
    """A layer's starting blobs: the arrays, their place in the weights' order (-1: not from the weights) and
    whether the parameters may keep their memory."""
    arrays: list[np.ndarray]
    position: int
    owned: bool


def _share_name(node: LayerNode, k: int) -> str:
    """The ParamSpec name under which blob ``k`` of ``node`` is shared ("" when it is not)."""
    specs = node.param.param
    return specs[k].name if k < len(specs) else ""


def _shared_values(net: Net, starting: dict[int, _Start]) -> dict[str, tuple[np.ndarray, bool]]:
    """The value and ownership of each shared blob. Caffe's sharers hold the owner's memory and
    CopyTrainedLayersFrom copies the caffemodel's layers in file order, so the last of them in the weights' order
    sets it; without weights for any of them, the owner's (first user's) own values."""
    users: dict[str, list[tuple[LayerNode, int]]] = {}
    for node in net.layers:
        for k in range(len(node.layer.blob_shapes)):
            if _share_name(node, k):
                users.setdefault(_share_name(node, k), []).append((node, k))
    values = {}
    for key, nodes in users.items():
        owner, owner_k = nodes[0]
        for node, k in nodes[1:]:
            _check_sharer(node, k, key, owner, owner.layer.blob_shapes[owner_k])
        loaded = [(starting[node.index].position, node, k) for node, k in nodes if starting[node.index].position >= 0]
        _, node, k = max(loaded, key=lambda t: t[0]) if loaded else (-1, owner, owner_k)
        values[key] = (starting[node.index].arrays[k], starting[node.index].owned)
    return values


def _check_sharer(node: LayerNode, k: int, key: str, owner: LayerNode, owner_shape) -> None:
    """Caffe's AppendParam checks: equal shapes (STRICT) or equal counts (PERMISSIVE). A PERMISSIVE sharer of
    another shape, which Caffe lets see the owner's values in its own shape, is refused: parameters are shared here
    as one tensor."""
    shape, owner_shape = tuple(node.layer.blob_shapes[k]), tuple(owner_shape)
    if shape == owner_shape:
        return
    where = f"shared parameter '{key}' has shape {list(owner_shape)} in its owner '{owner.name}' but {list(shape)} here"
    if node.param.param[k].share_mode != caffe_pb2.ParamSpec.PERMISSIVE:
        raise layer_error(node.name, node.type, where)
    if math.prod(shape) != math.prod(owner_shape):
        raise layer_error(node.name, node.type, f"{where}: share_mode PERMISSIVE needs equal counts")
    raise layer_error(node.name, node.type, f"{where}: share_mode PERMISSIVE between shapes of equal count is not "
                      "supported; give both layers the same shape")


def fast_layout(feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The feed with its 4-D CPU tensors channels-last: oneDNN's convolutions and torch's max pooling keep that
    layout through the net and run faster in it, forward and backward (GoogLeNet's gradient pass on 2 cores 1.29 ->
    0.98 s, its within-layer step 5.6 -> 4.8 s); the values are the same up to float rounding in the convolutions."""
    return {v: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.device.type == "cpu" else t
            for v, t in feed.items()}
