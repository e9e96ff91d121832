import numpy as np
import torch

from caffeinit.init.stats import ChannelStats


def test_chan_merge_matches_float64_numpy_on_adversarial_data():
    rng = np.random.default_rng(1)
    batches = [1000 + 0.01 * rng.standard_normal((7 + i, 3, 5, 4)) for i in range(20)]
    stats = ChannelStats()
    for b in batches:
        stats.update(torch.from_numpy(b.astype(np.float32)))
    ref = np.concatenate([b.astype(np.float32).astype(np.float64) for b in batches]).transpose(1, 0, 2, 3)
    ref = ref.reshape(3, -1)
    assert stats.count == ref.shape[1]
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(1), rtol=1e-8)
    np.testing.assert_allclose(stats.var.numpy(), ref.var(1), rtol=1e-4)


def test_channel_axis_and_batch_size_do_not_change_the_result():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 5, 6)).astype(np.float32) * 3 + 2
    whole, parts = ChannelStats(), ChannelStats()
    whole.update(torch.from_numpy(x), channel_axis=2)
    for chunk in np.split(x, [1, 5, 6]):
        parts.update(torch.from_numpy(chunk), channel_axis=2)
    ref = x.astype(np.float64).reshape(-1, 6)
    for s in (whole, parts):
        np.testing.assert_allclose(s.mean.numpy(), ref.mean(0), rtol=1e-6)
        np.testing.assert_allclose(s.std.numpy(), ref.std(0), rtol=1e-5)


def test_fc_outputs_with_a_large_offset_merge_to_the_float64_result():
    # (N, C) outputs in uneven chunks, mean 100 and std 1: float32 reductions, float64 merging
    rng = np.random.default_rng(3)
    x = (100 + rng.standard_normal((64, 9))).astype(np.float32)
    stats = ChannelStats()
    for chunk in np.split(x, [10, 11, 40]):
        stats.update(torch.from_numpy(chunk))
    ref = x.astype(np.float64)
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(0), rtol=1e-7)
    np.testing.assert_allclose(stats.var.numpy(), ref.var(0), rtol=1e-5)


def test_non_contiguous_batches_give_the_same_statistics():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((6, 4, 5, 7)).astype(np.float32))
    a, b = ChannelStats(), ChannelStats()
    a.update(x)
    b.update(x.contiguous(memory_format=torch.channels_last))
    np.testing.assert_allclose(a.mean.numpy(), b.mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.var.numpy(), b.var.numpy(), rtol=1e-5)


def test_mean_far_above_the_spread_keeps_the_variance():
    """Mean 1e5 times the spread: the corrected two-pass reduction stays near float32 resolution of the deviations
    (a float32 sum of squares would lose every digit)."""
    rng = np.random.default_rng(5)
    x = (3e4 + 0.3 * rng.standard_normal((16, 4, 9, 9))).astype(np.float32)
    stats = ChannelStats()
    for chunk in np.split(x, [5, 16]):
        stats.update(torch.from_numpy(chunk))
    ref = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(1), rtol=1e-9)
    np.testing.assert_allclose(stats.var.numpy(), ref.var(1), rtol=1e-5)


def test_values_whose_float32_squares_overflow_give_finite_statistics():
    """A net whose starting weights blow up has outputs near 1e25: finite in float32, their squares not."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 50)) * np.array([1e25, 1e30, 1.0])[None, :, None] + 2e25
    stats = ChannelStats()
    stats.update(torch.from_numpy(x.astype(np.float32)))
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(stats.mean.numpy(), x32.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(stats.std.numpy(), x32.std(axis=(0, 2)), rtol=1e-10)
    inf = torch.full((2, 1, 5), float("inf"))
    stats = ChannelStats()
    stats.update(inf)
    assert not torch.isfinite(stats.mean).any()  # data that is itself infinite stays so


def test_a_shift_from_an_unrepresentative_subset_keeps_the_variance():
    """The deviations are taken from the mean of every 16th row of a batch (its images, or the positions of a
    channels-last batch); here exactly those rows sit ~3.3 standard deviations out (sqrt(15) is the most a 1/16
    subset can) on data whose mean is 1e5 times its spread, and the variance keeps float32 resolution."""
    rng = np.random.default_rng(7)
    for layout in (torch.contiguous_format, torch.channels_last):
        rows = (3e4 + 0.3 * rng.standard_normal((32 * 81, 4))).astype(np.float32)  # (image, y, x) x channel
        if layout == torch.contiguous_format:
            rows[(np.arange(32 * 81) // 81) % 16 == 0] += np.float32(2.0)  # images 0 and 16
        else:
            rows[::16] += np.float32(2.0)  # every 16th position
        x = rows.reshape(32, 9, 9, 4).transpose(0, 3, 1, 2)
        stats = ChannelStats()
        stats.update(torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=layout))
        np.testing.assert_allclose(stats.mean.numpy(), rows.astype(np.float64).mean(0), rtol=1e-9)
        np.testing.assert_allclose(stats.var.numpy(), rows.astype(np.float64).var(0), rtol=1e-5)
