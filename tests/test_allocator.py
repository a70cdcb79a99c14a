"""vitkit.allocator: the `vitkit` command keeps freed memory instead of faulting pages in again."""

import platform
import subprocess
import sys

import pytest

from vitkit.allocator import keep_freed_memory

# A training step's pattern: several activation blocks alive at once, then all freed. 50 rounds of
# four 8 MiB blocks, counting minor page faults: with glibc's defaults the freed top of the heap
# is trimmed each round and the next round faults its 8,192 pages in again; with the raised
# thresholds the same pages come back.
PROBE = """
import resource, sys, torch
from vitkit.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
blocks = [torch.empty(2 * 1024 * 1024).fill_(1.0) for _ in range(4)]  # first touch, not counted
del blocks
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    blocks = [torch.empty(2 * 1024 * 1024).fill_(1.0) for _ in range(4)]
    del blocks
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the thresholds are glibc's")


def faults(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0], int(out[1])


@glibc
def test_raised_thresholds_stop_the_page_faults_of_reused_blocks():
    tuned, tuned_faults = faults("tuned")
    _, default_faults = faults("default")
    assert tuned == "True"
    assert default_faults > 50 * 4_000  # about 8,192 per round
    assert tuned_faults < 20_000  # one round's worth at most


@glibc
def test_vitkit_malloc_default_leaves_glibc_alone(monkeypatch):
    monkeypatch.setenv("VITKIT_MALLOC", "default")
    assert keep_freed_memory() is False
