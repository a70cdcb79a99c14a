"""Hugging Face transformers ViT: a directory with config.json and model.safetensors
(or pytorch_model.bin, read with weights_only=True), in the ViTModel or
ViTForImageClassification key layout (the latter under `vit.`, plus `classifier`).

The architecture comes from config.json (hidden_act, layer_norm_eps: HF defaults to exact
GELU and 1e-12), the preprocessing (normalisation, resize filter and crop) from
preprocessor_config.json when present.
ViTModel's pooler (Dense + tanh on the class token) is vitkit's pre-logits layer.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from vitkit.errors import CheckpointError, ConfigError
from vitkit.formats.names import Rule, from_vitkit, require, to_vitkit
from vitkit.io import honour_umask
from vitkit.models.config import ModelConfig

L = "{prefix}encoder.layer.{0}."
WB = r"\.(weight|bias)"
RULES = [
    Rule(r"patch_embed\.proj" + WB, ("{prefix}embeddings.patch_embeddings.projection.{0}",)),
    Rule(r"cls_token", ("{prefix}embeddings.cls_token",)),
    Rule(r"pos_embed\.weight", ("{prefix}embeddings.position_embeddings",)),
    Rule(r"blocks\.(\d+)\.norm1" + WB, (L + "layernorm_before.{1}",)),
    Rule(r"blocks\.(\d+)\.attn\.qkv" + WB, (L + "attention.attention.query.{1}", L + "attention.attention.key.{1}",
                                            L + "attention.attention.value.{1}"), "split"),
    Rule(r"blocks\.(\d+)\.attn\.proj" + WB, (L + "attention.output.dense.{1}",)),
    Rule(r"blocks\.(\d+)\.norm2" + WB, (L + "layernorm_after.{1}",)),
    Rule(r"blocks\.(\d+)\.mlp\.fc1" + WB, (L + "intermediate.dense.{1}",)),
    Rule(r"blocks\.(\d+)\.mlp\.fc2" + WB, (L + "output.dense.{1}",)),
    Rule(r"norm" + WB, ("{prefix}layernorm.{0}",)),
    Rule(r"pre_logits\.0" + WB, ("pooler.dense.{0}",)),
    Rule(r"head" + WB, ("classifier.{0}",)),
]

ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: undecodable, not JSON, huge numbers
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return obj


_KINDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


def json_value(cfg: dict, key: str, default, kind, source: Path):
    """cfg[key] (or the default) if it is of `kind`: int, float (finite), bool or str."""
    value = cfg.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1000 else math.inf
    fits = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if not fits or (kind is float and not math.isfinite(value)):
        shown = json.dumps(value)
        raise CheckpointError(f"{source}: {key} must be {_KINDS[kind]}, "
                              f"not {shown if len(shown) <= 40 else shown[:37] + '...'}")
    return value


def json_numbers(cfg: dict, key: str, default, source: Path) -> tuple[float, ...]:
    """A number or a list of numbers, as image_mean and image_std are written."""
    value = cfg.get(key, default)
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300
                             for v in values):
        raise CheckpointError(f"{source}: {key} must be a number or a list of numbers")
    return tuple(float(v) for v in values)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from vitkit.formats import read_torch_file
    from vitkit.formats.native import read_tensors

    if (directory / "model.safetensors").is_file():
        return read_tensors(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names")
        files = sorted(set(weight_map.values()))
        tensors = {}
        for name in files:
            tensors.update(read_tensors(directory / Path(name).name))
        return tensors
    if (directory / "pytorch_model.bin").is_file():
        return read_torch_file(directory / "pytorch_model.bin")
    raise CheckpointError(f"{directory} has config.json but no model.safetensors or pytorch_model.bin")


def infer_config(hf: dict, tensors: dict, directory: Path, hints: dict) -> tuple[ModelConfig, str]:
    source = str(directory)
    config = directory / "config.json"
    if hf.get("model_type") != "vit":
        raise CheckpointError(f"{source}: config.json has model_type={hf.get('model_type')!r}, not 'vit'")
    act = ACTS.get(json_value(hf, "hidden_act", "gelu", str, config))
    if act is None:
        raise CheckpointError(f"{source}: hidden_act={hf.get('hidden_act')!r} is not one vitkit has "
                              f"({', '.join(ACTS)})")
    prefix = "vit." if any(k.startswith("vit.") for k in tensors) else ""
    depth = json_value(hf, "num_hidden_layers", 12, int, config)
    layers = len({m.group(1) for k in tensors if (m := re.match(r"(?:vit\.)?encoder\.layer\.(\d+)\.", k))})
    if depth > layers:
        raise CheckpointError(f"{source}: config.json says num_hidden_layers={depth} but the weights hold "
                              f"{layers} layer(s); they do not belong together")
    image_size = hf.get("image_size", 224)
    if not (isinstance(image_size, int) or isinstance(image_size, list) and len(image_size) == 2):
        raise CheckpointError(f"{config}: image_size must be an integer or [height, width]")
    opts: dict = dict(
        width=json_value(hf, "hidden_size", 768, int, config), depth=depth,
        num_heads=hints.get("num_heads") or json_value(hf, "num_attention_heads", 12, int, config),
        mlp_dim=json_value(hf, "intermediate_size", 3072, int, config),
        patch_size=json_value(hf, "patch_size", 16, int, config),
        in_chans=json_value(hf, "num_channels", 3, int, config),
        image_size=image_size, qkv_bias=json_value(hf, "qkv_bias", True, bool, config), act=act,
        norm_eps=json_value(hf, "layer_norm_eps", 1e-12, float, config),
        pool="token", posemb="learned1d", posemb_class_slot=True, name=directory.name)
    for name in ("pooler.dense.weight", "classifier.weight"):
        if name in tensors and tensors[name].ndim != 2:
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensors[name].shape)}, expected 2 dimensions")
    if "pooler.dense.weight" in tensors:
        if hf.get("pooler_act", "tanh") != "tanh":
            raise CheckpointError(f"{source}: pooler_act={hf.get('pooler_act')!r}; vitkit's pre-logits use tanh")
        opts["representation_size"] = int(tensors["pooler.dense.weight"].shape[0])
    classes = int(tensors["classifier.weight"].shape[0]) if "classifier.weight" in tensors else 0
    opts["num_classes"] = classes
    labels = hf.get("id2label") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise CheckpointError(f"{config}: id2label must map class indices to names")
    names = [labels.get(str(i), "") for i in range(classes)]
    if classes and all(names) and names != [f"LABEL_{i}" for i in range(classes)]:
        opts["class_names"] = tuple(names)
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        opts.update(preprocessing(read_json(pre), pre))
    try:
        return ModelConfig.from_dict(opts), prefix
    except ConfigError as e:
        raise CheckpointError(f"{source}: config.json describes an invalid model: {e}") from None


def preprocessing(pre: dict, source: Path) -> dict:
    """ModelConfig options from a transformers image processor config: normalisation, and the
    resize (ViTImageProcessor squashes to `size`; a centre crop where do_center_crop is set)."""
    opts: dict = {}
    if json_value(pre, "do_normalize", True, bool, source):
        opts["input_mean"] = json_numbers(pre, "image_mean", 0.5, source)
        opts["input_std"] = json_numbers(pre, "image_std", 0.5, source)
    else:
        opts["input_mean"], opts["input_std"] = (0.0,), (1.0,)
    if not json_value(pre, "do_resize", True, bool, source):
        return opts
    # ViTImageProcessor's default resample is Pillow's BILINEAR.
    resample = pre.get("resample", PILLOW_FILTERS["bilinear"])
    interpolation = next((k for k, v in PILLOW_FILTERS.items() if v == resample and type(resample) is int), None)
    if interpolation is None:
        warnings.warn(f"{source}: resample={resample!r} is a Pillow filter vitkit does not have; "
                      "images will be resized bilinearly", stacklevel=3)
        interpolation = "bilinear"
    mode, resized = _processor_size(pre.get("size", 224), "size", source)
    crop = resized
    if json_value(pre, "do_center_crop", False, bool, source):
        crop = _processor_size(pre.get("crop_size", resized), "crop_size", source)[1]
    if crop > resized:
        raise CheckpointError(f"{source}: crop_size {crop} is larger than size {resized}")
    return {**opts, "interpolation": interpolation, "crop_pct": crop / resized, "crop_mode": mode}


# transformers writes `resample` as a Pillow filter number (BOX averages, as "area" does).
PILLOW_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "area": 4}


def _processor_size(value, key: str, source: Path) -> tuple[str, int]:
    """(crop mode, height in pixels) of an image processor's size entry: an integer or height
    and width (resized to exactly that, "squash"), or shortest_edge (aspect kept, "center")."""
    def pixels(v) -> int:
        if not (type(v) is int and 0 < v <= 1 << 16):
            raise CheckpointError(f"{source}: {key} must hold positive integers, not {json.dumps(v)[:40]}")
        return v

    if isinstance(value, dict) and "shortest_edge" in value:
        return "center", pixels(value["shortest_edge"])
    if isinstance(value, dict) and "height" in value:
        return "squash", pixels(value["height"])
    if isinstance(value, dict):
        raise CheckpointError(f"{source}: {key} needs height and width, or shortest_edge")
    return "squash", pixels(value)


def read(directory: Path, strict: bool = True, **hints):
    hf = read_json(directory / "config.json")
    tensors = read_weights(directory)
    cfg, prefix = infer_config(hf, tensors, directory, hints)
    state, skipped = to_vitkit(tensors, cfg, RULES, {"prefix": prefix}, "Hugging Face ViT", str(directory),
                               strict)
    return cfg, state, {"format": "hf", "skipped": skipped}


def hf_config(cfg: ModelConfig, architecture: str) -> dict:
    out = {
        "architectures": [architecture], "model_type": "vit",
        "hidden_size": cfg.width, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.act],
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
        "layer_norm_eps": cfg.norm_eps,
        "image_size": cfg.image_size[0] if cfg.image_size[0] == cfg.image_size[1] else list(cfg.image_size),
        "patch_size": cfg.patch_size, "num_channels": cfg.in_chans, "qkv_bias": cfg.qkv_bias,
        "encoder_stride": cfg.patch_size, "pooler_act": "tanh",
        "pooler_output_size": cfg.representation_size or cfg.width, "dtype": "float32",
    }
    if cfg.num_classes:
        labels = list(cfg.class_names) or [f"LABEL_{i}" for i in range(cfg.num_classes)]
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
    return out


def write(model, directory: Path) -> dict:
    cfg = model.config
    fmt = "a Hugging Face ViT"
    require(cfg.stem == "patch", fmt, "HF ViT has no hybrid stem")
    require(cfg.pool == "token" and not cfg.distill_token, fmt, "HF ViT classifies from the class token")
    require(cfg.posemb == "learned1d" and cfg.posemb_where == "stem" and cfg.posemb_class_slot, fmt,
            "HF ViT has one learned 1-D position embedding with a class slot")
    if cfg.num_classes:
        require(cfg.representation_size is None, fmt,
                "ViTForImageClassification has no pre-logits layer before the classifier")
        architecture, prefix = "ViTForImageClassification", "vit."
    else:
        require(cfg.representation_size in (None, cfg.width), fmt, "ViTModel's pooler keeps the width")
        architecture, prefix = "ViTModel", ""
    tensors = from_vitkit(model.state_dict(), cfg, RULES, {"prefix": prefix}, "Hugging Face ViT")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, architecture), indent=2) + "\n")
        mean = list(cfg.input_mean) * (cfg.in_chans if len(cfg.input_mean) == 1 else 1)
        std = list(cfg.input_std) * (cfg.in_chans if len(cfg.input_std) == 1 else 1)
        h, w = cfg.image_size
        preprocessor = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                        "size": {"height": h, "width": w}, "do_rescale": True, "rescale_factor": 1 / 255,
                        "do_normalize": True, "image_mean": mean, "image_std": std}
        if cfg.interpolation is not None:
            preprocessor["resample"] = PILLOW_FILTERS[cfg.interpolation]
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors make theirs private
            honour_umask(path)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    notes = [] if cfg.num_classes or cfg.representation_size else [
        "written as ViTModel without a pooler; from_pretrained adds a fresh pooler"]
    if cfg.crop_pct not in (None, 1.0):
        notes.append(f"ViTImageProcessor resizes without cropping; the model's centre crop "
                     f"(crop_pct={cfg.crop_pct:g}) is not in preprocessor_config.json")
    return {"architecture": architecture, "tensors": len(tensors), "notes": notes}
