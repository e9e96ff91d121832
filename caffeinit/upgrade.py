"""Legacy net formats brought up to date, step by step as Caffe's ``src/caffe/util/upgrade_proto.cpp`` does.

Each legacy format has a check (``net_needs_*``) and an upgrade; ``upgrade_net_as_needed`` runs them in Caffe's order:
V0 -> V1, data transformation fields, V1 -> V2, input fields -> ``Input`` layer, BatchNorm param specs.
Where Caffe aborts (LOG(FATAL)/CHECK) we raise CaffeinitError; where Caffe logs an error and goes on (a V0 field
that makes no sense for the layer type), we warn and go on too.
"""
from __future__ import annotations

import warnings

from caffeinit.errors import CaffeinitError
from caffeinit.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# UpgradeV0LayerType: V0 type strings -> V1 enum values.
V0_LAYER_TYPES = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# UpgradeV1LayerType: V1 enum values -> layer type strings.
V1_LAYER_TYPES = {
    V1.NONE: "",
    V1.ABSVAL: "AbsVal",
    V1.ACCURACY: "Accuracy",
    V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL",
    V1.CONCAT: "Concat",
    V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution",
    V1.DATA: "Data",
    V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp",
    V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN",
    V1.POOLING: "Pooling",
    V1.POWER: "Power",
    V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split",
    V1.SLICE: "Slice",
    V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# The typed parameters UpgradeV1LayerParameter copies (every one V1LayerParameter has; same names in V2).
V1_TYPED_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param", "data_param",
    "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param", "hdf5_output_param",
    "hinge_loss_param", "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param", "sigmoid_param",
    "softmax_param", "slice_param", "tanh_param", "threshold_param", "window_data_param", "transform_param",
    "loss_param",
)

# The old transformation fields of the V1 data layers, moved into transform_param (NetNeedsDataUpgrade).
_DATA_LAYER_PARAMS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


# -- V0 -> V1 ----------------------------------------------------------------------------------------------------
def net_needs_v0_to_v1_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def _v0_name(connection: caffe_pb2.V1LayerParameter, index: int) -> str:
    return connection.layer.name or f"#{index}"


def upgrade_v0_padding_layers(net: caffe_pb2.NetParameter, source: str = "<net>") -> caffe_pb2.NetParameter:
    """A copy of V0 ``net`` without its "padding" layers: each one's ``pad`` moves into the conv/pool layer that
    reads its output, which then reads the padding layer's input instead (UpgradeV0PaddingLayers)."""
    result = caffe_pb2.NetParameter()
    result.CopyFrom(net)
    del result.layers[:]
    last_writer = {name: -1 for name in net.input}  # blob -> index of the layer that last wrote it (-1: net input)
    for i, connection in enumerate(net.layers):
        v0 = connection.layer
        if v0.type != "padding":
            result.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_writer:
                raise CaffeinitError(f"{source}: layer '{_v0_name(connection, i)}': unknown bottom blob '{blob}'")
            writer = last_writer[blob]
            if writer == -1 or net.layers[writer].layer.type != "padding":
                continue
            padding = net.layers[writer]
            where = f"{source}: layer '{_v0_name(connection, i)}' reads padding layer '{padding.layer.name}'"
            if v0.type not in ("conv", "pool"):
                raise CaffeinitError(f"{where}: only conv and pool layers can take a padding layer's output "
                                     f"(this one is '{v0.type}')")
            if len(connection.bottom) != 1:
                raise CaffeinitError(f"{where}: a padded layer must have exactly one bottom")
            if len(padding.bottom) != 1 or len(padding.top) != 1:
                raise CaffeinitError(f"{where}: a padding layer must have exactly one bottom and one top")
            folded = result.layers[-1]
            folded.layer.pad = padding.layer.pad
            folded.bottom[j] = padding.bottom[0]
        for blob in connection.top:
            last_writer[blob] = i
    return result


def _incompatible(source: str, layer_name: str, field: str, v0_type: str) -> None:
    warnings.warn(f"{source}: V0 layer '{layer_name}': parameter '{field}' means nothing for layer type "
                  f"'{v0_type}'; ignored (as Caffe does)", stacklevel=3)


