"""Adversarial examples in pixel space: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Attacks work on pixels in [0, 1] at the model's input size; the model's normalisation is part
of the attacked function, so epsilon is in pixel units whatever the model's mean and std.
Every adversarial batch lies in the L-infinity ball of radius eps around the clean one and
in [0, 1].
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from vitkit.device import autocast
from vitkit.errors import ConfigError
from vitkit.evaluate.preprocess import normalize, resize_images
from vitkit.objectives.base import Draws, Objective

ATTACKS = ("fgsm", "pgd")

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def model_logits_fn(model: torch.nn.Module, precision: str = "fp32") -> LogitsFn:
    """pixels in [0, 1] -> logits, with the model's own normalisation inside."""
    cfg = model.config
    device = next(model.parameters()).device

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(normalize(pixels, cfg)).float()

    return logits


def _loss_per_example(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example for class indices (B,) or soft targets (B, K)."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets, reduction="none")
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def _input_gradient(logits_fn: LogitsFn, pixels: torch.Tensor, targets: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gradient of the summed loss w.r.t. the pixels, logits, per-example loss)."""
    x = pixels.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_fn(x)
        loss = _loss_per_example(logits, targets)
        grad, = torch.autograd.grad(loss.sum(), x)
    return grad, logits.detach(), loss.detach()


def _project(x: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x, clean - eps), clean + eps).clamp(0.0, 1.0)


def fgsm(logits_fn: LogitsFn, pixels: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps, clipped to [0, 1]."""
    if eps < 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    if eps == 0:
        return pixels.detach().clone()
    grad, _, _ = _input_gradient(logits_fn, pixels, targets)
    return _project(pixels.detach() + eps * grad.sign(), pixels.detach(), eps)


def pgd(logits_fn: LogitsFn, pixels: torch.Tensor, targets: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, random_start: bool = False,
        noise: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient descent on the loss within the eps-ball (L-infinity) and [0, 1].

    `step_size` defaults to 2.5 * eps / steps (Madry et al.). Each example keeps its strongest
    iterate: the first that is misclassified, else the one of highest loss; so without a random
    start and with step_size >= eps (the first step is then FGSM's), PGD never does worse than
    FGSM. Targets for the "misclassified" test are the labels (or the soft targets' argmax).
    A random start is uniform in the ball: `noise` (uniform in [0, 1), the batch's shape) gives
    its draws, else they come from torch's global generator.
    """
    if eps < 0 or steps < 1:
        raise ConfigError(f"PGD needs eps >= 0 and steps >= 1, got eps {eps} and steps {steps}")
    clean = pixels.detach()
    if eps == 0:
        return clean.clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    labels = targets if targets.dim() == 1 else targets.argmax(dim=-1)
    x = clean
    if random_start:
        noise = torch.rand(clean.shape).to(clean) if noise is None else noise.to(clean)
        x = _project(clean + eps * (noise * 2 - 1), clean, eps)
    # Per example: the strongest iterate so far, whether it fools the model, and its loss.
    best = x.clone()
    best_fooled = torch.zeros(clean.shape[0], dtype=torch.bool, device=clean.device)
    best_loss = torch.full((clean.shape[0],), -float("inf"), device=clean.device)
    for step in range(steps + 1):
        if step < steps:
            grad, logits, loss = _input_gradient(logits_fn, x, targets)
        else:
            with torch.no_grad():
                logits = logits_fn(x).float()
            loss = _loss_per_example(logits, targets)
        if step:  # the clean or randomly started point itself is not an adversarial example
            fooled = logits.argmax(dim=-1) != labels
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x, best)
            best_fooled = torch.where(better, fooled, best_fooled)
            best_loss = torch.where(better, loss, best_loss)
        if step < steps:
            x = _project(x + step_size * grad.sign(), clean, eps)
    return best


def attack(kind: str, logits_fn: LogitsFn, pixels: torch.Tensor, targets: torch.Tensor, eps: float,
           steps: int = 10, step_size: float | None = None, random_start: bool = False,
           noise: torch.Tensor | None = None) -> torch.Tensor:
    if kind == "fgsm":
        return fgsm(logits_fn, pixels, targets, eps)
    if kind == "pgd":
        return pgd(logits_fn, pixels, targets, eps, steps, step_size, random_start, noise)
    raise ConfigError(f"attack must be one of {', '.join(ATTACKS)}, not {kind!r}")


def adversarial_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, kind: str,
                         eps: float, steps: int = 10, step_size: float | None = None,
                         random_start: bool = False, batch_size: int = 256,
                         logits_of=None) -> dict:
    """Top-1 accuracy on uint8 images (N, C, H, W) attacked with FGSM or PGD at `eps` (pixel
    units, [0, 1] scale), after resizing to the model's input. `logits_of(model, x)` picks what
    is attacked and scored (default: the model's output; e.g. one head of a distilled model).
    Returns top1, n and the largest perturbation actually applied."""
    was_training = model.training
    model.eval()
    ref = next(model.parameters())
    cfg = model.config
    if logits_of is None:
        fn = model_logits_fn(model)
    else:
        def fn(pixels):
            return logits_of(model, normalize(pixels, cfg)).float()
    correct, largest = 0, 0.0
    for start in range(0, images.shape[0], batch_size):
        pixels = resize_images(images[start:start + batch_size].to(ref.device), cfg)
        y = labels[start:start + batch_size].to(ref.device)
        adv = attack(kind, fn, pixels, y, eps, steps, step_size, random_start)
        largest = max(largest, float((adv - pixels).abs().max()) if adv.numel() else 0.0)
        with torch.no_grad():
            correct += int((fn(adv).argmax(dim=-1) == y).sum())
    model.train(was_training)
    n = int(images.shape[0])
    return {"attack": kind, "eps": eps, "top1": correct / n if n else 0.0, "n": n,
            "max_perturbation": largest}


class Adversarial(Objective):
    """Adversarial training around another objective (supervised or distillation): each batch
    is attacked with the model frozen in evaluation mode (no dropout while attacking; PGD from a
    random point of the ball, Madry et al.), and the loss is
    (1 - ratio) * inner(clean) + ratio * inner(attacked)."""

    def __init__(self, inner: Objective, kind: str, eps: float, steps: int, step_size: float | None,
                 ratio: float, precision: str = "fp32"):
        super().__init__()
        if kind not in ATTACKS:
            raise ConfigError(f"attack must be one of {', '.join(ATTACKS)}, not {kind!r}")
        self.inner = inner
        self.kind, self.eps, self.steps, self.step_size, self.ratio = kind, eps, steps, step_size, ratio
        self.precision = precision

    def attacked(self, model: torch.nn.Module, pixels: torch.Tensor, targets: torch.Tensor,
                 draws: Draws) -> torch.Tensor:
        was_training = model.training
        model.eval()
        noise = draws.uniform(*pixels.shape[1:]) if self.kind == "pgd" else None
        adv = attack(self.kind, model_logits_fn(model, self.precision), pixels, targets, self.eps, self.steps,
                     self.step_size, random_start=self.kind == "pgd", noise=noise)
        model.train(was_training)
        return adv

    def forward(self, model, pixels, targets, draws: Draws) -> dict[str, torch.Tensor]:
        attacked = self.inner(model, self.attacked(model, pixels, targets, draws), targets, draws)
        if self.ratio == 1.0:
            return attacked
        clean = self.inner(model, pixels, targets, draws)
        return {**clean, "loss": (1.0 - self.ratio) * clean["loss"] + self.ratio * attacked["loss"]}

    @torch.no_grad()
    def evaluate(self, model, pixels, labels, draws: Draws) -> dict[str, torch.Tensor]:
        """Clean loss and accuracy; `vitkit eval --attack` measures the robust ones."""
        return self.inner.evaluate(model, pixels, labels, draws)
