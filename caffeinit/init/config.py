"""Options of the initialization (one field per ``caffeinit run`` option), with the defaults of the issue."""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass

from caffeinit.errors import CaffeinitError

METHODS = ("gaussian", "orthogonal", "pca", "zca", "kmeans", "rand")
DATA_METHODS = ("pca", "zca", "kmeans", "rand")  # drawn from the layer's input patches
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max, without importing numpy here
SEED_MAX = 2**63 - 1  # as the CLI's --seed


@dataclass
class InitConfig:
    """Everything that steers ``caffeinit.init.initialize``.

    method: the within-layer draw (``gaussian`` i.i.d. N(0,1) as the reference; ``orthogonal`` rows; ``pca``,
        ``zca``, ``kmeans``, ``rand`` from whitened input patches).
    within / between: run the within-layer (Algorithm 1) / between-layer (Algorithm 2) step.
    between_iters: at most this many between-layer updates (only nets with non-homogeneous layers need > 1).
    tolerance: the between-layer step stops when no layer's rate would move by more than this fraction.
    bias: beta, the target mean of every unit after the within-layer step.
    num_images, batch_size: how many images the caller feeds (the CLI passes them to the data loader).
    between_batches, between_draws: the change rates are averaged over this many of the init batches, each with
        this many N(0,1) gradient draws.
    reinit: ``missing`` (draw only layers without loaded weights), ``all``, or a layer name: that layer and every
        later one are drawn anew (plus those without weights); the layers it covers that the init does not draw
        (PReLU, Bias, Embed, recurrent) start from their fillers, frozen ones keep what was loaded.
    seed: seeds every random draw (a seed gives bitwise-identical CPU results).
    max_samples: cap on input patches gathered per layer (and group) for the data-dependent draws.
    kmeans_iters: Lloyd iterations of the spherical k-means.
    measure_before: measure each layer's output statistics and change rate under the starting weights on the
        first 4 images, for the report (costs one forward+backward over 4 images).
    pass_images: at most this many images per gradient pass (None: whole batches, or as few equal parts of them as
        fit in the memory available, which then decides the float rounding). Pins how passes are split, for the
        same bits on machines with other memory; more than fits is refused.
    """
    method: str = "gaussian"
    within: bool = True
    between: bool = True
    between_iters: int = 10
    tolerance: float = 0.05
    bias: float = 0.1
    num_images: int = 160
    batch_size: int = 16
    between_batches: int = 4
    between_draws: int = 1
    reinit: str = "missing"
    seed: int = 0
    max_samples: int = 20000
    kmeans_iters: int = 20
    measure_before: bool = True
    pass_images: int | None = None

    def check(self) -> None:
        """Raise a CaffeinitError naming the first bad option. Numbers of numpy types become Python's (the report
        is written as JSON)."""
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise CaffeinitError(f"unknown init method '{self.method}' (choose from {', '.join(METHODS)})")
        for name in ("within", "between", "measure_before"):
            if not isinstance(getattr(self, name), bool):
                raise CaffeinitError(f"{name.replace('_', '-')} must be True or False, not {getattr(self, name)!r}")
        for name in ("between_iters", "num_images", "batch_size", "between_batches", "between_draws",
                     "max_samples", "kmeans_iters", "seed", "pass_images"):
            if name != "pass_images" or self.pass_images is not None:
                setattr(self, name, _integer(getattr(self, name), name))
        if not 0 <= self.seed <= SEED_MAX:
            raise CaffeinitError(f"seed must be within 0 to {SEED_MAX}, got {self.seed}")
        for name in ("tolerance", "bias"):
            setattr(self, name, _real(getattr(self, name), name))
        for name in ("between_iters", "num_images", "batch_size", "between_batches", "between_draws",
                     "max_samples", "kmeans_iters"):
            if getattr(self, name) < 1:
                hint = " (--no-between skips the between-layer step)" if name == "between_iters" else ""
                raise CaffeinitError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}{hint}")
        if self.pass_images is not None and self.pass_images < 1:
            raise CaffeinitError(f"pass-images must be at least 1, got {self.pass_images}")
        if not self.tolerance > 0:
            raise CaffeinitError(f"tolerance must be positive, got {self.tolerance}")
        if not math.isfinite(self.tolerance):
            raise CaffeinitError(f"tolerance must be a finite number, got {self.tolerance}")
        if not math.isfinite(self.bias):
            raise CaffeinitError(f"bias must be a finite number, got {self.bias}")
        if abs(self.bias) > FLOAT32_MAX:
            raise CaffeinitError(f"bias must be a finite float32 number (at most 3.4e38 in magnitude: the caffemodel "
                                 f"holds floats), got {self.bias}")
        if not isinstance(self.reinit, str) or not self.reinit:
            raise CaffeinitError(f"reinit must be 'missing', 'all' or a layer name, not {self.reinit!r}")


def _integer(value, name: str) -> int:
    """``value`` as an int: Python's or numpy's integers, not a bool, a float or a string."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise CaffeinitError(f"{name.replace('_', '-')} must be an integer, not {value!r}") from None


def _real(value, name: str) -> float:
    """``value`` as a float: a real number (int, float, numpy's), not a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CaffeinitError(f"{name.replace('_', '-')} must be a number, not {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        raise CaffeinitError(f"{name.replace('_', '-')} must be a finite number, got {value}") from None
