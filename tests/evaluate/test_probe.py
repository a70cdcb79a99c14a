"""Linear probe: scikit-learn's LogisticRegression is the oracle (test-only dependency)."""

import numpy as np
import pytest
import sklearn.linear_model as sklearn_linear
import torch

from vitkit.errors import DataError
from vitkit.evaluate.probe import fit_logistic, linear_probe


def _blobs(n=300, dim=6, classes=3, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    return torch.tensor(centres[y] + rng.normal(size=(n, dim))), torch.tensor(y)


@pytest.mark.parametrize("weight_decay", [1e-1, 1e-3])
def test_fit_matches_sklearn_logistic_regression(weight_decay):
    x, y = _blobs()
    w, b = fit_logistic(x, y, 3, weight_decay, max_iter=1000, tolerance=1e-10)
    oracle = sklearn_linear.LogisticRegression(C=1.0 / (weight_decay * len(y)), tol=1e-12, max_iter=10000)
    oracle.fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), oracle.coef_, atol=2e-4, rtol=1e-3)
    ours = torch.softmax(x @ w.T + b, dim=1).numpy()
    np.testing.assert_allclose(ours, oracle.predict_proba(x.numpy()), atol=1e-5)


def test_probe_accuracy_matches_sklearn_with_the_chosen_decay():
    x, y = _blobs(n=600, seed=1, spread=1.0)
    tr, va, te = slice(0, 300), slice(300, 450), slice(450, 600)
    result = linear_probe(x[tr], y[tr], x[va], y[va], x[te], y[te])
    mean, std = x[tr].mean(0), x[tr].std(0, unbiased=False) + 1e-6
    oracle = sklearn_linear.LogisticRegression(C=1.0 / (result["weight_decay"] * 300), tol=1e-12, max_iter=10000)
    oracle.fit(((x[tr] - mean) / std).numpy(), y[tr].numpy())
    assert result["test_accuracy"] == pytest.approx(oracle.score(((x[te] - mean) / std).numpy(), y[te].numpy()))
    assert result["val_accuracy"] == max(result["val_accuracy_per_weight_decay"].values())
    assert 0.5 < result["test_accuracy"] <= 1.0
    # Exact ratios of counts: k / 150 of the test and validation images.
    for accuracy in (result["test_accuracy"], *result["val_accuracy_per_weight_decay"].values()):
        assert accuracy == round(accuracy * 150) / 150


def test_probe_needs_validation_data():
    x, y = _blobs(n=20)
    with pytest.raises(DataError):
        linear_probe(x, y, x[:0], y[:0])
