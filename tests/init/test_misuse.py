"""The init API as a careless caller uses it: every mistake is one CaffeinitError naming the culprit, never a raw
Python exception or a silently wrong run."""
import numpy as np
import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.init.config import InitConfig


@pytest.mark.parametrize("field, value, message", [
    ("within", "no", r"^within must be True or False, not 'no'$"),
    ("between", 0, r"^between must be True or False, not 0$"),
    ("measure_before", None, r"^measure-before must be True or False, not None$"),
    ("seed", -1, r"^seed must be within 0 to 9223372036854775807, got -1$"),
    ("seed", 2**64, r"^seed must be within 0 to 9223372036854775807, got 18446744073709551616$"),
    ("seed", 1.5, r"^seed must be an integer, not 1.5$"),
    ("between_iters", 2.5, r"^between-iters must be an integer, not 2.5$"),
    ("num_images", "10", r"^num-images must be an integer, not '10'$"),
    ("batch_size", True, r"^batch-size must be an integer, not True$"),
    ("pass_images", "2", r"^pass-images must be an integer, not '2'$"),
    ("tolerance", None, r"^tolerance must be a number, not None$"),
    ("bias", "0.1", r"^bias must be a number, not '0.1'$"),
    ("bias", 10**400, r"^bias must be a finite number, got 1000"),
    ("method", ["gaussian"], r"^unknown init method '\['gaussian'\]'"),
    ("reinit", None, r"^reinit must be 'missing', 'all' or a layer name, not None$"),
])
def test_config_of_the_wrong_type_is_refused(field, value, message):
    with pytest.raises(CaffeinitError, match=message):
        InitConfig(**{field: value}).check()


def test_config_takes_numpy_numbers_as_python_ones():
    """numpy integers and floats are numbers: accepted, and stored as Python's (the report is written as JSON)."""
    config = InitConfig(seed=np.uint64(2**63 - 1), num_images=np.int32(8), tolerance=np.float32(0.5), bias=np.int8(0),
                        pass_images=np.int64(2))
    config.check()
    values = (config.seed, config.num_images, config.tolerance, config.bias, config.pass_images)
    assert values == (2**63 - 1, 8, 0.5, 0.0, 2)
    assert [type(v) for v in values] == [int, int, float, float, int]
