"""Principal components of patch filters, and position-embedding similarity."""

import pytest
import torch

import vitkit
from vitkit.analysis.filters import filter_components, filters_for_display, patch_embedding_components
from vitkit.analysis.posemb_similarity import patch_position_embeddings, position_similarity
from vitkit.errors import ConfigError


def test_pca_recovers_the_directions_a_known_embedding_was_built_from():
    # 64 filters, each a mean filter plus a * f1 + b * f2 with var(a) = 9 > var(b) = 1 and
    # f1, f2 orthonormal: the components are f1 then f2, explaining 90% and 10%.
    torch.manual_seed(0)
    c, p = 3, 2
    basis, _ = torch.linalg.qr(torch.randn(c * p * p, 2, dtype=torch.float64))
    f1, f2 = basis[:, 0], basis[:, 1]
    a = torch.tensor([3.0, -3.0] * 32, dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, -1.0, -1.0] * 16, dtype=torch.float64)
    mean_filter = torch.randn(c * p * p, dtype=torch.float64)
    weight = (mean_filter + a[:, None] * f1 + b[:, None] * f2).reshape(64, c, p, p)
    comps, ratio = filter_components(weight, num_components=28)
    assert comps.shape == (12, c, p, p)  # 28 asked, but a 3x2x2 filter has only 12 components
    flat = comps.reshape(len(comps), -1).double()
    assert abs(float(flat[0] @ f1)) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(flat[1] @ f2)) == pytest.approx(1.0, abs=1e-5)
    assert ratio[:2].tolist() == pytest.approx([0.9, 0.1], abs=1e-5)
    assert float(ratio[2:].sum()) == pytest.approx(0.0, abs=1e-6)
    for row in flat[:2]:
        assert row[row.abs().argmax()] > 0


def test_display_images_are_in_unit_range_grey_or_rgb():
    grey = filters_for_display(torch.randn(5, 1, 4, 4))
    rgb = filters_for_display(torch.randn(5, 3, 4, 4))
    assert grey.shape == (5, 4, 4) and rgb.shape == (5, 4, 4, 3)
    for x in (grey, rgb):
        assert x.min() == 0 and x.amax(dim=tuple(range(1, x.dim()))).allclose(torch.ones(5))


def test_hybrid_models_have_no_pixel_filters():
    model = vitkit.create_model("custom", image_size=32, patch_size=1, in_chans=3, num_classes=2, width=32,
                                depth=1, num_heads=2, mlp_dim=32, stem="resnet", resnet_layers=(1,),
                                resnet_width=32)
    with pytest.raises(ConfigError, match="hybrid"):
        patch_embedding_components(model)


def _model(**kw):
    base = dict(image_size=8, patch_size=2, in_chans=1, num_classes=3, width=32, depth=2, num_heads=2,
                mlp_dim=32)
    return vitkit.create_model("custom", **{**base, **kw})


@pytest.mark.parametrize("kind,where", [("learned1d", "stem"), ("learned2d", "stem"),
                                        ("sincos2d", "stem"), ("learned1d", "every_layer"),
                                        ("learned2d", "every_layer_shared")])
def test_similarity_of_every_additive_kind(kind, where):
    model = _model(posemb=kind, posemb_where=where)
    emb, source = patch_position_embeddings(model)
    assert emb.shape == (16, 32)
    sim = position_similarity(emb)
    assert sim.shape == (16, 16)
    assert torch.allclose(sim.diagonal(), torch.ones(16), atol=1e-6)
    assert torch.allclose(sim, sim.T)
    if where == "every_layer":
        assert "layer 0" in source


def test_learned1d_similarity_ignores_the_class_slot():
    model = _model(posemb="learned1d")
    with torch.no_grad():
        model.pos_embed.weight[0, 0] = 100.0  # the class token's slot must not enter
    emb, _ = patch_position_embeddings(model)
    assert torch.equal(emb, model.pos_embed.weight[0, 1:].detach())


def test_learned2d_positions_in_the_same_row_share_half_the_embedding():
    model = _model(posemb="learned2d")
    with torch.no_grad():
        model.pos_embed.col.zero_()
    sim = position_similarity(patch_position_embeddings(model)[0])
    assert torch.allclose(sim[0, 1], torch.tensor(1.0), atol=1e-6)  # same row, columns zeroed


@pytest.mark.parametrize("kind", ["none", "relative"])
def test_kinds_without_an_additive_embedding_are_refused(kind):
    with pytest.raises(ConfigError, match="nothing to compare"):
        patch_position_embeddings(_model(posemb=kind))
