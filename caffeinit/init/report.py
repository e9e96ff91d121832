"""The outcome of an initialization: one record per layer, a text table, a JSON-ready dict and a plot."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from caffeinit.errors import CaffeinitError
from caffeinit.tables import format_table


MAX_PLOT_WIDTH = 24.0  # inches; deeper nets get thinner bars
MAX_PLOT_LABELS = 50  # layer names along the x axis at most
MAX_LABEL_CHARS = 24  # a longer layer name is shortened in the middle on the plot's axis


@dataclass
class LayerRecord:
    """What happened to one layer. Statistics are channel averages of the layer's own output (before any
    nonlinearity): mean of the per-channel means, mean of the per-channel stds. ``rate_*`` is the effective change
    rate |lr_mult| x RMS(dL/dW) / RMS(W) under N(0,1) gradients at the net's end."""
    name: str
    type: str
    method: str = "kept"  # gaussian | orthogonal | pca | zca | kmeans | rand | scale | batchnorm | kept | frozen
    note: str = ""
    lr_mult: float = 1.0
    mean_before: float | None = None
    std_before: float | None = None
    mean_after: float | None = None
    std_after: float | None = None
    rate_before: float | None = None
    rate_after: float | None = None
    between_scale: float = 1.0  # factor the between-layer step applied to W
    rate_noise: float | None = None  # relative standard error of rate_after (from the between batches' spread)
    dead: int = 0

    def after_stats(self, mean, std) -> None:
        self.mean_after = float(mean.mean())
        self.std_after = float(std.mean())


