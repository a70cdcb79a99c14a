"""Knowledge distillation: DeiT's loss by hand, the hard loss with a label "teacher", and a
teacher that sees the batch through its own input configuration."""

import math

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.data.augment import soft_targets
from vitkit.evaluate.preprocess import prepare_images
from vitkit.objectives.distill import Teacher, distillation_loss, head_logits
from vitkit.objectives.supervised import soft_cross_entropy


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_soft_and_hard_distillation_losses_equal_a_hand_computation():
    cls = torch.tensor([[1.0, 0.0]])
    dist = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    label_term = -math.log(_softmax([1.0, 0.0])[0])  # log(1 + e^-1)

    tau, alpha = 2.0, 0.25
    p = _softmax([0.0, 0.5])  # teacher at temperature 2
    q = _softmax([0.0, 1.0])  # student's distillation head at temperature 2
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected_soft = (1 - alpha) * label_term + alpha * tau**2 * kl
    soft = distillation_loss(cls, dist, targets, teacher, "soft", alpha=alpha, tau=tau)
    assert float(soft) == pytest.approx(expected_soft, rel=1e-6)

    # Hard: the teacher's argmax is class 1, so the distillation head pays -log softmax(dist)[1].
    expected_hard = 0.5 * label_term + 0.5 * -math.log(_softmax([0.0, 2.0])[1])
    hard = distillation_loss(cls, dist, targets, teacher, "hard", alpha=0.5)
    assert float(hard) == pytest.approx(expected_hard, rel=1e-6)


def test_hard_distillation_with_the_labels_as_teacher_is_ordinary_training():
    torch.manual_seed(0)
    labels = torch.tensor([0, 3, 2, 2, 1])
    targets = soft_targets(labels, 4, 0.1)  # what the Trainer feeds: labels smoothed by 0.1
    label_teacher = F.one_hot(labels, 4).float() * 7.0  # its argmax is the true label
    logits = torch.randn(5, 4, requires_grad=True)

    # Both heads giving the same logits: the loss and its gradient are the ordinary loss's.
    distilled = distillation_loss(logits, logits, targets, label_teacher, "hard", alpha=0.5, label_smoothing=0.1)
    ordinary = soft_cross_entropy(logits, targets)
    assert distilled.item() == pytest.approx(ordinary.item(), rel=1e-6)
    g_distilled, = torch.autograd.grad(distilled, logits)
    g_ordinary, = torch.autograd.grad(ordinary, logits)
    torch.testing.assert_close(g_distilled, g_ordinary)

    # Separate heads: each head is trained against the labels, weighted (1 - alpha) and alpha.
    cls, dist = torch.randn(5, 4), torch.randn(5, 4)
    loss = distillation_loss(cls, dist, targets, label_teacher, "hard", alpha=0.3, label_smoothing=0.1)
    expected = 0.7 * soft_cross_entropy(cls, targets) + 0.3 * soft_cross_entropy(dist, targets)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_the_teacher_prepares_the_batch_with_its_own_size_channels_and_normalisation():
    torch.manual_seed(0)
    teacher_model = vitkit.create_model("custom", image_size=16, patch_size=4, in_chans=3, num_classes=5,
                                        width=32, depth=1, num_heads=2, mlp_dim=32,
                                        input_mean=(0.4, 0.5, 0.6), input_std=(0.2, 0.3, 0.25))
    torch.nn.init.normal_(teacher_model.head.weight)
    teacher = Teacher(teacher_model)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)  # the student's grey 8x8 batch
    expected = teacher_model(prepare_images(images, teacher_model.config))
    torch.testing.assert_close(teacher(images.float() / 255), expected)
    assert not any(p.requires_grad for p in teacher_model.parameters())


def test_a_distilled_model_averages_its_heads_and_each_head_can_be_read_alone():
    torch.manual_seed(0)
    model = vitkit.create_model("custom", image_size=8, patch_size=2, in_chans=1, num_classes=3, width=16,
                                depth=1, num_heads=2, mlp_dim=16, distill_token=True).eval()
    torch.nn.init.normal_(model.head.weight)
    torch.nn.init.normal_(model.head_dist.weight)
    x = torch.randn(2, 1, 8, 8)
    cls, dist = head_logits(model, x, "cls"), head_logits(model, x, "dist")
    assert not torch.allclose(cls, dist)
    torch.testing.assert_close(head_logits(model, x, "both"), (cls + dist) / 2)
