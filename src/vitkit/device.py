"""Where and in what precision a model runs, and seeding: the small helpers that training,
evaluation, the analyses and the CLI share, so none of them imports another to get a device."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from vitkit.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` (CUDA when there is one, else the CPU), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def pick_precision(name: str, device: torch.device) -> str:
    """The autocast mode for `name` on `device`: `auto` is bf16 on GPUs that have it, else fp32."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("fp16 autocast needs a GPU; use --precision bf16 or fp32 on the CPU")
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """torch.autocast for bf16/fp16, nothing for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
