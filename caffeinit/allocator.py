"""How the process's C allocator hands memory back: ``retain_freed_memory`` keeps it for reuse (glibc).

torch allocates every CPU tensor with malloc. glibc serves a block above its mmap threshold (which follows the
sizes freed, up to 32 MB) with fresh pages from the kernel and returns them on free, and it returns the free top of
its heap beyond the trim threshold; so each new large tensor (a convolution's output, an autograd temporary) pays
one page fault per 4 KiB and the zeroing of its pages, again on every batch and gradient pass. An elementwise op
into a fresh 16 x 256 x 56 x 56 output (51 MB) takes ~15 ms that way and ~4 ms into reused memory. Keeping freed
memory in the heap makes `caffeinit run` 5-13% faster on nets whose batches hold tensors above 32 MB (ResNet-50
-13%, GoogLeNet -5%), for 5-14% more peak RSS (freed memory is reused, but fragments the heap); CaffeNet's
tensors stay below the threshold, and its time does not change (benchmarks/RESULTS.md). A malloc setting in
GLIBC_TUNABLES is the user's choice and is left alone. ``release_free_memory`` hands the free part back at the end
of a phase (the initialization calls it after the within-layer step, whose stored outputs are then gone), so the
next phase's peak does not add to what fragmentation left of the last one's; ``return_freed_memory`` undoes the
retention where memory is short (the initialization calls it then).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_retained = False  # retain_freed_memory has acted in this process

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int: free heap top beyond 2 GiB still goes back to the kernel
DEFAULT_MMAP_MAX = 65536  # glibc's
MMAP_THRESHOLD = 32 * 2 ** 20  # the largest threshold glibc's own adjustment reaches


def retain_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap and keep freed memory there for the next allocations.
    Process-wide, for allocations made from now on; the CLI calls it first thing. Returns False (and changes
    nothing) where the C library is not glibc, or where GLIBC_TUNABLES sets malloc's behaviour already."""
    libc = _glibc()
    if libc is None or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or not hasattr(libc, "mallopt"):
        return False  # musl and others have no mallopt
    mallopt = _mallopt(libc)
    global _retained
    _retained = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _retained


def return_freed_memory() -> bool:
    """Undo ``retain_freed_memory`` where memory is short: blocks above 32 MB (what glibc's own adjustment reaches)
    get their own pages again and go back to the kernel when freed, smaller ones keep being reused from the heap.
    Slower for large tensors, but a heap that keeps them fragments: a gradient pass of FCN-8s over 8 images peaked
    at 15.5 GiB of RSS that way against 9.4 GiB with glibc's behaviour. Also trims the heap now. Only undoes:
    False (nothing changed) where ``retain_freed_memory`` has not acted in this process."""
    global _retained
    libc = _glibc()
    if not _retained or libc is None:
        return False
    _retained = False
    mallopt = _mallopt(libc)
    done = bool(mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
        and bool(mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))
    return release_free_memory() and done


def release_free_memory() -> bool:
    """Return the heap's free memory to the kernel now (glibc's malloc_trim; its pages fault in again when
    reused). False where the C library has no malloc_trim."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    libc.malloc_trim(0)
    return True


def _mallopt(libc):
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _glibc():
    """The C library, on Linux, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
