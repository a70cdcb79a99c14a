"""`analyze` end to end on tiny models: files, JSON shapes, and a model with known attention."""

import itertools
import json
import math

import pytest
import torch

import vitkit
from vitkit.analysis import analyze


def _model(**kw):
    base = dict(image_size=8, patch_size=2, in_chans=1, num_classes=10, width=32, depth=2, num_heads=2,
                mlp_dim=64)
    return vitkit.create_model("custom", **{**base, **kw})


def _images(n=5, c=1, size=8, seed=0):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_writes_every_picture_and_the_numbers_behind_them(tmp_path):
    result = analyze(_model(), _images(), tmp_path)
    for name in ("filters.png", "posemb_similarity.png", "attention_distance.png", "rollout.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((tmp_path / "analysis.json").read_text())
    assert stored == json.loads(json.dumps(result))
    mad = stored["mean_attention_distance"]
    assert len(mad) == 2 and all(len(layer) == 2 for layer in mad)
    assert all(isinstance(v, float) and 0 <= v <= 8 * math.sqrt(2) for layer in mad for v in layer)
    assert len(stored["posemb_similarity"]["similarity"]) == 16
    assert stored["filters"]["num_components"] == 4  # a 1x2x2 filter has 4 components
    assert stored["rollout"]["query"] == "class token's row"
    assert torch.tensor(stored["rollout"]["maps"]).shape == (5, 4, 4)
    assert stored["num_images"] == 5
    assert not list(tmp_path.glob(".*.tmp"))


def test_zero_query_and_key_weights_give_uniform_attention_with_known_numbers(tmp_path):
    # q = k = 0 makes every attention row uniform over the T tokens, in every head and layer.
    model = _model(pool="gap", depth=3)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:64] = 0
            block.attn.qkv.bias[:64] = 0
    result = analyze(model, _images(n=3), tmp_path)
    cells = list(itertools.product(range(4), range(4)))
    expected = 2 * sum(math.dist(a, b) for a in cells for b in cells) / 16**2  # stride 2 pixels
    assert torch.allclose(torch.tensor(result["mean_attention_distance"]), torch.full((3, 2), expected))
    assert torch.allclose(torch.tensor(result["rollout"]["maps"]), torch.full((3, 4, 4), 1 / 16))
    assert result["rollout"]["query"] == "mean of the patch tokens' rows"


def test_images_of_another_size_and_colour_are_resized(tmp_path):
    result = analyze(_model(), _images(n=2, c=3, size=20), tmp_path)
    assert result["num_images"] == 2 and len(result["rollout"]["maps"]) == 2


def test_a_list_of_differently_sized_images(tmp_path):
    images = [_images(n=1, size=s)[0] for s in (8, 12, 30)]
    assert analyze(_model(), images, tmp_path, rollout_images=2)["num_images"] == 3


@pytest.mark.parametrize("kind", ["relative", "none"])
def test_no_additive_embedding_skips_that_picture_with_a_note(tmp_path, kind):
    result = analyze(_model(posemb=kind), _images(n=2), tmp_path)
    assert result["posemb_similarity"] is None
    assert not (tmp_path / "posemb_similarity.png").exists()
    assert any("posemb_similarity.png skipped" in note for note in result["notes"])
    assert len(result["mean_attention_distance"]) == 2


def test_hybrid_skips_the_filters_with_a_note(tmp_path):
    model = vitkit.create_model("custom", image_size=32, patch_size=1, in_chans=3, num_classes=2, width=32,
                                depth=1, num_heads=2, mlp_dim=32, stem="resnet", resnet_layers=(1,),
                                resnet_width=32)
    result = analyze(model, _images(n=2, c=3, size=32), tmp_path)
    assert result["filters"] is None and any("filters.png skipped" in n for n in result["notes"])
    assert result["model"]["stem_stride"] == 4
    assert (tmp_path / "rollout.png").exists()


def test_a_model_without_attention_layers_gets_notes_not_pictures(tmp_path):
    resnet = vitkit.create_model("custom", image_size=32, patch_size=1, in_chans=3, num_classes=2, width=32,
                                 depth=0, num_heads=2, mlp_dim=32, stem="resnet", resnet_layers=(1,),
                                 resnet_width=32, pool="gap", posemb="none")
    result = analyze(resnet, _images(n=2, c=3, size=32), tmp_path)
    assert result["files"] == [] and result["mean_attention_distance"] is None and result["rollout"] is None
    assert len(result["notes"]) == 3
    assert json.loads((tmp_path / "analysis.json").read_text())["notes"] == result["notes"]


def test_small_batches_give_the_same_numbers(tmp_path):
    model, images = _model(), _images(n=7)
    whole = analyze(model, images, tmp_path / "a", batch_size=32)
    pieces = analyze(model, images, tmp_path / "b", batch_size=2)
    assert torch.allclose(torch.tensor(whole["mean_attention_distance"]),
                          torch.tensor(pieces["mean_attention_distance"]), atol=1e-5)
    assert torch.allclose(torch.tensor(whole["rollout"]["maps"]), torch.tensor(pieces["rollout"]["maps"]))


def test_no_rollout_images_asked_for(tmp_path):
    result = analyze(_model(), _images(n=2), tmp_path, rollout_images=0)
    assert result["rollout"] is None and "rollout.png" not in result["files"]
    assert len(result["mean_attention_distance"]) == 2


