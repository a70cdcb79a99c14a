"""The stratified split: deterministic, stratified, disjoint, covering every index."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.data import stratified_split


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=200), st.floats(0, 0.45), st.floats(0, 0.45),
       st.integers(0, 2**32 - 1))
def test_parts_are_disjoint_cover_everything_and_repeat_for_a_seed(labels, val, test, seed):
    labels = np.array(labels)
    parts = stratified_split(labels, (val, test), seed)
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))
    again = stratified_split(labels, (val, test), seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_each_class_is_split_in_proportion():
    labels = np.repeat(np.arange(4), [100, 50, 20, 10])
    val, test, train = stratified_split(labels, (0.1, 0.2), seed=7)
    assert np.bincount(labels[val]).tolist() == [10, 5, 2, 1]
    assert np.bincount(labels[test]).tolist() == [20, 10, 4, 2]
    assert np.bincount(labels[train]).tolist() == [70, 35, 14, 7]


def test_different_seeds_choose_different_images():
    labels = np.repeat(np.arange(3), 30)
    assert not np.array_equal(stratified_split(labels, (0.2,), 0)[0], stratified_split(labels, (0.2,), 1)[0])
