"""Set-up shared by the fuzzers (the memory cap and the hang watchdog are in harness.py)."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _torch_warmed_up():
    # Thread pools and the meta device set themselves up on first use; let that happen before
    # any reader runs under the memory cap, so the cap measures the reader alone.
    torch.ones(64, 64) @ torch.ones(64, 64)
    with torch.device("meta"):
        torch.nn.Linear(2, 2)


@pytest.fixture(scope="session", autouse=True)
def _default_pixel_limit():
    # The tests name the default limit (89,478,485 pixels); a $VITKIT_MAX_IMAGE_PIXELS of the
    # shell that runs them would change what they read. (Session-wide: hypothesis refuses
    # function-scoped fixtures.)
    saved = os.environ.pop("VITKIT_MAX_IMAGE_PIXELS", None)
    yield
    if saved is not None:
        os.environ["VITKIT_MAX_IMAGE_PIXELS"] = saved
