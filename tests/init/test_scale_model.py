"""The between-layer step's scale model (caffeinit/init/scale_model.py): constraints and levels on a DAG."""
import numpy as np

from caffeinit.init.scale_model import build_scale_model
from tests.init.nets import DAG, model


def test_scale_model_constraints_on_a_dag():
    m = model(DAG)
    sm = build_scale_model(m.module)
    names = [nodes[0].name for nodes in sm.group_nodes]
    x = sm.solve(np.log(np.arange(1.0, len(names) + 1)), np.ones(len(names), bool))
    linear = sm.linearize()
    level = {v: linear.level(v, x) for v in linear.lin}
    assert abs(level["conv1"] - level["b"]) < 1e-9  # Eltwise bottoms share one scale
    assert linear.lin["cat"].widths == [6, 6]  # Concat bottoms keep their own (fc compensates per block)
    assert abs(level["left"] - level["right"]) > 1e-3
    assert abs(level["fc"]) < 1e-9  # the end keeps its scale


def test_linearization_of_a_homogeneous_dag():
    """Backward levels: on a homogeneous net the gradient of every weight block moves by exactly the inverse of the
    block's factor (m = -l) for every x the constraints allow (ends kept, Eltwise bottoms at one level), so a weight
    of one block moves its rate by -2 x_k."""
    from caffeinit.init.scale_model import _null_space
    sm = build_scale_model(model(DAG).module)
    linear = sm.linearize()
    allowed = _null_space(linear.constraints, len(sm.groups))
    assert allowed.shape[1] >= 2
    split = linear.split_groups()
    assert [sm.group_nodes[k][0].name for k in split] == ["fc"]  # fc reads the Concat
    for x in (allowed @ np.random.default_rng(0).standard_normal((allowed.shape[1], 3))).T:
        change, _ = linear.change(x)
        for k, factor in enumerate(linear.factors):
            for gain in linear.gains[k]:
                np.testing.assert_allclose(gain.per_channel(x), -factor.per_channel(x), atol=1e-12)
            if k not in split:
                assert abs(change[k] + 2 * float(factor.rows[0] @ x)) < 1e-12
