"""Optimisers with the paper's weight-decay exemptions, and the warm-up + decay schedule."""

from __future__ import annotations

import math

import torch

from vitkit.models.vit import VisionTransformer


def param_groups(model: VisionTransformer, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and the exempt norms, biases, tokens and embeddings."""
    exempt = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: VisionTransformer, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=False)
    # The fused kernel exists for CPUs as well as GPUs: on the default digits model one AdamW
    # step takes 0.49 ms fused, 1.9 ms with foreach and 2.9 ms with the per-tensor loop
    # (1 thread, 2-core EPYC), a tenth of the training time.
    device = next(model.parameters()).device.type
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device in ("cpu", "cuda") or None)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR at `step` (0-based): linear warm-up, then cosine/linear decay
    to `min_ratio`, or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)
