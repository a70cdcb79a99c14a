"""vitkit.allocator: the `vitkit` command keeps freed memory instead of mapping it afresh."""

import platform
import subprocess
import sys

import pytest

from vitkit.allocator import keep_freed_memory

# Where an 8 MiB tensor's memory comes from, read off glibc's own books (mallinfo2): `hblkhd` is
# the memory held in separate mmaps, `arena` the heap. With glibc's defaults (a fresh process:
# mmap threshold 128 KiB) the block is a fresh mmap, unmapped again when freed, so the next
# step's block is faulted in anew; with the raised thresholds it is carved from the heap and
# stays there after it is freed. (Counting page faults instead is not reliable: transparent
# huge pages fault 2 MiB at a time on some runs.)
PROBE = """
import ctypes, sys, torch
from vitkit.allocator import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
before = libc.mallinfo2()
block = torch.empty(2 * 1024 * 1024).fill_(1.0)
held = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(tuned, held.hblkhd - before.hblkhd, after.arena - before.arena)
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the thresholds are glibc's")
MIB = 1024 * 1024


def probe(mode: str) -> tuple[str, int, int]:
    tuned, mapped, kept = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                                         check=True).stdout.split()
    return tuned, int(mapped), int(kept)


@glibc
def test_raised_thresholds_keep_a_large_block_on_the_heap_after_it_is_freed():
    tuned, mapped, kept = probe("tuned")
    assert tuned == "True"
    assert mapped == 0 and kept >= 8 * MIB


@glibc
def test_glibc_defaults_map_the_block_separately_and_give_it_back():
    tuned, mapped, kept = probe("default")
    assert tuned == "False"
    assert mapped >= 8 * MIB and kept < 8 * MIB


@glibc
def test_vitkit_malloc_default_leaves_glibc_alone(monkeypatch):
    monkeypatch.setenv("VITKIT_MALLOC", "default")
    assert keep_freed_memory() is False
