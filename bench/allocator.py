"""Keep freed memory in the process (glibc on Linux), so large CPU tensors are not page-faulted anew.

glibc's malloc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with
a fresh ``mmap`` and unmaps it when it is freed; what it frees at the top of the heap beyond 128 KiB
it gives back to the kernel too. A CPU training step or a MoSE prediction allocates and frees tensors
of tens to hundreds of MB many times over, so the kernel zero-fills their pages again each time.
Measured on the project's 2-core CPU machine, sharing it with other work (smoke MoSE, 256-row
canvas, S = 4, one thread): `bench perf seg` at batch 2 took 6.13 s a step, with 36 s of the
process's 58 s of CPU time in the kernel; with the settings below 1.89 s and 1.6 s. Predicting 8
radiographs with 16 latent draws per expert took 35 s (13 s in the kernel, 4.7 s computing); with
them 8-13 s (0.2-2.6 s in the kernel).

The PyTorch CPU performance guide recommends a caching allocator (jemalloc, tcmalloc) for this; glibc's
own knobs (``mallopt``) give the same reuse without a dependency: the mmap threshold and the trim
threshold at their maximum (2 GiB - 1) and a top pad of 256 MiB, so freed blocks stay in the heap and
are reused. The cost: the process's resident memory stays near its peak instead of falling back after
it (a CPU peak-memory measurement first hands the kept memory back: :func:`release_free_memory`).
``OSTEOBENCH_MALLOC=system`` leaves glibc as it is; off glibc (macOS, musl) nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3      # glibc malloc.h
LARGEST = (1 << 31) - 1                                         # mallopt takes an int
TOP_PAD = 256 << 20
ENV = "OSTEOBENCH_MALLOC"

_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim, libc.gnu_get_libc_version   # glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Apply the settings of the module docstring once per process; True when they are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    libc = None if os.environ.get(ENV, "").strip().lower() == "system" else _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in
                   ((M_MMAP_THRESHOLD, LARGEST), (M_TRIM_THRESHOLD, LARGEST), (M_TOP_PAD, TOP_PAD)))
    return _applied


def release_free_memory() -> None:
    """Hand the freed memory glibc keeps back to the kernel (``malloc_trim(0)``), so that the resident
    set is what the process holds; for measuring a step's peak memory on the CPU."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
