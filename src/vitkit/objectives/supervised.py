"""Supervised training: the cross-entropy of the classifier's logits against the (smoothed,
mixed) label distribution of each augmented image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.device import autocast
from vitkit.evaluate.preprocess import normalize
from vitkit.objectives.base import Draws, Objective


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the cross-entropy against soft targets (B, K), in float32."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def classifier_sums(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed cross-entropy, correct top-1 count and count of a batch of logits."""
    logits = logits.float()
    return {"loss": F.cross_entropy(logits, labels, reduction="sum"),
            "correct": (logits.argmax(dim=-1) == labels).sum(),
            "count": torch.tensor(labels.shape[0], device=logits.device)}


class Supervised(Objective):
    """The model's logits of the normalised pixels against the targets."""

    def __init__(self, device: torch.device, precision: str = "fp32"):
        super().__init__()
        self.device, self.precision = device, precision

    def logits(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return model(normalize(pixels, model.config))

    def forward(self, model, pixels, targets, draws: Draws) -> dict[str, torch.Tensor]:
        logits = self.logits(model, pixels)
        # A process's part of a short last batch can be empty: a zero loss that still reaches
        # every parameter, as the gradient reduction across processes needs.
        loss = soft_cross_entropy(logits, targets) if targets.shape[0] else logits.sum()
        return {"loss": loss, "logits": logits}

    @torch.no_grad()
    def evaluate(self, model, pixels, labels, draws: Draws) -> dict[str, torch.Tensor]:
        return classifier_sums(self.logits(model, pixels), labels)
