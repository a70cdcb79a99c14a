"""Top-1/top-5 accuracy and the confusion matrix on logits whose answers are known."""

import torch

from vitkit.evaluate.classification import classification_metrics


def test_accuracies_are_the_exact_ratios_of_counts():
    # 359 images of which 36 are right: the ratio a float32 mean gets wrong in the last bits
    # (0.10027855... as float32 widened is 0.10027854889631271, not 36 / 359).
    n, right = 359, 36
    labels = torch.arange(n) % 10
    logits = torch.zeros(n, 10)
    predicted = torch.where(torch.arange(n) < right, labels, (labels + 1) % 10)
    logits[torch.arange(n), predicted] = 1.0
    metrics = classification_metrics(logits, labels)
    assert metrics["top1"] == right / n
    assert float(torch.tensor(right / n, dtype=torch.float32)) != right / n  # the case is a real one
    assert metrics["n"] == n and sum(metrics["confusion"][c][c] for c in range(10)) == right


def test_top5_counts_a_label_anywhere_in_the_five_highest():
    labels = torch.tensor([0, 1, 2])
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 0],    # first: top-1 and top-5
                           [9.0, 8, 7, 6, 5, 4, 0],    # second: top-5 only
                           [9.0, 8, 7, 6, 5, 4, 0]])   # third: top-5 only
    logits[2, 2] = -1.0                                 # ... unless it falls out of the five
    metrics = classification_metrics(logits, labels)
    assert metrics["top1"] == 1 / 3 and metrics["top5"] == 2 / 3
    assert metrics["confusion"][0][0] == 1 and metrics["confusion"][1][0] == 1 and metrics["confusion"][2][0] == 1
