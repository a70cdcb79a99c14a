"""Training objectives beyond plain supervised training: knowledge distillation through a
distillation token (DeiT), self-supervised pre-training (masked patch prediction, masked
autoencoders), and adversarial examples (FGSM, PGD) for robustness evaluation and training."""

from vitkit.objectives.adversarial import adversarial_accuracy, attack, fgsm, model_logits_fn, pgd
from vitkit.objectives.distill import Teacher, distillation_loss, head_logits
from vitkit.objectives.mae import MaskedAutoencoder, patchify, unpatchify
from vitkit.objectives.mpp import MaskedPatchPrediction, corrupt_patches, mean_colour_targets

__all__ = ["MaskedAutoencoder", "MaskedPatchPrediction", "Teacher", "adversarial_accuracy", "attack",
           "corrupt_patches", "distillation_loss", "fgsm", "head_logits", "mean_colour_targets",
           "model_logits_fn", "patchify", "pgd", "unpatchify"]
