import math
import os

import pytest

from caffeinit.errors import CaffeinitError
from caffeinit.init.report import MAX_PLOT_LABELS, MAX_PLOT_WIDTH, InitReport, LayerRecord, plot_format


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


def test_long_layer_names_are_shortened_on_the_plot_axis():
    """An 80-character name would take the figure's height from both panels: cut in the middle, start and end kept."""
    import matplotlib.pyplot as plt
    from caffeinit.init.report import MAX_LABEL_CHARS
    report = _report(2)
    long = "a_very_long_layer_name_for_the_first_convolution_of_the_network_block1_unit1_conv"
    report.layers[0].name = long
    figure = report.figure()
    label = figure.axes[1].get_xticklabels()[0].get_text()
    assert len(label) == MAX_LABEL_CHARS and label.startswith("a_very_long") and label.endswith("unit1_conv")
    assert figure.axes[1].get_xticklabels()[1].get_text() == "conv1"
    plt.close(figure)


def test_before_bars_only_where_a_before_figure_can_be_drawn():
    """All-zero starting weights (a deploy net without its caffemodel): 'before' stds are 0 and rates 0 or missing,
    nothing a log axis can show, so no empty 'before' bars take half of each layer's width."""
    import matplotlib.pyplot as plt
    report = _report(3)
    for record in report.layers:
        record.std_before, record.rate_before = 0.0, 0.0
    figure = report.figure()
    for axes in figure.axes:
        assert [text.get_text() for text in axes.get_legend().get_texts()] in (["after (+- standard error)"],
                                                                               ["after"])
        after = axes.containers[-1]
        assert [bar.get_x() + bar.get_width() / 2 for bar in after] == pytest.approx([0.0, 1.0, 2.0])
    plt.close(figure)


def test_the_table_says_on_which_images_figures_were_measured():
    """The 'before' figures, the 'after' rates (the between step's first batches) and, on a non-homogeneous net, the
    'after' statistics (its first batch) come from fewer images than the within step's statistics."""
    report = _report(2)
    report.config = {"between_batches": 4, "batch_size": 16}
    report.num_images, report.before_images = 160, 4
    report.between_iterations = 2
    table = report.table()
    assert "160 images ('before' on the first 4; rates after on the first 64)" in table
    assert report.to_dict()["rate_images"] == 64 and report.to_dict()["after_images"] is None
    report.after_images = 16
    assert "160 images ('before' on the first 4; statistics after on the first 16; rates after on the first 64)" \
        in report.table()


def test_figures_never_read_minus_zero_or_round_past_their_range():
    report = _report(1)
    report.layers[0].mean_before, report.layers[0].mean_after, report.layers[0].rate_after = -0.0, 0.1, 9999.5
    row = report.table().splitlines()[2]
    assert "0 -> 0.1" in row and "-0" not in row and "-> 1.00e+04" in row


def test_a_plot_path_that_is_not_a_path_is_refused(tmp_path):
    report = InitReport(net="n", method="gaussian", num_images=1)
    with pytest.raises(CaffeinitError, match=r"^the plot path must be a path, not NoneType$"):
        report.plot(None)
    with pytest.raises(CaffeinitError, match=r"^the plot path must be a path, not int$"):
        plot_format(3)


def test_plot_without_matplotlib_is_refused_before_any_work(tmp_path):
    """Where matplotlib cannot be imported, `run --plot` stops before loading anything, with one line saying how to
    install it (it was an 'internal error' once the work was done)."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("No module named \'matplotlib\'")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "stub"), str(ROOT)])}
    out = tmp_path / "out.caffemodel"
    proc = subprocess.run([sys.executable, "-m", "caffeinit", "run", str(ROOT / "models" / "lenet" / "deploy.prototxt"),
                           "-o", str(out), "--plot", str(tmp_path / "p.png"), "--device", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == ("caffeinit: error: --plot needs matplotlib, which cannot be imported (No module named "
                           "'matplotlib'): pip install matplotlib (or pip install "
                           "'caffeinit[plot]')\n")
    assert sorted(os.listdir(tmp_path)) == ["stub"]
    code = ("from caffeinit.errors import CaffeinitError\nfrom caffeinit.init.report import InitReport\n"
            "try:\n    InitReport('n', 'gaussian', 1).figure()\nexcept CaffeinitError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.startswith("--plot needs matplotlib") and proc.returncode == 0


def test_checking_a_plot_format_leaves_matplotlib_s_format_table_alone():
    """plot_format leaves out PGF (it needs LaTeX) from its own list, not from the table matplotlib's canvases share
    (a program that imports caffeinit would lose '.pgf' from every canvas's supported formats)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    before = dict(FigureCanvasAgg(Figure()).get_supported_filetypes())
    assert plot_format("p.pdf") == "pdf"
    with pytest.raises(CaffeinitError, match=r"cannot write a plot as '\.pgf'"):
        plot_format("p.pgf")
    assert FigureCanvasAgg(Figure()).get_supported_filetypes() == before
