"""Google .npz checkpoints (original vit_jax and big_vision layouts) load with the Flax
model's own numerics: logits match an independent float64 reference within 1e-5."""

import numpy as np
import pytest
import torch

import vitkit
from vitkit.errors import CheckpointError

from .conftest import rel_diff
from .google_reference import as_old_flax, forward, make_params, stack_blocks

TOL = 1e-5


def save_npz(path, arrays):
    np.savez(path, **arrays)
    return path


def check(tmp_path, images, params, layout, saved=None, **load_kwargs):
    path = save_npz(tmp_path / "ckpt.npz", saved if saved is not None else params)
    model = vitkit.load(path, **load_kwargs)
    with torch.no_grad():
        ours = model(images).numpy()
    ref = forward(params, images.permute(0, 2, 3, 1).numpy(), layout)
    assert ours.shape == ref.shape
    assert rel_diff(ours, ref) <= TOL
    return model


@pytest.mark.parametrize("pool, rep", [("token", None), ("token", 24), ("gap", None)])
def test_original_layout_matches_flax_reference(tmp_path, images, pool, rep):
    params = make_params("original", pool=pool, rep=rep)
    model = check(tmp_path, images, params, "original")
    cfg = model.config
    assert (cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.patch_size) == (32, 2, 4, 64, 8)
    assert cfg.pool == pool and cfg.representation_size == rep and cfg.num_classes == 5
    assert cfg.act == "gelu_tanh" and cfg.norm_eps == 1e-6 and cfg.image_size == (32, 32)


@pytest.mark.parametrize("old_flax", [False, True])
def test_original_hybrid_resnet_stem_matches_flax_reference(tmp_path, images, old_flax):
    params = make_params("original", hybrid=(1, 2), patch=1, grid=(4, 4), seed=1)
    saved = as_old_flax(params)
    assert sum(v.shape[:3] == (1, 1, 1) for v in saved.values()) == 24  # root + 2 units of 4, 1 of 3
    model = check(tmp_path, images, params, "original", saved=saved if old_flax else None)
    assert model.config.stem == "resnet" and model.config.resnet_layers == (1, 2)
    assert model.config.resnet_width == 32


@pytest.mark.parametrize("pool", ["token", "gap", "map"])
@pytest.mark.parametrize("stacked", [False, True])
def test_big_vision_layout_matches_reference(tmp_path, images, pool, stacked):
    params = make_params("big_vision", pool=pool, seed=2)
    saved = {f"params/{k}": v for k, v in (stack_blocks(params) if stacked else params).items()}
    model = check(tmp_path, images, params, "big_vision", saved=saved)
    assert model.config.pool == pool and not model.config.posemb_class_slot


def test_big_vision_fixed_sincos_embedding_is_not_stored(tmp_path, images):
    params = make_params("big_vision", pool="gap", posemb="sincos", seed=3)
    model = check(tmp_path, images, params, "big_vision", image_size=32)
    assert model.config.posemb == "sincos2d"


def test_heads_override_must_agree_with_the_kernels(tmp_path):
    path = save_npz(tmp_path / "c.npz", make_params("original"))
    with pytest.raises(CheckpointError, match="num_heads=2 contradicts"):
        vitkit.load(path, num_heads=2)


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    params = make_params("original")
    broken = dict(params)
    del broken["Transformer/encoderblock_1/LayerNorm_2/scale"]
    broken["Transformer/encoderblock_0/extra/kernel"] = np.zeros(3, np.float32)
    broken["head/bias"] = np.zeros(7, np.float32)
    path = save_npz(tmp_path / "c.npz", broken)
    with pytest.raises(CheckpointError) as err:
        vitkit.load(path)
    message = str(err.value)
    assert "missing Transformer/encoderblock_1/LayerNorm_2/scale" in message
    assert "unexpected Transformer/encoderblock_0/extra/kernel" in message
    assert "head/bias: file (7,) vs expected (5,)" in message


def test_strict_false_warns_with_the_skipped_names(tmp_path, images):
    params = make_params("original")
    params["Transformer/encoderblock_0/extra/kernel"] = np.zeros(3, np.float32)
    path = save_npz(tmp_path / "c.npz", params)
    with pytest.warns(UserWarning, match="encoderblock_0/extra/kernel"):
        vitkit.load(path, strict=False)


def test_big_vision_training_checkpoint_reads_the_params_tree(tmp_path, images):
    params = make_params("big_vision", pool="gap", seed=12)
    saved = {f"params/{k}": v for k, v in params.items()}
    saved["opt/state/mu/head/kernel"] = np.zeros((32, 5), np.float32)
    with pytest.warns(UserWarning, match="opt/state/mu/head/kernel"):
        check(tmp_path, images, params, "big_vision", saved=saved)
