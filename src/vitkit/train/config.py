"""The full configuration of a training run, as one dataclass that round-trips through YAML.

`None` means "pick from the data" (train/auto.py); the resolved config written to a run's
config.yaml has every value filled in, so `vitkit train --config config.yaml` reproduces it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitkit.data.augment import AugmentConfig
from vitkit.data.spec import SPLIT_FIELDS, DataSpec
from vitkit.errors import ConfigError, ConfigValueError
from vitkit.fields import check_fields
from vitkit.models.config import ModelConfig

OPTIMIZERS = ("adamw", "sgd", "muon")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FREEZE = ("none", "backbone")
RECIPES = ("default", "finetune")
DISTILL = ("none", "soft", "hard")
ADVERSARIAL = ("none", "fgsm", "pgd")
SELECT = ("last", "best")
# What a run trains for: labels (with a teacher or attacks as options), or, without labels, the
# paper's masked patch prediction or a masked autoencoder (`vitkit pretrain`).
OBJECTIVES = ("supervised", "mpp", "mae")
PRETRAIN_OBJECTIVES = ("mpp", "mae")


# A config written by vitkit is about 2 KB with some 60 values. YAML aliases let a few lines
# stand for billions of values, which any later copy of the config would write out.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000


def _count_values(obj: Any, limit: int = MAX_CONFIG_VALUES) -> int:
    """How many values `obj` holds with every alias written out, counting no further than just
    past `limit`; a structure that contains itself counts as past it."""
    sizes: dict[int, int] = {}

    def count(node: Any, open_nodes: set[int]) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in open_nodes:
            return limit + 1
        if key not in sizes:
            open_nodes.add(key)
            # A mapping's keys are plain values (YAML refuses unhashable ones): one each.
            total = 1 + (len(node) if isinstance(node, dict) else 0)
            for child in (node.values() if isinstance(node, dict) else node):
                total += count(child, open_nodes)
                if total > limit:
                    break
            open_nodes.discard(key)
            sizes[key] = total
        return sizes[key]
    return count(obj, set())


@dataclass
class TrainConfig:
    # The dataset, its split and how it is read (a source string is taken as DataSpec(source)).
    data: DataSpec = field(default_factory=DataSpec)
    out: str | None = None
    objective: str = "supervised"
    # Model: a preset name, "custom", or "auto" (chosen from the data); options override it.
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    freeze: str = "none"
    # "default" (from scratch) or "finetune" (the paper's fine-tuning); None: finetune with --init.
    recipe: str | None = None

    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    # Layer-wise learning-rate decay (BEiT, MAE fine-tuning): block i of L learns at
    # lr * layer_decay ** (L - i), the stem and embeddings at lr * layer_decay ** (L + 1). None: off.
    layer_decay: float | None = None
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float | None = None
    schedule: str = "cosine"
    schedule_unit: str = "step"
    min_lr_ratio: float = 0.0
    label_smoothing: float | None = None
    grad_clip: float | None = None
    accum_steps: int = 1
    ema: float = 0.0
    early_stop: int = 0
    # The run's result: "last" (the model when training ends) or "best" (best validation
    # accuracy); None picks best with early stopping, else last (train/auto.py).
    select: str | None = None
    # Also write checkpoints/last.safetensors every N optimiser updates (0: at epoch ends only),
    # so a killed run loses at most N updates (docs/reliability.md).
    checkpoint_every: int = 0
    # Skip an update whose loss (or clipped gradient norm) is NaN/inf instead of stopping.
    skip_nonfinite: bool = False
    # Seconds of training the picked epochs must fit, from the speed measured on the run's
    # first steps (only when epochs are picked). None: 60 for sets under 5,000 images, no limit
    # for larger ones; 0: no limit (train/auto.py).
    time_budget: float | None = None
    # Stop when the validation loss has not fallen for this many epochs, with a quarter of the
    # epochs or more to go (the best validation epoch's model is then the result). None:
    # max(20, 50% of the epochs) for runs of 40 epochs or more, off for shorter ones; 0: off.
    plateau_stop: int | None = None

    augment: dict[str, Any] = field(default_factory=dict)

    precision: str = "auto"
    compile: bool = False
    device: str = "auto"
    # Under torchrun: shard parameters, gradients and optimiser state with FSDP2 instead of
    # replicating the model with DDP (docs/distributed.md).
    fsdp: bool = False
    eval_batch_size: int = 512
    seed: int = 0
    # Train on this stratified share of the training split (same images for every seed).
    train_fraction: float = 1.0
    image_size: int | None = None
    # Streaming a shard folder (`vitkit shard`): the DataLoader processes that decode it (None:
    # one per CPU, at most 4; the batches do not depend on it) and the shuffle buffer in images.
    workers: int | None = None
    shuffle_buffer: int = 1000

    # Objectives (vitkit.objectives): knowledge distillation through a distillation token,
    # adversarial training. alpha and tau default to DeiT's for the kind of distillation.
    teacher: str | None = None
    distill: str = "none"
    distill_alpha: float | None = None
    distill_tau: float | None = None
    adversarial: str = "none"
    adv_eps: float = 8 / 255
    adv_steps: int = 7
    adv_step_size: float | None = None
    adv_ratio: float = 0.5

    # Self-supervised objectives (`vitkit pretrain`). MAE: the share of hidden patches, the
    # decoder's size, and whether the pixels it reconstructs are normalised per patch.
    mask_ratio: float = 0.75
    decoder_width: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 2
    norm_pix: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.data, DataSpec):
            self.data = DataSpec.of(self.data)
        if isinstance(self.betas, (list, tuple)):
            self.betas = tuple(float(b) if isinstance(b, int) and not isinstance(b, bool) else b
                               for b in self.betas)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        check_fields(type(self), values, "training")
        self.validate()

    def validate(self) -> None:
        def choice(name, options):
            value = getattr(self, name)
            if value is not None and value not in options:
                raise ConfigValueError(f"{name}={value!r} is not one of {', '.join(options)}")

        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("schedule_unit", ("step", "epoch"))
        choice("precision", PRECISIONS)
        choice("freeze", FREEZE)
        choice("recipe", RECIPES)
        choice("distill", DISTILL)
        choice("adversarial", ADVERSARIAL)
        choice("select", SELECT)
        choice("objective", OBJECTIVES)
        positive = ("epochs", "batch_size", "accum_steps", "eval_batch_size", "shuffle_buffer",
                    "decoder_width", "decoder_depth", "decoder_heads")
        for name in positive:
            value = getattr(self, name)
            if value is not None and int(value) <= 0:
                raise ConfigValueError(f"{name} must be a positive integer, got {value}")
        nonneg = ("lr", "weight_decay", "warmup_epochs", "grad_clip", "early_stop", "checkpoint_every", "workers",
                  "time_budget", "plateau_stop")
        for name in nonneg:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigValueError(f"{name} must be >= 0, got {value}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigValueError(f"layer_decay must be in (0, 1] (1 turns it off), got {self.layer_decay}")
        if self.lr == 0:
            raise ConfigValueError("lr must be positive")
        if self.optimizer == "muon" and self.fsdp:
            raise ConfigValueError("--optimizer muon orthogonalises whole weight matrices, which --fsdp splits "
                              "across processes; leave out --fsdp (DDP keeps them whole) or use --optimizer adamw")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigValueError(f"ema must be in [0, 1) (0 turns it off), got {self.ema}")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self.data, name) < 0.5:
                raise ConfigValueError(f"{name} must be in [0, 0.5), got {getattr(self.data, name)}")
        if (self.distill != "none") != bool(self.teacher):
            raise ConfigValueError("distillation needs both --teacher CKPT and --distill soft|hard")
        if self.distill_alpha is not None and not 0.0 <= self.distill_alpha <= 1.0:
            raise ConfigValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_tau is not None and self.distill_tau <= 0:
            raise ConfigValueError(f"distill_tau must be positive, got {self.distill_tau}")
        if self.adv_eps < 0 or self.adv_steps < 1 or (self.adv_step_size is not None and self.adv_step_size <= 0):
            raise ConfigValueError("adversarial training needs adv_eps >= 0, adv_steps >= 1 and a positive "
                              "adv_step_size")
        if not 0.0 <= self.adv_ratio <= 1.0:
            raise ConfigValueError(f"adv_ratio (the adversarial share of the loss) must be in [0, 1], got {self.adv_ratio}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ConfigValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.freeze == "backbone" and not self.init:
            raise ConfigValueError("--freeze backbone needs --init CKPT (a trained backbone to keep)")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.objective != "supervised":
            used = [flag for flag, on in (("--teacher", bool(self.teacher)), ("--adversarial", self.adversarial != "none"),
                                          ("--freeze backbone", self.freeze != "none")) if on]
            if used:
                raise ConfigValueError(f"{' and '.join(used)} train(s) a classifier on labels; the {self.objective} "
                                  "objective pre-trains without them: leave it out here and use it when "
                                  "fine-tuning with `vitkit train --init`")

    @property
    def pretraining(self) -> bool:
        """Whether the run learns without labels (a headless model comes out)."""
        return self.objective in PRETRAIN_OBJECTIVES

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a mapping of option: value, not {type(d).__name__}")
        d = _upgrade(d)
        d = {**d, "data": DataSpec.of(d.get("data", {}))}
        check_fields(cls, d, "training")
        check_fields(ModelConfig, d.get("model_options", {}), "model")
        check_fields(AugmentConfig, d.get("augment", {}), "augmentation")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad training config: {e}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is {size:,} bytes; a training config is a few kilobytes, so this is "
                              "not one")
        try:
            d = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, ValueError) as e:  # ValueError: undecodable text, integers too long to read
            raise ConfigError(f"{path} is not valid YAML: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
        except RecursionError:
            raise ConfigError(f"{path} is not a training config: its YAML is nested too deeply") from None
        if _count_values(d) > MAX_CONFIG_VALUES:
            raise ConfigError(f"{path} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases "
                              "repeating each other?); a training config has a few hundred")
        try:
            return cls.from_dict(d or {})
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A config in today's layout from one that older vitkit wrote: the data source as a string
    with its split options beside it (before the DataSpec), or a `vitkit pretrain` config (its
    own loop's, before pre-training ran on the Trainer), which has the same fields."""
    d = dict(d)
    if d.get("objective") in PRETRAIN_OBJECTIVES and "optimizer" not in d:
        # `vitkit pretrain` always used AdamW, and its model's head (sized for the data's classes)
        # was dropped at the end: the encoder is headless.
        d["optimizer"] = "adamw"
        if isinstance(d.get("model_options"), dict) and "num_classes" in d["model_options"]:
            d["model_options"] = {**d["model_options"], "num_classes": 0}
    if not isinstance(d.get("data", {}), dict) or any(name in d for name in SPLIT_FIELDS):
        source = d.get("data", DataSpec.source)
        spec = source if isinstance(source, dict) else {"source": source}
        d["data"] = {**spec, **{name: d.pop(name) for name in SPLIT_FIELDS if name in d}}
    return d
