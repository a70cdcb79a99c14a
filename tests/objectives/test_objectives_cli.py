"""The objectives through the command line, on the digits with tiny models and single epochs:
pretrain then --init, distillation from a ResNet teacher, adversarial training, attacked eval."""

import json

import pytest

import vitkit
from vitkit.cli.main import main
from vitkit.formats import load

pytestmark = pytest.mark.slow

TINY = ["--width", "16", "--depth", "1", "--num-heads", "2", "--mlp-dim", "16", "--patch-size", "2"]


def _json(capsys, argv):
    assert main([*argv, "--quiet", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("objective", ["mpp", "mae"])
def test_pretrain_writes_a_headless_model_that_train_init_fine_tunes(objective, tmp_path, capsys):
    summary = _json(capsys, ["pretrain", "--objective", objective, "--out", str(tmp_path / "pre"), *TINY,
                             "--epochs", "1", "--batch-size", "256"])
    assert summary["objective"] == objective and summary["val_loss"] > 0
    pretrained = load(summary["checkpoint"])
    assert pretrained.config.num_classes == 0  # no labels were used
    tuned = _json(capsys, ["train", "--init", summary["checkpoint"], "--out", str(tmp_path / "ft"),
                           "--epochs", "1", "--batch-size", "256"])
    assert load(tuned["checkpoint"]).config.num_classes == 10 and 0.0 <= tuned["test_acc"] <= 1.0


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

    for head in ("cls", "dist", "both"):
        result = _json(capsys, ["eval", summary["checkpoint"], "--head", head, "--attack", "pgd",
                                "--eps", "0", "0.1", "--steps", "2"])
        clean, none, some = result["top1"], *result["adversarial"]
        assert none["top1"] == pytest.approx(clean) and none["max_perturbation"] == 0.0
        assert some["top1"] <= clean and some["max_perturbation"] <= 0.1 + 1e-6


def test_adversarial_training_runs_and_records_its_settings(tmp_path, capsys):
    summary = _json(capsys, ["train", "--adversarial", "pgd", "--adv-eps", "0.1", "--adv-steps", "2",
                             "--adv-ratio", "0.5", "--model", "custom", *TINY, "--epochs", "1",
                             "--batch-size", "256", "--out", str(tmp_path / "run")])
    assert 0.0 <= summary["test_acc"] <= 1.0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "adversarial: pgd" in config and "adv_eps: 0.1" in config


def test_a_teacher_without_distill_kind_is_refused(tmp_path, capsys):
    assert main(["train", "--teacher", "x.safetensors", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "--distill soft|hard" in capsys.readouterr().err