def upgrade_v0_layer(connection: caffe_pb2.V1LayerParameter, source: str = "<net>") -> caffe_pb2.V1LayerParameter:
    """One V0 layer (``layers { layer { ... } bottom top }``) as a V1 layer (UpgradeV0LayerParameter)."""
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return out
    v0 = connection.layer
    kind = v0.type
    name = v0.name
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if kind not in V0_LAYER_TYPES:
            raise CaffeinitError(f"{source}: V0 layer '{name}' has unknown type '{kind}' (known V0 types: "
                                 f"{', '.join(sorted(V0_LAYER_TYPES))})")
        out.type = V0_LAYER_TYPES[kind]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    def move(field, targets, setter):
        """Copy V0 ``field`` into the typed parameter ``targets[kind]``; warn when the type has no such field."""
        if not v0.HasField(field):
            return
        if kind in targets:
            setter(getattr(out, targets[kind]), getattr(v0, field))
        else:
            _incompatible(source, name, field, kind)

    def set_to(attr):
        return lambda msg, value: setattr(msg, attr, value)

    def copy_to(attr):
        return lambda msg, value: getattr(msg, attr).CopyFrom(value)

    conv_ip = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
    move("num_output", conv_ip, set_to("num_output"))
    move("biasterm", conv_ip, set_to("bias_term"))
    move("weight_filler", conv_ip, copy_to("weight_filler"))
    move("bias_filler", conv_ip, copy_to("bias_filler"))
    # ConvolutionParameter's pad/kernel_size/stride are repeated, PoolingParameter's are scalars.
    for v0_field, field in (("pad", "pad"), ("kernelsize", "kernel_size"), ("stride", "stride")):
        if v0.HasField(v0_field):
            if kind == "conv":
                getattr(out.convolution_param, field).append(getattr(v0, v0_field))
            elif kind == "pool":
                setattr(out.pooling_param, field, getattr(v0, v0_field))
            else:
                _incompatible(source, name, v0_field, kind)
    move("group", {"conv": "convolution_param"}, set_to("group"))
    if v0.HasField("pool"):
        if kind == "pool":
            # V0 and V2 PoolMethod share their numbers: MAX 0, AVE 1, STOCHASTIC 2.
            out.pooling_param.pool = v0.pool
        else:
            _incompatible(source, name, "pool", kind)
    move("dropout_ratio", {"dropout": "dropout_param"}, set_to("dropout_ratio"))
    for field in ("local_size", "alpha", "beta", "k"):
        move(field, {"lrn": "lrn_param"}, set_to(field))
    move("source", {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
                    "window_data": "window_data_param", "infogain_loss": "infogain_loss_param"}, set_to("source"))
    if v0.HasField("scale"):
        out.transform_param.scale = v0.scale
    if v0.HasField("meanfile"):
        out.transform_param.mean_file = v0.meanfile
    move("batchsize", {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
                       "window_data": "window_data_param"}, set_to("batch_size"))
    if v0.HasField("cropsize"):
        out.transform_param.crop_size = v0.cropsize
    if v0.HasField("mirror"):
        out.transform_param.mirror = v0.mirror
    move("rand_skip", {"data": "data_param", "images": "image_data_param"}, set_to("rand_skip"))
    move("shuffle_images", {"images": "image_data_param"}, set_to("shuffle"))
    move("new_height", {"images": "image_data_param"}, set_to("new_height"))
    move("new_width", {"images": "image_data_param"}, set_to("new_width"))
    move("concat_dim", {"concat": "concat_param"}, set_to("concat_dim"))
    window = {"window_data": "window_data_param"}
    move("det_fg_threshold", window, set_to("fg_threshold"))
    move("det_bg_threshold", window, set_to("bg_threshold"))
    move("det_fg_fraction", window, set_to("fg_fraction"))
    move("det_context_pad", window, set_to("context_pad"))
    move("det_crop_mode", window, set_to("crop_mode"))
    move("hdf5_output_param", {"hdf5_output": "hdf5_output_param"}, lambda msg, value: msg.CopyFrom(value))
    return out


def _warn_v1_layer_in_v0_net(connection: caffe_pb2.V1LayerParameter, index: int, source: str) -> None:
    """A V1 layer (no V0 ``layer`` inside) in a net that another layer makes V0: UpgradeV0LayerParameter keeps only
    its bottoms and tops, silently; say what goes (a caffemodel's blobs among them)."""
    lost = [field.name for field, _ in connection.ListFields() if field.name not in ("bottom", "top")]
    if lost:
        name = f"'{connection.name}'" if connection.name else f"#{index}"
        warnings.warn(f"{source}: layer {name} is in the V1 format in a net whose other layers are V0: Caffe's V0 "
                      f"upgrade keeps only its bottoms and tops and drops its {', '.join(lost)} (write it as "
                      "'layers { layer { ... } bottom top }' like the others)", stacklevel=3)


def upgrade_v0_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> caffe_pb2.NetParameter:
    """V0 ``net`` as a V1 net (UpgradeV0Net): padding layers folded, every layer mapped. Like Caffe, only the name,
    inputs and force_backward of the net survive besides the layers."""
    padded = upgrade_v0_padding_layers(net, source)
    out = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    for i, connection in enumerate(padded.layers):
        if not connection.HasField("layer"):
            _warn_v1_layer_in_v0_net(connection, i, source)
        out.layers.add().CopyFrom(upgrade_v0_layer(connection, source))
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    return out


