"""Every fuzz test runs under a memory cap: a reader that believes a size declared in a
damaged file and allocates it fails the test with MemoryError instead of exhausting the
machine. The cap is RLIMIT_DATA (private writable memory, the kind numpy, torch and Pillow
allocate) set to what the process uses when the test starts plus MEMORY_HEADROOM; it is
lifted again after the test. Where the platform has no RLIMIT_DATA or /proc, the tests run
without a cap."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import pytest
import torch

MEMORY_HEADROOM = 1 << 30


def _data_in_use() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmData:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else None


@pytest.fixture(scope="session", autouse=True)
def _torch_warmed_up():
    # Thread pools and the meta device set themselves up on first use; do that before any cap.
    torch.ones(64, 64) @ torch.ones(64, 64)
    with torch.device("meta"):
        torch.nn.Linear(2, 2)


@pytest.fixture(autouse=True)
def memory_cap():
    in_use = _data_in_use()
    if in_use is None or not hasattr(resource, "RLIMIT_DATA"):
        yield None
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = in_use + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
