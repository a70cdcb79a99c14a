"""timm's VisionTransformer state dicts (`.pth`/`.pt` read with weights_only=True, `.safetensors`).

timm's names are close to vitkit's (vitkit's model follows the same module layout); the
differences are the table below. The fused qkv hides the head count: it comes from the
`num_heads` override or the standard preset for the width. Numerics: exact GELU, LayerNorm
epsilon 1e-6. GAP models normalise after pooling (`fc_norm`, vitkit's norm_after_pool);
`no_embed_class` models have no class slot in `pos_embed` (posemb_class_slot=False).

A folder as timm pushes a model to the Hugging Face Hub holds model.safetensors in these names
and a config.json with `architecture`, `num_classes` and `pretrained_cfg` (input size,
interpolation, crop_pct, crop_mode, mean, std), which becomes the model's preprocessing.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from vitkit.errors import CheckpointError, ConfigError
from vitkit.formats.names import Rule, from_vitkit, require, required_shape, to_vitkit
from vitkit.io import atomic_path
from vitkit.models.config import CROP_MODES, INTERPOLATIONS, ModelConfig
from vitkit.models.posemb import grid_from_tokens

# Standard head count for a width (Ti, S, B, L, H; timm's "medium" 512 has 8).
HEADS_FOR_WIDTH = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16}

WB = r"\.(weight|bias)"
RULES = [
    Rule(r"patch_embed\.proj" + WB, ("patch_embed.proj.{0}",)),
    Rule(r"cls_token", ("cls_token",)),
    Rule(r"dist_token", ("dist_token",)),
    Rule(r"pos_embed\.weight", ("pos_embed",)),
    Rule(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)" + WB, ("blocks.{0}.{1}.{2}",)),
    # The final LayerNorm is `fc_norm` when it is applied after average pooling.
    Rule(r"norm" + WB, ("{final_norm}.{0}",)),
    Rule(r"map_head\.probe", ("attn_pool.latent",)),
    Rule(r"map_head\.(q|kv|proj|norm|mlp\.fc1|mlp\.fc2)" + WB, ("attn_pool.{0}.{1}",)),
    Rule(r"pre_logits\.0" + WB, ("pre_logits.fc.{0}",)),
    Rule(r"head" + WB, ("head.{0}",)),
    Rule(r"head_dist" + WB, ("head_dist.{0}",)),
]


def _values(cfg: ModelConfig) -> dict:
    return {"final_norm": "fc_norm" if cfg.norm_after_pool else "norm"}


def looks_like_timm(names) -> bool:
    return "patch_embed.proj.weight" in names and "pos_embed.weight" not in names and any(
        k.startswith("blocks.") for k in names)


def infer_config(tensors: dict[str, torch.Tensor], source: str, hints: dict) -> ModelConfig:
    def shape(name: str, ndim: int) -> tuple[int, ...]:
        return required_shape(tensors, name, ndim, source)

    width, chans, ph, pw = shape("patch_embed.proj.weight", 4)
    if ph != pw:
        raise CheckpointError(f"{source}: non-square patches {ph}x{pw} are not supported")
    depth = len({m.group(1) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))})
    heads = hints.get("num_heads") or HEADS_FOR_WIDTH.get(width)
    if heads is None:
        raise CheckpointError(f"{source}: the fused qkv does not say how many heads width {width} has; "
                              "pass num_heads=...")
    if "cls_token" in tensors and "fc_norm.weight" in tensors:
        raise CheckpointError(f"{source}: a class token with average pooling (fc_norm) is not a vitkit "
                              "variant; vitkit's pool='gap' models have no class token")
    pool = "token" if "cls_token" in tensors else "map" if "attn_pool.latent" in tensors else "gap"
    opts: dict = dict(width=width, depth=depth, num_heads=heads, patch_size=ph, in_chans=chans, pool=pool,
                      mlp_dim=shape("blocks.0.mlp.fc1.weight", 2)[0] if depth else 4 * width,
                      qkv_bias="blocks.0.attn.qkv.bias" in tensors or not depth,
                      distill_token="dist_token" in tensors, norm_after_pool="fc_norm.weight" in tensors,
                      act="gelu", norm_eps=1e-6, name=Path(source).stem)
    if "pos_embed" in tensors:
        tokens = shape("pos_embed", 3)[1]
        prefix = int(pool == "token") + int(opts["distill_token"])
        size = hints.get("source_image_size")
        if size is not None:
            gh, gw = ModelConfig(**{**opts, "image_size": size}).grid_size
            slots = tokens - gh * gw
        else:
            slots = prefix if prefix and _is_square(tokens - prefix) else 0
            if not _is_square(tokens - slots):
                raise CheckpointError(f"{source}: {tokens} position embeddings do not form a square grid "
                                      "with or without class slots; pass source_image_size=(h, w)")
            side = grid_from_tokens(tokens - slots)[0]
            size = (side * ph, side * ph)
        if slots not in (0, prefix):
            raise CheckpointError(f"{source}: pos_embed has {slots} extra rows; expected 0 or {prefix}")
        opts.update(posemb="learned1d", posemb_class_slot=bool(slots), image_size=size)
    else:
        opts.update(posemb="none", image_size=hints.get("image_size") or 224)
    if "pre_logits.fc.weight" in tensors:
        opts["representation_size"] = shape("pre_logits.fc.weight", 2)[0]
    opts["num_classes"] = shape("head.weight", 2)[0] if "head.weight" in tensors else 0
    try:
        return ModelConfig(**opts)
    except ConfigError as e:
        raise CheckpointError(f"{source}: the tensors describe an invalid model: {e}") from None


def _is_square(n: int) -> bool:
    try:
        grid_from_tokens(n)
        return n > 0
    except ValueError:
        return False


def read(tensors: dict[str, torch.Tensor], source: str, strict: bool = True, **hints):
    cfg = infer_config(tensors, source, hints)
    state, skipped = to_vitkit(tensors, cfg, RULES, _values(cfg), "timm", source, strict)
    return cfg, state, {"format": "timm", "skipped": skipped}


def is_hub_dir(path: Path) -> bool:
    """A folder holding timm's Hub config.json (it names an `architecture`; transformers' names
    a `model_type`)."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        obj = json.loads(config.read_text())
    except (OSError, ValueError, RecursionError):
        return False  # the transformers reader names what is wrong with it
    return isinstance(obj, dict) and "architecture" in obj and "model_type" not in obj


