"""InitConfig.check: every option that would put NaN or infinity into a written file is refused up front."""
import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.init.config import InitConfig


@pytest.mark.parametrize("field, value, message", [
    ("tolerance", float("inf"), "tolerance must be a finite number, got inf"),
    ("tolerance", float("nan"), "tolerance must be positive, got nan"),
    ("tolerance", -1.0, "tolerance must be positive, got -1.0"),
    ("bias", float("-inf"), "bias must be a finite number, got -inf"),
    ("bias", 1e39, "bias must be a finite float32 number (at most 3.4e38 in magnitude: the caffemodel holds floats), "
                   "got 1e+39"),
])
def test_non_finite_or_out_of_float32_values_are_refused(field, value, message):
    with pytest.raises(CaffeinitError) as caught:
        InitConfig(**{field: value}).check()
    assert str(caught.value) == message


def test_large_finite_values_are_accepted():
    InitConfig(tolerance=1e300, bias=-3e38).check()
