"""Training checkpoints: model, optimiser, EMA, the objective's own parameters, RNG states and
progress in one safetensors file.

The model tensors keep their plain names and the header carries the model config, so a
training checkpoint is also a model file that `vitkit.load` reads; everything else sits
under the `train_state.` prefix (tensors) and the `train_state` header entry (JSON).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from vitkit.errors import CheckpointError
from vitkit.formats.native import FORMAT_KEY, read_header, read_tensors
from vitkit.io import write_safetensors
from vitkit.models.config import ModelConfig

PREFIX = "train_state."
# The header entry holding the sha256 of every tensor of a training checkpoint, checked on resume:
# a flipped bit is refused instead of resumed from.
CHECKSUM_KEY = "train_state_sha256"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


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


def save_training_state(path: str | Path, model_config: ModelConfig, model_state: dict[str, torch.Tensor],
                        optimizer_state: dict, ema_shadow: dict[str, torch.Tensor] | None,
                        progress: dict, objective_state: dict[str, torch.Tensor] | None = None) -> None:
    """`model_state`, `objective_state` (the objective's own parameters: an MAE decoder, an MPP
    head) and `optimizer_state` are full (unsharded) state dicts, the optimiser's keyed by
    parameter index as `Optimizer.state_dict()` gives them, whatever the number of processes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    for k, v in (objective_state or {}).items():
        tensors[f"{PREFIX}objective.{k}"] = v.detach().contiguous().cpu()
    opt = optimizer_state
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
    header = {FORMAT_KEY: model_config.to_json(), "format": "vitkit", "train_state": json.dumps(state),
              CHECKSUM_KEY: tensors_digest(tensors)}
    write_safetensors(path, tensors, header)


