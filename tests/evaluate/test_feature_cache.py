"""Image preparation and frozen-feature extraction with its cache."""

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.errors import DataError
from vitkit.evaluate.features import cache_path, cached_features, checkpoint_digest, extract_features
from vitkit.evaluate.preprocess import prepare_images
from vitkit.models import ModelConfig


def _model(**kw):
    base = dict(image_size=8, patch_size=2, in_chans=1, num_classes=10, width=32, depth=2, num_heads=2,
                mlp_dim=64)
    return vitkit.create_model("custom", **{**base, **kw})


def _images(n=7, c=1, size=8):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_prepare_normalises_with_the_configs_mean_and_std():
    cfg = ModelConfig(image_size=2, patch_size=1, in_chans=3, input_mean=(0.5, 0.25, 0.0), input_std=(0.5, 0.25, 1.0))
    x = prepare_images(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), cfg)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))


def test_prepare_adapts_channels_and_size():
    grey = ModelConfig(image_size=4, patch_size=2, in_chans=1, input_mean=(0.0,), input_std=(1.0,))
    rgb = grey.replace(in_chans=3)
    img = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    img[:, 0] = 255  # pure red: mean over channels is 1/3
    assert torch.allclose(prepare_images(img, grey), torch.full((1, 1, 4, 4), 1 / 3))
    out = prepare_images(torch.full((2, 1, 8, 8), 51, dtype=torch.uint8), rgb)
    assert out.shape == (2, 3, 4, 4) and torch.allclose(out, torch.full_like(out, 0.2))


def test_prepare_refuses_float_images_and_two_channels_for_rgb():
    cfg = ModelConfig(image_size=4, patch_size=2, in_chans=3)
    with pytest.raises(DataError):
        prepare_images(torch.zeros(1, 3, 4, 4), cfg)
    with pytest.raises(DataError):
        prepare_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), cfg)


def test_features_are_the_pre_logits_in_batches():
    model = _model(representation_size=16)
    images = _images()
    feats = extract_features(model, images, batch_size=3, progress=False)
    assert feats.shape == (7, 16)
    with torch.no_grad():
        direct = model.forward_intermediates(prepare_images(images, model.config))["pre_logits"]
    assert torch.allclose(feats, direct, atol=1e-6)


def test_cached_features_equal_fresh_ones_and_are_reused(tmp_path):
    model = _model()
    ckpt = vitkit.save(model, tmp_path / "m.safetensors")
    images, labels = _images(), torch.arange(7)
    loaded = vitkit.load(ckpt)
    first = cached_features(ckpt, loaded, "test", images, labels, cache_dir=tmp_path / "cache", progress=False)
    path = cache_path(ckpt, "test", images, labels, tmp_path / "cache")
    assert path.exists()
    assert torch.equal(load_file(str(path))["features"], first)
    assert torch.allclose(first, extract_features(loaded, images, progress=False))
    with torch.no_grad():  # a changed model in memory is not consulted while the file is unchanged
        loaded.head.weight.fill_(1.0)
        loaded.norm.weight.fill_(3.0)
    again = cached_features(ckpt, loaded, "test", images, labels, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(again, first)


def test_cache_key_follows_checkpoint_content_split_and_images(tmp_path):
    images = _images()
    ckpt = vitkit.save(_model(), tmp_path / "m.safetensors")
    key = cache_path(ckpt, "train", images, cache_dir=tmp_path)
    assert cache_path(ckpt, "val", images, cache_dir=tmp_path) != key
    assert cache_path(ckpt, "train", images[:5], cache_dir=tmp_path) != key
    before = checkpoint_digest(ckpt)
    vitkit.save(_model(), ckpt)  # same path, new weights
    assert checkpoint_digest(ckpt) != before
    assert cache_path(ckpt, "train", images, cache_dir=tmp_path) != key


def test_a_corrupt_cache_entry_is_recomputed(tmp_path):
    model = _model()
    ckpt = vitkit.save(model, tmp_path / "m.safetensors")
    images = _images()
    path = cache_path(ckpt, "train", images, cache_dir=tmp_path / "c")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    feats = cached_features(ckpt, model, "train", images, cache_dir=tmp_path / "c", progress=False)
    assert torch.allclose(feats, extract_features(model, images, progress=False))
