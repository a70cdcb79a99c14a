"""timm's VisionTransformer state dicts (`.pth`/`.pt` read with weights_only=True, `.safetensors`).

timm's names are close to vitkit's (vitkit's model follows the same module layout); the
differences are the table below. The fused qkv hides the head count: it comes from the
`num_heads` override or the standard preset for the width. Numerics: exact GELU, LayerNorm
epsilon 1e-6. GAP models normalise after pooling (`fc_norm`, vitkit's norm_after_pool);
`no_embed_class` models have no class slot in `pos_embed` (posemb_class_slot=False).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from vitkit.errors import CheckpointError, ConfigError
from vitkit.formats.names import Rule, from_vitkit, require, required_shape, to_vitkit
from vitkit.io import atomic_path
from vitkit.models.config import ModelConfig
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
