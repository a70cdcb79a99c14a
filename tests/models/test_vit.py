"""The ViT model: every option gives the right shapes, trainable parameters and known counts."""

import math

import pytest
import torch

import vitkit
from vitkit.errors import ConfigError
from vitkit.models import count_parameters, forward_flops
from vitkit.models.config import ModelConfig

TINY = dict(image_size=16, patch_size=4, in_chans=3, num_classes=5, width=32, depth=2, num_heads=2, mlp_dim=64)


def tiny(**overrides):
    torch.manual_seed(0)
    return vitkit.create_model("custom", **{**TINY, **overrides})


# Reference parameter counts (timm / the paper's implementations, 224 px, 1000 classes).
@pytest.mark.parametrize("name, params", [
    ("vit_ti16", 5_717_416),
    ("vit_s16", 22_050_664),
    ("vit_b16", 86_567_656),
    ("vit_b32", 88_224_232),
    ("vit_l16", 304_326_632),
    ("vit_h14", 632_045_800),
    ("vit_r26_s32", 36_431_912),
])
def test_preset_parameter_counts_match_reference_implementations(name, params):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert count_parameters(model) == params


def test_vit_b16_forward_flops_match_the_known_17_6_gmacs():
    gflops = forward_flops(vitkit.models.preset_config("vit_b16")) / 1e9
    assert gflops == pytest.approx(35.1, abs=0.1)


def test_presets_are_listed_and_unknown_names_are_refused():
    names = vitkit.list_models()
    for expected in ["vit_ti16", "vit_s16", "vit_s32", "vit_b16", "vit_b32", "vit_b8", "vit_l16",
                     "vit_l32", "vit_h14", "vit_r26_s32", "vit_r50_b16"]:
        assert expected in names
    with pytest.raises(ConfigError, match="unknown model"):
        vitkit.create_model("vit_zz99")


VARIANTS = [
    dict(),
    dict(pool="gap"),
    dict(pool="map"),
    dict(posemb="none"),
    dict(posemb="learned2d"),
    dict(posemb="sincos2d"),
    dict(posemb="relative"),
    dict(posemb="learned1d", posemb_where="every_layer"),
    dict(posemb="learned1d", posemb_where="every_layer_shared"),
    dict(posemb="learned2d", posemb_where="every_layer"),
    dict(posemb="learned2d", posemb_where="every_layer_shared"),
    dict(posemb="sincos2d", posemb_where="every_layer_shared"),
    dict(posemb_class_slot=False),
    dict(representation_size=24),
    dict(distill_token=True),
    dict(distill_token=True, pool="gap"),
    dict(act="gelu_tanh", norm_eps=1e-12, qkv_bias=False),
    dict(dropout=0.1, attn_dropout=0.1, drop_path=0.1),
    dict(image_size=(16, 24)),
    dict(in_chans=1),
    dict(num_classes=0),
    dict(stem="resnet", resnet_layers=(1, 1), resnet_width=32, patch_size=1, image_size=32),
    dict(stem="resnet", resnet_layers=(1,), resnet_width=32, patch_size=1, image_size=16, depth=0, pool="gap"),
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_every_variant_runs_and_every_parameter_gets_a_gradient(options):
    model = tiny(**options)
    cfg = model.config
    h, w = cfg.image_size
    x = torch.randn(3, cfg.in_chans, h, w)
    model.train()
    out = model(x)
    expected = cfg.num_classes or model.num_features
    assert out.shape == (3, expected)
    # Zero-initialised heads (and the ResNet's zero-initialised last norm of each unit) pass no
    # gradient at initialisation; perturb them first.
    for head in (model.head, model.head_dist):
        if isinstance(head, torch.nn.Linear):
            torch.nn.init.normal_(head.weight, std=0.1)
    for name, module in model.named_modules():
        if name.endswith("gn3"):
            torch.nn.init.ones_(module.weight)
    model(x).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_forward_intermediates_agree_with_forward_and_expose_attention():
    model = tiny(distill_token=True).eval()
    x = torch.randn(2, 3, 16, 16)
    out = model.forward_intermediates(x, attention=True)
    assert torch.allclose(out["logits"], model(x), atol=1e-5)
    t = 2 + 16
    assert out["stem"].shape == (2, 16, 32)
    assert len(out["blocks"]) == 2 and out["blocks"][0].shape == (2, t, 32)
    assert len(out["attention"]) == 2 and out["attention"][0].shape == (2, 2, t, t)
    assert torch.allclose(out["attention"][0].sum(-1), torch.ones(2, 2, t), atol=1e-5)
    assert out["pre_logits"].shape == (2, 32)
    assert torch.allclose((out["logits_cls"] + out["logits_dist"]) / 2, out["logits"], atol=1e-6)
    assert model.forward_intermediates(x)["attention"] == []


def test_relative_attention_matches_the_explicit_path():
    model = tiny(posemb="relative").eval()
    for block in model.blocks:
        torch.nn.init.normal_(block.attn.relative.table, std=1.0)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x), model.forward_intermediates(x, attention=True)["logits"], atol=1e-5)


