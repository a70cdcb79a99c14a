"""Defaults picked from the data, so a new dataset trains well with nothing but `--data`.

Every choice is returned as a note and printed, and the resolved values are written to the
run's config.yaml.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
import torch.nn.functional as F

from vitkit.data.augment import default_augment
from vitkit.data.dataset import DataSplits
from vitkit.data.shards import ShardedSplits, default_workers
from vitkit.errors import ConfigError
from vitkit.fields import as_pair
from vitkit.formats import load as load_checkpoint
from vitkit.models import parameters_of
from vitkit.models.config import ModelConfig
from vitkit.models.presets import preset_config
from vitkit.objectives.distill import DEFAULT_ALPHA, DEFAULT_TAU
from vitkit.train.config import TrainConfig
from vitkit.train.init_model import INIT_OVERRIDES

# Compact transformers for small datasets, where even ViT-Ti/16's 5.7 M parameters overfit
# and cost minutes per epoch on a laptop CPU. Measured on the digits: docs/training.md.
TINY_DATA_MODEL = dict(width=64, depth=4, num_heads=4, mlp_dim=128)  # < 5,000 images
SMALL_DATA_MODEL = dict(width=192, depth=6, num_heads=3, mlp_dim=768)  # < 20,000 images


def pick_patch_size(side: int) -> int:
    """Patch size for a model input of `side` pixels: a grid of 4 to 8 tokens a side for small
    inputs, the paper's /16 from 128 pixels on."""
    for limit, patch in ((32, 4), (64, 8)):
        if side <= limit:
            return patch
    return 16


