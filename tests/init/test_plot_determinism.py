"""`--plot` writes the same bytes on every run, in every format it accepts (the --seed promise)."""
import gzip
import os
import subprocess
import sys
import time

import pytest

from caffeinit.init.report import InitReport, LayerRecord

pytest.importorskip("matplotlib")

_WRITE = """
import sys
from caffeinit.init.report import InitReport, LayerRecord


def report():
    r = InitReport(net="lenet", method="gaussian", num_images=8)
    for i in range(3):
        r.layers.append(LayerRecord(f"conv{i}", "Convolution", "gaussian", std_before=0.5 ** i, std_after=1.0,
                                    rate_before=1.0 + i, rate_after=2.0, rate_noise=0.05))
    return r


if __name__ == "__main__":
    folder, formats = sys.argv[1], sys.argv[2:]
    for fmt in formats:
        report().plot(f"{folder}/plot.{fmt}")
"""


def _formats() -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from caffeinit.init.report import plot_format
    known = []
    for suffix in list(FigureCanvasAgg(Figure()).get_supported_filetypes()):
        try:
            known.append(plot_format(f"p.{suffix}"))
        except Exception:  # noqa: BLE001 — a format plot_format refuses is not written
            pass
    return known


def test_every_plot_format_is_the_same_bytes_on_a_later_run(tmp_path, monkeypatch):
    """PDF, PS/EPS and SVG carry a creation date, SVG random clip-path ids and SVGZ a gzip time stamp by default:
    two runs a second apart (the second in a fresh process) must still write identical files."""
    from tests.conftest import ROOT
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    formats = _formats()
    assert {"png", "pdf", "svg", "svgz", "ps", "eps"} <= set(formats)
    script = tmp_path / "write_plots.py"
    script.write_text(_WRITE)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    namespace = {}
    exec(compile(_WRITE, str(script), "exec"), namespace)
    for fmt in formats:
        namespace["report"]().plot(first / f"plot.{fmt}")
    assert "SOURCE_DATE_EPOCH" not in os.environ  # set only while PostScript is written
    time.sleep(1.05)  # the dates written have a resolution of one second
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(script), str(second), *formats], check=True, env=env, timeout=300)
    differ = [fmt for fmt in formats
              if (first / f"plot.{fmt}").read_bytes() != (second / f"plot.{fmt}").read_bytes()]
    assert differ == []
    assert (first / "plot.pdf").read_bytes().startswith(b"%PDF")
    assert (first / "plot.ps").read_bytes().startswith(b"%!PS")
    assert b"<svg" in gzip.decompress((first / "plot.svgz").read_bytes())


def test_the_caller_s_source_date_epoch_is_left_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    report = InitReport(net="n", method="gaussian", num_images=1,
                        layers=[LayerRecord("conv", "Convolution", std_after=1.0, rate_after=1.0)])
    report.plot(tmp_path / "p.eps")
    assert os.environ["SOURCE_DATE_EPOCH"] == "1234567890"
