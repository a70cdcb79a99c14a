"""The defaults picked from the data (train/auto.py), as docs/training.md states them."""

import torch

from vitkit.data import load_data
from vitkit.data.dataset import DataSplits, ImageSet
from vitkit.train.auto import resolve
from vitkit.train.config import TrainConfig


def fake_splits(n_train: int, side: int = 32, channels: int = 3) -> DataSplits:
    def images(n):
        # Only the shape matters to the defaults, and that the images have detail at their size
        # (white noise: see test_picker.py); a zero-stride view allocates one image.
        noise = torch.randint(0, 256, (1, channels, side, side), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
        return ImageSet(noise.expand(n, -1, -1, -1), torch.zeros(n, dtype=torch.long))
    return DataSplits(images(n_train), images(10), images(10), [str(i) for i in range(10)])


def test_the_digits_get_the_compact_model_batch_128_for_100_epochs_and_the_last_model():
    cfg, model, notes = resolve(TrainConfig(), load_data("digits"))
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.warmup_epochs) == (128, 6e-3, 100, 2.0)
    assert cfg.select == "last" and cfg.optimizer == "muon" and cfg.weight_decay == 0.1
    assert any(note.startswith("optimizer: Muon") for note in notes)
    assert (model.width, model.depth, model.num_heads, model.mlp_dim) == (64, 4, 4, 128)
    assert model.image_size == (16, 16) and model.patch_size == 4
    assert cfg.augment["mixup"] == 0.8 and cfg.augment["elastic"] == 0.0
    assert any(note.startswith("epochs: 100") for note in notes)


def test_larger_sets_get_smaller_epoch_counts_and_their_own_batches():
    small, _, _ = resolve(TrainConfig(), fake_splits(10_000))
    assert (small.batch_size, small.lr, small.epochs) == (64, 1e-3, 20)
    large, model, _ = resolve(TrainConfig(), fake_splits(250_000, side=256))
    assert large.batch_size == 256 and large.lr == 5e-4 * 256 / 512 and large.epochs == 20
    assert model.image_size == (224, 224) and model.width == 384  # ViT-S/16


def test_early_stopping_keeps_the_best_validation_model_and_a_given_choice_is_kept():
    stopping, _, _ = resolve(TrainConfig(early_stop=3), fake_splits(1000))
    assert stopping.select == "best"
    chosen, _, _ = resolve(TrainConfig(select="best", batch_size=16, epochs=7), fake_splits(1000))
    assert (chosen.select, chosen.batch_size, chosen.epochs) == ("best", 16, 7)


def test_muon_only_for_tiny_sets_and_never_under_fsdp():
    assert resolve(TrainConfig(), fake_splits(4_999))[0].optimizer == "muon"
    assert resolve(TrainConfig(), fake_splits(5_000))[0].optimizer == "adamw"
    assert resolve(TrainConfig(fsdp=True), fake_splits(1_000))[0].optimizer == "adamw"
    assert resolve(TrainConfig(recipe="finetune"), fake_splits(1_000))[0].optimizer == "sgd"
    assert resolve(TrainConfig(optimizer="adamw"), fake_splits(1_000))[0].optimizer == "adamw"


def test_the_picked_model_builds_for_images_of_any_size_down_to_one_pixel():
    from vitkit.models.vit import VisionTransformer

    sizes = [(h, w) for h in (1, 2, 3, 5, 7, 9, 12, 15, 16, 17, 23, 31, 33, 47, 65, 130) for w in (1, 9, 12, 16, 33)]
    for h, w in sizes:
        data = fake_splits(100, side=1, channels=1)
        for part in (data.train, data.val, data.test):
            part.images = torch.zeros(len(part), 1, h, w, dtype=torch.uint8)
        _, model_cfg, _ = resolve(TrainConfig(), data)
        model = VisionTransformer(model_cfg)  # ModelConfig refuses a size its patches do not tile
        assert model(torch.zeros(1, 1, *model_cfg.image_size)).shape == (1, 10), (h, w)
