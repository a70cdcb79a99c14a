"""Tiny training runs for the resume, interruption and non-finite tests (a plain module
imported by name, like tests/data/data_writers.py).

84 training images in batches of 4 with 2-step accumulation: 21 steps and 11 optimiser
updates an epoch (the last update has a one-step group), 33 updates in 3 epochs, a checkpoint
every 3 updates. EMA, dropout and augmentation (affine + mixup) all draw from the global RNG,
so resuming exactly needs the saved RNG states.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vitkit.train import TrainConfig, Trainer, train

STEPS_PER_EPOCH = 21
UPDATES = 33
TINY_MODEL = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=4, dropout=0.1)
CHECKPOINTS = ("last", "best", "final")
RUN = dict(epochs=3, batch_size=4, accum_steps=2, checkpoint_every=3, ema=0.9)


def write_tiny_npz(path: Path) -> Path:
    """120 grey 8x8 images of 4 classes (brightness tells the class, with noise)."""
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 4
    images = (rng.integers(0, 60, (120, 8, 8)) + labels[:, None, None] * 50).astype(np.uint8)
    np.savez(path, x=images, y=labels)
    return path


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    return TrainConfig(**{"data": str(data), "out": str(out), "model_options": dict(TINY_MODEL),
                          **RUN, **changes})


def tiny_flags(data: Path, out: Path) -> list[str]:
    """The command-line flags of tiny_config."""
    flags = ["--data", str(data), "--out", str(out)]
    for name, value in {**TINY_MODEL, **RUN}.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def run_tensors(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(run / "checkpoints" / f"{name}.safetensors")) for name in CHECKPOINTS}


def assert_same_run(run: Path, reference: Path) -> None:
    """Every tensor of last.safetensors (model, optimiser, EMA, RNG), best.safetensors and
    final.safetensors (the run's result) is equal, and so is the summary's test accuracy."""
    got, want = run_tensors(run), run_tensors(reference)
    for name in CHECKPOINTS:
        assert got[name].keys() == want[name].keys(), name
        for key, tensor in want[name].items():
            assert torch.equal(got[name][key], tensor), f"{name}: {key}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_acc"] == json.loads((reference / "summary.json").read_text())["test_acc"]
    assert summary["epochs"] == 3


def progress(checkpoint: Path) -> dict:
    from vitkit.train.state import load_training_state

    return load_training_state(checkpoint)["progress"]


def temporaries(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp"))


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (no except clause catches a BaseException)."""


def train_killed_after_update(monkeypatch, cfg: TrainConfig, k: int) -> None:
    """Start the run of `cfg` and "kill" it right after optimiser update `k`."""
    original = Trainer._update

    def update_then_die(self, *args):
        applied = original(self, *args)
        if self.progress["update"] == k:
            raise Killed
        return applied

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_update", update_then_die)
        with pytest.raises(Killed):
            train(cfg, quiet=True)