VARIANTS = [dict(pool="map"), dict(distill_token=True), dict(distill_token=True, pool="gap"),
            dict(posemb="sincos2d", posemb_where="every_layer_shared", posemb_class_slot=False),
            dict(posemb="learned1d", posemb_where="every_layer", posemb_class_slot=False)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_gives_maps_over_the_patch_grid(tmp_path, variant):
    result = analyze(_model(**variant), _images(n=3), tmp_path)
    assert torch.tensor(result["rollout"]["maps"]).shape == (3, 4, 4)
    assert torch.tensor(result["mean_attention_distance"]).shape == (2, 2)
    assert torch.tensor(result["posemb_similarity"]["similarity"]).shape == (16, 16)
    expected = {"token": "class token's row", "gap": "mean of the patch tokens' rows",
                "map": "patch tokens' rows weighted by the MAP probe's attention"}[variant.get("pool", "token")]
    assert result["rollout"]["query"] == expected


def test_the_attention_distance_plot_draws_the_uniform_attention_reference_and_one_marker_per_head(
        tmp_path, monkeypatch):
    from vitkit.analysis import report
    from vitkit.analysis.attention_distance import uniform_attention_distance

    figures = []

    def keep(*args, **kwargs):
        figures.append(plot(*args, **kwargs))
        return figures[-1]

    plot = report.plot_attention_distance
    monkeypatch.setattr(report, "plot_attention_distance", keep)
    model = _model(image_size=(8, 12), num_heads=4, depth=3)  # a 4 x 6 grid, patches 2 pixels apart
    result = analyze(model, _images(n=3, size=12), tmp_path)
    cells = list(itertools.product(range(4), range(6)))
    expected = 2 * sum(math.dist(a, b) for a in cells for b in cells) / 24**2
    assert uniform_attention_distance((4, 6), 2) == pytest.approx(expected, rel=1e-12)
    assert result["uniform_attention_distance"] == pytest.approx(expected, rel=1e-12)

    ax = figures[0].axes[0]
    reference = [line for line in ax.get_lines() if line.get_label().startswith("uniform attention")]
    assert len(reference) == 1 and list(reference[0].get_ydata()) == pytest.approx([expected, expected])
    assert reference[0].get_label() == f"uniform attention ({expected:.1f} px)"
    heads = ax.collections
    assert [c.get_label() for c in heads] == ["head 1", "head 2", "head 3", "head 4"]
    # Each head its own shape and colour; its points are its distances, one per layer.
    assert len({c.get_paths()[0].vertices.tobytes() for c in heads}) == 4
    assert len({tuple(c.get_facecolor()[0]) for c in heads}) == 4
    for h, c in enumerate(heads):
        assert c.get_offsets()[:, 1].tolist() == pytest.approx([layer[h] for layer in result["mean_attention_distance"]])
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1].startswith("uniform attention")


def test_rollout_examples_span_the_classes_and_name_them(tmp_path, monkeypatch):
    from vitkit.analysis import report

    shown = {}
    plot = report.plot_rollout
    monkeypatch.setattr(report, "plot_rollout", lambda images, maps, path, title, captions=None: (
        shown.update(images=images, captions=captions), plot(images, maps, path, title, captions))[1])
    # Fixed weights: on the images shown the top class leads by 0.8 or more (an argmax no CPU
    # changes), right on one image and wrong on four (both kinds of caption).
    torch.manual_seed(0)
    model = _model(num_classes=3, class_names=("ant", "bee", "cat"))
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight)
    images = _images(n=10)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    result = analyze(model, images, tmp_path / "a", rollout_images=5, labels=labels, batch_size=4)
    # The first of each class, then the second of each.
    assert result["rollout"]["images"] == [0, 3, 5, 1, 4]
    assert result["rollout"]["labels"] == ["ant", "bee", "cat", "ant", "bee"]
    with torch.no_grad():
        predicted = model(report.normalize(report.resize_images(images, model.config), model.config)).argmax(1)
    names = ["ant", "bee", "cat"]
    assert result["rollout"]["predicted"] == [names[int(predicted[i])] for i in (0, 3, 5, 1, 4)]
    assert shown["captions"] == [t if t == p else f"{t} (model: {p})"
                                 for t, p in zip(result["rollout"]["labels"], result["rollout"]["predicted"])]
    assert sum("(model: " in caption for caption in shown["captions"]) == 4
    assert torch.equal(shown["images"], report.resize_images(images, model.config)[[0, 3, 5, 1, 4]])
    # Each map is the one the image gets on its own.
    alone = analyze(model, images[[0, 3, 5, 1, 4]], tmp_path / "b", rollout_images=5)
    assert torch.allclose(torch.tensor(result["rollout"]["maps"]), torch.tensor(alone["rollout"]["maps"]), atol=1e-6)
    # Without labels: the first images, no captions.
    assert alone["rollout"]["images"] == [0, 1, 2, 3, 4] and "labels" not in alone["rollout"]


def test_batches_shrink_to_keep_their_attention_weights_near_a_gibibyte():
    from vitkit.analysis.report import attention_batch_size
    from vitkit.models.presets import preset_config

    # ViT-L/16 at 384: 24 layers x 16 heads x 577^2 weights x 4 bytes = 0.51 GB an image.
    assert attention_batch_size(preset_config("vit_l16", image_size=384), 32) == 2
    # ViT-H/14 at 518: 3.8 GB for one image, which still runs.
    assert attention_batch_size(preset_config("vit_h14", image_size=518), 32) == 1
    assert attention_batch_size(_model().config, 32) == 32
