"""vitkit's own model file: one .safetensors whose header metadata holds the config as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitkit.errors import CheckpointError, ConfigError
from vitkit.formats.names import check_buildable
from vitkit.io import write_safetensors
from vitkit.models.config import ModelConfig

FORMAT_KEY = "vitkit_config"


def save(model: torch.nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the model's weights and config to `path` atomically. Returns the path written."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {FORMAT_KEY: model.config.to_json(), "format": "vitkit"}
    for key, value in (metadata or {}).items():
        header[key] = value if isinstance(value, str) else json.dumps(value)
    write_safetensors(path, tensors, header)
    return path


def read_header(path: str | os.PathLike) -> dict:
    """The metadata of a safetensors file, without reading its tensors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size_bytes = f.read(8)
            if len(size_bytes) < 8:
                raise CheckpointError(f"{path} is too short to be a safetensors file (truncated?)")
            size = int.from_bytes(size_bytes, "little")
            if size > min(path.stat().st_size - 8, 100 * 2**20):
                raise CheckpointError(f"{path} has a corrupt safetensors header (truncated file?)")
            header = json.loads(f.read(size))
    except (ValueError, RecursionError) as e:  # undecodable, not JSON, nested too deep, huge numbers
        raise CheckpointError(f"{path} has an unreadable safetensors header: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} has a corrupt safetensors header: its metadata is not a mapping "
                              "of names to strings")
    return metadata


def is_native(path: str | os.PathLike) -> bool:
    try:
        return FORMAT_KEY in read_header(path)
    except (CheckpointError, OSError):
        return False


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: {e} (truncated or not a safetensors file?)") from None


def load_native(path: str | os.PathLike, **overrides) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Config (with overrides applied), state dict and the remaining metadata of a vitkit file."""
    meta = read_header(path)
    if FORMAT_KEY not in meta:
        raise CheckpointError(f"{path} has no vitkit config in its header")
    try:
        cfg = ModelConfig.from_json(meta[FORMAT_KEY])
    except ConfigError as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None
    # Training checkpoints carry optimiser and RNG state beside the model under this prefix.
    tensors = {k: v for k, v in read_tensors(path).items() if not k.startswith("train_state.")}
    check_buildable(cfg, tensors, str(path))
    extra = {k: v for k, v in meta.items() if k not in (FORMAT_KEY, "format", "train_state")}
    return cfg, tensors, extra
