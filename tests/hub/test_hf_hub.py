"""`vitkit.load("hf-hub:OWNER/REPO[@REVISION][/FILE]")` through huggingface_hub against a fake
Hub on 127.0.0.1 (HF_ENDPOINT): transformers repos give transformers' logits, timm repos the
timm-semantics reference's, repos holding an official .npz the Flax reference's; the Hub cache,
revisions and offline mode behave as huggingface_hub defines them, and every failure is one
DownloadError that leaves no partial file in the cache."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save

import vitkit
from vitkit.cli.main import main
from vitkit.errors import DownloadError
from vitkit.evaluate.preprocess import prepare_images
from vitkit.pretrained import imagenet_class_names
from vitkit.progress import silenced

from ..formats.conftest import rel_diff
from ..formats.google_reference import forward as flax_forward
from ..formats.google_reference import as_old_flax, make_params, npz_bytes
from ..formats.timm_reference import forward as timm_forward
from ..formats.timm_reference import make_state
from .conftest import cache_files

TOL = 1e-5


@pytest.fixture
def transformers_repo(hub, tmp_path):
    """google/tiny-vit: a save_pretrained ViTForImageClassification with labels and a bicubic
    image processor, as transformers writes them."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, image_size=32, patch_size=8, num_labels=3,
                                    id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2})
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "repo")
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, resample=3,
                                     image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    processor.save_pretrained(tmp_path / "repo")
    commit = hub.add_folder("google/tiny-vit", tmp_path / "repo")
    return model, processor, commit


def test_transformers_repo_gives_transformers_logits_labels_and_preprocessing(transformers_repo, hub, images):
    hf_model, processor, _ = transformers_repo
    model = vitkit.load("hf-hub:google/tiny-vit")
    cfg = model.config
    assert cfg.class_names == ("cat", "dog", "fox") and cfg.name == "tiny-vit"
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == ("bicubic", 1.0, "squash")
    assert cfg.input_mean == (0.485, 0.456, 0.406) and cfg.input_std == (0.229, 0.224, 0.225)
    with torch.no_grad():
        assert rel_diff(model(images), hf_model(pixel_values=images).logits) <= TOL
    # The whole path from a photo: vitkit's resize of a 50x70 image to what the processor gives.
    from PIL import Image

    photo = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    theirs = processor(images=Image.fromarray(photo), return_tensors="pt")["pixel_values"]
    ours = prepare_images([torch.from_numpy(photo).permute(2, 0, 1)], cfg)
    # In pixel levels: Pillow resizes bytes in fixed point and rounds after each pass, torch's
    # anti-aliased bicubic (the same kernel) works in float; a wrong size, crop or filter would
    # be tens of levels off on average.
    levels = (ours - theirs).abs() * torch.tensor(cfg.input_std).view(1, 3, 1, 1) * 255
    assert levels.mean() < 0.5 and levels.max() < 6


def test_second_load_uses_the_cache(transformers_repo, hub, monkeypatch, images):
    _, _, commit = transformers_repo
    first = vitkit.load("hf-hub:google/tiny-vit")
    gets = len(hub.gets())
    assert gets == 3  # config.json, model.safetensors, preprocessor_config.json
    hub.requests.clear()
    vitkit.load("hf-hub:google/tiny-vit")
    # A branch is followed as transformers and timm follow it: metadata only, no download.
    assert hub.requests and all(method == "HEAD" for method, _ in hub.requests)
    hub.requests.clear()
    pinned = vitkit.load(f"hf-hub:google/tiny-vit@{commit}")
    assert hub.requests == []  # a commit is immutable: nothing is asked
    assert pinned.config.name == "tiny-vit"  # the repo's name, without the revision
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = vitkit.load("hf-hub:google/tiny-vit")
    assert hub.requests == []
    with torch.no_grad():
        assert torch.equal(pinned(images), first(images)) and torch.equal(offline(images), first(images))