# timm's defaults for what a pretrained_cfg leaves out (timm/data/constants.py).
DEFAULT_CROP_PCT = 0.875
DEFAULT_CROP_MODE = "center"


def read_hub_dir(directory: Path, strict: bool = True, **hints):
    from vitkit.formats.hf import read_json, read_weights

    source = directory / "config.json"
    config = read_json(source)
    # The old form of the file keeps the pretrained_cfg fields at the top level.
    pretrained = config.get("pretrained_cfg", config)
    architecture = config.get("architecture")
    if not isinstance(pretrained, dict) or not isinstance(architecture, str):
        raise CheckpointError(f"{source}: architecture must be a string and pretrained_cfg a mapping")
    model_args = config.get("model_args")
    if isinstance(model_args, dict) and type(model_args.get("num_heads")) is int:
        hints = {"num_heads": model_args["num_heads"], **hints}
    cfg, state, meta = read(read_weights(directory), str(directory), strict=strict, **hints)
    tag = pretrained.get("tag")
    options = dict(hub_preprocessing(pretrained, source),
                   name=f"{architecture}.{tag}" if isinstance(tag, str) and tag else architecture)
    # timm's tags name the data a head was trained on last: "..._in1k" is ImageNet-1k.
    if cfg.num_classes == 1000 and isinstance(tag, str) and tag.endswith("in1k"):
        from vitkit.pretrained import imagenet_class_names

        options["class_names"] = imagenet_class_names()
    try:
        cfg = cfg.replace(**options)
    except ConfigError as e:
        raise CheckpointError(f"{source}: pretrained_cfg describes invalid preprocessing: {e}") from None
    return cfg, state, {**meta, "format": "timm-hub"}


def hub_preprocessing(pretrained: dict, source: Path) -> dict:
    """ModelConfig options from timm's pretrained_cfg: mean, std, and the evaluation resize."""
    from vitkit.formats.hf import json_numbers, json_value

    opts: dict = {}
    for key, field in (("mean", "input_mean"), ("std", "input_std")):
        if key in pretrained:
            opts[field] = json_numbers(pretrained, key, None, source)
    interpolation = json_value(pretrained, "interpolation", "bicubic", str, source)
    if interpolation not in INTERPOLATIONS:
        warnings.warn(f"{source}: interpolation={interpolation!r} is not one vitkit has; images will be "
                      "resized bicubically", stacklevel=3)
        interpolation = "bicubic"
    crop_mode = json_value(pretrained, "crop_mode", DEFAULT_CROP_MODE, str, source)
    if crop_mode not in CROP_MODES:
        warnings.warn(f"{source}: crop_mode={crop_mode!r} is not one vitkit has; the centre crop is taken",
                      stacklevel=3)
        crop_mode = DEFAULT_CROP_MODE
    crop_pct = json_value(pretrained, "crop_pct", DEFAULT_CROP_PCT, float, source)
    return {**opts, "interpolation": interpolation, "crop_pct": crop_pct, "crop_mode": crop_mode}


def write(model, path: Path) -> dict:
    cfg = model.config
    fmt = "a timm state dict"
    require(cfg.stem == "patch", fmt, "timm's hybrids use another ResNet layout")
    require(cfg.posemb in ("learned1d", "none") and cfg.posemb_where == "stem", fmt,
            "timm's ViT has one learned position embedding added after the stem")
    tensors = from_vitkit(model.state_dict(), cfg, RULES, _values(cfg), "timm")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(tensors, tmp)
    notes = []
    if cfg.act != "gelu":
        notes.append(f"timm's default act_layer is exact GELU; build the timm model with the tanh "
                     f"approximation to reproduce act={cfg.act!r}")
    if cfg.num_heads != HEADS_FOR_WIDTH.get(cfg.width):
        notes.append(f"pass num_heads={cfg.num_heads} when building the timm model")
    if cfg.pool == "token" and not cfg.posemb_class_slot:
        notes.append("build the timm model with no_embed_class=True")
    return {"tensors": len(tensors), "notes": notes}
