"""bench.allocator: with glibc told to keep freed memory, a large block freed and allocated again is
reused, not mapped afresh (no page faults); OSTEOBENCH_MALLOC=system leaves glibc as it is."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc's")

PROBE = """
import ctypes, resource
from bench.allocator import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def touch(n):
    p = libc.malloc(n); libc.memset(p, 1, n); libc.free(p)
touch(64 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch(64 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(mode: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "OSTEOBENCH_MALLOC" and not k.startswith("MALLOC_")}
    if mode:
        env["OSTEOBENCH_MALLOC"] = mode
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "True", int(faults)


def test_freed_blocks_are_reused_unless_the_system_allocator_is_asked_for():
    pages = 5 * (64 << 20) // os.sysconf("SC_PAGE_SIZE")          # 64 MB allocated, touched and freed 5 times
    applied, faults = probe(None)
    assert applied and faults < pages // 100
    applied, faults = probe("system")
    assert not applied and faults >= pages                       # mapped and zero-filled again every time
