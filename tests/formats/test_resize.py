"""Resolution and patch-size changes at load time: position embeddings are interpolated over
the patch grid with the class slot kept apart, for every format and embedding kind; patch
kernels get FlexiViT's pseudo-inverse resize."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.models.posemb import resample_grid, resample_line
from vitkit.models.resize import patch_resize_matrix, resize_model, resize_patch_kernel

from .google_reference import make_params
from .timm_reference import make_state


def random_model(**overrides):
    opts = dict(image_size=32, patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=64, num_classes=5)
    opts.update(overrides)
    model = vitkit.create_model(**opts).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_interpolation_at_the_original_size_is_the_identity():
    emb = torch.randn(1, 12, 8)
    assert torch.equal(resample_grid(emb, (3, 4), (3, 4)), emb)
    model = random_model()
    assert resize_model(model, image_size=32) is model


def test_known_values_on_a_tiny_grid():
    # Linear interpolation with half-pixel centres, clamped at the borders: [0, 1] -> 4 samples.
    line = torch.tensor([[0.0], [1.0]])
    assert torch.allclose(resample_line(line, 4)[:, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    # A constant embedding stays constant; a 2x2 grid's mean is kept by symmetric upsampling.
    const = torch.full((4, 3), 0.7)
    assert torch.allclose(resample_grid(const, (2, 2), (5, 3)), torch.full((15, 3), 0.7))
    grid = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    up = resample_grid(grid, (2, 2), (4, 4))
    assert torch.allclose(up.mean(), torch.tensor(2.5))
    assert torch.allclose(up.reshape(4, 4), up.reshape(4, 4).flip(0).flip(1).neg() + 5)


def test_class_slot_is_kept_apart_when_resizing(tmp_path):
    params = make_params("original", seed=7)
    np.savez(tmp_path / "c.npz", **params)
    model = vitkit.load(tmp_path / "c.npz", image_size=(48, 64))
    assert model.config.image_size == (48, 64) and model.config.grid_size == (6, 8)
    pos = model.pos_embed.weight.detach()
    src = torch.from_numpy(params["Transformer/posembed_input/pos_embedding"])
    assert pos.shape == (1, 1 + 48, 32)
    assert torch.equal(pos[:, :1], src[:, :1])
    expected = F.interpolate(src[0, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(6, 8),
                             mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 48, 32)
    assert torch.allclose(pos[:, 1:], expected, atol=1e-6)
    assert model(torch.zeros(1, 3, 48, 64)).shape == (1, 5)


@pytest.mark.parametrize("variant", [dict(pool="token", no_embed_class=True), dict(pool="gap", fc_norm=True)])
def test_timm_layouts_resize(tmp_path, variant):
    torch.save(make_state(**variant), tmp_path / "m.pth")
    model = vitkit.load(tmp_path / "m.pth", num_heads=4, image_size=(40, 24))
    assert model.pos_embed.weight.shape == (1, 15, 32)
    assert model(torch.zeros(2, 3, 40, 24)).shape == (2, 5)


def test_big_vision_posemb_without_class_slot_resizes(tmp_path):
    np.savez(tmp_path / "c.npz", **make_params("big_vision", pool="token", seed=8))
    model = vitkit.load(tmp_path / "c.npz", image_size=64)
    assert model.pos_embed.weight.shape == (1, 64, 32)


@pytest.mark.parametrize("posemb", ["learned2d", "relative", "sincos2d"])
def test_other_embedding_kinds_resize(tmp_path, posemb):
    model = random_model(posemb=posemb)
    vitkit.save(model, tmp_path / "m.safetensors")
    resized = vitkit.load(tmp_path / "m.safetensors", image_size=(48, 32))
    assert resized(torch.zeros(1, 3, 48, 32)).shape == (1, 5)
    same = vitkit.load(tmp_path / "m.safetensors", image_size=32)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(same(x), model(x))


def test_dynamic_image_size_runs_any_multiple_of_the_patch(tmp_path):
    model = random_model()
    vitkit.save(model, tmp_path / "m.safetensors")
    dynamic = vitkit.load(tmp_path / "m.safetensors", dynamic_image_size=True)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(dynamic(x), model(x))
    for h, w in [(16, 16), (40, 24), (64, 48)]:
        out = dynamic(torch.rand(1, 3, h, w))
        resized = resize_model(model, image_size=(h, w))
        x = torch.rand(1, 3, h, w)
        assert out.shape == (1, 5)
        assert torch.allclose(dynamic(x), resized(x), atol=1e-5)


def test_patch_resize_matrix_is_bilinear_resize():
    b = patch_resize_matrix(4, 8)
    x = torch.randn(4, 4, dtype=torch.float64)
    direct = F.interpolate(x[None, None], size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(b @ x.reshape(-1), direct.reshape(-1))


def test_growing_the_patch_reproduces_tokens_exactly():
    # <resize(x), w'> = <x, w> for every patch x when the new patch is larger.
    w = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    new = resize_patch_kernel(w, 8)
    x = torch.randn(10, 3, 4, 4, dtype=torch.float64)
    big = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(F.conv2d(big, new, stride=8), F.conv2d(x, w, stride=4), atol=1e-10)


def test_shrinking_the_patch_is_the_least_squares_solution():
    w = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    new = resize_patch_kernel(w, 4)
    bt = patch_resize_matrix(8, 4).t()  # (64, 16)
    residual = bt @ new.reshape(15, 16).t() - w.reshape(15, 64).t()
    # Normal equations: the residual is orthogonal to the range of B^T.
    assert torch.allclose(bt.t() @ residual, torch.zeros(16, 15, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("patch", [4, 16])
def test_load_at_another_patch_size(tmp_path, patch):
    params = make_params("original", seed=9)
    np.savez(tmp_path / "c.npz", **params)
    model = vitkit.load(tmp_path / "c.npz", patch_size=patch)
    assert model.config.patch_size == patch and model.config.grid_size == (32 // patch, 32 // patch)
    assert model.patch_embed.proj.weight.shape == (32, 3, patch, patch)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def upsample_each_patch(x, patch, new):
    """Resize every patch of x on its own (FlexiViT's x' = B x), then tile them back."""
    n, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    patches = x.reshape(n, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, patch, patch)
    patches = F.interpolate(patches, size=(new, new), mode="bilinear", align_corners=False, antialias=True)
    return patches.reshape(n, gh, gw, c, new, new).permute(0, 3, 1, 4, 2, 5).reshape(n, c, gh * new, gw * new)


def test_patch_and_image_size_together_keep_the_token_grid(tmp_path):
    # /8 at 32 px -> /16 at 64 px: the same 4x4 grid, position embeddings untouched, and
    # patches resized to 16 px give the same tokens, hence the same logits.
    params = make_params("original", seed=10)
    np.savez(tmp_path / "c.npz", **params)
    model = vitkit.load(tmp_path / "c.npz")
    big = vitkit.load(tmp_path / "c.npz", patch_size=16, image_size=64)
    assert torch.equal(big.pos_embed.weight, model.pos_embed.weight)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(big(upsample_each_patch(x, 8, 16)), model(x), atol=1e-4)
