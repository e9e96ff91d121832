"""Which layers a net keeps for a phase, level and stages: Caffe's Net::FilterNet and Net::StateMeetsRule."""
from __future__ import annotations

from typing import Iterable

from caffeinit.errors import CaffeinitError, layer_error
from caffeinit.proto import caffe_pb2

_PHASES = {"train": caffe_pb2.TRAIN, "test": caffe_pb2.TEST}


def _phase(phase: int | str) -> int:
    """caffe_pb2.TRAIN/TEST from the enum value or its name ("train", "TEST", ...)."""
    if isinstance(phase, str):
        try:
            return _PHASES[phase.lower()]
        except KeyError:
            raise CaffeinitError(f"unknown phase '{phase}' (use train or test)") from None
    if phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        raise CaffeinitError(f"unknown phase {phase!r} (use caffe_pb2.TRAIN or caffe_pb2.TEST)")
    return phase


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """True iff ``state`` satisfies every condition ``rule`` sets: phase, min/max level, all of its stages and none
    of its not_stages."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    if any(stage in stages for stage in rule.not_stage):
        return False
    return True


def layer_is_included(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState) -> bool:
    """Without include rules a layer is kept unless an exclude rule matches; with include rules it is kept only
    if one matches. A layer may not have both kinds."""
    if layer.include and layer.exclude:
        raise layer_error(layer.name, layer.type, "has both include and exclude rules; specify only one kind")
    if layer.include:
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


def net_state(net: caffe_pb2.NetParameter, phase: int | str, level: int = 0,
              stages: Iterable[str] = ()) -> caffe_pb2.NetState:
    """The state Caffe's Net(file, phase, level, stages) runs with: phase and level replace the net's own, the
    stages are added to the stages the net's ``state`` already lists."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = _phase(phase)
    state.level = level
    state.stage.extend(stages)
    return state


def filter_net(net: caffe_pb2.NetParameter, phase: int | str, level: int = 0,
               stages: Iterable[str] = ()) -> caffe_pb2.NetParameter:
    """A copy of ``net`` (already upgraded) holding only the layers kept in the given state, as FilterNet does.

    The copy's ``state`` is the state used. A kept layer without its own ``phase`` gets the net's phase, as
    Net::Init does (so Net::ToProto writes it); a layer that sets ``phase`` keeps it, as in Caffe.
    """
    state = net_state(net, phase, level, stages)
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net)
    del filtered.layer[:]
    filtered.state.CopyFrom(state)
    for layer in net.layer:
        if layer_is_included(layer, state):
            kept = filtered.layer.add()
            kept.CopyFrom(layer)
            if not kept.HasField("phase"):
                kept.phase = state.phase
    return filtered
