"""Mean attention distance on attention with known answers."""

import itertools
import math

import torch

from vitkit.analysis.attention_distance import mean_attention_distance, patch_distances


def _average_pairwise_distance(gh, gw, stride):
    cells = list(itertools.product(range(gh), range(gw)))
    total = sum(math.dist(a, b) for a in cells for b in cells)
    return stride * total / len(cells) ** 2


def test_patch_distances_in_pixels():
    d = patch_distances((2, 3), stride=16)
    assert d.shape == (6, 6)
    assert d[0, 1] == 16 and d[0, 3] == 16 and d[0, 5] == 16 * math.sqrt(5)


def test_attending_to_itself_is_distance_zero():
    t, prefix = 1 + 12, 1
    eye = torch.eye(t).expand(2, 3, t, t)
    mad = mean_attention_distance([eye, eye], prefix, (3, 4), stride=8)
    assert mad.shape == (2, 3)
    assert torch.all(mad == 0)


def test_uniform_attention_is_the_average_pairwise_patch_distance():
    grid, stride = (3, 4), 8
    for prefix in (0, 1, 2):
        t = prefix + 12
        uniform = torch.full((1, 2, t, t), 1.0 / t)
        mad = mean_attention_distance([uniform], prefix, grid, stride)
        # prefix keys are dropped and the patch weights renormalised: still uniform over patches
        assert torch.allclose(mad, torch.full((1, 2), _average_pairwise_distance(*grid, stride)))


def test_attending_to_the_right_neighbour_is_one_stride():
    gh, gw, stride = 2, 3, 16
    n = gh * gw
    a = torch.zeros(n, n)
    for i in range(n):
        r, c = divmod(i, gw)
        a[i, r * gw + (c + 1) % gw] = 1.0  # wraps around: two columns back for the last column
    mad = mean_attention_distance([a.expand(1, 1, n, n)], 0, (gh, gw), stride)
    assert torch.allclose(mad, torch.tensor([[stride * (2 * 1 + 2) / 3]]))