def test_gap_pools_patch_tokens_only_and_token_pool_reads_the_class_token():
    model = tiny(pool="gap").eval()
    x = torch.randn(2, 3, 16, 16)
    out = model.forward_intermediates(x)
    assert torch.allclose(out["pre_logits"], out["encoder"].mean(dim=1), atol=1e-6)
    model = tiny(pool="token").eval()
    out = model.forward_intermediates(x)
    assert torch.allclose(out["pre_logits"], out["encoder"][:, 0], atol=1e-6)


def test_sincos2d_embedding_has_big_vision_layout():
    from vitkit.models.posemb import sincos2d

    emb = sincos2d((2, 3), 8)
    # omega = 1 / 10000^(i / (D/4 - 1)) for i in 0..1 -> [1, 1e-4]; row 4 is y=1, x=1.
    omega = torch.tensor([1.0, 1e-4])
    x, y = 1.0, 1.0
    expected = torch.cat([torch.sin(x * omega), torch.cos(x * omega), torch.sin(y * omega), torch.cos(y * omega)])
    assert torch.allclose(emb[4], expected, atol=1e-6)
    assert torch.allclose(emb[0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))


def test_learned2d_concatenates_row_and_column_halves():
    model = tiny(posemb="learned2d", posemb_class_slot=False)
    pe = model.pos_embed
    emb = pe.patch_embedding((4, 4))
    assert torch.equal(emb[1 * 4 + 2], torch.cat([pe.row[1], pe.col[2]]))


def test_every_layer_placement_adds_a_separate_embedding_before_each_block():
    model = tiny(posemb="learned1d", posemb_where="every_layer").eval()
    torch.nn.init.normal_(model.head.weight)
    assert len(model.layer_pos_embeds) == model.config.depth
    x = torch.randn(1, 3, 16, 16)
    base = model(x)
    with torch.no_grad():
        model.layer_pos_embeds[1].weight.add_(torch.randn_like(model.layer_pos_embeds[1].weight))
    assert not torch.allclose(model(x), base)


def test_wrong_input_size_is_a_clear_error_and_dynamic_size_resamples():
    model = tiny().eval()
    with pytest.raises(ConfigError, match="does not match the model's image size"):
        model(torch.randn(1, 3, 24, 24))
    dyn = tiny(dynamic_image_size=True).eval()
    dyn.load_state_dict(model.state_dict())
    assert dyn(torch.randn(1, 3, 24, 32)).shape == (1, 5)
    x = torch.randn(1, 3, 16, 16)
    assert torch.allclose(dyn(x), model(x))


@pytest.mark.parametrize("bad, message", [
    (dict(pool="avg"), "pool"),
    (dict(posemb="learned"), "posemb"),
    (dict(posemb="none", posemb_where="every_layer"), "cannot be placed"),
    (dict(posemb="relative", posemb_where="every_layer_shared"), "cannot be placed"),
    (dict(width=30, num_heads=4), "divisible"),
    (dict(image_size=18), "multiple"),
    (dict(dropout=1.5), "dropout"),
    (dict(stem="resnet"), "resnet_layers"),
    (dict(num_classes=-1), "num_classes"),
])
def test_nonsense_options_are_refused_with_a_clear_message(bad, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**bad)