@dataclass
class InitReport:
    """Per-layer records in net order plus a summary of the between-layer step."""
    net: str
    method: str
    num_images: int
    before_images: int | None = None  # images the "before" statistics and rates were measured on (the first ones)
    after_images: int | None = None  # images the "after" statistics were measured on (None: the within step's own)
    between_images: int | None = None  # images the between-layer step measured the rates on (its first batches)
    layers: list[LayerRecord] = field(default_factory=list)
    between_iterations: int = 0
    between_converged: bool | None = None
    homogeneous: bool | None = None
    output_scale: float = 1.0  # the net's end values are multiplied by this (1 on homogeneous nets)
    spread_between_start: float | None = None  # max/min rate when the between-layer step began (its first measure)
    rate_noise: float | None = None  # median relative standard error of the measured rates (between-batch spread)
    between_note: str | None = None  # why the rates still differ after the step converged, where they do
    gradient_chunk: int | None = None  # images per gradient pass where a whole batch's did not fit in memory
    seconds: dict[str, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # the InitConfig it ran with
    environment: dict[str, str] = field(default_factory=dict)  # caffeinit and torch versions, device, fp32 mode

    def layer(self, name: str) -> LayerRecord:
        for record in self.layers:
            if record.name == name:
                return record
        raise KeyError(name)

    def spread(self, which: str = "after") -> float | None:
        """max / min effective change rate over the layers that have one."""
        rates = [getattr(r, f"rate_{which}") for r in self.layers]
        rates = [r for r in rates if r is not None and r > 0 and math.isfinite(r)]
        return max(rates) / min(rates) if rates else None

    def first_overflow(self) -> str | None:
        """The first layer (net order) whose output statistics before the init are not finite, if any."""
        for r in self.layers:
            if any(v is not None and not math.isfinite(v) for v in (r.mean_before, r.std_before)):
                return r.name
        return None

    def rate_images(self) -> int | None:
        """How many images the 'after' change rates were measured on (the between-layer step's first batches),
        where there are such rates: ``between_images``, else (a report made by hand) as far as the config says."""
        if all(r.rate_after is None for r in self.layers):
            return None
        if self.between_images is not None:
            return self.between_images
        batches, size = self.config.get("between_batches"), self.config.get("batch_size")
        if batches is None or size is None:
            return None
        return min(self.num_images, batches * size)

    def to_dict(self) -> dict:
        """Plain data for JSON; a non-finite statistic (a net whose starting weights overflow) becomes None."""
        data = asdict(self)
        for layer in data["layers"]:
            for key, value in layer.items():
                if isinstance(value, float) and not math.isfinite(value):
                    layer[key] = None
        data["spread_before"] = self.spread("before")
        data["spread_after"] = self.spread("after")
        data["first_overflow_before"] = self.first_overflow()
        data["rate_images"] = self.rate_images()
        return data

    def table(self) -> str:
        """The per-layer table and a summary line, as the CLI prints them."""
        head = ("layer", "type", "method", "mean before -> after", "std before -> after", "rate before -> after")
        rows = [head]
        for r in self.layers:
            rows.append((r.name, r.type, r.method + (f" ({r.dead} dead)" if r.dead else ""),
                         f"{_num(r.mean_before)} -> {_num(r.mean_after)}",
                         f"{_num(r.std_before)} -> {_num(r.std_after)}",
                         f"{_num(r.rate_before)} -> {_num(r.rate_after)}"))
        lines = [format_table(rows)]
        for r in self.layers:
            if r.note:
                lines.append(f"note: {r.name}: {r.note}")
        overflow = self.first_overflow()
        if overflow is not None:
            lines.append(f"note: the starting weights overflow float32 from layer '{overflow}' on: its and later "
                         "layers' 'before' statistics are inf or nan (Caffe computes the same)")
        if self.between_note:
            lines.append(f"note: {self.between_note}")
        summary = f"{self.num_images} images"
        subsets = []  # the figures measured on fewer images than the within-layer statistics
        if self.before_images is not None and self.before_images < self.num_images:
            subsets.append(f"'before' on the first {self.before_images}")
        rate_images = self.rate_images()
        if self.after_images is not None and self.after_images < self.num_images:
            subsets.append(f"statistics after on the first {self.after_images}")
        if rate_images is not None and rate_images < self.num_images:
            subsets.append(f"rates after on the first {rate_images}")
        if subsets:
            summary += f" ({'; '.join(subsets)})"
        summary += f", method {self.method}"
        before, after = self.spread("before"), self.spread("after")
        if after is not None:
            # the spread before the between-layer step (the progress bar's first figure) is not the starting weights'
            steps = [f"{_num(before)}x from the starting weights"] if before is not None else []
            if self.spread_between_start is not None:
                steps.append(f"{_num(self.spread_between_start)}x after the within-layer step")
            steps.append(f"{_num(after)}x after {self.between_iterations} between-layer update(s)")
            summary += "; change-rate spread (max/min) " + ", ".join(steps)
            if self.rate_noise is not None:
                summary += f" (rates measured to +-{100 * self.rate_noise:.0f}%)"
        if self.seconds:
            summary += f"; {sum(self.seconds.values()):.2f} s"
        lines.append(summary)
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, inputs=()) -> None:
        """``figure()`` written to ``path`` atomically, in the format its suffix names (PNG without one); never
        over one of ``inputs``."""
        image_format = plot_format(path)  # the path and matplotlib checked first
        path = os.fsdecode(path)
        import matplotlib.pyplot as plt
        from caffeinit.fileio import atomic_output
        fig = self.figure()
        try:
            with atomic_output(path, inputs) as temp:
                data = _figure_bytes(fig, image_format)
                with open(temp, "wb") as f:
                    f.write(data)
        finally:
            plt.close(fig)

    def figure(self):
        """A matplotlib figure with two panels per layer: the effective change rates before/after (after with +-
        one standard error), and the output std before/after (channel averages), both on log scales."""
        _matplotlib()
        import matplotlib.pyplot as plt

        records = [r for r in self.layers if r.rate_before is not None or r.rate_after is not None
                   or r.std_after is not None]
        names = [r.name for r in records]
        xs = range(len(names))
        fig, (rate_ax, std_ax) = plt.subplots(2, 1, figsize=(min(max(6.0, 0.45 * len(names) + 2), MAX_PLOT_WIDTH), 7),
                                              sharex=True)
        # without 'before' figures (--no-before) the 'after' bars stand alone
        with_before = any(not math.isnan(_plottable(v)) for r in records for v in (r.rate_before, r.std_before))
        at, width = ([x + 0.2 for x in xs], 0.4) if with_before else (list(xs), 0.6)
        if with_before:
            rate_ax.bar([x - 0.2 for x in xs], [_plottable(r.rate_before) for r in records], 0.4, label="before")
        after = [_plottable(r.rate_after) for r in records]
        noise = [r.rate_noise or 0.0 for r in records]  # +- one standard error, symmetric in log scale
        spread = [[a - a / (1 + n) for a, n in zip(after, noise)], [a * n for a, n in zip(after, noise)]]
        rate_ax.bar(at, after, width, label="after (+- standard error)", yerr=spread, capsize=2, color="C1")
        rate_ax.set_yscale("log")
        rate_ax.set_ylabel("|lr_mult| x RMS(dL/dW) / RMS(W)")
        after_spread = self.spread("after")
        rate_ax.set_title(f"{self.net} ({self.method}): change rate per layer"
                          + (f", spread {after_spread:.2f}x after" if after_spread else ""), fontsize=10)
        rate_ax.legend(loc="best", fontsize=8, framealpha=0.8)
        if with_before:
            std_ax.bar([x - 0.2 for x in xs], [_plottable(r.std_before) for r in records], 0.4, label="before")
        std_ax.bar(at, [_plottable(r.std_after) for r in records], width, label="after", color="C1")
        std_ax.set_yscale("log")
        std_ax.set_ylabel("output std (channel mean)")
        std_ax.set_title("output std per layer (after: unit std, then the between-layer rescaling)", fontsize=10)
        std_ax.legend(loc="best", fontsize=8, framealpha=0.8)
        step = math.ceil(len(names) / MAX_PLOT_LABELS)  # deep nets (DenseNet: 240 layers): every step-th name
        std_ax.set_xticks(list(xs)[::step], [_short(name) for name in names[::step]], rotation=60, ha="right",
                          fontsize=8)
        fig.tight_layout()
        return fig


