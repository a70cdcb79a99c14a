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