def test_quiet_reaches_the_hubs_own_download_bars(transformers_repo, hub, monkeypatch):
    # huggingface_hub draws its bars on a terminal; under `vitkit --quiet` (progress.silenced)
    # it is told to draw none, and afterwards draws them again.
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled

    download, seen = huggingface_hub.hf_hub_download, []

    def spy(*args, **kwargs):
        seen.append(are_progress_bars_disabled())
        return download(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    with silenced():
        vitkit.load("hf-hub:google/tiny-vit")
    assert seen and all(seen)
    assert not are_progress_bars_disabled()
    seen.clear()
    vitkit.load("hf-hub:google/tiny-vit")
    assert seen and not any(seen)


def test_the_token_and_hf_home_are_honoured(transformers_repo, hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    vitkit.load("hf-hub:google/tiny-vit")
    assert set(hub.authorizations) == {"Bearer hf_secret"}
    assert (tmp_path / "hf-home" / "hub" / "models--google--tiny-vit").is_dir()
    assert not (tmp_path / "hf-cache").exists()


def timm_repo_files(tag: str, classes: int, distilled: bool = False) -> tuple[dict, dict]:
    state = make_state(seed=3, width=32, classes=classes, patch=8, grid=(4, 4), distilled=distilled)
    config = {"architecture": "vit_tiny_patch8_32", "num_classes": classes, "num_features": 32,
              "global_pool": "token", "model_args": {"num_heads": 4},
              "pretrained_cfg": {"tag": tag, "custom_load": False, "input_size": [3, 32, 32],
                                 "fixed_input_size": True, "interpolation": "bicubic", "crop_pct": 0.9,
                                 "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                 "num_classes": classes, "pool_size": None, "first_conv": "patch_embed.proj",
                                 "classifier": "head", "license": "apache-2.0"}}
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": save(state)}
    return files, state


def test_timm_repo_gives_the_timm_reference_logits_preprocessing_and_imagenet_names(hub, images):
    files, state = timm_repo_files("augreg_in21k_ft_in1k", 1000, distilled=True)
    hub.add_repo("timm/vit_tiny_patch8_32.augreg_in21k_ft_in1k", files)
    model = vitkit.load("hf-hub:timm/vit_tiny_patch8_32.augreg_in21k_ft_in1k")
    cfg = model.config
    assert cfg.num_heads == 4 and cfg.distill_token and cfg.name == "vit_tiny_patch8_32.augreg_in21k_ft_in1k"
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == ("bicubic", 0.9, "center")
    assert cfg.class_names == imagenet_class_names() and cfg.class_names[281] == "tabby cat"
    with torch.no_grad():
        assert rel_diff(model(images), timm_forward(state, images, heads=4)) <= TOL


def test_timm_repo_of_other_data_gets_no_imagenet_names(hub):
    files, _ = timm_repo_files("augreg_in21k", 1000)
    hub.add_repo("timm/vit_tiny.augreg_in21k", files)
    assert vitkit.load("hf-hub:timm/vit_tiny.augreg_in21k").config.class_names == ()


def test_repo_holding_an_official_npz(hub, monkeypatch, images):
    params = make_params("original", hybrid=(1, 2), patch=1, grid=(4, 4), seed=4)
    hub.add_repo("google/vit-npz", {"R50+ViT-B_16.npz": npz_bytes(as_old_flax(params)), "README.md": b"# weights\n"})
    ref = flax_forward(params, images.permute(0, 2, 3, 1).numpy(), "original")
    for spec in ("hf-hub:google/vit-npz", "hf-hub:google/vit-npz/R50+ViT-B_16.npz"):
        with torch.no_grad():
            assert rel_diff(vitkit.load(spec)(images), ref) <= TOL
    # Offline, the one .npz is found in the cache, without the Hub's file list.
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with torch.no_grad():
        assert rel_diff(vitkit.load("hf-hub:google/vit-npz")(images), ref) <= TOL
    assert hub.requests == []


def test_repo_with_several_npz_asks_for_one(hub):
    a, b = npz_bytes(make_params("original", seed=1)), npz_bytes(make_params("original", seed=2))
    hub.add_repo("google/many", {"ViT-B_16.npz": a, "ViT-L_16.npz": b})
    with pytest.raises(DownloadError, match="holds 2 .npz files .* name one: hf-hub:google/many/ViT-B_16.npz"):
        vitkit.load("hf-hub:google/many")
    assert vitkit.load("hf-hub:google/many/ViT-L_16.npz").config.name == "ViT-L_16"


def assert_clean(cache):
    """No partial download (huggingface_hub's *.incomplete) and no blob without its link."""
    files = cache_files(cache)
    assert not [f for f in files if f.endswith(".incomplete")], files
    blobs = {f.rsplit("/", 1)[-1] for f in files if "/blobs/" in f}
    linked = {p.resolve().name for p in cache.rglob("*") if p.is_symlink()}
    assert blobs <= linked, blobs - linked


@pytest.mark.parametrize("spec, fault, message", [
    ("hf-hub:google/nothing", None, r"no repository google/nothing on http://127.0.0.1:\d+ .*check the name"),
    ("hf-hub:google/tiny-vit/weights.npz", None, r"has no file weights.npz; check the name"),
    ("hf-hub:google/tiny-vit@v9", None, r"google/tiny-vit has no revision 'v9'"),
    ("hf-hub:google/tiny-vit", "truncate", r"the download of model.safetensors failed .*; run the command again"),
    ("hf-hub:google/tiny-vit", "corrupt", r"model.safetensors is corrupt .* was removed from the cache; run"),
    ("hf-hub:google/tiny-vit", "error", r"failed with a server error \(HTTP 503\) .*; try again later"),
    ("hf-hub:google tiny-vit", None, r"is not a Hub address; write hf-hub:OWNER/REPO"),
])
def test_failures_are_one_line_leave_the_cache_clean_and_recover(transformers_repo, hub, tmp_path, spec, fault,
                                                                 message):
    if fault:
        hub.faults["google/tiny-vit/model.safetensors"] = fault
    with pytest.raises(DownloadError, match=message) as error:
        vitkit.load(spec)
    assert "\n" not in str(error.value)
    assert_clean(tmp_path / "hf-cache")
    hub.faults.clear()
    assert vitkit.load("hf-hub:google/tiny-vit").config.class_names == ("cat", "dog", "fox")
    assert_clean(tmp_path / "hf-cache")


def test_a_transformers_model_of_another_type_is_refused_before_its_weights_are_fetched(hub):
    hub.add_repo("facebook/deit", {"config.json": json.dumps({"model_type": "deit"}).encode(),
                                   "model.safetensors": b"not fetched"})
    with pytest.raises(DownloadError, match="holds a transformers 'deit' model; vitkit reads ViT repos"):
        vitkit.load("hf-hub:facebook/deit")
    assert hub.gets() == ["/facebook/deit/resolve/main/config.json"]


def test_no_network_and_offline_with_an_empty_cache(transformers_repo, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(DownloadError, match=r"cannot reach http://127.0.0.1:9 .*set HF_HUB_OFFLINE=1"):
        vitkit.load("hf-hub:google/tiny-vit")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"config.json is not in .*hf-cache and HF_HUB_OFFLINE is set"):
        vitkit.load("hf-hub:google/tiny-vit")
    assert_clean(tmp_path / "hf-cache")


def test_every_checkpoint_command_takes_a_hub_address(transformers_repo, hub, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(2).random((40, 60, 3)) * 255).astype(np.uint8)).save(image)
    assert main(["predict", "hf-hub:google/tiny-vit", str(image), "--json", "--topk", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {t["class"] for t in out["predictions"][0]["top"]} == {"cat", "dog", "fox"}
    assert main(["convert", "hf-hub:google/tiny-vit", str(tmp_path / "m.safetensors"), "--to", "vitkit"]) == 0
    assert vitkit.load(tmp_path / "m.safetensors").config.interpolation == "bicubic"
    capsys.readouterr()
    # The feature cache knows a Hub address by its cached files.
    for _ in range(2):
        assert main(["fewshot", "hf-hub:google/tiny-vit", "--data", "digits", "--shots", "1", "--repeats", "1",
                     "--cache-dir", str(tmp_path / "features"), "--quiet", "--json"]) == 0
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 2  # train and test, made once
