"""What an epoch of a run will cost on this machine, measured before the run starts, so that
the epochs picked from the data can be fitted to a time budget (auto.fit_epochs)."""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch

from vitkit.objectives.base import Draws
from vitkit.train.config import TrainConfig
from vitkit.train.optim import run_optimizer

TIMED_STEPS = 5
WARMUP_STEPS = 2


def epoch_seconds(step_module: torch.nn.Module, cfg: TrainConfig, augment: Callable, images: torch.Tensor,
                  labels: torch.Tensor, uses_labels: bool, steps_per_epoch: int, validation_images: int) -> float:
    """Seconds an epoch will take: training steps (augmentation of the uint8 batch by
    `augment(images, labels) -> (pixels, soft targets)`, forward, backward, optimiser step) of a
    copy of the model and objective, plus validation at a third of a training step's cost per
    image. The run's own weights and random streams are left as they were."""
    device = images.device
    step = copy.deepcopy(step_module)
    optimizer = run_optimizer(cfg, step)
    cuda = [device] if device.type == "cuda" else []
    times = []
    with torch.random.fork_rng(devices=cuda):
        for i in range(TIMED_STEPS):
            start = time.perf_counter()
            pixels, targets = augment(images, labels)
            out = step(pixels, targets if uses_labels else None, Draws(cfg.seed, (-3, i), range(pixels.shape[0]), device))
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    step_seconds = sorted(times[WARMUP_STEPS:])[(TIMED_STEPS - WARMUP_STEPS) // 2]  # the median
    validation = validation_images / max(images.shape[0], 1) * step_seconds / 3
    return steps_per_epoch * step_seconds + validation
