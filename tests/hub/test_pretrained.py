"""The registry of released checkpoints: every entry is well formed and builds its architecture
(with the parameter count its release states); a release name loads through its source with
the release's preprocessing and ImageNet class names; `vitkit models --pretrained` lists it."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

import vitkit
from vitkit import hub as vhub
from vitkit import pretrained
from vitkit.cli.main import main
from vitkit.data import load_data
from vitkit.errors import CheckpointError
from vitkit.formats import google_npz
from vitkit.models import count_parameters
from vitkit.models.config import ModelConfig
from vitkit.models.vit import VisionTransformer
from vitkit.train import TrainConfig

RELEASES = pretrained.RELEASES


def stated_millions(params: str) -> tuple[float, float]:
    """("86M" -> 86, within 1), ("86.6M" -> 86.6, within 0.1): a count as precise as written."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?M", params)
    assert match, params
    decimals = len(match.group(2) or "")
    return float(match.group(0)[:-1]), 10.0 ** -decimals


@pytest.mark.parametrize("name", list(RELEASES))
def test_every_entry_is_well_formed_and_builds_on_the_meta_device(name):
    release = RELEASES[name]
    assert re.fullmatch(r"[a-z0-9_]+", name) and release.name == name
    assert release.licence and release.data and release.where and release.preprocessing.where
    if release.source.startswith(vhub.HUB_PREFIX):
        repo, revision, filename = vhub.parse_hub(release.source)
        assert repo and revision is None and filename is None
    else:
        assert release.source.startswith("https://") and release.source.endswith(".npz")
    ModelConfig(**release.preprocessing.options())  # values in range
    cfg = release.config()
    assert cfg.image_size == (release.image_size, release.image_size)
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    if release.params:
        value, within = stated_millions(release.params)
        assert abs(count_parameters(model) / 1e6 - value) < within, (count_parameters(model), release.params)


def test_the_registry_covers_the_releases_of_the_issue():
    by_source = " ".join(r.source for r in RELEASES.values())
    assert "/imagenet21k/ViT-B_16.npz" in by_source and "/imagenet21k%2Bimagenet2012/ViT-B_16.npz" in by_source
    assert {r.image_size for r in RELEASES.values() if r.data.endswith("ImageNet-1k")} >= {224, 384}
    assert any(r.name.startswith("augreg_") for r in RELEASES.values())
    assert {r.preset for r in RELEASES.values() if r.options.get("stem") == "resnet" or "_r" in r.preset} >= {
        "vit_r50_b16", "vit_r26_s32", "vit_l32"}
    deit = [r for r in RELEASES.values() if r.name.startswith("deit_")]
    assert {r.options.get("distill_token", False) for r in deit} == {True, False}
    assert any("big_vision" in r.source for r in RELEASES.values())
    assert sum(r.params is not None for r in RELEASES.values()) == len(deit)


@pytest.fixture
def release(hub, monkeypatch, tmp_path):
    """augreg_ti16_i21k_i1k_384 in miniature (Ti/16 at 32 pixels, 1000 classes, the official
    layout), served from the fake bucket; its head favours class 281."""
    torch.manual_seed(0)
    model = vitkit.create_model("vit_ti16", image_size=32, num_classes=1000, act="gelu_tanh").eval()
    with torch.no_grad():
        model.head.bias[281] = 50.0
    google_npz.write(model, tmp_path / "Ti_16.npz")
    hub.files["/augreg/Ti_16.npz"] = (tmp_path / "Ti_16.npz").read_bytes()
    entry = dataclasses.replace(RELEASES["augreg_ti16_i21k_i1k_384"], image_size=32,
                                source=hub.url + "/augreg/Ti_16.npz")
    monkeypatch.setitem(RELEASES, entry.name, entry)
    return entry, model


def test_a_release_name_loads_with_the_release_preprocessing_and_class_names(release, hub, images):
    entry, original = release
    model = vitkit.load(entry.name)
    cfg = model.config
    assert cfg.name == entry.name
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == ("bilinear", 1.0, "squash")
    assert cfg.input_mean == (0.5,) and cfg.input_std == (0.5,)
    assert len(cfg.class_names) == 1000 and cfg.class_names[281] == "tabby cat"
    with torch.no_grad():
        assert torch.allclose(model(images), original(images), rtol=1e-5, atol=1e-5)
    hub.requests.clear()
    vitkit.load(entry.name)
    assert hub.requests == []


