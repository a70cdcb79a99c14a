"""Knowledge distillation through the distillation token (DeiT, Touvron et al. 2021).

The class token's head learns from the labels, the distillation token's head from a teacher:

    loss = (1 - alpha) * CE(cls head, targets) + alpha * KD(dist head, teacher)

    soft: KD = tau^2 * KL(softmax(teacher / tau) || softmax(dist / tau))
    hard: KD = CE(dist head, argmax of the teacher), smoothed like the labels

At test time the model averages the two heads (VisionTransformer does this in `forward`).
The teacher is any model `vitkit.load` reads, a ResNet included; it sees the student's
(augmented) batch prepared with its own input size, channels and normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.data.augment import soft_targets
from vitkit.device import autocast
from vitkit.errors import ConfigError
from vitkit.evaluate.classification import predict_logits
from vitkit.evaluate.preprocess import fit_pixels, normalize
from vitkit.formats import load as load_checkpoint
from vitkit.objectives.base import Draws, Objective
from vitkit.objectives.supervised import classifier_sums, soft_cross_entropy

DISTILL_KINDS = ("soft", "hard")
# DeiT's settings: soft distillation with tau 3 and a 0.1 weight on the teacher term, hard
# distillation with the two terms weighted equally.
DEFAULT_ALPHA = {"soft": 0.1, "hard": 0.5}
DEFAULT_TAU = 3.0


def distillation_loss(logits_cls: torch.Tensor, logits_dist: torch.Tensor, targets: torch.Tensor,
                      teacher_logits: torch.Tensor, kind: str, alpha: float = 0.5, tau: float = 1.0,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """DeiT's loss. `targets` are soft (B, K) label targets for the class head; `teacher_logits`
    (B, K) are the teacher's raw outputs for the same batch."""
    if kind not in DISTILL_KINDS:
        raise ConfigError(f"distill must be one of {', '.join(DISTILL_KINDS)}, not {kind!r}")
    label_loss = soft_cross_entropy(logits_cls, targets)
    teacher_logits = teacher_logits.float()
    if kind == "soft":
        student = F.log_softmax(logits_dist.float() / tau, dim=-1)
        teacher = F.log_softmax(teacher_logits / tau, dim=-1)
        # Summed over classes, averaged over the batch; tau^2 keeps the gradient scale of the
        # soft term independent of the temperature (Hinton et al. 2015).
        teacher_loss = F.kl_div(student, teacher, reduction="batchmean", log_target=True) * tau**2
    else:
        hard = soft_targets(teacher_logits.argmax(dim=-1), teacher_logits.shape[-1], label_smoothing)
        teacher_loss = soft_cross_entropy(logits_dist, hard.to(logits_dist.device))
    return (1.0 - alpha) * label_loss + alpha * teacher_loss


class Teacher:
    """A frozen model that turns the student's [0, 1] pixel batch into logits, once per batch,
    without gradients and in the run's precision mode."""

    def __init__(self, model: torch.nn.Module, precision: str = "fp32"):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.precision = precision

    @classmethod
    def load(cls, path: str, device: torch.device, precision: str = "fp32") -> "Teacher":
        return cls(load_checkpoint(path).to(device), precision)

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        x = normalize(fit_pixels(pixels, cfg), cfg)
        ref = next(self.model.parameters())
        with autocast(ref.device, self.precision):
            return self.model(x.to(ref.device)).float()


def check_teacher_student(teacher_classes: int, student_classes: int, teacher: str) -> None:
    if teacher_classes != student_classes:
        raise ConfigError(f"the teacher {teacher} predicts {teacher_classes} classes, the student "
                          f"{student_classes}; use a teacher trained on this data")


class Distillation(Objective):
    """The student's two heads against the labels and the teacher. The teacher is held outside
    the objective's parameters: it is neither trained, saved nor wrapped for DDP/FSDP."""

    def __init__(self, teacher: Teacher, kind: str, alpha: float, tau: float, label_smoothing: float,
                 device: torch.device, precision: str = "fp32"):
        super().__init__()
        if kind not in DISTILL_KINDS:
            raise ConfigError(f"distill must be one of {', '.join(DISTILL_KINDS)}, not {kind!r}")
        self.teacher = teacher
        self.kind, self.alpha, self.tau, self.label_smoothing = kind, alpha, tau, label_smoothing
        self.device, self.precision = device, precision

    def forward(self, model, pixels, targets, draws: Draws) -> dict[str, torch.Tensor]:
        teacher_logits = self.teacher(pixels)
        with autocast(self.device, self.precision):
            out = model.forward_intermediates(normalize(pixels, model.config))
        if not targets.shape[0]:
            # A process's empty part of a short last batch: zero, reaching every parameter.
            return {"loss": out["logits"].sum(), "logits": out["logits"]}
        loss = distillation_loss(out["logits_cls"], out["logits_dist"], targets, teacher_logits,
                                 self.kind, self.alpha, self.tau, self.label_smoothing)
        return {"loss": loss, "logits": out["logits"]}

    @torch.no_grad()
    def evaluate(self, model, pixels, labels, draws: Draws) -> dict[str, torch.Tensor]:
        """The student's own loss and accuracy (both heads averaged), as it is used at test time."""
        with autocast(self.device, self.precision):
            logits = model(normalize(pixels, model.config))
        return classifier_sums(logits, labels)


HEADS = ("both", "cls", "dist")


def head_logits(model: torch.nn.Module, x: torch.Tensor, head: str = "both") -> torch.Tensor:
    """A distilled model's logits for normalised input `x`: both heads averaged (its ordinary
    output), or the class head or distillation head alone."""
    if head == "both":
        return model(x)
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    if not model.config.distill_token:
        raise ConfigError(f"--head {head} needs a model with a distillation token; this one has one head")
    return model.forward_intermediates(x)["logits_cls" if head == "cls" else "logits_dist"]


def predict_head_logits(model: nn.Module, images: torch.Tensor, head: str = "both",
                        batch_size: int = 512) -> torch.Tensor:
    """Float32 logits (N, K) of one head (see `head_logits`) for uint8 images (N, C, H, W)."""
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    return predict_logits(model, images, batch_size, logits_of=lambda m, x: head_logits(m, x, head))