def model_input_size(data_size: tuple[int, int]) -> tuple[int, int]:
    """Large images are trained at 224 (the paper's pre-training resolution). Tiny ones (16
    pixels or less) are upsampled twice: a 4x4 patch of the upsampled image then sees a 2x2
    patch of the original plus half of each neighbour, overlapping patches that learned faster
    on the digits (docs/training.md). Others are kept, rounded down to a multiple of the patch."""
    side = max(data_size)
    if side > 224:
        return (224, 224)
    patch = pick_patch_size(2 * side if side <= 16 else side)
    if side <= 16:
        # Doubled, then up to whole patches (a 7x7 image -> 16x16, a 1x1 one -> one 4x4 patch).
        return tuple(-(-2 * s // patch) * patch for s in data_size)
    return tuple(max(patch, s // patch * patch) for s in data_size)


def init_model_config(cfg: TrainConfig, data: DataSplits | ShardedSplits, init: ModelConfig,
                      notes: list[str]) -> ModelConfig:
    """The model of a run that starts from the checkpoint --init, whose config is `init`: its
    architecture as it is, at its own resolution unless --image-size asks for another, its input
    channels (the data is converted to them), a new head for the data's classes; of the model
    options only the regularisation ones apply. Every adaptation is said in `notes`."""
    options = dict(cfg.model_options)
    classes = 0 if cfg.pretraining else data.num_classes
    if "num_classes" in options and int(options.pop("num_classes")) != classes:
        raise ConfigError(f"--num-classes does not match the data, which has {classes}; leave it out")
    if cfg.model not in ("auto", "custom"):
        raise ConfigError(f"--model {cfg.model} and --init: the model is the checkpoint's; leave out --model")
    fixed = sorted(set(options) - set(INIT_OVERRIDES) - {"image_size"})
    if fixed:
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in fixed)} cannot change the architecture of "
                          f"the checkpoint {cfg.init}; with --init only --image-size and "
                          f"{', '.join('--' + k.replace('_', '-') for k in INIT_OVERRIDES)} apply")
    size = as_pair(options.pop("image_size", None) or cfg.image_size or init.image_size)
    model = init.replace(image_size=size, num_classes=classes, class_names=() if cfg.pretraining
                         else tuple(data.class_names), interpolation=None, crop_pct=None, crop_mode=None, **options)
    params = parameters_of(model)
    h, w = size
    notes.append(f"model: the --init checkpoint {cfg.init}: width {model.width}, depth {model.depth}, "
                 f"{model.num_heads} heads, patch {model.patch_size}{' on a ResNet stem' if model.stem == 'resnet' else ''}, "
                 f"{h}x{w} inputs, {params:,} parameters")
    if size != tuple(init.image_size):
        notes.append(f"resolution: {init.image_size[0]}x{init.image_size[1]} -> {h}x{w} (--image-size): position "
                     f"embeddings resampled from a {init.grid_size[0]}x{init.grid_size[1]} to a "
                     f"{model.grid_size[0]}x{model.grid_size[1]} grid of patches")
    if tuple(data.image_size) != size:
        notes.append(f"images resized from {data.image_size[0]}x{data.image_size[1]} to the model's {h}x{w}")
    if data.channels != model.in_chans:
        notes.append("channels: grey images fed as RGB (R = G = B), the checkpoint's 3 channels" if data.channels == 1
                     else "channels: RGB images fed as grey (the channels' mean), the checkpoint's 1 channel")
    if cfg.pretraining:
        notes.append("head: none (pre-training)" + (f"; the checkpoint's {init.num_classes}-class head is dropped"
                                                    if init.num_classes else ""))
    else:
        dropped = f"the checkpoint's {init.num_classes}-class head is dropped" if init.num_classes else \
            "the checkpoint had none"
        notes.append(f"head: a new zero-initialised head for {classes} classes ({dropped})")
    if options:
        notes.append("regularisation: " + ", ".join(f"{k} {v}" for k, v in options.items()))
    return model


# A round trip through images f times smaller that loses less than this share of their variance
# says they hold no more detail than that smaller size: they were upscaled (or are that smooth).
# Measured (benchmarks/detail_loss.py): the digits upscaled 2x, 4x and 8x lose at most 1.6%, 2.0%
# and 2.1% there (nearest, bilinear, bicubic, Lanczos); images with detail at their own size lose
# 5.8-33% at f = 2 (the LFW faces at 25x25, whole scenes at 32x32, the digits at 8x8), crops of
# large photos 1.2% at f = 2 and 3.05% at f = 4.
DETAIL_LOSS_LIMIT = 0.025
DETAIL_SAMPLE = 256


def even_sample(images: torch.Tensor) -> torch.Tensor:
    """Up to DETAIL_SAMPLE images spread evenly over a set (the same ones every time)."""
    return images[torch.linspace(0, images.shape[0] - 1, min(DETAIL_SAMPLE, images.shape[0])).long()]


def detail_loss(images: torch.Tensor, factor: int) -> float:
    """The share of the variance of uint8 images (N, C, H, W) lost when they are shrunk `factor`
    times (area average) and brought back (the best of nearest, bilinear and bicubic)."""
    x = images.float() / 255
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // factor), max(1, w // factor)), mode="area")
    variance = float(x.var()) or 1.0
    lost = []
    for mode in ("nearest", "bilinear", "bicubic"):
        back = F.interpolate(small, size=(h, w), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        lost.append(float(((x - back.clamp(0, 1)) ** 2).mean()) / variance)
    return min(lost)


def detail_size(images: torch.Tensor, size: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """The smallest size (H / f, W / f), f = 1..8 dividing both sides, at least 8 pixels a side,
    that keeps the training images' detail (`detail_loss` under DETAIL_LOSS_LIMIT, on an even
    sample of up to 256 of them), and the share of variance lost there."""
    sample = even_sample(images)
    best, lost = size, 0.0
    for factor in range(2, 9):
        if min(size) // factor < 8:
            break
        if size[0] % factor or size[1] % factor:
            continue
        loss = detail_loss(sample, factor)
        if loss < DETAIL_LOSS_LIMIT:
            best, lost = (size[0] // factor, size[1] // factor), loss
    return best, lost


def image_channels(data: DataSplits | ShardedSplits) -> int:
    """The channels the images really have: 1 for RGB images whose three channels are equal
    everywhere (on an even sample of 256: grey images stored as colour, e.g. in the CIFAR
    layout), which then train as grey, with grey images' augmentation."""
    if data.channels != 3 or not isinstance(data, DataSplits) or not len(data.train):
        return data.channels
    images = data.train.images
    sample = even_sample(images)
    return 1 if bool((sample[:, 0] == sample[:, 1]).all() and (sample[:, 1] == sample[:, 2]).all()) else 3


def resolve_model(cfg: TrainConfig, data: DataSplits | ShardedSplits, notes: list[str]) -> ModelConfig:
    options = dict(cfg.model_options)
    # A pre-trained encoder has no classifier: its head comes with fine-tuning.
    classes = 0 if cfg.pretraining else data.num_classes
    channels = image_channels(data)
    if channels != data.channels and "in_chans" not in options:
        notes.append("images: RGB with three equal channels, that is grey: the model takes one channel (--in-chans 3 "
                      "for three)")
    else:
        channels = data.channels
    for key, have in (("num_classes", classes), ("in_chans", channels)):
        if key in options and int(options[key]) != have:
            raise ConfigError(f"--{key.replace('_', '-')} {options[key]} does not match the data, which has "
                              f"{have}; leave it out and vitkit takes it from the data")
    image_size = options.pop("image_size", None) or cfg.image_size
    detail = tuple(data.image_size)
    if image_size is None:
        if isinstance(data, DataSplits) and len(data.train):
            detail, lost = detail_size(data.train.images, detail)
            if detail != tuple(data.image_size):
                notes.append(f"images: {data.image_size[0]}x{data.image_size[1]} with the detail of {detail[0]}x"
                             f"{detail[1]} (shrinking them there and back loses {100 * lost:.1f}% of their "
                             "variance: upscaled, or that smooth); sized from that")
        image_size = model_input_size(detail)
    side = max(as_pair(image_size))
    base = dict(image_size=image_size, in_chans=channels, num_classes=classes,
                class_names=() if cfg.pretraining else tuple(data.class_names))
    n = len(data.train)
    if cfg.model == "custom" or (cfg.model == "auto" and n < 20_000):
        shape = {**(TINY_DATA_MODEL if n < 5_000 else SMALL_DATA_MODEL),
                 "patch_size": pick_patch_size(side), **options}
        model = ModelConfig.from_dict({**shape, **base})
        if cfg.model == "auto":
            h, w = model.image_size
            resized = "" if (h, w) == data.image_size else f" (images resized from {data.image_size[0]}x{data.image_size[1]})"
            notes.append(f"model: {n} training images -> a compact ViT: width {model.width}, depth "
                         f"{model.depth}, {model.num_heads} heads, patch {model.patch_size} on {h}x{w} "
                         f"inputs{resized}")
        return model
    name = cfg.model
    if name == "auto":
        name = "vit_ti16" if n < 200_000 else "vit_s16"
        options.setdefault("patch_size", pick_patch_size(side))
        notes.append(f"model: {n} training images -> {name} with patch {options['patch_size']}")
    return preset_config(name, **{**base, **options})


def distillation_defaults(cfg: TrainConfig, notes: list[str], init: ModelConfig | None = None) -> TrainConfig:
    """With a teacher: DeiT's alpha and tau for the kind of distillation, and a distillation
    token for a student trained from scratch (one given by --init must have one)."""
    if cfg.distill == "none":
        return cfg
    changes: dict = {}
    if cfg.distill_alpha is None:
        changes["distill_alpha"] = DEFAULT_ALPHA[cfg.distill]
    if cfg.distill_tau is None:
        changes["distill_tau"] = DEFAULT_TAU
    if init is not None:
        if not init.distill_token:
            raise ConfigError(f"--teacher needs a student with a distillation token, and {cfg.init} has "
                              "none; train the student from scratch (leave out --init)")
    elif not cfg.model_options.get("distill_token"):
        notes.append("distillation: the student gets a distillation token (distill_token=True)")
        changes["model_options"] = {**cfg.model_options, "distill_token": True}
    return cfg.replace(**changes) if changes else cfg


# The time a default run on a small set should take on a 2-core laptop CPU: about a minute.
SMALL_SET_BUDGET_S = 60.0
# A plan that overshoots the budget by less than this is kept as it is.
BUDGET_SLACK = 1.25
MIN_EPOCHS = 5


def time_budget(cfg: TrainConfig, num_train: int) -> float:
    """Seconds the picked epochs must fit (0: no limit)."""
    if cfg.time_budget is not None:
        return cfg.time_budget
    return SMALL_SET_BUDGET_S if num_train < 5_000 else 0.0


def fit_epochs(planned: int, epoch_seconds: float, budget: float) -> tuple[int, str]:
    """The epochs to train of `planned`, at `epoch_seconds` each as measured, within `budget`
    seconds, and the note that says so."""
    need = planned * epoch_seconds
    if not budget or need <= budget * BUDGET_SLACK:
        limit = f" of the {budget:.0f} s budget" if budget else ""
        return planned, (f"time: {planned} epochs, about {_duration(need)}{limit} at {epoch_seconds:.2g} s an "
                         "epoch measured on this machine")
    epochs = max(MIN_EPOCHS, min(planned, int(budget // epoch_seconds)))
    return epochs, (f"time: {planned} epochs would take about {_duration(need)} at {epoch_seconds:.2g} s an epoch "
                    f"measured on this machine; {epochs} fit the {budget:.0f} s budget (about "
                    f"{_duration(epochs * epoch_seconds)}; --time-budget SECONDS for another, --epochs N to choose)")


def busy_note() -> str | None:
    """A word when other work loads the CPUs, which slows this run and so shortens its picks."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # A run's own threads load the machine too: busy means at least half as much again.
    if load <= 1.5 * cpus:
        return None
    return (f"the machine is busy (load average {load:.1f} on {cpus} CPU{'s' * (cpus > 1)}): the speed measured, "
            "and the epochs that fit the budget, are lower than on an idle machine")


def plateau_patience(cfg: TrainConfig, epochs: int) -> int:
    """Epochs without a lower validation loss after which a run stops (0: never). Picked long
    enough that runs whose validation loss falls again as the learning rate decays do not stop:
    on the digits its longest stretch without a new low was 22 of 100 epochs (seeds 0-2), on a
    16x16 copy of them 38 (epoch 16 to 54, in the noisy first half of the schedule)."""
    if cfg.plateau_stop is not None:
        return cfg.plateau_stop
    return max(20, math.ceil(0.5 * epochs)) if epochs >= 40 else 0


def default_warmup(epochs: int, finetune: bool) -> float:
    return 0.5 if finetune else min(5.0, max(1.0, round(epochs * 0.025)))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def describe_augment(aug: dict) -> str:
    """The options that are on, in words."""
    parts = [f"{k} {aug[k]}" for k in ("rotate", "scale", "translate", "elastic") if aug.get(k)]
    if aug.get("crop") == "random" and aug.get("crop_padding"):
        parts.append(f"random crop (pad {aug['crop_padding']})")
    elif aug.get("crop") == "resized":
        parts.append(f"random resized crop (scale {tuple(aug['resized_scale'])})")
    if aug.get("flip"):
        parts.append("flip")
    if aug.get("randaugment"):
        parts.append(f"RandAugment {aug['randaugment']} ops m{aug['randaugment_magnitude']}")
    parts += [f"{k} {aug[k]}" for k in ("mixup", "cutmix", "erasing") if aug.get(k)]
    return ", ".join(parts) or "none"


def resolve(cfg: TrainConfig, data: DataSplits | ShardedSplits, init: ModelConfig | None = None
            ) -> tuple[TrainConfig, ModelConfig, list[str]]:
    """Fill every `None` of `cfg` from the data (and the config `init` of the --init
    checkpoint); returns the resolved config, the model config and the notes that explain the
    choices."""
    notes: list[str] = []
    if cfg.init and init is None:
        init = load_checkpoint(cfg.init).config
    cfg = distillation_defaults(cfg, notes, init)
    model_cfg = init_model_config(cfg, data, init, notes) if init is not None else resolve_model(cfg, data, notes)
    n = len(data.train)
    if cfg.recipe is None:
        # Fine-tuning a checkpoint: the paper's recipe (SGD, no weight decay, clip 1, short).
        cfg = cfg.replace(recipe="finetune" if cfg.init and not cfg.pretraining else "default")
        if cfg.recipe == "finetune":
            notes.append("recipe: finetune, the paper's for a checkpoint given by --init (SGD with momentum 0.9, "
                         "no weight decay, clipping at 1, cosine; --recipe default trains as from scratch)")
    finetune = cfg.recipe == "finetune"
    changes: dict = {}

    tiny = n < 5_000
    if cfg.batch_size is None:
        # The compact model of tiny sets is cheap per image and costly per step, so batches of
        # 128 let it see twice the images of batches of 32 in the same minute, which scored
        # higher on the digits (docs/training.md); large sets want big batches' throughput.
        changes["batch_size"] = 128 if tiny else (64 if n < 20_000 else 256)
    batch = changes.get("batch_size", cfg.batch_size)
    if cfg.epochs is None:
        # About 125k image presentations on tiny sets (100 epochs of the digits), 50k otherwise;
        # 20 to 300 epochs.
        seen = 125_000 if tiny else 50_000
        epochs = 10 if finetune else int(min(300, max(20, math.ceil(seen / max(n, 1)))))
        changes["epochs"] = epochs
        notes.append(f"epochs: {epochs} for {n} training images")
    if cfg.optimizer is None:
        # Tiny sets: Muon for the blocks' weight matrices (AdamW for the rest) made a sixth fewer
        # test errors than AdamW alone on the digits, at the same learning rate and within the
        # same minute (docs/training.md, sixth round). It needs whole matrices, so not under --fsdp.
        # Muon was measured for supervised training only; pre-training keeps AdamW (the paper's).
        muon = tiny and not cfg.fsdp and not cfg.pretraining
        changes["optimizer"] = "sgd" if finetune else ("muon" if muon else "adamw")
        if changes["optimizer"] == "muon":
            notes.append(f"optimizer: Muon for the blocks' weight matrices, AdamW for the rest, for "
                         f"{n} training images (--optimizer adamw is the paper's)")
    optimizer = changes.get("optimizer", cfg.optimizer)
    if cfg.lr is None:
        # DeiT's 5e-4 per 512 images for large sets; the compact models of small sets train
        # stably and faster at a higher rate.
        if optimizer == "sgd":
            lr = 0.01
        else:
            lr = 6e-3 if tiny else (1e-3 if n < 20_000 else 5e-4 * batch / 512)
        changes["lr"] = lr
    if cfg.weight_decay is None:
        # The compact model of tiny sets, trained for many epochs, generalised better with
        # twice DeiT's 0.05 (docs/training.md, third tuning round).
        changes["weight_decay"] = 0.0 if optimizer == "sgd" else (0.1 if tiny else 0.05)
    if cfg.warmup_epochs is None:
        epochs = changes.get("epochs", cfg.epochs or 1)
        changes["warmup_epochs"] = default_warmup(epochs, finetune)
    if cfg.label_smoothing is None:
        changes["label_smoothing"] = 0.0 if finetune or cfg.pretraining else 0.1
    if cfg.grad_clip is None:
        changes["grad_clip"] = 1.0
    if cfg.workers is None:
        changes["workers"] = default_workers()
        if isinstance(data, ShardedSplits):
            notes.append(f"workers: {changes['workers']} DataLoader processes decode the shards")
    if cfg.select is None:
        # The learning rate decays to zero, so the last model is the one training aimed at; a
        # small validation set picks the "best" epoch noisily (on the digits the last model
        # beat the best-validation one by 0.5 points on average over 14 runs,
        # docs/training.md). Early stopping ends before that decay, so there the best epoch
        # is the result.
        changes["select"] = "best" if cfg.early_stop else "last"
    # What the images are (grey scans or colour photos) decides, not the channels a model takes.
    picked = dataclasses.asdict(default_augment(model_cfg.image_size, 1 if image_channels(data) == 1 else 3, n))
    picked.pop("label_smoothing")
    if cfg.pretraining:
        # Mixup and CutMix mix labels, which pre-training has none of.
        picked.update(mixup=0.0, cutmix=0.0)
    unknown = sorted(set(cfg.augment) - set(picked))
    if unknown:
        raise ConfigError(f"unknown augmentation option(s): {', '.join(unknown)}")
    changes["augment"] = {**picked, **cfg.augment}
    notes.append("augmentation: " + describe_augment(changes["augment"]))
    if init is None:
        # The whole architecture goes into config.yaml, so `--config` rebuilds exactly this model.
        options = model_cfg.to_dict()
        options.pop("class_names")
        changes.update(model="custom", model_options=options)
    else:
        # The architecture is the checkpoint's: config.yaml records what the run changed of it.
        changes.update(model="auto", image_size=model_cfg.image_size[0] if model_cfg.image_size[0] ==
                       model_cfg.image_size[1] else cfg.image_size,
                       model_options={k: getattr(model_cfg, k) for k in INIT_OVERRIDES if k in cfg.model_options})
    return cfg.replace(**changes), model_cfg, notes
