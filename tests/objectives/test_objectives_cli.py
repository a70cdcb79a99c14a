"""The objectives through the command line, on the digits with tiny models and single epochs:
pretrain (in memory and streamed from shards) then --init, distillation from a ResNet teacher,
adversarial training, attacked eval.

Nothing here depends on the weights a run reaches, which differ with the CPU's kernels: each
test compares what the command reports with an independent computation on the same machine
(the checkpoint evaluated again, counts taken from the data) or checks properties that hold for
any weights."""

import json

import pytest
import torch

import vitkit
from vitkit.cli.main import main
from vitkit.data import load_data
from vitkit.data.shard_writer import shard_data
from vitkit.formats import load
from vitkit.objectives.adversarial import adversarial_accuracy
from vitkit.objectives.distill import head_logits
from vitkit.train import TrainConfig, Trainer

pytestmark = pytest.mark.slow

TINY = ["--width", "16", "--depth", "1", "--num-heads", "2", "--mlp-dim", "16", "--patch-size", "2"]


def _json(capsys, argv):
    assert main([*argv, "--quiet", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_pretrain_writes_a_run_folder_and_a_headless_model_that_train_init_fine_tunes(objective, tmp_path, capsys):
    run = tmp_path / "pre"
    summary = _json(capsys, ["pretrain", "--objective", objective, "--out", str(run), *TINY,
                             "--epochs", "1", "--batch-size", "256"])
    assert summary["objective"] == objective and summary["val_loss"] > 0
    # The run folder of a training run, plus the objective's own parameters.
    plots = ["plots/accuracy.png", "plots/loss.png"] if objective == "mpp" else ["plots/loss.png"]
    assert _files(run) == [".lock", "checkpoints/best.safetensors", "checkpoints/final.safetensors",
                           "checkpoints/last.safetensors", "checkpoints/objective.safetensors", "config.yaml",
                           "metrics.jsonl", *plots, "summary.json"]
    assert summary["checkpoint"] == str(run / "checkpoints" / "final.safetensors")
    pretrained = load(summary["checkpoint"])
    assert pretrained.config.num_classes == 0  # no labels were used
    tuned = _json(capsys, ["train", "--init", summary["checkpoint"], "--out", str(tmp_path / "ft"),
                           "--epochs", "1", "--batch-size", "256"])
    model = load(tuned["checkpoint"])
    assert model.config.num_classes == 10 and model.config.width == 16
    # The reported accuracy is the checkpoint's on the test split.
    again = _json(capsys, ["eval", tuned["checkpoint"]])
    assert again["top1"] == tuned["test_acc"] and again["n"] == tuned["test_n"]


def test_pretraining_streams_a_shard_folder(tmp_path, capsys):
    shards = tmp_path / "shards"
    shard_data("digits", shards, shard_size=200, quiet=True)
    run = tmp_path / "pre"
    summary = _json(capsys, ["pretrain", "--objective", "mae", "--data", str(shards), "--workers", "0",
                             "--out", str(run), *TINY, "--epochs", "1", "--batch-size", "128"])
    trainer = Trainer(TrainConfig.from_yaml(run / "config.yaml").replace(out=str(tmp_path / "again")), quiet=True)
    assert trainer.streaming and summary["data"] == f"shards:{shards}"
    # The test split was streamed through the objective: each of its images hides 48 of 64 patches.
    test_images = len(load_data(str(shards)).test)
    assert summary["test_n"] == test_images * 48


def test_validation_loss_picks_the_best_epoch_and_stops_pretraining_early(tmp_path):
    cfg = TrainConfig(objective="mae", out=str(tmp_path / "run"), epochs=10, early_stop=2,
                      model_options=dict(width=16, depth=1, num_heads=2, mlp_dim=16, patch_size=4))
    trainer = Trainer(cfg, quiet=True)
    assert trainer.cfg.select == "best"  # with early stopping, the best epoch is the result
    trainer._save_model = lambda path, metadata: None
    trainer._save_last = lambda sums=None: None
    for epoch, loss in enumerate([0.9, 0.7, 0.8, 0.75]):
        trainer._end_epoch(epoch, {"epoch": epoch + 1, "train_loss": 1.0, "val_loss": loss})
    p = trainer.progress
    assert (p["best"], p["best_epoch"], p["bad_epochs"]) == (0.7, 2, 2)
    assert p["bad_epochs"] >= trainer.cfg.early_stop  # run() stops before another epoch


def test_distillation_from_a_resnet_teacher_then_eval_each_head_under_attack(tmp_path, capsys):
    teacher = vitkit.create_model("custom", stem="resnet", depth=0, pool="gap", resnet_layers=(1,),
                                  resnet_width=32, patch_size=1, image_size=8, in_chans=1, num_classes=10,
                                  width=32, num_heads=2, mlp_dim=32)
    teacher_path = vitkit.save(teacher, tmp_path / "resnet.safetensors")
    summary = _json(capsys, ["train", "--teacher", str(teacher_path), "--distill", "soft", "--model", "custom",
                             *TINY, "--epochs", "1", "--batch-size", "256", "--out", str(tmp_path / "run")])
    student = load(summary["checkpoint"])
    assert student.config.distill_token
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "distill: soft" in config and "distill_alpha: 0.1" in config and "distill_tau: 3.0" in config

    test = load_data("digits").test
    for head in ("cls", "dist", "both"):
        result = _json(capsys, ["eval", summary["checkpoint"], "--head", head, "--attack", "pgd",
                                "--eps", "0", "0.1", "--steps", "2"])
        clean, none, some = result["top1"], *result["adversarial"]
        # No attack changes nothing; the attack stays in its ball; and the command reports what
        # the library computes for that head.
        assert none["top1"] == clean and none["max_perturbation"] == 0.0
        assert some["max_perturbation"] <= 0.1 + 1e-6
        expected = adversarial_accuracy(student, test.images, test.labels, "pgd", 0.1, 2, batch_size=256,
                                        logits_of=lambda m, x: head_logits(m, x, head))
        assert some["top1"] == expected["top1"]
        with torch.no_grad():
            x = vitkit.evaluate.prepare_images(test.images, student.config)
            correct = int((head_logits(student, x, head).argmax(1) == test.labels).sum())
        assert clean == correct / len(test)


def test_adversarial_training_records_its_settings_and_reports_its_checkpoint(tmp_path, capsys):
    summary = _json(capsys, ["train", "--adversarial", "pgd", "--adv-eps", "0.1", "--adv-steps", "2",
                             "--adv-ratio", "0.5", "--model", "custom", *TINY, "--epochs", "1",
                             "--batch-size", "256", "--out", str(tmp_path / "run")])
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "adversarial: pgd" in config and "adv_eps: 0.1" in config and "adv_ratio: 0.5" in config
    again = _json(capsys, ["eval", summary["checkpoint"]])
    assert again["top1"] == summary["test_acc"]


def test_a_teacher_without_distill_kind_is_refused(tmp_path, capsys):
    assert main(["train", "--teacher", "x.safetensors", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "--distill soft|hard" in capsys.readouterr().err


def test_options_that_need_labels_are_refused_by_pretraining(tmp_path, capsys):
    # On the command line pretrain has no such flags; in a config (or from Python) they are refused.
    with pytest.raises(SystemExit) as refused:
        main(["pretrain", "--adversarial", "pgd", "--out", str(tmp_path / "a"), "--quiet"])
    assert refused.value.code == 2 and "unrecognized arguments: --adversarial pgd" in capsys.readouterr().err
    (tmp_path / "distill.yaml").write_text("objective: mpp\nteacher: t.safetensors\ndistill: soft\n")
    assert main(["pretrain", "--config", str(tmp_path / "distill.yaml"), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("vitkit pretrain: error: ") and not (tmp_path / "b").exists()
    with pytest.raises(vitkit.errors.ConfigError, match="--adversarial train\\(s\\) a classifier on labels; the "
                                                        "mae objective pre-trains without them"):
        TrainConfig(objective="mae", adversarial="pgd")