def test_nonsense_values_are_value_errors_too():
    from vitkit.errors import ConfigValueError

    for bad in (dict(pool="avg"), dict(image_size=18), dict(num_classes=-1), dict(dropout=1.5)):
        with pytest.raises(ConfigValueError):
            tiny(**bad)
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(width=30, num_heads=4)


@pytest.mark.parametrize("bad", [dict(width="64"), dict(depth=2.0), dict(num_heads=True), dict(image_size="ab"),
                                 dict(image_size=(16.0, 16)), dict(resnet_layers=("3",)), dict(pool=3),
                                 dict(dropout="0.1"), dict(class_names=(1, 2, 3, 4, 5))])
def test_regression_options_of_the_wrong_type_are_type_errors(bad):
    # create_model(width="64") was refused by name, but ModelConfig(width="64") (and reset_head,
    # replace) reached torch: "empty(): argument 'size' ... must be tuple of ints, not str"; "ab"
    # as an image size a ValueError from int().
    from vitkit.errors import ConfigTypeError

    name = next(iter(bad))
    with pytest.raises(ConfigTypeError, match=f"model option {name} must be"):
        tiny(**bad)
    with pytest.raises(TypeError, match=f"model option {name} must be"):
        ModelConfig(**{**TINY, **bad})
    with pytest.raises(TypeError, match=f"model option {name} must be"):
        tiny().config.replace(**bad)


@pytest.mark.parametrize("make, error, message", [
    # Each raised torch's own RuntimeError from inside the patch convolution.
    (lambda: torch.zeros(2, 3, 16, 16, dtype=torch.uint8), TypeError,
     "expected a float tensor of normalised pixels, got torch.uint8; vitkit.evaluate.prepare_images"),
    (lambda: torch.zeros(2, 3, 16, 16, dtype=torch.int64), TypeError, "got torch.int64"),
    (lambda: torch.zeros(2, 3, 16, 16).numpy(), TypeError, "got ndarray"),
    (lambda: torch.zeros(1, 3, 2, 2), ValueError, r"input 2x2 is smaller than one patch \(4x4 pixels\)"),
    (lambda: torch.zeros(3, 16, 16), ValueError, r"expected input of shape \(N, 3, H, W\), got \(3, 16, 16\)"),
    (lambda: torch.zeros(2, 1, 16, 16), ValueError, r"got \(2, 1, 16, 16\)"),
])
def test_regression_inputs_the_model_cannot_take(make, error, message):
    from vitkit.errors import VitkitError

    for model in (tiny().eval(), tiny(dynamic_image_size=True).eval()):
        with pytest.raises(error, match=message) as refused:
            model(make())
        assert isinstance(refused.value, VitkitError)
        with pytest.raises(error, match=message):
            model.forward_intermediates(make())


def test_config_round_trips_through_json():
    cfg = ModelConfig(**{**TINY, "image_size": (16, 24), "posemb": "learned2d", "class_names": ("a", "b", "c", "d", "e"),
                         "input_mean": (0.1, 0.2, 0.3), "stem": "resnet", "resnet_layers": (1, 2), "patch_size": 1,
                         "representation_size": 7})
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown model option"):
        ModelConfig.from_dict({"widht": 3})


def test_head_is_zero_initialised_and_reset_head_changes_classes():
    model = tiny()
    assert model.head.weight.abs().sum() == 0 and model.head.bias.abs().sum() == 0
    model.reset_head(7)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 7)
    assert model.config.num_classes == 7


def test_no_weight_decay_covers_norms_biases_tokens_and_embeddings():
    model = tiny(distill_token=True)
    exempt = model.no_weight_decay()
    assert "cls_token" in exempt and "dist_token" in exempt and "pos_embed.weight" in exempt
    assert "blocks.0.norm1.weight" in exempt and "blocks.0.attn.qkv.bias" in exempt
    assert "blocks.0.attn.qkv.weight" not in exempt and "head.weight" not in exempt


def test_stochastic_depth_drops_whole_samples_only_in_training():
    from vitkit.models.vit import DropPath

    drop = DropPath(0.5)
    x = torch.ones(1000, 4, 3)
    torch.manual_seed(0)
    y = drop.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert math.isclose(y.mean().item(), 1.0, abs_tol=0.1)
    assert torch.equal(drop.eval()(x), x)