def plot_format(path: str | os.PathLike) -> str:
    """The image format a plot at ``path`` is written in: its suffix (png, pdf, svg, ...), PNG without one; a
    suffix matplotlib cannot write is refused, naming the ones it can, as is a missing matplotlib."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise CaffeinitError(f"the plot path must be a path, not {type(path).__name__}")
    path = os.fsdecode(path)
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if not suffix:
        return "png"
    known = dict(FigureCanvasAgg(Figure()).get_supported_filetypes())  # a copy: the dict is matplotlib's own
    known.pop("pgf", None)  # needs a LaTeX installation
    if suffix not in known:
        raise CaffeinitError(f"{path}: cannot write a plot as '.{suffix}' (use one of: "
                             f"{', '.join('.' + k for k in sorted(known))})")
    return suffix


def _figure_bytes(fig, image_format: str) -> bytes:
    """``fig`` saved as ``image_format``, the same bytes on every run (the --seed promise): without the creation
    dates PDF, PostScript and SVG write by default, SVG's clip-path ids from a fixed salt instead of a random one,
    and SVGZ compressed without the gzip header's time stamp. Saved to memory, so that no file name (the temporary
    file's, random) goes into a PostScript title or a gzip header."""
    import gzip
    import io
    import matplotlib

    options = {}
    if image_format == "pdf":
        options["metadata"] = {"CreationDate": None}
    elif image_format in ("svg", "svgz"):
        options["metadata"] = {"Date": None}
    saved = os.environ.get("SOURCE_DATE_EPOCH")
    buffer = io.BytesIO()
    try:
        if image_format in ("ps", "eps"):
            os.environ["SOURCE_DATE_EPOCH"] = "0"  # PostScript's only way to a fixed %%CreationDate
        with matplotlib.rc_context({"svg.hashsalt": "caffeinit"}):
            fig.savefig(buffer, format="svg" if image_format == "svgz" else image_format, **options)
    finally:
        if saved is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = saved
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if image_format == "svgz" else data


def _matplotlib() -> None:
    """Import matplotlib with the file-only Agg backend; refused, naming how to install it, where it cannot be."""
    try:
        import matplotlib
    except ImportError as e:
        raise CaffeinitError(f"--plot needs matplotlib, which cannot be imported ({e}): pip install matplotlib (or "
                             "pip install 'caffeinit[plot]')") from None
    matplotlib.use("Agg")


def _plottable(value: float | None) -> float:
    """A bar height for a log axis: nan (no bar) for missing, non-finite or non-positive values."""
    return value if value is not None and math.isfinite(value) and value > 0 else math.nan


def _short(name: str) -> str:
    """``name`` cut to MAX_LABEL_CHARS in the middle (its start and its end tell layers apart), so that long names
    leave the panels their height."""
    if len(name) <= MAX_LABEL_CHARS:
        return name
    head = (MAX_LABEL_CHARS - 1) // 2
    return name[:head] + "\u2026" + name[len(name) - (MAX_LABEL_CHARS - 1 - head):]


def _num(value: float | None) -> str:
    """3 significant digits, in exponent notation outside [1e-3, 1e4) after rounding; never "-0"."""
    if value is None:
        return "-"
    value += 0.0  # -0.0 -> 0.0
    if value == 0 or 1e-3 <= abs(float(f"{value:.3g}")) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"
