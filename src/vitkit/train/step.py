"""The model and its objective as one module: what one training step runs, and what DDP and
FSDP2 wrap and torch.compile compiles, so that each does for every objective what it does for
supervised training (the student of a distillation run, the encoder of a pre-training run, the
forward passes of an attack)."""

from __future__ import annotations

import torch
from torch import nn

from vitkit.models.vit import VisionTransformer
from vitkit.objectives.base import Draws, Objective


class TrainingStep(nn.Module):
    """`model` (the network being trained, and what a run saves) and `objective` (its own
    parameters, if any: state dict names "model." and "objective.")."""

    def __init__(self, model: VisionTransformer, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, pixels: torch.Tensor, targets: torch.Tensor | None, draws: Draws,
                evaluate: bool = False) -> dict[str, torch.Tensor]:
        """The objective's training loss for augmented pixels and soft targets; with `evaluate`,
        its sums for clean pixels and labels (call it under torch.no_grad, in eval mode)."""
        if evaluate:
            return self.objective.evaluate(self.model, pixels, targets, draws)
        return self.objective(self.model, pixels, targets, draws)
