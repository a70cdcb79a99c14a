"""Fixtures shared by the data tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_writers import write_class_folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three classes of small RGB PNGs; the third has half as many images as the others."""
    return write_class_folder(tmp_path / "pets", {"cat": 10, "dog": 10, "eel": 5})


@pytest.fixture(scope="session", autouse=True)
def _default_pixel_limit():
    # The tests name the default limit (89,478,485 pixels); a $VITKIT_MAX_IMAGE_PIXELS of the
    # shell that runs them would change what they read. (Session-wide: hypothesis refuses
    # function-scoped fixtures.)
    saved = os.environ.pop("VITKIT_MAX_IMAGE_PIXELS", None)
    yield
    if saved is not None:
        os.environ["VITKIT_MAX_IMAGE_PIXELS"] = saved
