"""retain_freed_memory: memory of a large tensor, freed, serves the next one without new page faults."""
import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# decided apart from the code under test, so that a retain_freed_memory that gives up on glibc fails, not skips
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

PROGRAM = """
import resource, sys
import torch
from caffeinit.allocator import retain_freed_memory, return_freed_memory
retained = retain_freed_memory() if sys.argv[1] in ("retain", "return") else None
if sys.argv[1] == "return":
    retained = return_freed_memory() and retained
def faults_of_a_tensor(mib):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(mib * 2 ** 20 // 4)  # written: every page touched
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_tensor(64)
print(retained, faults_of_a_tensor(60))  # fits in the freed block whatever torch's alignment adds
"""


def _second_block_faults(mode: str, tunables: str | None = None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True)
    retained, faults = out.stdout.split()
    return retained, int(faults)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_freed_block_is_reused_without_page_faults():
    pages = 60 * 2 ** 20 // 4096
    retained, faults = _second_block_faults("retain")
    assert retained == "True"
    assert faults < pages // 20
    # the default returns a block this large to the kernel on free: the next one faults in every page again
    _, default_faults = _second_block_faults("default")
    assert default_faults > pages // 2


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_malloc_setting_in_glibc_tunables_is_left_alone():
    retained, faults = _second_block_faults("retain", tunables="glibc.malloc.mmap_max=65536")
    assert retained == "False" and faults > 60 * 2 ** 20 // 4096 // 2


RELEASE = """
import torch
from caffeinit.allocator import release_free_memory, retain_freed_memory
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20
retain_freed_memory()
block = torch.ones(200 * 2 ** 20 // 4)
small = torch.ones(16)  # allocated above the block: the heap's top cannot simply shrink
del block
kept = resident_mib()
released = release_free_memory()
print(released, kept - resident_mib())
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_release_free_memory_hands_retained_memory_back():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", RELEASE], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True)
    released, dropped = out.stdout.split()
    assert released == "True"
    assert float(dropped) > 150  # MiB of the freed 200 no longer resident


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_returning_freed_memory_gives_large_blocks_their_own_pages_again():
    """Where memory is short the initialization undoes the retention: a 60 MB tensor after a freed 64 MB one faults
    its pages in again (glibc maps it afresh and unmaps it on free: no fragmented heap)."""
    pages = 60 * 2 ** 20 // 4096
    returned, faults = _second_block_faults("return")
    assert returned == "True"
    assert faults > pages * 0.9
    # it only ever undoes: in a process that did not retain, it changes nothing
    out = subprocess.run([sys.executable, "-c", "from caffeinit.allocator import return_freed_memory as r; print(r())"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
