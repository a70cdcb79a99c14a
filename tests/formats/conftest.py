import numpy as np
import pytest
import torch


def rel_diff(a, b) -> float:
    """Largest relative difference max|a - b| / max|b| (the parity measure of issue 3)."""
    a = np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture
def images():
    """A small batch of NCHW float32 inputs in [-1, 1] (normalised pixels)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
