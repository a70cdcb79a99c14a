"""The architecture of a model as one typed, JSON-serialisable dataclass.

Every variant the paper studies is a value here, never a separate class. The config is
saved inside every checkpoint, so a file alone rebuilds its model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from vitkit.errors import ConfigError, ConfigValueError
from vitkit.fields import as_pair, check_fields

POOLS = ("token", "gap", "map")
POSEMBS = ("none", "learned1d", "learned2d", "sincos2d", "relative")
POSEMB_WHERE = ("stem", "every_layer", "every_layer_shared")
ACTS = ("gelu", "gelu_tanh")
STEMS = ("patch", "resnet")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
CROP_MODES = ("center", "squash")

# Which placements each kind supports (paper appendix D.4, Table 8; "n/a" cells are refused).
_WHERE_FOR_KIND = {
    "none": ("stem",),
    "learned1d": POSEMB_WHERE,
    "learned2d": POSEMB_WHERE,
    "sincos2d": ("stem", "every_layer_shared"),
    "relative": ("stem",),
}


@dataclass
class ModelConfig:
    """Architecture of a Vision Transformer (SPEC section 1)."""

    image_size: tuple[int, int] | int = (224, 224)  # an int is a square
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: str = "token"
    posemb: str = "learned1d"
    posemb_where: str = "stem"
    # Google's checkpoints give the class token a position embedding; big_vision and
    # timm's `no_embed_class` models add it to the patch tokens only.
    posemb_class_slot: bool = True
    # timm's average-pooled models normalise the pooled vector ("fc_norm") instead of the
    # tokens before pooling: the same LayerNorm, applied after pool="gap".
    norm_after_pool: bool = False
    representation_size: int | None = None
    distill_token: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    act: str = "gelu"
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    stem: str = "patch"
    # Hybrid stem (stem="resnet"): units per ResNet stage and the root width.
    resnet_layers: tuple[int, ...] = ()
    resnet_width: int = 64
    # Resample position embeddings on the fly when the input size differs.
    dynamic_image_size: bool = False
    # What the model expects of its input (not applied in forward): pixels in [0, 1] are
    # normalised as (x - mean) / std per channel; one value broadcasts over channels.
    # The default maps [0, 1] to [-1, 1], as the official models do.
    input_mean: tuple[float, ...] = (0.5,)
    input_std: tuple[float, ...] = (0.5,)
    # How a released model's evaluation images were resized, so that predict and eval feed it
    # what it was trained on; None on all three for models trained here (vitkit's own resizing).
    # Resample with `interpolation` to image_size / crop_pct: the shorter side, aspect kept, with
    # crop_mode "center" (timm's default), both sides with "squash"; then crop the centre.
    interpolation: str | None = None
    crop_pct: float | None = None
    crop_mode: str | None = None
    class_names: tuple[str, ...] = ()
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Built from Python as well as from files: every field of its annotated type, or one
        # ConfigTypeError naming it (a width of "64" failed deep inside torch).
        check_fields(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "model")
        self.image_size = as_pair(self.image_size)
        self.resnet_layers = tuple(int(n) for n in self.resnet_layers)
        self.input_mean = tuple(float(v) for v in self.input_mean)
        self.input_std = tuple(float(v) for v in self.input_std)
        if self.crop_pct is not None:
            self.crop_pct = float(self.crop_pct)
        self.class_names = tuple(str(v) for v in self.class_names)
        try:
            self.validate()
        except ConfigError as e:  # every value validate() refuses is an argument's value
            raise ConfigValueError(str(e)) from None

    # ----------------------------------------------------------------- derived values
    @property
    def stem_stride(self) -> int:
        """Pixels per token along each side."""
        if self.stem == "resnet":
            return self.patch_size * 4 * 2 ** (len(self.resnet_layers) - 1)
        return self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.image_size
        return (h // self.stem_stride, w // self.stem_stride)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        """Class and distillation tokens placed before the patch tokens."""
        return int(self.pool == "token") + int(self.distill_token)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(options)}")

        choice("pool", POOLS)
        choice("posemb", POSEMBS)
        choice("posemb_where", POSEMB_WHERE)
        choice("act", ACTS)
        choice("stem", STEMS)
        if self.posemb_where not in _WHERE_FOR_KIND[self.posemb]:
            raise ConfigError(
                f"posemb={self.posemb!r} cannot be placed at posemb_where={self.posemb_where!r}; "
                f"use one of {', '.join(_WHERE_FOR_KIND[self.posemb])}"
            )
        for name in ("patch_size", "in_chans", "width", "num_heads", "mlp_dim"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        # depth 0 with stem="resnet" and pool="gap" is the paper's plain ResNet baseline.
        if self.depth < 0:
            raise ConfigError(f"depth must be >= 0, got {self.depth}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0 means no head), got {self.num_classes}")
        if self.width % self.num_heads:
            raise ConfigError(
                f"width {self.width} is not divisible by num_heads {self.num_heads}; "
                "choose a head count that divides the width"
            )
        if self.posemb == "learned2d" and self.width % 2:
            raise ConfigError("posemb='learned2d' needs an even width (half for rows, half for columns)")
        if self.posemb == "sincos2d" and self.width % 4:
            raise ConfigError("posemb='sincos2d' needs a width divisible by 4")
        if self.stem == "resnet" and not self.resnet_layers:
            raise ConfigError("stem='resnet' needs resnet_layers, e.g. (3, 4, 9) for R50")
        for name in ("dropout", "attn_dropout", "drop_path"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {rate}")
        for name in ("input_mean", "input_std"):
            if len(getattr(self, name)) not in (1, self.in_chans):
                raise ConfigError(f"{name} needs 1 or in_chans={self.in_chans} values")
        if any(s <= 0 for s in self.input_std):
            raise ConfigError("input_std values must be positive")
        resizing = (self.interpolation, self.crop_pct, self.crop_mode)
        if any(v is not None for v in resizing):
            if any(v is None for v in resizing):
                raise ConfigError("interpolation, crop_pct and crop_mode are set together or not at all")
            choice("interpolation", INTERPOLATIONS)
            choice("crop_mode", CROP_MODES)
            if not 0.0 < self.crop_pct <= 1.0:
                raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.class_names and self.num_classes and len(self.class_names) != self.num_classes:
            raise ConfigError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")
        if self.norm_after_pool and (self.pool != "gap" or self.distill_token):
            raise ConfigError("norm_after_pool=True needs pool='gap' and no distillation token")
        if self.representation_size is not None and self.representation_size <= 0:
            raise ConfigError("representation_size must be positive or None")
        h, w = self.image_size
        s = self.stem_stride
        if h % s or w % s or h < s or w < s:
            raise ConfigError(
                f"image size {h}x{w} is not a multiple of the stride {s} (patch size "
                f"{self.patch_size}); resize the images or pick another patch size"
            )

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        for key in ("resnet_layers", "input_mean", "input_std", "class_names"):
            d[key] = list(d[key])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**check_fields(cls, d, "model"))

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # ValueError: also integers too long to read
            raise ConfigError(f"the model config is not readable JSON ({type(e).__name__}: {e})") from None
        return cls.from_dict(d)

    def replace(self, **overrides) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)
