"""The init API as a careless caller uses it: every mistake is one CaffeinitError naming the culprit, never a raw
Python exception or a silently wrong run."""
import warnings

import numpy as np
import pytest
import torch

from caffeinit.errors import CaffeinitError
from caffeinit.init.config import InitConfig
from caffeinit.init.pipeline import initialize


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


@pytest.fixture(scope="module")
def small():
    from tests.init.nets import PLAIN, model
    return model(PLAIN)


@pytest.mark.parametrize("call, message", [
    (lambda m, b: initialize("deploy.prototxt", b), r"^initialize takes a model from caffeinit.load\(...\), not str "
                                                    r"\('deploy.prototxt'\)$"),
    (lambda m, b: initialize(m, b, {"method": "kmeans"}), r"^config must be an InitConfig .*, not dict$"),
    (lambda m, b: initialize(m, b[0]), r"^batches must be .*not one feed dict: wrap it in a list \(\[batch\]\)$"),
    (lambda m, b: initialize(m, 3), r"^batches must be an iterable of feed dicts \{input blob: array\}, not int$"),
    (lambda m, b: initialize(m, [b[0]["data"]]), r"^init batch 0 must be a feed dict \{input blob: array\}, not "
                                                 r"ndarray$"),
])
def test_initialize_misuse_is_one_clear_error(small, call, message):
    from tests.init.nets import images
    before = small.blobs()
    with pytest.raises(CaffeinitError, match=message):
        call(small, images(1))
    after = small.blobs()
    assert all(np.array_equal(a, b) for name in before for a, b in zip(before[name], after[name]))


@pytest.mark.parametrize("values, message", [
    (lambda x: x.astype(np.complex64), r"^init batch 1: input 'data' holds complex numbers \(complex64\): Caffe's "
                                       r"blobs are real$"),
    (lambda x: torch.from_numpy(x).to(torch.complex64), r"^init batch 1: input 'data' holds complex numbers"),
    (lambda x: x.astype(str), r"^init batch 1: input 'data' holds <U\d+ values, not numbers$"),
    (lambda x: x.astype(object), r"^init batch 1: input 'data' holds object values, not numbers$"),
])
def test_batches_of_non_real_values_are_refused(small, values, message):
    """A complex batch was cast silently (imaginary part dropped) and a string one parsed, as CaffeModel.forward
    refuses them."""
    from tests.init.nets import images
    batches = images(2)
    batches[1] = {"data": values(batches[1]["data"])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way
        with pytest.raises(CaffeinitError, match=message):
            initialize(small, batches, InitConfig(measure_before=False, between=False), progress=False)


def test_batches_of_any_real_type_give_the_float32_result():
    """float64 arrays, float64 tensors and nested lists initialize as their float32 values do (Caffe's blobs)."""
    from tests.init.nets import PLAIN, images, model
    config = InitConfig(between_iters=1, measure_before=False)
    batches = images(2)
    results = []
    for convert in (lambda x: x, lambda x: x.astype(np.float64), lambda x: torch.from_numpy(x).double(),
                    lambda x: x.tolist()):
        m = model(PLAIN)
        initialize(m, [{"data": convert(b["data"])} for b in batches], config, progress=False)
        results.append(m.blobs())
    for other in results[1:]:
        for name in results[0]:
            for a, b in zip(results[0][name], other[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)


def test_the_report_counts_the_images_that_were_used_not_the_configs():
    """Batches of 4 under the default InitConfig (batch_size 16, num_images 160): the between-layer step measures its
    rates on its first 4 batches, 16 images (it said min(32, 4 x 16) = 32), and the config records the 32 images
    in batches of 4 that came (it said 160 in batches of 16)."""
    from tests.init.nets import PLAIN, images, model
    m = model(PLAIN)
    report = initialize(m, images(8, batch=4), InitConfig(between_iters=2), progress=False)
    assert report.num_images == 32 and report.rate_images() == 16 == report.to_dict()["rate_images"]
    assert (report.config["num_images"], report.config["batch_size"], report.config["between_batches"]) == (32, 4, 4)
    assert "32 images ('before' on the first 4; rates after on the first 16)" in report.table()
    uneven = [{"data": b["data"][:n]} for b, n in zip(images(5), (2, 6, 6, 6, 8))]
    report = initialize(model(PLAIN), uneven, InitConfig(between_iters=2), progress=False)
    assert (report.num_images, report.rate_images(), report.config["batch_size"]) == (28, 20, 8)