def test_predict_with_a_release_name_prints_the_class_name(release, tmp_path, capsys):
    from PIL import Image

    entry, _ = release
    photo = tmp_path / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)).save(photo)
    assert main(["predict", entry.name, str(photo), "--topk", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"{photo}: tabby cat 1.000"


def test_a_file_that_is_not_the_release_is_refused(release, monkeypatch):
    entry, _ = release
    monkeypatch.setitem(RELEASES, entry.name, dataclasses.replace(entry, image_size=64))
    with pytest.raises(CheckpointError, match=r"is not the augreg_ti16_i21k_i1k_384 release the registry "
                                              r"describes: it has image_size \(32, 32\) \(the registry says "
                                              r"\(64, 64\)\)"):
        vitkit.load(entry.name)


def test_an_unknown_name_gets_the_closest_release_names():
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a pretrained model name; "
                                              "`vitkit models --pretrained` lists the release names; "
                                              "did you mean vit_b16_i21k_i1k_384"):
        vitkit.load("vit_b16_i21k_i1k_38")


def test_models_pretrained_lists_every_entry(capsys):
    assert vitkit.list_pretrained() == list(RELEASES)
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["pretrained"]
    assert [r["name"] for r in rows] == list(RELEASES)
    deit = next(r for r in rows if r["name"] == "deit_b16_distilled_224")
    assert deit["params"] == "87M" and deit["options"] == {"distill_token": True}
    assert deit["preprocessing"]["crop_pct"] == 0.875 and deit["licence"] == "Apache-2.0"
    assert main(["models", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "builds", "res"]
    table = {line.split()[0]: line for line in lines[1:len(RELEASES) + 1]}
    assert list(table) == list(RELEASES)
    assert table["vit_b16_i21k_i1k_384"].rstrip().endswith("imagenet21k%2Bimagenet2012/ViT-B_16.npz")


def test_fine_tuning_a_release_by_name_is_one_command(release, tmp_path, capsys):
    """The README's workflow: `vitkit train --init NAME --data FOLDER` (here the digits), then
    `vitkit predict` with the fine-tuned model: the release's architecture and resolution with a
    new head for the data's classes, the paper's fine-tuning recipe, layer-wise decay if asked."""
    from PIL import Image

    entry, _ = release
    out = tmp_path / "tuned"
    assert main(["train", "--init", entry.name, "--data", "digits", "--epochs", "1", "--layer-decay", "0.75",
                 "--out", str(out), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tuned = vitkit.load(summary["checkpoint"])
    cfg = tuned.config
    assert (cfg.width, cfg.depth, cfg.image_size, cfg.in_chans, cfg.num_classes) == (192, 12, (32, 32), 3, 10)
    assert cfg.class_names == tuple(str(i) for i in range(10)) and cfg.interpolation is None
    saved = TrainConfig.from_yaml(out / "config.yaml")
    assert (saved.init, saved.recipe, saved.optimizer, saved.layer_decay) == (entry.name, "finetune", "sgd", 0.75)
    digit = tmp_path / "digit.png"
    Image.fromarray(load_data("digits").test.images[0, 0].numpy()).save(digit)
    assert main(["predict", summary["checkpoint"], str(digit), "--topk", "1", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"][0]
    assert top["class"] in cfg.class_names


def test_the_table_in_docs_formats_md_is_the_registry():
    """docs/formats.md's table of released checkpoints states what the registry holds, row by
    row, so that neither changes without the other."""
    from pathlib import Path

    from vitkit.cli.models_cmd import _builds

    docs = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text()
    section = docs.split("## Released checkpoints", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    assert [row[0].strip("`") for row in rows] == list(RELEASES)
    for name, builds, res, data, classes, params, licence, source in rows:
        release = RELEASES[name.strip("`")]
        link = re.fullmatch(r"\[`[^`]+`\]\(([^)]+)\)|`([^`]+)`", source)
        assert link, source
        assert (builds.strip("`"), int(res), data, classes, params, licence, link.group(1) or link.group(2)) == (
            _builds(release.preset, release.options), release.image_size, release.data,
            "" if release.num_classes is None else str(release.num_classes), release.params or "",
            release.licence, release.source), name
