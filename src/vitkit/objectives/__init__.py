"""What a training run learns: objectives, each a small plug-in that turns a batch into a loss
(see base.py). Supervised training, DeiT distillation through a distillation token, FGSM/PGD
adversarial training around either, the paper's masked patch prediction and masked
autoencoders; and the attacks themselves for robustness evaluation. The training engine
(vitkit.train) runs every objective the same way; nothing here imports it."""

from __future__ import annotations

import torch

from vitkit.objectives.adversarial import (ATTACKS, Adversarial, adversarial_accuracy, attack, fgsm,
                                           model_logits_fn, pgd)
from vitkit.objectives.base import Draws, Objective
from vitkit.objectives.distill import (DEFAULT_ALPHA, DEFAULT_TAU, Distillation, Teacher, check_teacher_student,
                                       distillation_loss, head_logits, predict_head_logits)
from vitkit.objectives.mae import MaskedAutoencoder, patchify, unpatchify
from vitkit.objectives.mpp import MaskedPatchPrediction, corrupt_patches, mean_colour_targets
from vitkit.objectives.supervised import Supervised, soft_cross_entropy


def build_objective(cfg, model: torch.nn.Module, device: torch.device, precision: str) -> Objective:
    """The objective a training config asks for (a `vitkit.train.TrainConfig` with its
    distillation defaults filled), for `model` on `device`. Its own parameters are created
    here, after the model's, from torch's global generator."""
    if cfg.objective == "mpp":
        return MaskedPatchPrediction(model, device, precision).to(device)
    if cfg.objective == "mae":
        return MaskedAutoencoder(model, cfg.decoder_width, cfg.decoder_depth, cfg.decoder_heads, cfg.mask_ratio,
                                 cfg.norm_pix, device, precision).to(device)
    objective: Objective = Supervised(device, precision)
    if cfg.distill != "none":
        teacher = Teacher.load(cfg.teacher, device, precision)
        check_teacher_student(teacher.num_classes, model.config.num_classes, cfg.teacher)
        objective = Distillation(teacher, cfg.distill, cfg.distill_alpha, cfg.distill_tau, cfg.label_smoothing or 0.0,
                                 device, precision)
    if cfg.adversarial != "none":
        objective = Adversarial(objective, cfg.adversarial, cfg.adv_eps, cfg.adv_steps, cfg.adv_step_size,
                                cfg.adv_ratio, precision)
    return objective


__all__ = ["ATTACKS", "Adversarial", "DEFAULT_ALPHA", "DEFAULT_TAU", "Distillation", "Draws", "MaskedAutoencoder",
           "MaskedPatchPrediction", "Objective", "Supervised", "Teacher", "adversarial_accuracy", "attack",
           "build_objective", "check_teacher_student", "corrupt_patches", "distillation_loss", "fgsm",
           "head_logits", "mean_colour_targets", "model_logits_fn", "patchify", "pgd", "predict_head_logits",
           "soft_cross_entropy", "unpatchify"]
