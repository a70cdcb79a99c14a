"""Training checkpoints: model, optimiser, EMA, RNG states and progress in one safetensors file.

The model tensors keep their plain names and the header carries the model config, so a
training checkpoint is also a model file that `vitkit.load` reads; everything else sits
under the `train_state.` prefix (tensors) and the `train_state` header entry (JSON).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from vitkit.errors import CheckpointError
from vitkit.formats.native import FORMAT_KEY, read_header, read_tensors
from vitkit.io import write_safetensors

PREFIX = "train_state."


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        ema_shadow: dict[str, torch.Tensor] | None, progress: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{PREFIX}optim.{index}.{name}"] = value.detach().contiguous().cpu()
    if ema_shadow is not None:
        for k, v in ema_shadow.items():
            tensors[f"{PREFIX}ema.{k}"] = v.detach().contiguous().cpu()
    rng_tensors, rng_meta = capture_rng()
    for k, v in rng_tensors.items():
        tensors[PREFIX + k] = v.contiguous()
    state = {"param_groups": opt["param_groups"], "progress": progress, "rng": rng_meta}
    header = {FORMAT_KEY: model.config.to_json(), "format": "vitkit", "train_state": json.dumps(state)}
    write_safetensors(path, tensors, header)


def load_training_state(path: str | Path) -> dict:
    """{'model': state dict, 'optimizer': optimiser state dict, 'ema': dict | None,
    'rng': (tensors, meta), 'progress': dict} from a training checkpoint."""
    path = Path(path)
    meta = read_header(path)
    if "train_state" not in meta:
        raise CheckpointError(f"{path} is a model file without training state; cannot resume from it")
    state = json.loads(meta["train_state"])
    tensors = read_tensors(path)
    model, optim_state, ema, rng = {}, {}, {}, {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            model[key] = value
        elif key.startswith(PREFIX + "optim."):
            index, name = key[len(PREFIX + "optim."):].split(".", 1)
            optim_state.setdefault(int(index), {})[name] = value
        elif key.startswith(PREFIX + "ema."):
            ema[key[len(PREFIX + "ema."):]] = value
        elif key.startswith(PREFIX + "rng."):
            rng[key[len(PREFIX):]] = value
    return {"model": model,
            "optimizer": {"state": optim_state, "param_groups": state["param_groups"]},
            "ema": ema or None, "rng": (rng, state["rng"]), "progress": state["progress"]}
