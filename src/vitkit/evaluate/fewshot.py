"""Few-shot linear evaluation (paper section 4, appendix: "few-shot accuracies").

For k shots per class, draw k training images of each class; centre their frozen features on
the mean of those k*K shots and divide by one scalar, their root-mean-square value (so lambda
means the same at any feature scale; one scalar rather than a per-feature standard deviation,
which with one or two shots per class would blow near-constant, uninformative features up
to the size of the informative ones); append a constant 1 (the bias, regularised like the
weights); and solve regularised least squares to {-1, +1}^K targets in closed form:

    W = (X^T X + lambda I)^-1 X^T Y

The prediction is the argmax over the K outputs. lambda comes from LAMBDAS (2^-10 .. 2^10)
and is chosen without touching the test images:

- k >= 2: by exact leave-one-out over the drawn shots (for ridge regression the held-out
  prediction of shot i is (yhat_i - h_ii y_i) / (1 - h_ii), h the hat matrix), i.e. on the
  shots alone; highest leave-one-out accuracy wins, ties go to the lower squared error.
- k == 1: leaving out the only example of a class tells nothing, so lambda is chosen on
  `holdout_per_class` further training images per class that were not drawn as shots (used
  only to pick lambda, never to fit W).

Everything is computed in float64 through one SVD of X, so all lambdas cost one decomposition.
"""

from __future__ import annotations

import numpy as np
import torch

from vitkit.errors import DataError

LAMBDAS = tuple(2.0**i for i in range(-10, 11))


class RidgeSolution:
    """Ridge regression solutions for several lambdas at once, from the SVD of X."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.u, self.s, vt = np.linalg.svd(x, full_matrices=False)
        self.v = vt.T
        self.uty = self.u.T @ y
        self.y = y

    def weights(self, lam: float) -> np.ndarray:
        """W = (X^T X + lam I)^-1 X^T Y."""
        return self.v @ ((self.s / (self.s**2 + lam))[:, None] * self.uty)

    def predict(self, x: np.ndarray, lam: float) -> np.ndarray:
        return x @ self.weights(lam)

    def leave_one_out(self, lam: float) -> np.ndarray:
        """Prediction for each training row by the model fitted without that row."""
        shrink = self.s**2 / (self.s**2 + lam)
        fitted = self.u @ (shrink[:, None] * self.uty)
        leverage = (self.u**2) @ shrink
        return (fitted - leverage[:, None] * self.y) / np.maximum(1.0 - leverage, 1e-12)[:, None]


def _centre_and_scale(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0, keepdims=True)
    scale = np.sqrt(((train - mean) ** 2).mean()) + 1e-12
    with_bias = lambda a: np.concatenate([(a - mean) / scale, np.ones((len(a), 1))], axis=1)  # noqa: E731
    return [with_bias(a) for a in (train, *others)]


def _targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    y = -np.ones((len(labels), num_classes))
    y[np.arange(len(labels)), labels] = 1.0
    return y


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    # The exact ratio of counts, as every accuracy vitkit reports.
    return int((scores.argmax(axis=1) == labels).sum()) / len(labels) if len(labels) else float("nan")


def fewshot_draw(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 shots: int, num_classes: int, rng: np.random.Generator,
                 lambdas: tuple[float, ...] = LAMBDAS, holdout_per_class: int = 5) -> dict:
    """Test accuracy of one random draw of `shots` images per class, and the lambda chosen."""
    chosen, holdout = [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(train_y == c))
        if len(idx) < shots:
            raise DataError(f"class {c} has {len(idx)} training images, fewer than {shots} shots")
        chosen.append(idx[:shots])
        holdout.append(idx[shots:shots + holdout_per_class])
    chosen, holdout = np.concatenate(chosen), np.concatenate(holdout)
    x, hold, test = _centre_and_scale(train_x[chosen], train_x[holdout], test_x)
    y = _targets(train_y[chosen], num_classes)
    ridge = RidgeSolution(x, y)

    def score(lam: float) -> tuple[float, float]:
        if shots >= 2:
            pred, labels, targets = ridge.leave_one_out(lam), train_y[chosen], y
        else:
            pred, labels, targets = ridge.predict(hold, lam), train_y[holdout], _targets(train_y[holdout], num_classes)
        if not len(labels):
            return 0.0, 0.0
        return _accuracy(pred, labels), -float(((pred - targets) ** 2).mean())

    best = max(lambdas, key=score)
    return {"accuracy": _accuracy(ridge.predict(test, best), test_y), "lambda": best}


def fewshot_evaluate(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                     test_y: torch.Tensor, shots=(1, 5, 10, 25), repeats: int = 5, seed: int = 0,
                     num_classes: int | None = None, lambdas: tuple[float, ...] = LAMBDAS,
                     holdout_per_class: int = 5) -> dict:
    """Few-shot accuracy on the test features for every shot count, over `repeats` random draws.

    Returns {"shots": {k: {"mean", "std", "accuracies", "lambdas"}}, "repeats", "seed",
    "num_classes", "num_test"}; std is the sample standard deviation over the draws (0 for one).
    """
    train_x, test_x = (t.double().numpy() for t in (train_x, test_x))
    train_y, test_y = (t.long().numpy() for t in (train_y, test_y))
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
    if repeats < 1:
        raise DataError(f"repeats must be at least 1, got {repeats}")
    results = {}
    for k in shots:
        if k < 1:
            raise DataError(f"shot counts must be positive, got {k}")
        rng = np.random.default_rng([seed, k])
        draws = [fewshot_draw(train_x, train_y, test_x, test_y, k, num_classes, rng, lambdas,
                              holdout_per_class) for _ in range(repeats)]
        accs = np.array([d["accuracy"] for d in draws])
        results[int(k)] = {
            "mean": float(accs.mean()),
            "std": float(accs.std(ddof=1)) if repeats > 1 else 0.0,
            "accuracies": accs.tolist(),
            "lambdas": [d["lambda"] for d in draws],
        }
    return {"shots": results, "repeats": repeats, "seed": seed, "num_classes": num_classes,
            "num_test": int(len(test_y))}
