import pathlib

import pytest
import torch

from caffeinit.api import load
from caffeinit.device import available_memory, current_precision, select_device, set_precision
from caffeinit.errors import CaffeinitError

LENET = pathlib.Path(__file__).parents[1] / "models" / "lenet" / "deploy.prototxt"


def _conv_precision() -> str:
    if hasattr(torch.backends, "fp32_precision"):
        return torch.backends.cudnn.conv.fp32_precision
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


@pytest.fixture(autouse=True)
def restore_precision():
    yield
    set_precision("ieee")


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_loading_sets_ieee_precision_for_a_name_and_a_torch_device(device):
    # torch's own default for cuDNN convolutions is TF32 on Ampere+ GPUs: loading must switch it to IEEE
    set_precision("tf32")
    assert _conv_precision() == "tf32"
    if hasattr(torch.backends, "fp32_precision"):  # as torch 2.11 starts on CUDA machines: conv explicitly tf32
        torch.backends.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    load(LENET, device=device)
    assert _conv_precision() == "ieee"


def test_tf32_is_an_explicit_choice():
    load(LENET, device=torch.device("cpu"), precision="tf32")
    assert _conv_precision() == "tf32" == current_precision()
    select_device("cpu")
    assert _conv_precision() == "ieee" == current_precision()


def test_unknown_precision_and_device_are_one_line_errors():
    with pytest.raises(CaffeinitError, match="unknown precision 'bf16'"):
        set_precision("bf16")
    with pytest.raises(CaffeinitError, match="unknown device 'tpu'"):
        select_device("tpu")


@pytest.mark.skipif(not pathlib.Path("/proc/meminfo").exists(), reason="Linux's /proc/meminfo")
def test_available_memory_on_the_cpu_is_the_kernels_figure():
    lines = pathlib.Path("/proc/meminfo").read_text().splitlines()
    line = next(text for text in lines if text.startswith("MemAvailable:"))
    assert abs(available_memory(torch.device("cpu")) - int(line.split()[1]) * 1024) < 2 ** 30  # moves as we run


def test_available_gpu_memory_counts_what_torchs_cache_holds_unused(monkeypatch):
    """Free device memory (cudaMemGetInfo) plus the blocks torch's caching allocator reserved but no tensor uses:
    new tensors take those first (checked here without a GPU: the figures are torch's)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * 2 ** 30, 80 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * 2 ** 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 ** 30)
    assert available_memory(torch.device("cuda", 0)) == 7 * 2 ** 30


@pytest.fixture
def two_gpus(monkeypatch):
    """select_device as on a machine with two CUDA devices (it only asks torch whether and how many)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("spec", ["cuda:x", "cuda:-1", "cuda: 0", "cuda:", "cuda:0:1", "cudax", "cuda:1.0",
                                  "cuda:\u0661"])
def test_malformed_cuda_devices_are_unknown_on_a_cuda_machine(two_gpus, spec):
    with pytest.raises(CaffeinitError, match=r"^unknown device '.*' \(use auto, cpu, cuda or cuda:N\)$"):
        select_device(spec)


@pytest.mark.parametrize("spec, want", [("cuda", torch.device("cuda")), ("CUDA:1", torch.device("cuda", 1)),
                                        ("cuda:01", torch.device("cuda", 1))])
def test_well_formed_cuda_devices_on_a_cuda_machine(two_gpus, spec, want):
    assert select_device(spec) == want


@pytest.mark.parametrize("spec", ["cuda:2", "cuda:99999999999999999999999"])
def test_a_cuda_device_past_the_last_does_not_exist(two_gpus, spec):
    with pytest.raises(CaffeinitError, match=r"^device '.*' does not exist \(2 CUDA devices\)$"):
        select_device(spec)


def test_a_device_that_is_not_a_string_is_refused():
    with pytest.raises(CaffeinitError, match=r"^device must be a string \(auto, cpu, cuda or cuda:N\), not NoneType$"):
        select_device(None)