# -- data transformation fields ---------------------------------------------------------------------------------
def net_needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    for layer in net.layers:
        field = _DATA_LAYER_PARAMS.get(layer.type)
        if field and any(getattr(layer, field).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def upgrade_net_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Move scale/mean_file/crop_size/mirror of V1 data layers into transform_param (in place)."""
    for layer in net.layers:
        field = _DATA_LAYER_PARAMS.get(layer.type)
        if not field:
            continue
        param = getattr(layer, field)
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)


# -- V1 -> V2 ----------------------------------------------------------------------------------------------------
def net_needs_v1_to_v2_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return len(net.layers) > 0


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter, source: str = "<net>") -> caffe_pb2.LayerParameter:
    """One V1 layer as a current LayerParameter (UpgradeV1LayerParameter)."""
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        out.type = V1_LAYER_TYPES[v1.type]  # the enum cannot hold any other value
    out.blobs.extend(v1.blobs)

    def param_spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        param_spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        # V1 and ParamSpec DimCheckMode share their numbers: STRICT 0, PERMISSIVE 1.
        param_spec(i).share_mode = mode
    for i, lr in enumerate(v1.blobs_lr):
        param_spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param_spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for field in V1_TYPED_PARAMS:
        if v1.HasField(field):
            getattr(out, field).CopyFrom(getattr(v1, field))
    if v1.HasField("layer"):
        warnings.warn(f"{source}: layer '{v1.name}' still holds a V0 layer definition; ignored (as Caffe does)",
                      stacklevel=3)
    return out


def upgrade_v1_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> None:
    """Turn V1 ``layers`` into current ``layer`` entries, keeping everything else (UpgradeV1Net). In place, one
    layer at a time, so a caffemodel's weights are never held twice over."""
    if len(net.layer) > 0:
        raise CaffeinitError(f"{source}: the net has both 'layer' and 'layers' (V1) fields; write every layer "
                             "in the current 'layer' format")
    for v1 in net.layers:
        net.layer.append(upgrade_v1_layer(v1, source))
        v1.Clear()
    del net.layers[:]


# -- input fields -> Input layer ---------------------------------------------------------------------------------
def net_needs_input_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return len(net.input) > 0


def upgrade_net_input(net: caffe_pb2.NetParameter, source: str = "<net>") -> None:
    """Turn ``input`` + ``input_shape``/``input_dim`` into one Input layer named "input", first in the net; an
    ``input`` without shapes (old caffemodels) is just dropped (UpgradeNetInput). In place."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        n = len(net.input)
        if has_shape and len(net.input_shape) < n:
            raise CaffeinitError(f"{source}: {n} inputs but only {len(net.input_shape)} input_shape entries")
        if not has_shape and len(net.input_dim) < 4 * n:
            raise CaffeinitError(f"{source}: {n} inputs need {4 * n} input_dim values, got {len(net.input_dim)}")
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, blob in enumerate(net.input):
            layer.top.append(blob)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        rest = list(net.layer)
        del net.layer[:]
        net.layer.add().CopyFrom(layer)
        net.layer.extend(rest)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


# -- BatchNorm param specs ---------------------------------------------------------------------------------------
def net_needs_batch_norm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


def upgrade_net_batch_norm(net: caffe_pb2.NetParameter) -> bool:
    """BatchNorm layers declaring three param specs (the old definition) get lr_mult = decay_mult = 0. In place;
    True if a value changed."""
    changed = False
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                changed |= not (spec.HasField("lr_mult") and spec.lr_mult == 0.0
                                and spec.HasField("decay_mult") and spec.decay_mult == 0.0)
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return changed


# -- all steps ---------------------------------------------------------------------------------------------------
def upgrade_net_as_needed(net: caffe_pb2.NetParameter, source: str = "<net>") -> bool:
    """Upgrade ``net`` in place through every legacy step it needs, in Caffe's order (UpgradeNetAsNeeded).
    Returns True if anything changed. ``source`` (a file name) prefixes error messages."""
    changed = False
    if net_needs_v0_to_v1_upgrade(net):
        net.CopyFrom(upgrade_v0_net(net, source))
        changed = True
    if net_needs_data_upgrade(net):
        upgrade_net_data_transformation(net)
        changed = True
    if net_needs_v1_to_v2_upgrade(net):
        upgrade_v1_net(net, source)
        changed = True
    if net_needs_input_upgrade(net):
        upgrade_net_input(net, source)
        changed = True
    if net_needs_batch_norm_upgrade(net):
        changed |= upgrade_net_batch_norm(net)
    return changed


# -- solver ------------------------------------------------------------------------------------------------------
def solver_needs_type_upgrade(solver: caffe_pb2.SolverParameter) -> bool:
    return solver.HasField("solver_type")


def upgrade_solver_as_needed(solver: caffe_pb2.SolverParameter, source: str = "<solver>") -> bool:
    """Replace the old ``solver_type`` enum by the ``type`` string (UpgradeSolverType). Returns True if changed."""
    if not solver_needs_type_upgrade(solver):
        return False
    if solver.HasField("type"):
        raise CaffeinitError(f"{source}: both 'solver_type' (old enum) and 'type' are set; keep only 'type'")
    solver.type = _SOLVER_TYPES[solver.solver_type]
    solver.ClearField("solver_type")
    return True
