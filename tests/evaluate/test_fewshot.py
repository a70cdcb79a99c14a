"""Few-shot linear evaluation: the closed form, leave-one-out selection, separable data."""

import numpy as np
import pytest
import torch

from vitkit.errors import DataError
from vitkit.evaluate.fewshot import LAMBDAS, RidgeSolution, fewshot_evaluate


def _separable(num_classes=5, per_class=40, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(num_classes, dim)
    y = np.repeat(np.arange(num_classes), per_class)
    x = centres[y] + rng.normal(scale=0.5, size=(len(y), dim))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_ridge_weights_are_the_regularised_normal_equations():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 7)), rng.choice([-1.0, 1.0], size=(12, 3))
    for lam in (2.0**-10, 1.0, 2.0**10):
        expected = np.linalg.solve(x.T @ x + lam * np.eye(7), x.T @ y)
        np.testing.assert_allclose(RidgeSolution(x, y).weights(lam), expected, rtol=1e-8, atol=1e-10)


def test_leave_one_out_matches_refitting_without_each_row():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 4)), rng.choice([-1.0, 1.0], size=(10, 3))
    lam = 0.3
    loo = RidgeSolution(x, y).leave_one_out(lam)
    for i in range(10):
        keep = np.arange(10) != i
        refit = RidgeSolution(x[keep], y[keep]).predict(x[i:i + 1], lam)
        np.testing.assert_allclose(loo[i], refit[0], rtol=1e-8, atol=1e-10)


def test_linearly_separable_features_give_full_accuracy():
    x, y = _separable()
    test_x, test_y = _separable(seed=1)
    result = fewshot_evaluate(x, y, test_x, test_y, shots=(1, 5, 10), repeats=3)
    for k in (1, 5, 10):
        assert result["shots"][k]["mean"] == 1.0
        assert result["shots"][k]["std"] == 0.0
        assert len(result["shots"][k]["accuracies"]) == 3
        assert all(lam in LAMBDAS for lam in result["shots"][k]["lambdas"])


def test_random_labels_give_chance_accuracy_and_draws_differ():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(400, 8)))
    y = torch.tensor(rng.integers(0, 4, size=400))
    result = fewshot_evaluate(x[:200], y[:200], x[200:], y[200:], shots=(5,), repeats=6, seed=0)
    assert abs(result["shots"][5]["mean"] - 0.25) < 0.1
    assert result["shots"][5]["std"] > 0
    # Each draw's accuracy is the exact ratio k / 200 of its right answers.
    assert all(a == round(a * 200) / 200 for a in result["shots"][5]["accuracies"])


def test_same_seed_same_draws():
    x, y = _separable()
    a = fewshot_evaluate(x, y, x, y, shots=(2,), repeats=2, seed=7)
    b = fewshot_evaluate(x, y, x, y, shots=(2,), repeats=2, seed=7)
    assert a == b


def test_too_few_images_for_the_shots_is_a_user_error():
    x, y = _separable(per_class=3)
    with pytest.raises(DataError, match="fewer than 5 shots"):
        fewshot_evaluate(x, y, x, y, shots=(5,), repeats=1)
