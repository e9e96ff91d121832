"""Device selection and numeric precision."""
from __future__ import annotations

import re

import torch

from caffeinit.errors import CaffeinitError

PRECISIONS = ("ieee", "tf32")


def select_device(spec: str = "auto", precision: str = "ieee") -> torch.device:
    """``auto`` takes CUDA when available, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``.

    Precision ``ieee`` (default) forces IEEE fp32 for convolutions and matmuls: on Ampere and newer GPUs torch
    otherwise uses TF32, which moves per-channel statistics by several percent. ``tf32`` allows it (faster, less exact).
    """
    if not isinstance(spec, str):
        raise CaffeinitError(f"device must be a string (auto, cpu, cuda or cuda:N), not {type(spec).__name__}")
    set_precision(precision)
    spec = spec.lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    cuda = re.fullmatch(r"cuda(?::([0-9]+))?", spec)
    if cuda is None:
        raise CaffeinitError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise CaffeinitError(f"device '{spec}' requested but CUDA is not available (torch {torch.__version__})")
    if cuda.group(1) is None:
        return torch.device("cuda")
    if int(cuda.group(1)) >= torch.cuda.device_count():
        raise CaffeinitError(f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    return torch.device("cuda", int(cuda.group(1)))


def set_precision(precision: str = "ieee") -> None:
    """Set torch's process-wide fp32 mode for convolutions and matmuls (see ``select_device``)."""
    if precision not in PRECISIONS:
        raise CaffeinitError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9
        torch.backends.fp32_precision = precision
        # the children only inherit while "none": torch 2.11 starts cuDNN convolutions at an explicit "tf32"
        for backend in (torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.cudnn.conv,
                        torch.backends.cudnn.rnn):
            if hasattr(backend, "fp32_precision"):
                backend.fp32_precision = precision
    else:  # older torch: the legacy flags (assigning fp32_precision there would only add a plain attribute)
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"


def current_precision() -> str:
    """The process's fp32 mode for matmuls (``ieee`` or ``tf32``), as ``set_precision`` left it."""
    mode = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if mode in PRECISIONS:
        return mode
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def available_memory(device: torch.device) -> int | None:
    """Bytes that new tensors on ``device`` can still take: free GPU memory plus what torch's caching allocator
    holds unused, or the kernel's MemAvailable on Linux; None where unknown."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + int(cached)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
