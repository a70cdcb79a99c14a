"""Attention rollout on attention with known answers."""

import pytest
import torch

import vitkit
from vitkit.analysis.rollout import (attention_rollout, map_probe_weights, pooled_patch_weights, rollout_maps,
                                     rollout_queries, rollout_rows)


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


TINY = dict(image_size=8, patch_size=2, in_chans=1, num_classes=3, width=16, depth=1, num_heads=2, mlp_dim=32)


def _random_rollout(b=2, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return attention_rollout([torch.rand(b, 2, t, t, generator=g).softmax(-1) for _ in range(2)])


def test_each_query_reads_its_own_row_over_the_patch_columns():
    rollout = _random_rollout(t=6)  # class, distillation, then a 2 x 2 grid
    maps = {q: rollout_rows(rollout, 2, (2, 2), q) for q in ("class token", "distillation token", "pooled patches")}
    assert torch.allclose(maps["class token"], rollout[:, 0, 2:].reshape(2, 2, 2).float())
    assert torch.allclose(maps["distillation token"], rollout[:, 1, 2:].reshape(2, 2, 2).float())
    assert torch.allclose(maps["pooled patches"], rollout[:, 2:, 2:].mean(dim=1).reshape(2, 2, 2).float())


def test_pooling_weights_weight_the_patch_rows():
    rollout = _random_rollout(t=5)  # class token, then a 2 x 2 grid
    one_hot = torch.tensor([[0.0, 0.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # only the direction counts
    maps = rollout_rows(rollout, 1, (2, 2), "pooled patches", one_hot)
    assert torch.allclose(maps[0].flatten(), rollout[0, 3, 1:].float())
    assert torch.allclose(maps[1].flatten(), rollout[1, 1, 1:].float())
    uniform = rollout_rows(rollout, 1, (2, 2), "pooled patches", torch.ones(2, 4))
    assert torch.allclose(uniform, rollout_rows(rollout, 1, (2, 2), "pooled patches"))


def test_a_query_the_sequence_cannot_have_is_refused():
    with pytest.raises(ValueError, match="class token"):
        rollout_rows(_random_rollout(t=4), 0, (2, 2), "class token")
    with pytest.raises(ValueError, match="queries are"):
        rollout_rows(_random_rollout(t=4), 0, (2, 2), "cls")


def test_queries_follow_the_pooling_and_the_distillation_token():
    def queries(**kw):
        return rollout_queries(vitkit.create_model("custom", **{**TINY, **kw}).config)

    assert queries(pool="token") == ["class token"]
    assert queries(pool="gap") == ["pooled patches"]
    assert queries(pool="map", distill_token=True) == ["pooled patches", "distillation token"]
    assert queries(pool="token", distill_token=True) == ["class token", "distillation token"]


def test_map_probe_weights_are_the_weights_the_map_head_pools_with():
    # Oracle: the head's own output, rebuilt from the weights and its value projection.
    torch.manual_seed(0)
    model = vitkit.create_model("custom", **TINY, pool="map").eval()
    head = model.map_head
    with torch.no_grad():
        head.probe.normal_()
        tokens = torch.randn(3, 16, 16)
        weights = map_probe_weights(head, tokens)
        assert weights.shape == (3, 2, 16) and torch.allclose(weights.sum(-1), torch.ones(3, 2))
        values = head.kv(tokens)[..., 16:].view(3, 16, 2, 8).transpose(1, 2)
        pooled = head.proj((weights.unsqueeze(2) @ values).transpose(1, 2).reshape(3, 1, 16))
        rebuilt = (pooled + head.mlp(head.norm(pooled)))[:, 0]
        assert torch.allclose(rebuilt, head(tokens), atol=1e-6)


def test_pooled_patch_weights_come_from_the_map_probe_and_are_uniform_otherwise():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    gap = vitkit.create_model("custom", **TINY, pool="gap").eval()
    with torch.no_grad():
        assert pooled_patch_weights(gap, gap.forward_intermediates(x)) is None
        model = vitkit.create_model("custom", **TINY, pool="map", distill_token=True).eval()
        out = model.forward_intermediates(x, attention=True)
        weights = pooled_patch_weights(model, out)
        assert torch.allclose(weights, map_probe_weights(model.map_head, out["encoder"][:, 1:]).mean(dim=1))
        maps = rollout_maps(out["attention"], 1, (4, 4), "map", weights)
        expected = (weights.double().unsqueeze(1) @ attention_rollout(out["attention"])[:, 1:, 1:])[:, 0]
        assert torch.allclose(maps, expected.reshape(2, 4, 4).float())


def test_analyze_weights_a_map_models_rollout_by_its_probe(tmp_path):
    from vitkit.analysis import analyze

    torch.manual_seed(0)
    model = vitkit.create_model("custom", **TINY, pool="map").eval()
    with torch.no_grad():
        model.map_head.probe.normal_()
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result = analyze(model, images, tmp_path)
    x = (images.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        out = model.forward_intermediates(x, attention=True)
    expected = rollout_maps(out["attention"], 0, (4, 4), "map", pooled_patch_weights(model, out))
    uniform = rollout_maps(out["attention"], 0, (4, 4), "map")
    assert torch.allclose(torch.tensor(result["rollout"]["maps"]), expected, atol=1e-6)
    assert not torch.allclose(expected, uniform, atol=1e-4)
    assert result["rollout"]["query"] == "patch tokens' rows weighted by the MAP probe's attention"
