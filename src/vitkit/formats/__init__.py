"""Checkpoint formats: detection and loading into a vitkit model, and saving.

Each foreign format lives in a module of its own (an explicit name table with shape
checks) that turns a file into (ModelConfig, vitkit state dict). `load` picks the module.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.formats.native import is_native, load_native, save
from vitkit.models.config import ModelConfig
from vitkit.models.vit import VisionTransformer


def read_checkpoint(path: str | os.PathLike, **overrides) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, state dict in vitkit names, metadata) of any supported checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_file() and is_native(path):
        return load_native(path)
    raise CheckpointError(
        f"{path} is not a checkpoint format vitkit reads (expected a vitkit .safetensors file)")


def apply_state(model: VisionTransformer, state: dict[str, torch.Tensor], strict: bool = True,
                source: str = "checkpoint") -> list[str]:
    """Copy `state` into `model`, checking names and shapes. Returns the keys skipped."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    if mismatched:
        problems.append("shape mismatch " + "; ".join(mismatched[:8]))
    if problems and strict:
        raise CheckpointError(f"{source} does not fit the model: " + " | ".join(problems)
                              + " (is it a checkpoint of another architecture?)")
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
    return missing + unexpected + [m.split(":")[0] for m in mismatched]


def load(path: str | os.PathLike, strict: bool = True, **overrides) -> VisionTransformer:
    """Read a checkpoint into an eval-mode model. Keyword overrides change the architecture
    where the file cannot say (e.g. `num_heads`) or adapt it (`image_size`, `num_classes`,
    `dynamic_image_size`)."""
    cfg, state, _ = read_checkpoint(path, **overrides)
    num_classes = overrides.pop("num_classes", None)
    image_size = overrides.pop("image_size", None)
    try:
        cfg = cfg.replace(**overrides)
    except ConfigError as e:
        raise CheckpointError(f"cannot apply overrides to {path}: {e}") from None
    model = VisionTransformer(cfg)
    apply_state(model, state, strict=strict, source=str(path))
    if image_size is not None:
        from vitkit.models.resize import resize_image_size

        model = resize_image_size(model, image_size)
    if num_classes is not None and num_classes != cfg.num_classes:
        model.reset_head(num_classes)
    return model.eval()


__all__ = ["load", "save", "read_checkpoint", "apply_state"]
