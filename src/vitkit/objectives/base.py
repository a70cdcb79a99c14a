"""What an objective is to the training engine: a small plug-in that turns a batch into a loss.

An `Objective` is an `nn.Module` whose parameters are its own (the MAE decoder, the MPP head
and mask embedding; none for supervised training); a frozen model it needs (a distillation
teacher) it holds outside its parameters. The engine (vitkit.train) calls it with the model,
a batch of augmented pixels in [0, 1] at the model's input size, soft targets (None when the
objective learns without labels) and the batch's `Draws`, and back-propagates the loss it
returns. Because the engine wraps the model and the objective together (DDP, FSDP2,
torch.compile), everything it does for one objective it does for all of them.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _mix(*values: int) -> int:
    """A 63-bit seed from a few integers (splitmix64 steps): nearby keys give unrelated seeds."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state >> 1


class Draws:
    """The random numbers an objective draws for the images of one batch (masks, corruption,
    an attack's random start), as a function of (seed, key, the image's place in the global
    batch) only: the same for an image whatever the number of processes the batch is split
    over, and the same again when a run resumes, with no generator state to save.

    `rows` are this process's images, as their indices in the global batch; `key` names the
    batch (e.g. (epoch, step) while training, or the first image's index in a validation pass).
    """

    def __init__(self, seed: int, key: Sequence[int], rows: Sequence[int], device: torch.device):
        self.seed, self.key, self.rows, self.device = seed, tuple(key), list(rows), torch.device(device)
        self._calls = 0

    # Under torch.compile this runs as it is (a graph break): traced, it would bake the batch's
    # key into the graph and recompile at every step.
    @torch.compiler.disable
    def uniform(self, *shape: int) -> torch.Tensor:
        """(len(rows), *shape) uniform numbers in [0, 1). Each call draws new numbers."""
        call, self._calls = self._calls, self._calls + 1
        if not self.rows:
            return torch.empty(0, *shape, device=self.device)
        generator = torch.Generator(device=self.device)
        out = torch.empty(len(self.rows), *shape, device=self.device)
        for i, row in enumerate(self.rows):
            generator.manual_seed(_mix(self.seed, *self.key, row, call))
            torch.rand(shape, generator=generator, device=self.device, out=out[i])
        return out


class Objective(nn.Module):
    """Base class. Subclasses set the class attributes and implement `forward` (one training
    step's loss) and `evaluate` (sums over a validation or test batch)."""

    #: Whether it learns from labels: then the model has a classifier head and the targets are
    #: soft (B, K) label distributions; otherwise targets are None and the model is headless.
    uses_labels: bool = True
    #: The name of the accuracy it reports ("acc": top-1 of the classifier; "" for none), as
    #: train_<name> and val_<name> in the metrics.
    accuracy: str = "acc"
    #: The validation number that picks the best epoch and drives early stopping, and whether
    #: higher is better.
    monitor: str = "val_acc"
    higher_is_better: bool = True

    def forward(self, model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor | None,
                draws: Draws) -> dict[str, torch.Tensor]:
        """{"loss": scalar} plus, for the epoch's accuracy, either "logits" (B, K) (compared with
        the targets' argmax) or "correct" and "count" tensors."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
                 draws: Draws) -> dict[str, torch.Tensor]:
        """Sums over a batch of clean pixels (model and objective in eval mode): "loss" (summed
        over "count" items), "count", and "correct" when the objective has an accuracy."""
        raise NotImplementedError
