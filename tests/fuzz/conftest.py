"""Set-up shared by the fuzzers (the memory cap and the hang watchdog are in harness.py)."""

from __future__ import annotations


import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _torch_warmed_up():
    # Thread pools and the meta device set themselves up on first use; let that happen before
    # any reader runs under the memory cap, so the cap measures the reader alone.
    torch.ones(64, 64) @ torch.ones(64, 64)
    with torch.device("meta"):
        torch.nn.Linear(2, 2)
