"""Linear probe: multinomial logistic regression on frozen features.

Features are standardised by the training split's mean and standard deviation. For each
weight decay in WEIGHT_DECAYS the model minimises, full-batch with L-BFGS in float64,

    mean cross-entropy + weight_decay / 2 * ||W||^2          (the bias is not penalised)

which is scikit-learn's LogisticRegression with C = 1 / (weight_decay * n_train). The weight
decay with the best validation accuracy is kept (ties go to the stronger decay); its model
reports validation and test accuracy. Decays are tried from strong to weak, each starting
from the previous solution, which keeps the weakly regularised fits cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitkit.errors import DataError

WEIGHT_DECAYS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 300, init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 tolerance: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (K, F), b (K,)) minimising mean cross-entropy + weight_decay/2 ||W||^2 on (x, y).

    Stops after `max_iter` L-BFGS iterations or when no gradient entry exceeds `tolerance`."""
    x = x.double()
    if init is None:
        w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
        b = torch.zeros(num_classes, dtype=torch.float64)
    else:
        w, b = (t.detach().clone().double() for t in init)
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=tolerance, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    if not len(y):
        return float("nan")
    # The exact ratio of counts, as every accuracy vitkit reports.
    return int(((x.double() @ w.T + b).argmax(dim=1) == y).sum()) / len(y)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
                 val_y: torch.Tensor, test_x: torch.Tensor | None = None,
                 test_y: torch.Tensor | None = None, num_classes: int | None = None,
                 weight_decays: tuple[float, ...] = WEIGHT_DECAYS, max_iter: int = 300) -> dict:
    """Fit on the training features, choose the weight decay on validation, report accuracies.

    Returns {"weight_decay", "val_accuracy", "test_accuracy" (None without test data),
    "train_accuracy", "val_accuracy_per_weight_decay": {decay: accuracy}}.
    """
    if not len(val_y):
        raise DataError("the linear probe needs a non-empty validation split to choose the weight decay")
    train_y, val_y = train_y.long(), val_y.long()
    if num_classes is None:
        num_classes = int(max(train_y.max(), val_y.max())) + 1
    mean = train_x.double().mean(dim=0, keepdim=True)
    std = train_x.double().std(dim=0, unbiased=False, keepdim=True) + 1e-6
    scale = lambda a: (a.double() - mean) / std  # noqa: E731
    xs, xv = scale(train_x), scale(val_x)
    per_decay, best, params = {}, None, None
    for decay in sorted(weight_decays, reverse=True):
        params = fit_logistic(xs, train_y, num_classes, decay, max_iter, init=params)
        acc = _accuracy(*params, xv, val_y)
        per_decay[decay] = acc
        if best is None or acc > best[1]:
            best = (decay, acc, params)
    decay, val_acc, (w, b) = best
    test_acc = None
    if test_x is not None and test_y is not None:
        test_acc = _accuracy(w, b, scale(test_x), test_y.long())
    return {"weight_decay": decay, "val_accuracy": val_acc, "test_accuracy": test_acc,
            "train_accuracy": _accuracy(w, b, xs, train_y),
            "val_accuracy_per_weight_decay": per_decay, "num_classes": num_classes}
