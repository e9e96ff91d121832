"""Device selection and numeric precision."""
from __future__ import annotations

import torch

from caffeinit.errors import CaffeinitError

PRECISIONS = ("ieee", "tf32")


def select_device(spec: str = "auto", precision: str = "ieee") -> torch.device:
    """``auto`` takes CUDA when available, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``.

    Precision ``ieee`` (default) forces IEEE fp32 for convolutions and matmuls: on Ampere and newer GPUs torch
    otherwise uses TF32, which moves per-channel statistics by several percent. ``tf32`` allows it (faster, less exact).
    """
    if precision not in PRECISIONS:
        raise CaffeinitError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    torch.backends.fp32_precision = "ieee" if precision == "ieee" else "tf32"
    spec = spec.lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CaffeinitError(f"device '{spec}' requested but CUDA is not available (torch {torch.__version__})")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CaffeinitError(f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA devices)")
        return device
    raise CaffeinitError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"
