"""Attention rollout on attention with known answers."""

import torch

from vitkit.analysis.rollout import attention_rollout, rollout_maps


def _identity(layers=3, b=2, heads=2, t=5):
    return [torch.eye(t).expand(b, heads, t, t).clone() for _ in range(layers)]


def _uniform(layers=3, b=2, heads=2, t=5):
    return [torch.full((b, heads, t, t), 1.0 / t) for _ in range(layers)]


def test_identity_attention_rolls_out_to_the_identity():
    rollout = attention_rollout(_identity())
    assert torch.allclose(rollout, torch.eye(5).expand(2, 5, 5).double())


def test_identity_attention_class_row_is_one_hot_on_itself_so_zero_on_patches():
    maps = rollout_maps(_identity(t=5), num_prefix=1, grid=(2, 2), pool="token")
    assert maps.shape == (2, 2, 2)
    assert torch.all(maps == 0)


def test_identity_attention_mean_patch_row_is_uniform_over_patches():
    maps = rollout_maps(_identity(t=4), num_prefix=0, grid=(2, 2), pool="gap")
    assert torch.allclose(maps, torch.full((2, 2, 2), 0.25))


def test_uniform_attention_gives_a_uniform_map_with_the_closed_form_value():
    # ((U + I) / 2)^L = I / 2^L + (1 - 2^-L) U, U the uniform matrix: off the diagonal every
    # entry is (1 - 2^-L) / T, so the class row is uniform over the patches.
    layers, t = 3, 5
    maps = rollout_maps(_uniform(layers=layers, t=t), num_prefix=1, grid=(2, 2), pool="token")
    assert torch.allclose(maps, torch.full((2, 2, 2), (1 - 2.0**-layers) / t))
    maps = rollout_maps(_uniform(layers=layers, t=4), num_prefix=0, grid=(2, 2), pool="gap")
    assert torch.allclose(maps, torch.full((2, 2, 2), 0.25))


def test_heads_are_averaged_before_the_residual_is_added():
    # Head 0 attends to token 1 only, head 1 to itself: mean = 0.5 (I + e_1 row), + I, renormalised.
    t = 2
    head0 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    head1 = torch.eye(t)
    rollout = attention_rollout([torch.stack([head0, head1])[None]])
    expected = torch.tensor([[1.5, 0.5], [0.0, 2.0]]) / 2
    assert torch.allclose(rollout[0].float(), expected)


def test_layers_multiply_later_layer_on_the_left():
    a = torch.tensor([[[0.2, 0.8], [0.6, 0.4]]]).unsqueeze(1)
    b = torch.tensor([[[0.9, 0.1], [0.3, 0.7]]]).unsqueeze(1)
    norm = lambda m: (m + torch.eye(2)) / (m + torch.eye(2)).sum(-1, keepdim=True)  # noqa: E731
    rollout = attention_rollout([a, b])[0]
    assert torch.allclose(rollout.float(), norm(b[0, 0]) @ norm(a[0, 0]))
