"""The well-known released ViT checkpoints, by short name: `vitkit.load("vit_b16_i21k")`.

Every fact below is the release's own, from the documents named in the comments; none is
guessed, and what a release does not state is left out (None). An entry names the vitkit
preset its architecture is (plus options for a hybrid without a preset of its own), the input
resolution, the training data, the licence, where the file lives (a URL or a Hub address),
the parameter count where the release states one, and how the release preprocesses images,
which loading puts into the model's config so that predict and eval feed it what it was
trained on. The file itself still decides the architecture: loading checks it against the
entry and refuses a mismatch rather than trusting either silently.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from vitkit.errors import CheckpointError
from vitkit.models.config import ModelConfig
from vitkit.models.presets import preset_config

IMAGENET_1K = "ImageNet-1k"


@dataclass(frozen=True)
class Preprocessing:
    """How the release resizes and normalises evaluation images (ModelConfig's fields)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str
    where: str  # the document that says so

    def options(self) -> dict[str, Any]:
        return dict(input_mean=self.mean, input_std=self.std, interpolation=self.interpolation,
                    crop_pct=self.crop_pct, crop_mode=self.crop_mode)


@dataclass(frozen=True)
class Release:
    name: str
    preset: str
    image_size: int
    data: str
    licence: str
    source: str  # a URL or hf-hub:OWNER/REPO
    preprocessing: Preprocessing
    where: str  # the documents the other facts come from
    num_classes: int | None = None  # the released head's classes, where documented
    params: str | None = None  # as the release writes it, e.g. "86M"
    options: dict = field(default_factory=dict)  # ModelConfig options beyond the preset
    note: str = ""

    def config(self) -> ModelConfig:
        """The architecture the entry describes (what its file must hold)."""
        return preset_config(self.preset, image_size=self.image_size, num_classes=self.num_classes or 0,
                             **self.options)

    def apply(self, cfg: ModelConfig, source: str) -> ModelConfig:
        """`cfg` read from the release's file, checked against the entry and given the release's
        name, preprocessing and (for ImageNet-1k heads) class names."""
        expected = self.config()
        keys = ["width", "depth", "mlp_dim", "patch_size", "image_size", "stem", "resnet_layers", "distill_token"]
        if self.num_classes is not None:
            keys.append("num_classes")
        wrong = [f"{k} {getattr(cfg, k)} (the registry says {getattr(expected, k)})" for k in keys
                 if getattr(cfg, k) != getattr(expected, k)]
        if wrong:
            raise CheckpointError(f"{source} is not the {self.name} release the registry describes: it has "
                                  f"{'; '.join(wrong)}; report this, and load the file by its address meanwhile")
        options = dict(self.preprocessing.options(), name=self.name)
        if cfg.num_classes == 1000 and self.data.endswith(IMAGENET_1K) and not cfg.class_names:
            options["class_names"] = imagenet_class_names()
        return cfg.replace(**options)

    def row(self) -> dict[str, Any]:
        """The entry as plain JSON values (`vitkit models --pretrained --json`)."""
        pre = self.preprocessing
        return dict(name=self.name, preset=self.preset, options=dict(self.options), image_size=self.image_size,
                    data=self.data, num_classes=self.num_classes, params=self.params, licence=self.licence,
                    source=self.source, note=self.note or None,
                    preprocessing=dict(mean=list(pre.mean), std=list(pre.std), interpolation=pre.interpolation,
                                       crop_pct=pre.crop_pct, crop_mode=pre.crop_mode, where=pre.where),
                    where=self.where)


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in head order (data/imagenet1k_classes.txt; source and
    licence in data/IMAGENET1K_CLASSES_LICENSE.txt)."""
    text = resources.files("vitkit.data").joinpath("imagenet1k_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


# ----------------------------------------------------------------------------- Google's releases
# google-research/vision_transformer, README.md, "Available ViT models": the bucket
# gs://vit_models/imagenet21k holds "Models pre-trained on ImageNet-21k",
# gs://vit_models/imagenet21k+imagenet2012 "Models pre-trained on ImageNet-21k and fine-tuned on
# ImageNet"; "The model filenames (without the .npz extension) correspond to the
# config.model_name in vit_jax/configs/models.py" (ViT-B_16 ... ViT-H_14, R50+ViT-B_16, whose
# shapes the presets are: B/16 = width 768, depth 12, 12 heads, MLP 3072; R50+ViT-B_16 = ResNet
# stages (3, 4, 9) under 1x1 patches; R50+ViT-L_32 = stages (3, 4, 6, 3); R26+ViT-S_32 =
# (2, 2, 2, 2)). Update 29.10.2020: models "fine-tuned on ImageNet at 224x224 resolution
# (instead of default 384x384) ... have the suffix -224". The repository's LICENSE is Apache 2.0.
VIT_README = ("google-research/vision_transformer README.md (Available ViT models) and "
              "vit_jax/configs/models.py")
GOOGLE_LICENCE = "Apache-2.0"
VIT_MODELS = "https://storage.googleapis.com/vit_models/"
# vit_jax/input_pipeline.py, evaluation: `im = tf.image.resize(im, [crop_size, crop_size])` (bilinear,
# no crop), then `(im - 127.5) / 127.5`, i.e. [-1, 1].
GOOGLE_PREPROCESSING = Preprocessing(
    mean=(0.5,), std=(0.5,), interpolation="bilinear", crop_pct=1.0, crop_mode="squash",
    where="vit_jax/input_pipeline.py: tf.image.resize to the model's size, (x - 127.5) / 127.5")
# The Hugging Face model cards of the converted checkpoints (google/vit-base-patch16-224-in21k and
# its siblings) say the models were "pre-trained on ImageNet-21k ... at resolution 224x224" and
# that the release's classification heads were zeroed ("does not provide any fine-tuned heads,
# as these were zero'd by Google researchers").
I21K_CARD = "Hugging Face model card google/vit-{size}-patch{patch}-224-in21k"
ZEROED_HEAD = "the release zeroed its ImageNet-21k head: fine-tune before predicting"


def _paper_i21k(preset: str, file: str, size: str, patch: int) -> Release:
    return Release(name=f"{preset}_i21k", preset=preset, image_size=224, data="ImageNet-21k",
                   licence=GOOGLE_LICENCE, source=VIT_MODELS + "imagenet21k/" + file,
                   preprocessing=GOOGLE_PREPROCESSING,
                   where=f"{VIT_README}; resolution: {I21K_CARD.format(size=size, patch=patch)}",
                   note=ZEROED_HEAD)


def _paper_i1k(preset: str, file: str, image_size: int) -> Release:
    return Release(name=f"{preset}_i21k_i1k_{image_size}", preset=preset, image_size=image_size,
                   data=f"ImageNet-21k, fine-tuned on {IMAGENET_1K}", licence=GOOGLE_LICENCE, num_classes=1000,
                   source=VIT_MODELS + "imagenet21k%2Bimagenet2012/" + file,
                   preprocessing=GOOGLE_PREPROCESSING, where=VIT_README)


PAPER = [
    _paper_i21k("vit_b16", "ViT-B_16.npz", "base", 16),
    _paper_i21k("vit_b32", "ViT-B_32.npz", "base", 32),
    _paper_i21k("vit_l16", "ViT-L_16.npz", "large", 16),
    _paper_i21k("vit_l32", "ViT-L_32.npz", "large", 32),
    _paper_i21k("vit_h14", "ViT-H_14.npz", "huge", 14),
    # No model card covers the hybrid; timm's vision_transformer_hybrid.py lists these weights as
    # vit_base_r50_s16_224.orig_in21k (input_size 224).
    Release(name="vit_r50_b16_i21k", preset="vit_r50_b16", image_size=224, data="ImageNet-21k",
            licence=GOOGLE_LICENCE, source=VIT_MODELS + "imagenet21k/R50%2BViT-B_16.npz",
            preprocessing=GOOGLE_PREPROCESSING,
            where=f"{VIT_README} (update 1.12.2020: the R50+ViT-B/16 hybrid); resolution: timm "
                  "vision_transformer_hybrid.py, vit_base_r50_s16_224.orig_in21k"),
    _paper_i1k("vit_b16", "ViT-B_16.npz", 384),
    _paper_i1k("vit_b16", "ViT-B_16-224.npz", 224),
    _paper_i1k("vit_b32", "ViT-B_32.npz", 384),
    _paper_i1k("vit_l16", "ViT-L_16.npz", 384),
    _paper_i1k("vit_l16", "ViT-L_16-224.npz", 224),
    _paper_i1k("vit_l32", "ViT-L_32.npz", 384),
]

# "How to train your ViT?" (AugReg): the README's table of recommended checkpoints ("trained with
# AugReg that have the best pre-training metrics") gives each model's ImageNet-21k checkpoint and
# its ImageNet fine-tuning at resolution 384, all in gs://vit_models/augreg. The resolution of the
# pre-trained files is documented where timm lists the same file (timm vision_transformer.py:
# vit_{tiny,small,base}_patch16_224.augreg_in21k, num_classes=21843, input size 224).
AUGREG = VIT_MODELS + "augreg/"
AUGREG_README = "google-research/vision_transformer README.md (table of recommended AugReg checkpoints)"
_AUGREG_RUNS = {
    # preset: (run, ImageNet fine-tuning learning rate, ModelConfig options)
    "vit_l16": ("L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0", "0.01", {}),
    "vit_b16": ("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0", "0.03", {}),
    "vit_s16": ("S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", "0.03", {}),
    "vit_r50_l32": ("R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1", "0.01",
                    dict(stem="resnet", resnet_layers=(3, 4, 6, 3), patch_size=1)),
    "vit_r26_s32": ("R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", "0.01", {}),
    "vit_ti16": ("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "0.03", {}),
    "vit_b32": ("B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", "0.01", {}),
    "vit_s32": ("S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0", "0.01", {}),
}


def _augreg(preset: str) -> list[Release]:
    run, lr, options = _AUGREG_RUNS[preset]
    # R50+L/32 has no preset of its own: L/32's transformer on the R50 stem.
    base = "vit_l32" if preset == "vit_r50_l32" else preset
    releases = [Release(
        name=f"augreg_{preset[4:]}_i21k_i1k_384", preset=base, image_size=384, options=options,
        data=f"ImageNet-21k, fine-tuned on {IMAGENET_1K}", num_classes=1000, licence=GOOGLE_LICENCE,
        source=f"{AUGREG}{run}--imagenet2012-steps_20k-lr_{lr}-res_384.npz",
        preprocessing=GOOGLE_PREPROCESSING, where=AUGREG_README)]
    if preset in ("vit_ti16", "vit_s16", "vit_b16"):
        releases.append(Release(
            name=f"augreg_{preset[4:]}_i21k", preset=base, image_size=224, data="ImageNet-21k",
            num_classes=21843, licence=GOOGLE_LICENCE, source=f"{AUGREG}{run}.npz",
            preprocessing=GOOGLE_PREPROCESSING,
            where=f"{AUGREG_README}; resolution and classes: timm vision_transformer.py, "
                  f"{_TIMM_NAMES[preset]}.augreg_in21k"))
    return releases


_TIMM_NAMES = {"vit_ti16": "vit_tiny_patch16_224", "vit_s16": "vit_small_patch16_224",
               "vit_b16": "vit_base_patch16_224"}

# ----------------------------------------------------------------------------- DeiT
# facebookresearch/deit README_deit.md, "Model Zoo": models "pretrained on ImageNet 2012" with
# #params 5M / 22M / 86M (tiny / small / base), 6M / 22M / 87M distilled, 87M base 384, 88M base
# distilled 384; "This repository is released under the Apache 2.0 license". Evaluation
# (datasets.py build_transform, main.py --eval-crop-ratio default 0.875): Resize(int(input_size /
# 0.875), interpolation=3, i.e. bicubic) on the shorter side, CenterCrop(input_size), Normalize with
# timm's IMAGENET_DEFAULT_MEAN (0.485, 0.456, 0.406) and _STD (0.229, 0.224, 0.225)
# (timm/data/constants.py). The weights as safetensors: timm's deit.py default_cfgs,
# hf_hub_id 'timm/' for <model>.fb_in1k, url https://dl.fbaipublicfiles.com/deit/....
DEIT_README = "facebookresearch/deit README_deit.md (Model Zoo, License); Hub copies: timm deit.py default_cfgs"
DEIT_PREPROCESSING = Preprocessing(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bicubic", crop_pct=0.875,
    crop_mode="center", where="facebookresearch/deit datasets.py build_transform, main.py --eval-crop-ratio")


def _deit(preset: str, timm_name: str, image_size: int, params: str, distilled: bool = False) -> Release:
    return Release(
        name=f"deit_{preset[4:]}{'_distilled' if distilled else ''}_{image_size}", preset=preset,
        image_size=image_size, data=IMAGENET_1K, num_classes=1000, params=params, licence="Apache-2.0",
        source=f"hf-hub:timm/{timm_name}.fb_in1k", preprocessing=DEIT_PREPROCESSING, where=DEIT_README,
        options=dict(distill_token=True) if distilled else {})


DEIT = [
    _deit("vit_ti16", "deit_tiny_patch16_224", 224, "5M"),
    _deit("vit_s16", "deit_small_patch16_224", 224, "22M"),
    _deit("vit_b16", "deit_base_patch16_224", 224, "86M"),
    _deit("vit_b16", "deit_base_patch16_384", 384, "87M"),
    _deit("vit_ti16", "deit_tiny_distilled_patch16_224", 224, "6M", distilled=True),
    _deit("vit_s16", "deit_small_distilled_patch16_224", 224, "22M", distilled=True),
    _deit("vit_b16", "deit_base_distilled_patch16_224", 224, "87M", distilled=True),
    _deit("vit_b16", "deit_base_distilled_patch16_384", 384, "88M", distilled=True),
]

# ----------------------------------------------------------------------------- big_vision
# google-research/big_vision, big_vision/configs/proj/flexivit/README.md: "Remember that the input
# is 240px"; ImageNet-21k "ViT-B/16" and "ViT-B/30", "Apples-to-apples non-flexi baseline used
# throughout the paper", at storage.googleapis.com/big_vision/flexivit/vit_b{16,30}_i21k_300ep.npz.
# Their training config big_vision/configs/proj/flexivit/i21k_sup.py: num_classes = 21843, and
# evaluation `resize_small(res//7*8)|central_crop(res)|value_range(-1, 1)`, i.e. the shorter side to
# 272 (ops_image.py: resize_small's method is "area"), the central 240 crop, [-1, 1]. The files
# follow big_vision's ViT: the position embedding has no class-token slot. Licence: the
# repository's, Apache 2.0 (every file's header).
BIG_VISION_README = ("google-research/big_vision big_vision/configs/proj/flexivit/README.md and "
                     "i21k_sup.py")
BIG_VISION_PREPROCESSING = Preprocessing(
    mean=(0.5,), std=(0.5,), interpolation="area", crop_pct=240 / 272, crop_mode="center",
    where="big_vision configs/proj/flexivit/i21k_sup.py pp_eval, pp/ops_image.py")


def _big_vision(patch: int) -> Release:
    return Release(
        name=f"bv_vit_b{patch}_i21k_240", preset="vit_b16", image_size=240, data="ImageNet-21k",
        num_classes=21843, licence="Apache-2.0",
        source=f"https://storage.googleapis.com/big_vision/flexivit/vit_b{patch}_i21k_300ep.npz",
        preprocessing=BIG_VISION_PREPROCESSING, where=BIG_VISION_README,
        options=dict(posemb_class_slot=False, **({} if patch == 16 else dict(patch_size=patch))))


BIG_VISION = [_big_vision(16), _big_vision(30)]

RELEASES: dict[str, Release] = {r.name: r for r in [
    *PAPER, *[r for preset in _AUGREG_RUNS for r in _augreg(preset)], *DEIT, *BIG_VISION]}


def list_pretrained() -> list[str]:
    return list(RELEASES)


def suggest(name: str) -> str:
    """A hint for a name that is neither a file nor a release."""
    close = difflib.get_close_matches(name, RELEASES, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"`vitkit models --pretrained` lists the release names{hint}"

