"""Include/exclude filtering (caffeinit/netstate.py) against the rules of Caffe's Net::FilterNet/StateMeetsRule."""
import itertools

import pytest
from google.protobuf import text_format

from caffeinit.errors import CaffeinitError
from caffeinit.netstate import filter_net, state_meets_rule
from caffeinit.prototxt import read_net
from caffeinit.proto import caffe_pb2
from tests.conftest import shared_path

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def rule(text):
    return text_format.Parse(text, caffe_pb2.NetStateRule())


def state(phase=TEST, level=0, stages=()):
    return caffe_pb2.NetState(phase=phase, level=level, stage=list(stages))


def oracle_meets(r, s):
    """StateMeetsRule written out as a plain conjunction of Caffe's conditions."""
    return ((not r.HasField("phase") or r.phase == s.phase)
            and (not r.HasField("min_level") or s.level >= r.min_level)
            and (not r.HasField("max_level") or s.level <= r.max_level)
            and all(x in s.stage for x in r.stage)
            and not any(x in s.stage for x in r.not_stage))


def test_rule_cases():
    assert state_meets_rule(state(TRAIN), rule("phase: TRAIN"))
    assert not state_meets_rule(state(TEST), rule("phase: TRAIN"))
    assert state_meets_rule(state(TEST), rule(""))  # an empty rule matches every state
    assert state_meets_rule(state(level=2), rule("min_level: 2"))
    assert not state_meets_rule(state(level=1), rule("min_level: 2"))
    assert not state_meets_rule(state(level=3), rule("max_level: 2"))
    assert state_meets_rule(state(level=-1), rule("max_level: 2"))
    assert state_meets_rule(state(stages=["a", "b"]), rule('stage: "a" stage: "b"'))
    assert not state_meets_rule(state(stages=["a"]), rule('stage: "a" stage: "b"'))  # all stages needed
    assert not state_meets_rule(state(stages=["a", "x"]), rule('stage: "a" not_stage: "x"'))
    assert state_meets_rule(state(stages=["a"]), rule('stage: "a" not_stage: "x"'))


def test_rules_against_oracle_sweep():
    rules = [rule(t) for t in ["", "phase: TRAIN", "phase: TEST", "min_level: 1", "max_level: 0",
                               "min_level: 0 max_level: 1", 'stage: "deploy"', 'stage: "a" stage: "b"',
                               'not_stage: "a"', 'phase: TEST stage: "a" not_stage: "b" min_level: -1']]
    stage_sets = [(), ("a",), ("b",), ("a", "b"), ("deploy",), ("deploy", "a")]
    n = 0
    for r, phase, level, stages in itertools.product(rules, (TRAIN, TEST), (-1, 0, 1, 2), stage_sets):
        s = state(phase, level, stages)
        assert state_meets_rule(s, r) == oracle_meets(r, s), (r, s)
        n += 1
    assert n == 480


NET = """
name: "rules"
layer { name: "always" type: "Input" top: "x" }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "y" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "x" top: "y" include { phase: TEST } }
layer { name: "not_test" type: "ReLU" bottom: "x" top: "z" exclude { phase: TEST } }
layer { name: "either" type: "ReLU" bottom: "x" top: "w" include { stage: "s1" } include { stage: "s2" } }
layer { name: "level_2_up" type: "ReLU" bottom: "x" top: "v" include { min_level: 2 } }
layer { name: "own_phase" type: "ReLU" bottom: "x" top: "u" phase: TRAIN }
"""


def kept(net, *args, **kwargs):
    return [layer.name for layer in filter_net(net, *args, **kwargs).layer]


def test_filter_net_keeps_the_right_layers():
    net = text_format.Parse(NET, caffe_pb2.NetParameter())
    assert kept(net, TEST) == ["always", "test_only", "own_phase"]
    assert kept(net, TRAIN) == ["always", "train_only", "not_test", "own_phase"]
    assert kept(net, "train", stages=["s2"]) == ["always", "train_only", "not_test", "either", "own_phase"]
    assert kept(net, TEST, level=2) == ["always", "test_only", "level_2_up", "own_phase"]


def test_filter_net_sets_phase_and_state_and_leaves_input_alone():
    net = text_format.Parse(NET, caffe_pb2.NetParameter())
    original = net.SerializeToString()
    out = filter_net(net, TRAIN, level=3, stages=("s1",))
    assert net.SerializeToString() == original
    assert (out.state.phase, out.state.level, list(out.state.stage)) == (TRAIN, 3, ["s1"])
    assert all(layer.phase == TRAIN for layer in out.layer)
    test = filter_net(net, TEST)
    # A layer without phase takes the net's; one with its own phase keeps it (Net::Init only fills it in).
    assert [(lp.name, lp.phase, lp.HasField("phase")) for lp in test.layer] == [
        ("always", TEST, True), ("test_only", TEST, True), ("own_phase", TRAIN, True)]


def test_stages_of_the_net_state_are_kept_and_extended():
    net = text_format.Parse(NET + 'state { phase: TRAIN level: 5 stage: "s1" }', caffe_pb2.NetParameter())
    out = filter_net(net, TEST, stages=["extra"])
    # Phase and level come from the call, stages add to the net's own (Caffe's Net(file, phase, level, stages)).
    assert (out.state.phase, out.state.level, list(out.state.stage)) == (TEST, 0, ["s1", "extra"])
    assert "either" in [layer.name for layer in out.layer]


def test_include_and_exclude_on_one_layer_is_an_error():
    net = text_format.Parse('layer { name: "both" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST } }',
                            caffe_pb2.NetParameter())
    with pytest.raises(CaffeinitError, match=r"layer 'both' \(ReLU\): .*include and exclude"):
        filter_net(net, TEST)


def test_unknown_phase_is_an_error():
    with pytest.raises(CaffeinitError, match="unknown phase 'deploy'"):
        filter_net(caffe_pb2.NetParameter(), "deploy")


def test_lenet_train_test_for_each_phase():
    net = read_net(shared_path("corpus", "bvlc__examples_mnist_lenet_train_test.prototxt"))
    train = filter_net(net, TRAIN)
    test = filter_net(net, TEST)
    middle = ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2"]
    assert [lp.name for lp in train.layer] == ["mnist"] + middle + ["loss"]
    assert [lp.name for lp in test.layer] == ["mnist"] + middle + ["accuracy", "loss"]
    assert train.layer[0].data_param.source.endswith("mnist_train_lmdb")
    assert test.layer[0].data_param.source.endswith("mnist_test_lmdb")
    assert {lp.phase for lp in train.layer} == {TRAIN} and {lp.phase for lp in test.layer} == {TEST}
