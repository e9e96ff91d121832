import math

import pytest

from caffeinit.init.report import MAX_PLOT_LABELS, MAX_PLOT_WIDTH, InitReport, LayerRecord


def _report(layers: int) -> InitReport:
    report = InitReport(net="deep", method="gaussian", num_images=16)
    for i in range(layers):
        report.layers.append(LayerRecord(f"conv{i}", "Convolution", "gaussian", std_before=0.5 ** i, std_after=1.0,
                                         rate_before=1.0 + i, rate_after=2.0, rate_noise=0.05))
    return report


def test_the_plot_of_a_deep_net_stays_readable():
    import matplotlib.pyplot as plt
    for layers, labels in ((8, 8), (240, math.ceil(240 / math.ceil(240 / MAX_PLOT_LABELS)))):
        figure = _report(layers).figure()
        width, _ = figure.get_size_inches()
        names = [t.get_text() for t in figure.axes[1].get_xticklabels()]
        assert width <= MAX_PLOT_WIDTH and len(names) == labels <= MAX_PLOT_LABELS
        assert names[0] == "conv0" and all(name.startswith("conv") for name in names)
        plt.close(figure)


def test_the_summary_names_each_spread_and_leaves_out_an_unmeasured_one():
    report = _report(3)
    assert "change-rate spread (max/min) 3x from the starting weights, 1x after 0 between-layer" in report.table()
    report.spread_between_start = 4.2e4
    assert ("change-rate spread (max/min) 3x from the starting weights, 4.20e+04x after the within-layer step, 1x "
            "after 0 between-layer update(s)") in report.table()
    for record in report.layers:
        record.rate_before = None  # all-zero starting weights: no rate before
    assert "change-rate spread (max/min) 4.20e+04x after the within-layer step, 1x after" in report.table()


def test_the_plot_leaves_out_before_bars_that_were_not_measured():
    """--no-before: only the 'after' bars, centred on their layers; with 'before' figures both, side by side."""
    import matplotlib.pyplot as plt
    report = _report(3)
    for with_before in (True, False):
        if not with_before:
            for record in report.layers:
                record.rate_before = record.std_before = None
        figure = report.figure()
        for axes in figure.axes:
            labels = [text.get_text() for text in axes.get_legend().get_texts()]
            assert ("before" in labels) == with_before and len(labels) == 1 + with_before
            after = axes.containers[-1]
            centres = [bar.get_x() + bar.get_width() / 2 for bar in after]
            assert centres == pytest.approx([0.2, 1.2, 2.2] if with_before else [0.0, 1.0, 2.0])
        plt.close(figure)
