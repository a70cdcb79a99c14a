"""config.yaml files written before the engine and the DataSpec (a run's, and `vitkit pretrain`'s
own) still load, as the configs they meant, and still run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vitkit.cli.main import main
from vitkit.data.spec import DataSpec
from vitkit.formats import load
from vitkit.train import TrainConfig

OLD = Path(__file__).with_name("old_configs")


def test_a_training_config_from_before_the_data_spec_loads_as_the_same_run():
    text = yaml.safe_load((OLD / "train_digits.yaml").read_text())
    cfg = TrainConfig.from_yaml(OLD / "train_digits.yaml")
    assert cfg.data == DataSpec("digits", split_seed=0, val_fraction=0.1, test_fraction=0.2,
                                skip_bad_images=False, max_image_pixels=None)
    assert cfg.objective == "supervised"
    # Everything else is as written.
    new = cfg.to_dict()
    for key, value in text.items():
        if key not in ("data", "split_seed", "val_fraction", "test_fraction", "skip_bad_images", "max_image_pixels"):
            assert new[key] == value, key
    # And it round-trips in today's layout.
    assert TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_a_pretraining_config_of_the_old_loop_loads_and_pretrains_a_headless_encoder(tmp_path, capsys):
    cfg = TrainConfig.from_yaml(OLD / "pretrain_mae.yaml")
    assert (cfg.objective, cfg.optimizer, cfg.decoder_width, cfg.mask_ratio) == ("mae", "adamw", 64, 0.75)
    assert cfg.model_options["num_classes"] == 0 and cfg.pretraining
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(OLD / "pretrain_mae.yaml"), "--out", str(out), "--quiet",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objective"] == "mae" and load(summary["checkpoint"]).config.num_classes == 0
    assert TrainConfig.from_yaml(out / "config.yaml").data == DataSpec("digits")