def load_training_state(path: str | Path) -> dict:
    """{'model': state dict, 'objective': state dict, 'optimizer': optimiser state dict,
    'ema': dict | None, 'rng': (tensors, meta), 'progress': dict} from a training checkpoint."""
    path = Path(path)
    meta = read_header(path)
    if "train_state" not in meta:
        raise CheckpointError(f"{path} is a model file without training state; cannot resume from it")
    try:
        state = json.loads(meta["train_state"])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} has an unreadable training state ({type(e).__name__}: {e})") from None
    problem = _state_problem(state)
    tensors = read_tensors(path)
    if CHECKSUM_KEY in meta and tensors_digest(tensors) != meta[CHECKSUM_KEY]:
        raise CheckpointError(f"{path} is damaged: its tensors do not match the checksum written with them (a "
                              "flipped bit, a bad disk or copy); resume from a backup of it, or start the run again")
    model, objective, optim_state, ema, rng = {}, {}, {}, {}, {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            model[key] = value
        elif key.startswith(PREFIX + "optim."):
            index, _, name = key[len(PREFIX + "optim."):].partition(".")
            if not (index.isdigit() and name):
                problem = problem or f"a tensor named {key}"
                continue
            optim_state.setdefault(int(index), {})[name] = value
        elif key.startswith(PREFIX + "ema."):
            ema[key[len(PREFIX + "ema."):]] = value
        elif key.startswith(PREFIX + "objective."):
            objective[key[len(PREFIX + "objective."):]] = value
        elif key.startswith(PREFIX + "rng."):
            rng[key[len(PREFIX):]] = value
    problem = problem or _rng_tensor_problem(rng)
    if problem:
        raise CheckpointError(f"{path} has a damaged training state ({problem}); resume from another "
                              "checkpoint or start the run again")
    return {"model": model, "objective": objective,
            "optimizer": {"state": optim_state, "param_groups": state["param_groups"]},
            "ema": ema or None, "rng": (rng, state["rng"]), "progress": state["progress"]}


def check_fits_optimizer(state: dict, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """A training state's optimiser slots must match the parameters they are restored onto;
    torch would accept mismatched ones and fail at the first step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = state["optimizer"]["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{path}: its optimiser state has other parameter groups than this run's "
                              "model; it belongs to another run")
    for index, slots in state["optimizer"]["state"].items():
        if index >= len(params):
            raise CheckpointError(f"{path}: its optimiser state names parameter {index}, but the model has "
                                  f"{len(params)}")
        for name, value in slots.items():
            if value.ndim and value.shape != params[index].shape:
                raise CheckpointError(f"{path}: optimiser slot {name} of parameter {index} has shape "
                                      f"{tuple(value.shape)}, not {tuple(params[index].shape)}")


# What the trainer keeps in "progress"; a resumed run reads every one of them. `best` is the best
# value so far of the objective's monitored validation number (accuracy, or a pre-training loss).
_PROGRESS = {"epoch": int, "update": int, "best_epoch": int, "bad_epochs": int,
             "train_seconds": (int, float), "history": list}
_HISTORY = ("epoch", "train_loss")
# Written since mid-epoch checkpoints; older checkpoints lack them and start from zero.
_PROGRESS_COUNTS = ("step", "skipped_updates", "skipped_in_a_row")
_SUMS = ("loss", "correct", "images", "skipped")


def _is(value, kinds) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def _state_problem(state) -> str | None:
    """What is wrong with a training state's JSON part, or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    groups, progress, rng = state.get("param_groups"), state.get("progress"), state.get("rng")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups):
        return "param_groups is not a list of optimiser groups"
    if not isinstance(progress, dict):
        return "no progress record"
    if "best" not in progress and "best_val_acc" in progress:  # written before pre-training ran here
        progress["best"] = progress.pop("best_val_acc")
        if progress["best"] == -1.0 and progress.get("best_epoch") == -1:
            progress["best"] = None
    for key, kinds in _PROGRESS.items():
        if not _is(progress.get(key), kinds):
            return f"progress has no valid {key!r}"
    for key in ("best", "lowest_val_loss"):  # the second written since plateau stops; None before epoch 1
        if key in progress and not (progress[key] is None or _is(progress[key], (int, float))):
            return f"progress has no valid {key!r}"
    if "best" not in progress:
        return "progress has no valid 'best'"
    if "lowest_val_loss_epoch" in progress and not _is(progress["lowest_val_loss_epoch"], int):
        return "progress has no valid 'lowest_val_loss_epoch'"
    for key in _PROGRESS_COUNTS:
        if key in progress and not (_is(progress[key], int) and progress[key] >= 0):
            return f"progress has no valid {key!r}"
    if "threads" in progress and not (_is(progress["threads"], int) and progress["threads"] > 0):
        return "progress has no valid 'threads'"
    data = progress.get("data")
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("kind"), str)
                                 and isinstance(data.get("sha256"), str) and _is(data.get("files"), int)):
        return "the fingerprint of the run's data is damaged"
    sums = progress.get("epoch_sums")
    if sums is not None and not (isinstance(sums, dict) and all(_is(sums.get(k), (int, float)) for k in _SUMS)):
        return "the running sums of the epoch in progress are damaged"
    for entry in progress["history"]:
        if not isinstance(entry, dict) or not all(_is(entry.get(k), (int, float)) for k in _HISTORY):
            return "a history entry lacks the epoch's numbers"
        if not all(_is(v, (int, float)) for v in entry.values()):
            return "a history entry holds something other than numbers"
    if not isinstance(rng, dict):
        return "no random-generator state"
    numpy_state, python_state = rng.get("numpy"), rng.get("python")
    if not (isinstance(numpy_state, list) and len(numpy_state) == 4 and numpy_state[0] == "MT19937"
            and _is(numpy_state[1], int) and 0 <= numpy_state[1] <= 624 and _is(numpy_state[2], int)
            and _is(numpy_state[3], (int, float))):
        return "numpy's generator state is damaged"
    if not (isinstance(python_state, list) and len(python_state) == 3 and _is(python_state[0], int)
            and isinstance(python_state[1], list) and len(python_state[1]) == 625
            and all(_is(v, int) and 0 <= v < 2**32 for v in python_state[1])
            and (python_state[2] is None or _is(python_state[2], (int, float)))):
        return "Python's generator state is damaged"
    return None


def _rng_tensor_problem(rng: dict[str, torch.Tensor]) -> str | None:
    torch_state, numpy_keys = rng.get("rng.torch"), rng.get("rng.numpy")
    if torch_state is None or torch_state.dtype != torch.uint8 or torch_state.shape != torch.get_rng_state().shape:
        return "torch's generator state is missing or damaged"
    if numpy_keys is None or numpy_keys.dtype != torch.int64 or tuple(numpy_keys.shape) != (624,):
        return "numpy's generator keys are missing or damaged"
    return None
