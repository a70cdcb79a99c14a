"""FGSM and PGD: eps 0 changes nothing, PGD is at least as strong as FGSM, and no perturbation
leaves the eps-ball or [0, 1]."""

import pytest
import torch

import vitkit
from vitkit.objectives.adversarial import adversarial_accuracy, fgsm, model_logits_fn, pgd


@pytest.fixture(scope="module")
def trained():
    """A tiny ViT fitted to a separable toy (class = which half of the image is brighter),
    with a non-trivial normalisation, and uint8 test images."""
    torch.manual_seed(0)
    model = vitkit.create_model("custom", image_size=8, patch_size=4, in_chans=1, num_classes=2, width=16,
                                depth=1, num_heads=2, mlp_dim=16, input_mean=(0.3,), input_std=(0.2,))

    def data(n):
        labels = torch.randint(0, 2, (n,))
        images = torch.rand(n, 1, 8, 8) * 0.5
        images[labels == 1, :, :, 4:] += 0.4
        images[labels == 0, :, :, :4] += 0.4
        return (images * 255).round().to(torch.uint8), labels

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    fn = model_logits_fn(model)
    for _ in range(60):
        images, labels = data(64)
        loss = torch.nn.functional.cross_entropy(fn(images.float() / 255), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), *data(200)


def test_fgsm_with_eps_zero_leaves_accuracy_unchanged(trained):
    model, images, labels = trained
    clean = (model_logits_fn(model)(images.float() / 255).argmax(1) == labels).float().mean()
    attacked = adversarial_accuracy(model, images, labels, "fgsm", 0.0)
    assert clean > 0.9
    assert attacked["top1"] == pytest.approx(float(clean))
    assert attacked["max_perturbation"] == 0.0


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_pgd_accuracy_is_at_most_fgsm_accuracy(trained, eps):
    model, images, labels = trained
    fgsm_acc = adversarial_accuracy(model, images, labels, "fgsm", eps)["top1"]
    pgd_acc = adversarial_accuracy(model, images, labels, "pgd", eps, steps=5, step_size=eps)["top1"]
    assert pgd_acc <= fgsm_acc
    clean = adversarial_accuracy(model, images, labels, "fgsm", 0.0)["top1"]
    assert fgsm_acc <= clean


@pytest.mark.parametrize("random_start", [False, True])
def test_perturbations_stay_in_the_eps_ball_and_in_the_unit_range(trained, random_start):
    model, images, labels = trained
    fn = model_logits_fn(model)
    pixels = images.float() / 255
    eps = 0.1
    for adv in (fgsm(fn, pixels, labels, eps),
                pgd(fn, pixels, labels, eps, steps=4, step_size=0.07, random_start=random_start)):
        assert float((adv - pixels).abs().max()) <= eps + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        assert float((adv - pixels).abs().max()) > 0.5 * eps  # it did move
