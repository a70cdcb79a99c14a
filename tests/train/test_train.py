"""The trainer: exact resume, reproducible runs, the run folder, and the training options."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import vitkit
from vitkit.errors import CheckpointError, ConfigError
from vitkit.evaluate.splits import evaluate_split
from vitkit.train import TrainConfig, Trainer, train
from vitkit.train.optim import lr_factor

TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=32)
NO_AUGMENT = {"crop": "none", "rotate": 0.0, "scale": 0.0, "translate": 0.0, "mixup": 0.0}


def config(tmp_path, name="run", **changes):
    base = dict(data="digits", out=str(tmp_path / name), epochs=3, batch_size=256,
                model_options=dict(TINY), augment={"crop": "random", "crop_padding": 1})
    base.update(changes)
    return TrainConfig(**base)


def weights(path):
    return {k: v for k, v in load_file(str(path)).items()}


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# The digits are a small set, so left alone the run picks Muon (with AdamW for the vectors);
# AdamW alone is the optimiser of larger sets. Both must resume exactly.
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_run_stopped_and_resumed_ends_bit_identical_to_one_that_never_stopped(tmp_path, monkeypatch, optimizer):
    changes = dict(epochs=4, ema=0.9, model_options={**TINY, "dropout": 0.1}, optimizer=optimizer)
    train(config(tmp_path, "straight", **changes), quiet=True)

    original_end = Trainer._end_epoch

    def stop_after_two(self, epoch, stats):
        original_end(self, epoch, stats)
        if epoch + 1 == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, "stopped", **changes), quiet=True)
    monkeypatch.setattr(Trainer, "_end_epoch", original_end)
    summary = train(TrainConfig(out=str(tmp_path / "stopped")), resume=True, quiet=True)

    assert summary["epochs"] == 4
    assert_same_tensors(weights(tmp_path / "straight/checkpoints/last.safetensors"),
                        weights(tmp_path / "stopped/checkpoints/last.safetensors"))
    straight = json.loads((tmp_path / "straight/summary.json").read_text())
    assert straight["test_acc"] == summary["test_acc"]
    lines = (tmp_path / "stopped/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_the_run_folder_holds_config_metrics_summary_checkpoints_and_plots(tmp_path):
    summary = train(config(tmp_path), quiet=True)
    run = tmp_path / "run"
    for key in ("test_acc", "val_acc", "epochs", "train_seconds", "checkpoint", "model", "params"):
        assert key in summary
    assert summary["epochs"] == 3
    assert summary["params"] == sum(p.numel() for p in vitkit.load(summary["checkpoint"]).parameters())
    # The reported accuracy is the checkpoint's on the test split, as an exact ratio of counts.
    tested = evaluate_split(vitkit.load(summary["checkpoint"]), "digits")
    assert summary["test_acc"] == tested["top1"] == sum(tested["confusion"][i][i] for i in range(10)) / 359
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["test_acc"] == summary["test_acc"]
    assert sum(map(sum, on_disk["test_confusion"])) == summary["test_n"] == 359
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(history[0])
    assert max(h["val_acc"] for h in history) == summary["best_val_acc"]
    assert summary["select"] == "last" and summary["val_acc"] == history[-1]["val_acc"]
    for png in ("loss.png", "accuracy.png", "confusion.png"):
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["epochs"] == 3 and resolved["model"] == "custom"
    assert resolved["model_options"]["width"] == 16 and resolved["lr"] is not None
    # The best checkpoint is a model file that evaluates to the reported test accuracy.
    from vitkit.data import load_data
    from vitkit.evaluate.classification import classification_metrics, predict_logits

    test = load_data("digits").test
    model = vitkit.load(summary["checkpoint"])
    assert classification_metrics(predict_logits(model, test.images), test.labels)["top1"] == summary["test_acc"]


def test_the_result_is_the_last_model_or_with_select_best_the_best_validation_one(tmp_path):
    last = train(config(tmp_path, "last"), quiet=True)
    final = weights(tmp_path / "last/checkpoints/final.safetensors")
    trained = weights(tmp_path / "last/checkpoints/last.safetensors")
    assert last["checkpoint"].endswith("final.safetensors")
    assert_same_tensors(final, {k: v for k, v in trained.items() if k in final})
    best = train(config(tmp_path, "best", select="best"), quiet=True)
    assert best["checkpoint"].endswith("best.safetensors") and best["val_acc"] == best["best_val_acc"]
    # Same seed, same training: only the choice of model differs.
    assert best["best_val_acc"] == last["best_val_acc"]
    stopping = train(config(tmp_path, "stop", early_stop=1), quiet=True)
    assert stopping["select"] == "best"


def test_the_saved_config_reproduces_the_run_exactly(tmp_path):
    first = train(config(tmp_path, "first"), quiet=True)
    again = TrainConfig.from_yaml(tmp_path / "first/config.yaml").replace(out=str(tmp_path / "again"))
    second = train(again, quiet=True)
    assert first["test_acc"] == second["test_acc"]
    assert_same_tensors(weights(tmp_path / "first/checkpoints/last.safetensors"),
                        weights(tmp_path / "again/checkpoints/last.safetensors"))


def test_the_seed_fixes_everything_and_another_seed_differs(tmp_path):
    train(config(tmp_path, "a", epochs=1), quiet=True)
    train(config(tmp_path, "b", epochs=1), quiet=True)
    train(config(tmp_path, "c", epochs=1, seed=1), quiet=True)
    a, b, c = (weights(tmp_path / f"{n}/checkpoints/last.safetensors") for n in "abc")
    assert_same_tensors(a, b)
    assert not torch.equal(a["patch_embed.proj.weight"], c["patch_embed.proj.weight"])


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    # SGD: Adam's per-parameter normalisation would magnify float rounding in tiny gradients.
    plain = dict(epochs=1, augment=NO_AUGMENT, label_smoothing=0.0, grad_clip=0.0,
                 optimizer="sgd", lr=0.1)
    train(config(tmp_path, "full", batch_size=256, **plain), quiet=True)
    train(config(tmp_path, "accum", batch_size=128, accum_steps=2, **plain), quiet=True)
    full = weights(tmp_path / "full/checkpoints/last.safetensors")
    accum = weights(tmp_path / "accum/checkpoints/last.safetensors")
    for k, v in full.items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, accum[k], atol=1e-5), k


def test_early_stopping_ends_the_run_when_validation_stops_improving(tmp_path, monkeypatch):
    # The validation numbers are given, so the run stops where the rule says on any CPU: the
    # best accuracy at epoch 2, then two epochs without a better one.
    accuracy = iter([0.5, 0.7, 0.6, 0.7] + [0.9] * 30)
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val_loss": 1.0, "val_acc": next(accuracy)})
    summary = train(config(tmp_path, epochs=30, early_stop=2), quiet=True)
    assert (summary["epochs"], summary["best_epoch"], summary["select"]) == (4, 2, "best")
    assert summary["checkpoint"].endswith("best.safetensors")


def test_fine_tuning_with_a_frozen_backbone_changes_only_the_new_head(tmp_path):
    source = train(config(tmp_path, "source", epochs=1), quiet=True)
    summary = train(config(tmp_path, "tuned", epochs=1, init=source["checkpoint"], freeze="backbone",
                           model_options={}), quiet=True)
    before = weights(source["checkpoint"])
    after = weights(tmp_path / "tuned/checkpoints/last.safetensors")
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["head.bias", "head.weight"]
    assert summary["test_acc"] == evaluate_split(vitkit.load(summary["checkpoint"]), "digits")["top1"]


def test_init_keeps_the_checkpoints_model_and_says_what_it_adapts(tmp_path, capsys):
    other = vitkit.create_model("custom", image_size=32, patch_size=4, in_chans=3, num_classes=4, **TINY)
    path = vitkit.save(other, tmp_path / "rgb32.safetensors")
    trainer = Trainer(config(tmp_path, "fit", epochs=1, init=str(path), model_options={}))
    cfg = trainer.model.config
    # The checkpoint's architecture, resolution and channels; a new zero head for the data's classes.
    assert (cfg.in_chans, cfg.num_classes, cfg.image_size, cfg.patch_size, cfg.width) == (3, 10, (32, 32), 4, 16)
    assert trainer.model.head.weight.abs().sum() == 0
    assert torch.equal(trainer.model.patch_embed.proj.weight, other.patch_embed.proj.weight)
    notes = capsys.readouterr().err
    assert f"auto: model: the --init checkpoint {path}: width 16, depth 1, 2 heads, patch 4, 32x32 inputs" in notes
    assert "auto: images resized from 8x8 to the model's 32x32" in notes
    assert "auto: channels: grey images fed as RGB (R = G = B), the checkpoint's 3 channels" in notes
    assert "auto: head: a new zero-initialised head for 10 classes (the checkpoint's 4-class head is dropped)" in notes
    assert "auto: recipe: finetune" in notes and trainer.cfg.recipe == "finetune"
    # config.yaml records what was used: no architecture of its own, the resolution it ran at.
    saved = TrainConfig.from_yaml(tmp_path / "fit" / "config.yaml")
    assert (saved.model, saved.model_options, saved.image_size) == ("auto", {}, 32)


def test_init_at_another_resolution_resamples_the_position_embeddings(tmp_path, capsys):
    other = vitkit.create_model("custom", image_size=32, patch_size=4, in_chans=3, num_classes=4, **TINY)
    path = vitkit.save(other, tmp_path / "rgb32.safetensors")
    trainer = Trainer(config(tmp_path, "fit", epochs=1, init=str(path), image_size=16, model_options={"dropout": 0.2}))
    # The 8x8 grid of embeddings becomes 4x4; dropout is the one kind of option that applies.
    assert trainer.model.pos_embed.weight.shape == (1, 1 + 16, 16) and trainer.model.config.dropout == 0.2
    assert "position embeddings resampled from a 8x8 to a 4x4 grid of patches" in capsys.readouterr().err


@pytest.mark.parametrize("options, refused", [({"width": 64}, "--width cannot change the architecture"),
                                              ({"posemb": "sincos2d"}, "--posemb cannot change the architecture")])
def test_init_refuses_architecture_options_it_cannot_apply(tmp_path, options, refused):
    other = vitkit.create_model("custom", image_size=32, patch_size=4, in_chans=3, num_classes=4, **TINY)
    path = vitkit.save(other, tmp_path / "rgb32.safetensors")
    with pytest.raises(ConfigError, match=refused):
        Trainer(config(tmp_path, "fit", epochs=1, init=str(path), model_options=options), quiet=True)
    assert not (tmp_path / "fit" / "config.yaml").exists()


def test_a_single_class_is_refused_before_training(tmp_path):
    folder = tmp_path / "one" / "cats"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8), 30 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ConfigError, match=r"has 1 class \(cats\); a classifier needs at least two"):
        train(config(tmp_path, data=str(tmp_path / "one")), quiet=True)


def test_a_finished_or_existing_run_folder_is_never_overwritten(tmp_path):
    train(config(tmp_path, epochs=1), quiet=True)
    before = (tmp_path / "run/summary.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config(tmp_path, epochs=1), quiet=True)
    assert (tmp_path / "run/summary.json").read_bytes() == before


def test_resume_needs_a_run_and_a_training_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="no run to resume"):
        train(TrainConfig(out=str(tmp_path / "nothing")), resume=True, quiet=True)
    train(config(tmp_path, epochs=1), quiet=True)
    (tmp_path / "run/checkpoints/last.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        train(TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True)


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "constant") == 1.0
    assert lr_factor(100, 100, 0, "cosine", min_ratio=0.1) == pytest.approx(0.1)


def test_sgd_recipe_and_weight_decay_exemptions(tmp_path):
    trainer = Trainer(config(tmp_path, recipe="finetune"), quiet=True)
    assert trainer.cfg.optimizer == "sgd" and trainer.cfg.weight_decay == 0.0 and trainer.cfg.grad_clip == 1.0
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    trainer = Trainer(config(tmp_path, "adamw", optimizer="adamw", weight_decay=0.05), quiet=True)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    decays = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in trainer.optimizer.param_groups}
    exempt = trainer.model.no_weight_decay()
    expected_exempt = sum(p.numel() for n, p in trainer.model.named_parameters() if n in exempt)
    assert decays[0.0] == expected_exempt and decays[0.05] > 0


@pytest.mark.parametrize("bad, message", [
    (dict(optimizer="adam"), "optimizer"),
    (dict(epochs=0), "epochs"),
    (dict(lr=-1.0), "lr"),
    (dict(ema=1.0), "ema"),
    (dict(freeze="backbone"), "needs --init"),
    (dict(precision="fp8"), "precision"),
])
def test_nonsense_training_options_are_refused(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, **bad)


def test_a_wrong_number_of_classes_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="does not match the data"):
        Trainer(config(tmp_path, model_options={**TINY, "num_classes": 7}), quiet=True)


def test_train_fraction_trains_on_a_stratified_share_of_the_training_split(tmp_path):
    full = Trainer(config(tmp_path, "full"), quiet=True)
    tenth = Trainer(config(tmp_path, "tenth", train_fraction=0.1, batch_size=8), quiet=True)
    assert len(tenth.data.train) == pytest.approx(0.1 * len(full.data.train), abs=10)
    assert torch.bincount(tenth.data.train.labels).min() >= 10
    assert tenth.steps_per_epoch == -(-len(tenth.data.train) // 8)
    assert len(tenth.data.val) == len(full.data.val) and len(tenth.data.test) == len(full.data.test)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="train_fraction"):
            TrainConfig(train_fraction=bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resume_takes_the_device_given_to_it(tmp_path):
    train(config(tmp_path, epochs=1), quiet=True)
    # The saved config says "auto"; the resuming launch's --device wins, here a device this
    # machine lacks, which must be refused rather than silently ignored.
    with pytest.raises(ConfigError, match="no CUDA device"):
        Trainer(TrainConfig(out=str(tmp_path / "run"), device="cuda"), resume=True, quiet=True)
