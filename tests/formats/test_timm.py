"""timm state dicts (.pth through weights_only, .safetensors) load with timm's numerics and
export back under timm's names."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.errors import CheckpointError
from vitkit.formats import convert

from .conftest import rel_diff
from .timm_reference import forward, make_state

TOL = 1e-5


def check(path, images, state, heads=4, **load_kwargs):
    model = vitkit.load(path, num_heads=heads, **load_kwargs)
    with torch.no_grad():
        assert rel_diff(model(images), forward(state, images, heads)) <= TOL
    return model


@pytest.mark.parametrize("variant", [
    dict(pool="token"),
    dict(pool="token", no_embed_class=True),
    dict(pool="gap", fc_norm=True),
    dict(pool="gap"),
    dict(pool="map"),
    dict(pool="token", distilled=True),
    dict(pool="token", qkv_bias=False),
])
def test_timm_state_dicts_match_reference(tmp_path, images, variant):
    state = make_state(**variant)
    torch.save(state, tmp_path / "m.pth")
    model = check(tmp_path / "m.pth", images, state)
    cfg = model.config
    assert cfg.act == "gelu" and cfg.norm_eps == 1e-6
    assert cfg.posemb_class_slot == (variant["pool"] == "token" and not variant.get("no_embed_class", False))
    assert cfg.norm_after_pool == variant.get("fc_norm", False)
    assert cfg.distill_token == variant.get("distilled", False)


def test_safetensors_and_wrapped_training_checkpoints(tmp_path, images):
    state = make_state(seed=1)
    save_file(state, str(tmp_path / "m.safetensors"))
    check(tmp_path / "m.safetensors", images, state)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "train.pth")
    check(tmp_path / "train.pth", images, state)


def test_head_count_comes_from_the_width_preset_unless_given(tmp_path):
    state = make_state(width=192, mlp=768)
    torch.save(state, tmp_path / "m.pth")
    assert vitkit.load(tmp_path / "m.pth").config.num_heads == 3
    assert vitkit.load(tmp_path / "m.pth", num_heads=6).config.num_heads == 6
    torch.save(make_state(width=40), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="pass num_heads"):
        vitkit.load(tmp_path / "odd.pth")


def test_class_token_with_fc_norm_is_refused_by_name(tmp_path):
    state = make_state(pool="token")
    state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="fc_norm"):
        vitkit.load(tmp_path / "m.pth", num_heads=4)


def test_layer_scale_tensors_are_reported_not_ignored(tmp_path):
    state = make_state()
    state["blocks.0.ls1.gamma"] = torch.ones(32)
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="unexpected blocks.0.ls1.gamma"):
        vitkit.load(tmp_path / "m.pth", num_heads=4)
    with pytest.warns(UserWarning, match="blocks.0.ls1.gamma"):
        vitkit.load(tmp_path / "m.pth", num_heads=4, strict=False)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("variant", [dict(pool="token"), dict(pool="gap", fc_norm=True), dict(pool="map")])
def test_export_uses_timm_names_and_round_trips(tmp_path, images, suffix, variant):
    state = make_state(seed=4, **variant)
    torch.save(state, tmp_path / "src.pth")
    report = convert(tmp_path / "src.pth", tmp_path / f"out{suffix}", "timm", num_heads=4)
    assert report["max_rel_diff"] <= TOL
    written = (load_file(tmp_path / f"out{suffix}") if suffix == ".safetensors"
               else torch.load(tmp_path / f"out{suffix}", weights_only=True))
    assert set(written) == set(state)
    for key in state:
        assert torch.equal(written[key], state[key]), key


def test_norm_after_pool_is_a_validated_json_round_tripping_option():
    from vitkit.errors import ConfigError
    from vitkit.models.config import ModelConfig

    cfg = ModelConfig(pool="gap", norm_after_pool=True)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="norm_after_pool"):
        ModelConfig(pool="token", norm_after_pool=True)
