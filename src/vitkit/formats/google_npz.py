"""Google's .npz checkpoints: the original ViT release (vit_jax) and big_vision.

Names are the Flax parameter paths joined by '/' (SPEC section 6). The two layouts differ in
the module counters inside a block, where the position embedding lives and whether it has a
class slot; big_vision may also prefix `params/` and stack the blocks on a leading axis.

    original                                   big_vision
    Transformer/posembed_input/pos_embedding   pos_embedding (no class slot)
    encoderblock_i/LayerNorm_0                 encoderblock_i/LayerNorm_0
    encoderblock_i/MultiHeadDotProductAttention_1   .../MultiHeadDotProductAttention_0
    encoderblock_i/LayerNorm_2                 encoderblock_i/LayerNorm_1
    encoderblock_i/MlpBlock_3                  encoderblock_i/MlpBlock_0

Numerics of the Flax model, set in the config: tanh GELU, LayerNorm epsilon 1e-6, inputs in
[-1, 1]; the hybrid stem's SAME padding, weight standardisation and GroupNorm are vitkit's
ResNetStem's own.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.formats.names import Rule, from_vitkit, require, required_shape, to_vitkit
from vitkit.io import atomic_path
from vitkit.models.config import ModelConfig
from vitkit.models.posemb import grid_from_tokens
from vitkit.npz import read_arrays

LAYOUTS = {
    "original": dict(ln1="LayerNorm_0", attn="MultiHeadDotProductAttention_1", ln2="LayerNorm_2",
                     mlp="MlpBlock_3", posemb="Transformer/posembed_input/pos_embedding"),
    "big_vision": dict(ln1="LayerNorm_0", attn="MultiHeadDotProductAttention_0", ln2="LayerNorm_1",
                       mlp="MlpBlock_0", posemb="pos_embedding"),
}

B = "Transformer/encoderblock_{0}"
MAP = "MAPHead_0"
RES = "block{next0}/unit{next1}"

RULES = [
    Rule(r"patch_embed\.proj\.weight", ("embedding/kernel",), "conv"),
    Rule(r"patch_embed\.proj\.bias", ("embedding/bias",)),
    Rule(r"cls_token", ("cls",)),
    Rule(r"pos_embed\.weight", ("{posemb}",)),
    Rule(r"blocks\.(\d+)\.norm1\.weight", (B + "/{ln1}/scale",)),
    Rule(r"blocks\.(\d+)\.norm1\.bias", (B + "/{ln1}/bias",)),
    Rule(r"blocks\.(\d+)\.attn\.qkv\.weight",
         (B + "/{attn}/query/kernel", B + "/{attn}/key/kernel", B + "/{attn}/value/kernel"), "heads_in"),
    Rule(r"blocks\.(\d+)\.attn\.qkv\.bias",
         (B + "/{attn}/query/bias", B + "/{attn}/key/bias", B + "/{attn}/value/bias"), "heads_bias"),
    Rule(r"blocks\.(\d+)\.attn\.proj\.weight", (B + "/{attn}/out/kernel",), "heads_out"),
    Rule(r"blocks\.(\d+)\.attn\.proj\.bias", (B + "/{attn}/out/bias",)),
    Rule(r"blocks\.(\d+)\.norm2\.weight", (B + "/{ln2}/scale",)),
    Rule(r"blocks\.(\d+)\.norm2\.bias", (B + "/{ln2}/bias",)),
    Rule(r"blocks\.(\d+)\.mlp\.fc1\.weight", (B + "/{mlp}/Dense_0/kernel",), "dense"),
    Rule(r"blocks\.(\d+)\.mlp\.fc1\.bias", (B + "/{mlp}/Dense_0/bias",)),
    Rule(r"blocks\.(\d+)\.mlp\.fc2\.weight", (B + "/{mlp}/Dense_1/kernel",), "dense"),
    Rule(r"blocks\.(\d+)\.mlp\.fc2\.bias", (B + "/{mlp}/Dense_1/bias",)),
    Rule(r"norm\.weight", ("Transformer/encoder_norm/scale",)),
    Rule(r"norm\.bias", ("Transformer/encoder_norm/bias",)),
    # big_vision's MAPHead: probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0.
    Rule(r"map_head\.probe", (MAP + "/probe",)),
    Rule(r"map_head\.q\.weight", (MAP + "/MultiHeadDotProductAttention_0/query/kernel",), "heads_in"),
    Rule(r"map_head\.q\.bias", (MAP + "/MultiHeadDotProductAttention_0/query/bias",), "heads_bias"),
    Rule(r"map_head\.kv\.weight", (MAP + "/MultiHeadDotProductAttention_0/key/kernel",
                                   MAP + "/MultiHeadDotProductAttention_0/value/kernel"), "heads_in"),
    Rule(r"map_head\.kv\.bias", (MAP + "/MultiHeadDotProductAttention_0/key/bias",
                                 MAP + "/MultiHeadDotProductAttention_0/value/bias"), "heads_bias"),
    Rule(r"map_head\.proj\.weight", (MAP + "/MultiHeadDotProductAttention_0/out/kernel",), "heads_out"),
    Rule(r"map_head\.proj\.bias", (MAP + "/MultiHeadDotProductAttention_0/out/bias",)),
    Rule(r"map_head\.norm\.weight", (MAP + "/LayerNorm_0/scale",)),
    Rule(r"map_head\.norm\.bias", (MAP + "/LayerNorm_0/bias",)),
    Rule(r"map_head\.mlp\.fc(\d)\.weight", (MAP + "/MlpBlock_0/Dense_{prev0}/kernel",), "dense"),
    Rule(r"map_head\.mlp\.fc(\d)\.bias", (MAP + "/MlpBlock_0/Dense_{prev0}/bias",)),
    Rule(r"pre_logits\.0\.weight", ("pre_logits/kernel",), "dense"),
    Rule(r"pre_logits\.0\.bias", ("pre_logits/bias",)),
    Rule(r"head\.weight", ("head/kernel",), "dense"),
    Rule(r"head\.bias", ("head/bias",)),
    # Hybrid ResNet stem (vit_jax models_resnet): stages block1.., units unit1.. (1-based).
    Rule(r"patch_embed\.backbone\.conv_root\.weight", ("conv_root/kernel",), "conv"),
    Rule(r"patch_embed\.backbone\.gn_root\.weight", ("gn_root/scale",)),
    Rule(r"patch_embed\.backbone\.gn_root\.bias", ("gn_root/bias",)),
    Rule(r"patch_embed\.backbone\.stages\.(\d+)\.(\d+)\.(conv\w+)\.weight", (RES + "/{2}/kernel",), "conv"),
    Rule(r"patch_embed\.backbone\.stages\.(\d+)\.(\d+)\.(gn\w+)\.weight", (RES + "/{2}/scale",)),
    Rule(r"patch_embed\.backbone\.stages\.(\d+)\.(\d+)\.(gn\w+)\.bias", (RES + "/{2}/bias",)),
]


# ----------------------------------------------------------------------------- reading

def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz, refusing pickled objects, with big_vision's `params/` stripped."""
    arrays = read_arrays(path, CheckpointError, "truncated, or not a Google ViT checkpoint?")
    if any(k.startswith("params/") for k in arrays):
        # A big_vision training checkpoint also holds optimiser state ("opt/..."): the model is
        # the params/ tree; what else was there is listed, not silently dropped.
        others = sorted(k for k in arrays if not k.startswith("params/"))
        if others:
            warnings.warn(f"{path}: reading only the params/ tree; also present: "
                          f"{', '.join(others[:8])}" + (" ..." if len(others) > 8 else ""), stacklevel=3)
        return {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    return arrays


def looks_like_google(names) -> bool:
    return "embedding/kernel" in names and any(k.startswith("Transformer/") for k in names)


def unstack_blocks(arrays: dict[str, np.ndarray], source: str = "the checkpoint") -> dict[str, np.ndarray]:
    """big_vision's scanned encoder stores `Transformer/encoderblock/...` with the blocks on a
    leading axis; give each block its own `encoderblock_i` names."""
    out = {}
    prefix = "Transformer/encoderblock/"
    for key, value in arrays.items():
        if key.startswith(prefix):
            if value.ndim == 0:
                raise CheckpointError(f"{source}: {key} is a scalar, but a scanned encoder stacks its "
                                      "blocks on a leading axis")
            for i in range(value.shape[0]):
                out[f"Transformer/encoderblock_{i}/{key[len(prefix):]}"] = value[i]
        else:
            out[key] = value
    return out


# The hybrid stem's GroupNorm parameters: gn_root/ and block{s}/unit{u}/gn{1,2,3,_proj}/.
_GROUP_NORM = re.compile(r"(?:.*/)?gn\w*/(?:scale|bias)")


def squeeze_group_norms(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax before 0.3.6 stored GroupNorm scale and bias as (1, 1, 1, C), and the released hybrid
    files (R50+ViT-B/16, ...) were written then; later files hold (C,). Both become (C,), as
    vit_jax/checkpoint.py's _fix_groupnorm squeezes them for Flax 0.3.6 and later (flax issue 1721)."""
    return {k: v.reshape(-1) if _GROUP_NORM.fullmatch(k) and v.ndim == 4 and v.shape[:3] == (1, 1, 1) else v
            for k, v in arrays.items()}


def detect_layout(names, source: str = "the checkpoint") -> str:
    if any("/MultiHeadDotProductAttention_1/" in k for k in names):
        return "original"
    if any(k.startswith("Transformer/encoderblock") and "/MultiHeadDotProductAttention_0/" in k
           for k in names):
        return "big_vision"
    raise CheckpointError(f"{source}: an .npz with Google names but no attention blocks in either the original "
                          "(MultiHeadDotProductAttention_1) or big_vision (..._0) layout")


def infer_config(arrays: dict[str, np.ndarray], layout: str, source: str, hints: dict) -> ModelConfig:
    """The architecture the tensors describe; `hints` settle what they cannot (num_heads must
    agree with the kernels, source_image_size gives a non-square grid, posemb names a fixed kind)."""
    names = LAYOUTS[layout]
    ph, pw, chans, width = required_shape(arrays, "embedding/kernel", 4, source)
    if ph != pw:
        raise CheckpointError(f"{source}: non-square patches {ph}x{pw} are not supported")
    depth = len({m.group(1) for k in arrays if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    if depth == 0:
        raise CheckpointError(f"{source}: no Transformer/encoderblock_i tensors")
    block = f"Transformer/encoderblock_0/{names['attn']}"
    _, heads, _ = required_shape(arrays, f"{block}/query/kernel", 3, source)
    if hints.get("num_heads") not in (None, heads):
        raise CheckpointError(f"{source}: num_heads={hints['num_heads']} contradicts the attention "
                              f"kernels, which have {heads} heads")
    mlp_dim = required_shape(arrays, f"Transformer/encoderblock_0/{names['mlp']}/Dense_0/kernel", 2, source)[1]
    pool = "token" if "cls" in arrays else "map" if f"{MAP}/probe" in arrays else "gap"

    opts: dict = dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim, pool=pool,
                      patch_size=ph, in_chans=chans, act="gelu_tanh", norm_eps=1e-6,
                      input_mean=(0.5,), input_std=(0.5,), name=Path(source).stem)
    if "conv_root/kernel" in arrays:
        _, _, chans, root = required_shape(arrays, "conv_root/kernel", 4, source)
        stages = sorted({int(m.group(1)) for k in arrays if (m := re.match(r"block(\d+)/unit", k))})
        layers = [len({k.split("/")[1] for k in arrays if k.startswith(f"block{s}/unit")}) for s in stages]
        if stages != list(range(1, len(stages) + 1)) or not layers:
            raise CheckpointError(f"{source}: hybrid ResNet stages {stages} are not block1..blockN")
        opts.update(stem="resnet", in_chans=chans, resnet_width=root, resnet_layers=tuple(layers))
    stride = ModelConfig(**{**opts, "image_size": 1024 * ph}).stem_stride

    prefix = int(pool == "token")
    if names["posemb"] in arrays:
        tokens = required_shape(arrays, names["posemb"], 3, source)[1]
        slots = prefix if layout == "original" else 0
        opts.update(posemb="learned1d", posemb_class_slot=bool(slots))
        size = hints.get("source_image_size")
        if size is None:
            try:
                grid = grid_from_tokens(tokens - slots)
            except ValueError:
                raise CheckpointError(
                    f"{source}: {tokens - slots} position embeddings are not a square grid; pass "
                    "source_image_size=(h, w)") from None
            size = (grid[0] * stride, grid[1] * stride)
        opts["image_size"] = size
    elif layout == "big_vision":
        # Fixed embeddings are not stored: big_vision's sincos2d unless told otherwise.
        opts.update(posemb=hints.get("posemb") or "sincos2d", posemb_class_slot=False,
                    image_size=hints.get("source_image_size") or hints.get("image_size") or 224)
    else:
        raise CheckpointError(f"{source}: missing {names['posemb']}")
    if "pre_logits/kernel" in arrays:
        opts["representation_size"] = required_shape(arrays, "pre_logits/kernel", 2, source)[1]
    opts["num_classes"] = required_shape(arrays, "head/kernel", 2, source)[1] if "head/kernel" in arrays else 0
    try:
        return ModelConfig(**opts)
    except ConfigError as e:
        raise CheckpointError(f"{source}: the tensors describe an invalid model: {e}") from None


def read(path: Path, strict: bool = True, **hints) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    arrays = read_npz(path)
    odd = [f"{k} ({v.dtype})" for k, v in arrays.items() if v.dtype.kind not in "biuf"]
    if odd:
        raise CheckpointError(f"{path}: {', '.join(odd[:4])} {'is' if len(odd) == 1 else 'are'} not real "
                              "numbers; a checkpoint's arrays hold weights")
    arrays = squeeze_group_norms(unstack_blocks(arrays, str(path)))
    if not looks_like_google(arrays):
        raise CheckpointError(f"{path} is an .npz but not a ViT checkpoint in Google's layout "
                              "(no embedding/kernel and Transformer/...)")
    layout = detect_layout(arrays, str(path))
    cfg = infer_config(arrays, layout, str(path), hints)
    foreign = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    state, skipped = to_vitkit(foreign, cfg, RULES, LAYOUTS[layout], f"Google npz, {layout} layout",
                               str(path), strict)
    return cfg, state, {"format": f"npz:{layout}", "skipped": skipped}


# ----------------------------------------------------------------------------- writing

def choose_layout(cfg: ModelConfig) -> str:
    """The original layout where it can say everything, big_vision's where only it can."""
    if cfg.pool == "map" or cfg.posemb != "learned1d" or (cfg.pool == "token" and not cfg.posemb_class_slot):
        return "big_vision"
    return "original"


def write(model, path: Path, layout: str | None = None) -> dict:
    cfg = model.config
    layout = layout or choose_layout(cfg)
    fmt = f"Google npz ({layout} layout)"
    require(cfg.posemb in ("learned1d", "sincos2d", "none"), fmt, f"posemb={cfg.posemb!r} has no npz names")
    require(cfg.posemb_where == "stem", fmt, "position embeddings are added once, after the stem")
    require(not cfg.distill_token, fmt, "there is no distillation token")
    require(not cfg.norm_after_pool, fmt, "the final LayerNorm comes before pooling")
    require(cfg.qkv_bias, fmt, "attention projections have biases")
    if layout == "original":
        require(cfg.posemb == "learned1d" and cfg.pool != "map", fmt, "needs learned1d and token/gap pooling")
        require(cfg.pool != "token" or cfg.posemb_class_slot, fmt, "the class token has a position slot")
    else:
        require(not (cfg.pool == "token" and cfg.posemb_class_slot), fmt,
                "the class token has no position slot")
    arrays = from_vitkit(model.state_dict(), cfg, RULES, LAYOUTS[layout], fmt)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: v.numpy() for k, v in arrays.items()})
    notes = []
    if cfg.act != "gelu_tanh" or cfg.norm_eps != 1e-6:
        notes.append(f"the Flax model uses tanh GELU and LayerNorm eps 1e-6; this model has act={cfg.act!r}, "
                     f"norm_eps={cfg.norm_eps}, so Flax outputs will differ slightly")
    return {"layout": layout, "tensors": len(arrays), "notes": notes}
