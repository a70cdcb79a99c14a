"""Fixtures shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_writers import write_class_folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three classes of small RGB PNGs; the third has half as many images as the others."""
    return write_class_folder(tmp_path / "pets", {"cat": 10, "dog": 10, "eel": 5})
