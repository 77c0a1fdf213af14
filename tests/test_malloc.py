"""keep_freed_memory: a freed 16 MB block stays in the process instead of going back to the
system (so the next step does not fault its pages in again)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, sys
from dtmem.malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
size = 16 << 20
p = libc.malloc(size)
ctypes.memset(p, 1, size)
held = rss()
libc.free(p)
print(held - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_block_stays_in_the_process() -> None:
    def returned(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert returned("default") > 12 << 20  # glibc hands a fresh 16 MB block back at once
    assert returned("keep") < 1 << 20
