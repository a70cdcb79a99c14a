"""What the Trainer's loss becomes with a teacher or adversarial training.

`prepare_config` fills the objective's defaults and asks for a distillation token when there
is a teacher; `build_objective` returns None for ordinary training (the Trainer's own fast
path), else a callable `objective(model, pixels, targets) -> (logits, loss)` for a batch of
augmented pixels in [0, 1] and soft targets.
"""

from __future__ import annotations

from typing import Callable

import torch

from vitkit.errors import ConfigError
from vitkit.device import autocast
from vitkit.evaluate.preprocess import normalize
from vitkit.formats import load as load_checkpoint
from vitkit.objectives.adversarial import attack, model_logits_fn
from vitkit.objectives.distill import Teacher, distillation_loss, soft_cross_entropy

# DeiT's settings: soft distillation with tau 3 and a 0.1 weight on the teacher term, hard
# distillation with the two terms weighted equally.
DEFAULT_ALPHA = {"soft": 0.1, "hard": 0.5}
DEFAULT_TAU = 3.0


def prepare_config(cfg, say: Callable[[str], None]):
    """The TrainConfig with distillation defaults filled and `distill_token` switched on."""
    if cfg.distill == "none":
        return cfg
    changes = {}
    if cfg.distill_alpha is None:
        changes["distill_alpha"] = DEFAULT_ALPHA[cfg.distill]
    if cfg.distill_tau is None:
        changes["distill_tau"] = DEFAULT_TAU
    if cfg.init:
        if not load_checkpoint(cfg.init).config.distill_token:
            raise ConfigError(f"--teacher needs a student with a distillation token, and {cfg.init} has "
                              "none; train the student from scratch (leave out --init)")
    elif not cfg.model_options.get("distill_token"):
        say("distillation: the student gets a distillation token (distill_token=True)")
        changes["model_options"] = {**cfg.model_options, "distill_token": True}
    return cfg.replace(**changes) if changes else cfg


class TrainingObjective:
    """Ordinary or distillation loss, on clean or on clean + adversarial batches."""

    def __init__(self, cfg, model, device: torch.device, precision: str):
        self.cfg = cfg
        self.precision = precision
        self.device = device
        self.teacher = None
        if cfg.distill != "none":
            self.teacher = Teacher.load(cfg.teacher, device, precision)
            if self.teacher.num_classes != model.config.num_classes:
                raise ConfigError(f"the teacher {cfg.teacher} predicts {self.teacher.num_classes} classes, "
                                  f"the student {model.config.num_classes}; use a teacher trained on this data")

    def _loss(self, model, pixels: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(pixels, model.config)
        if self.teacher is None:
            with autocast(self.device, self.precision):
                logits = model(x)
            return logits, soft_cross_entropy(logits, targets)
        teacher_logits = self.teacher(pixels)
        with autocast(self.device, self.precision):
            out = model.forward_intermediates(x)
        loss = distillation_loss(out["logits_cls"], out["logits_dist"], targets, teacher_logits,
                                 self.cfg.distill, self.cfg.distill_alpha, self.cfg.distill_tau,
                                 self.cfg.label_smoothing or 0.0)
        return out["logits"], loss

    def _adversarial(self, model, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch attacked with the model frozen in evaluation mode (no dropout while attacking);
        PGD starts at a random point of the ball (Madry et al.)."""
        model.eval()
        adv = attack(self.cfg.adversarial, model_logits_fn(model, self.precision), pixels, targets,
                     self.cfg.adv_eps, self.cfg.adv_steps, self.cfg.adv_step_size,
                     random_start=self.cfg.adversarial == "pgd")
        model.train()
        return adv

    def __call__(self, model, pixels: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.adversarial == "none":
            return self._loss(model, pixels, targets)
        adv = self._adversarial(model, pixels, targets)
        ratio = self.cfg.adv_ratio
        adv_logits, adv_loss = self._loss(model, adv, targets)
        if ratio == 1.0:
            return adv_logits, adv_loss
        logits, loss = self._loss(model, pixels, targets)
        return logits, (1.0 - ratio) * loss + ratio * adv_loss


def build_objective(cfg, model, device: torch.device, precision: str) -> TrainingObjective | None:
    if cfg.distill == "none" and cfg.adversarial == "none":
        return None
    return TrainingObjective(cfg, model, device, precision)
