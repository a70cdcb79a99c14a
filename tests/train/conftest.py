"""Fixtures shared by the resume, interruption and non-finite tests (their tiny runs live in
train_runs.py)."""

import pytest
from train_runs import write_tiny_npz


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
    """The tiny 4-class .npz of train_runs.py, written once per test session."""
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture
def no_plots(monkeypatch):
    """The summary's plots take most of a tiny run's time and play no part in what these tests check."""
    import vitkit.train.plots

    monkeypatch.setattr(vitkit.train.plots, "plot_curves", lambda *args: None)
    monkeypatch.setattr(vitkit.train.plots, "plot_confusion", lambda *args, **kwargs: None)


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A fixed ViT teacher for 8x8 grey images of 4 classes (random weights with a non-zero head,
    so that it has opinions), for the distillation runs."""
    import torch

    import vitkit

    torch.manual_seed(1)
    model = vitkit.create_model("custom", image_size=8, patch_size=4, in_chans=1, num_classes=4, width=16,
                                depth=1, num_heads=2, mlp_dim=16)
    torch.nn.init.normal_(model.head.weight)
    return vitkit.save(model, tmp_path_factory.mktemp("teacher") / "teacher.safetensors")
