"""Checkpoint formats: detection and loading into a vitkit model, and saving.

Each foreign format lives in a module of its own (an explicit name table with shape
checks, see names.py) that turns a file into (ModelConfig, vitkit state dict). `load`
picks the module from the file itself:

    directory with timm's Hub config.json           -> timm.py
    directory with config.json                      -> hf.py (Hugging Face ViT)
    .safetensors with a vitkit config in its header -> native.py
    .npz with embedding/kernel, Transformer/...     -> google_npz.py (original or big_vision)
    .safetensors / .pth / .pt / .bin state dict     -> timm.py, or hf.py by its key names

A release name (pretrained.py), hf-hub:OWNER/REPO or a URL is first fetched into a cache
(hub.py) and read from there.
"""

from __future__ import annotations

import mmap
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.fields import check_fields
from vitkit.formats.names import check_buildable
from vitkit.formats.native import is_native, load_native, read_header, read_tensors, save
from vitkit.models.config import ModelConfig
from vitkit.models.vit import VisionTransformer
from vitkit.pickles import DamagedPickle, check_pickle, persistent_ids

# Overrides that describe the file rather than change the model: used while reading.
READ_HINTS = ("source_image_size",)
# Overrides that adapt a loaded model (resampled position embeddings, new patch kernel, new head).
ADAPT = ("image_size", "patch_size", "num_classes")


def _check_legacy_sizes(path: Path) -> None:
    """A torch file of the legacy (not zip) layout holds five pickles (magic number, protocol,
    system info, the object, the storage keys) and then the storages' bytes. torch allocates
    every declared string and storage before reading it: check the declarations fit the file.
    Walked twice, with pickletools and with a skimming unpickler that runs nothing; a pickle
    either walk cannot finish is refused, since torch's own unpickler may read on where they stop."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        starts = []
        while len(starts) < 5 and view.tell() < size:  # fewer pickles: torch.load names the problem
            starts.append(view.tell())
            try:
                check_pickle(view)
            except DamagedPickle as e:
                raise CheckpointError(f"cannot read {path}: a damaged pickle ({e}); the file is truncated "
                                      "or not a checkpoint") from None
        storages: dict = {}
        for start in starts:
            view.seek(start)
            try:
                ids = persistent_ids(view)
            except Exception as e:  # whatever a malformed pickle raises in Python's unpickler
                raise CheckpointError(f"cannot read {path}: a damaged pickle ({type(e).__name__}: "
                                      f"{' '.join(str(e).split())}); the file is truncated or not a checkpoint"
                                      ) from None
            # A storage's persistent id is ('storage', type, key, location, number of elements, ...);
            # tensors sharing a storage repeat its id.
            storages.update((repr(pid[2]), pid[4]) for pid in ids if isinstance(pid, tuple) and len(pid) > 4
                            and isinstance(pid[4], int) and pid[4] > 0)
        declared = sum(storages.values())
        if declared > size:
            raise CheckpointError(f"cannot read {path}: its storages declare {declared:,} elements but "
                                  f"the file has {size:,} bytes; it is truncated or damaged")


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a torch pickle, refusing anything that is not tensors."""
    if not zipfile.is_zipfile(path):
        _check_legacy_sizes(path)
    try:
        with warnings.catch_warnings():
            # Garbage bytes can look like an unknown pickle protocol; torch warns before failing.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Name what was refused (e.g. "Unsupported global: GLOBAL posix.system"), nothing more:
        # torch's advice to retry with weights_only=False is exactly what must not be done.
        detail = re.search(r"Unsupported[^\n]*", str(e))
        raise CheckpointError(f"refused {path}: file contains code/objects, not plain tensors"
                              + (f" ({detail.group(0).rstrip('.')})" if detail else "")) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            IndexError, KeyError, TypeError, AttributeError, struct.error, AssertionError) as e:
        # The weights-only unpickler walks opcodes in Python: random bytes stop it with any of
        # these (an index past its stack, an unknown memo key, undecodable text; torch's legacy
        # loader asserts that every storage it is given was named).
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read {path}: {detail} (truncated or not a checkpoint?)") from None
    for wrapper in ("state_dict", "model", "module", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {str(k): v for k, v in obj.items()}


def image_format(path: Path) -> str | None:
    """The format ("PNG", "JPEG", ...) of the file at `path` if Pillow, vitkit's image reader,
    opens it as one of the image types vitkit reads (data.images.IMAGE_SUFFIXES), else None: a
    file a user gives where a checkpoint belongs (arguments swapped) is named for what it is.
    Asked only once every checkpoint format has refused the file, so no checkpoint is ever
    taken for an image."""
    from PIL import Image

    from vitkit.data.images import IMAGE_SUFFIXES, ClampedReads

    Image.init()
    extensions = Image.registered_extensions()
    formats = sorted({extensions[s] for s in IMAGE_SUFFIXES if s in extensions})
    try:
        with open(path, "rb") as f, Image.open(ClampedReads(f, os.fstat(f.fileno()).st_size),
                                               formats=formats) as image:
            return image.format
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None


def _refuse_image(path: Path) -> None:
    kind = image_format(path)
    if kind is not None:
        raise CheckpointError(f"{path} is a {kind} image, not a checkpoint (.safetensors, .npz, .pth or a "
                              "Hugging Face folder); was it given where the checkpoint goes?")


def _is_npz(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(".npy") for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError):
        return False  # a damaged central directory (names that are not UTF-8 ...): torch.load says more


def _is_safetensors(path: Path) -> bool:
    try:
        read_header(path)
        return True
    except (CheckpointError, OSError):
        return False


def _read_state_dict(tensors: dict[str, torch.Tensor], path: Path, strict: bool, hints: dict):
    from vitkit.formats import hf, timm

    names = set(tensors)
    if any("embeddings.patch_embeddings.projection.weight" in k for k in names):
        if hf.is_hf_dir(path.parent):
            return hf.read(path.parent, strict=strict, **hints)
        raise CheckpointError(f"{path} has Hugging Face ViT names but no config.json beside it; "
                              "load the directory that holds both")
    if timm.looks_like_timm(names):
        return timm.read(tensors, str(path), strict=strict, **hints)
    shown = ", ".join(sorted(names)[:6])
    raise CheckpointError(f"{path}: tensor names ({shown} ...) match no format vitkit reads "
                          "(timm, Hugging Face, Google npz, vitkit)")


def read_checkpoint(path: str | os.PathLike, strict: bool = True, **hints
                    ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, state dict in vitkit names, metadata) of any supported checkpoint.

    `hints` settle what the tensors cannot say: num_heads (fused qkv), source_image_size
    (a non-square grid), posemb (a fixed embedding that is not stored). The metadata's
    "skipped" lists foreign tensors left out when strict=False. `path` may also be a release
    name (`vitkit models --pretrained`), hf-hub:OWNER/REPO[@REVISION][/FILE] or a URL."""
    from vitkit import hub

    local, release = locate(path)
    cfg, state, meta = _read_any(local, strict, hints)
    _check_values(state, local)
    if release is not None:
        cfg = release.apply(cfg, str(path))
    elif meta.get("format") == "hf" and str(path).startswith(hub.HUB_PREFIX):
        # Named by its repo, not by the cache's commit folder it was read from.
        cfg = cfg.replace(name=hub.parse_hub(str(path))[0].split("/")[1])
    return cfg, state, meta


def locate(path: str | os.PathLike):
    """(local file or folder, release or None) of what `load` takes: an existing path as it is;
    a release name, a Hub address or a URL fetched (a release is served from the cache once
    it is there)."""
    from vitkit import hub, pretrained

    if not isinstance(path, str) or os.path.exists(path):
        return Path(path), None
    release = pretrained.RELEASES.get(path)
    if release is not None:
        return hub.fetch(release.source, prefer_cache=True), release
    if hub.is_remote(path):
        return hub.fetch(path), None
    if not re.search(r"[/\\]", path) and not Path(path).suffix:
        raise CheckpointError(f"{path!r} is neither a checkpoint file nor a pretrained model name; "
                              + pretrained.suggest(path))
    return Path(path), None


def _read_any(path: Path, strict: bool, hints: dict) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    from vitkit.formats import google_npz, hf, timm

    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        if timm.is_hub_dir(path):
            return timm.read_hub_dir(path, strict=strict, **hints)
        if hf.is_hf_dir(path):
            return hf.read(path, strict=strict, **hints)
        raise CheckpointError(f"{path} is a directory without config.json (expected a Hugging Face ViT)")
    if path.suffix == ".onnx":
        raise CheckpointError(f"{path}: ONNX is an export format; load the checkpoint it was made from")
    if path.suffix == ".safetensors":
        read_header(path)  # a damaged one is refused here, naming what is wrong with it
    if _is_safetensors(path):
        if is_native(path):
            cfg, state, meta = load_native(path)
            return cfg, state, {**meta, "format": "vitkit"}
        return _read_state_dict(read_tensors(path), path, strict, hints)
    if _is_npz(path):
        return google_npz.read(path, strict=strict, **hints)
    _refuse_image(path)
    if path.suffix in (".npz", ".safetensors"):
        raise CheckpointError(f"cannot read {path}: not a valid {path.suffix} file (truncated?)")
    return _read_state_dict(read_torch_file(path), path, strict, hints)


def _check_values(state: dict[str, torch.Tensor], path: Path) -> None:
    """Weights that are NaN, infinite or complex make every output meaningless: refuse them by name."""
    complex_ = [k for k, v in state.items() if v.is_complex()]
    if complex_:
        raise CheckpointError(f"{path} holds complex tensors ({', '.join(complex_[:4])}); weights must be real")
    # float32 first: isfinite is not implemented for every 8-bit float type.
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v.float()).all())]
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite values in {len(bad)} tensor(s) "
                              f"({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}); the file is damaged "
                              "or was saved from a run that diverged")


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
    """Read a checkpoint of any supported format into an eval-mode model.

    Keyword overrides settle what the file cannot say (`num_heads` for a fused qkv,
    `source_image_size` for a non-square grid, `act`, `input_mean`, ...) or adapt the model:
    `image_size` resamples the position embeddings, `patch_size` resizes the patch kernel
    (FlexiViT's pseudo-inverse resize), `num_classes` puts on a new zero-initialised head.
    With strict=False, tensors that do not fit are skipped with a warning that lists them."""
    return load_with_info(path, strict=strict, **overrides)[0]


def load_with_info(path: str | os.PathLike, strict: bool = True, **overrides
                   ) -> tuple[VisionTransformer, dict]:
    """`load`, also returning the file's metadata ("format", "skipped", ...)."""
    adapt = {k: overrides.pop(k) for k in ADAPT if k in overrides}
    adapt = {k: v for k, v in adapt.items() if v is not None}  # None keeps the file's value
    check_fields(ModelConfig, adapt, "load")  # before the file is read, as a TypeError
    hints = {k: overrides.pop(k) for k in READ_HINTS if k in overrides}
    for key in ("num_heads", "posemb"):
        if key in overrides:
            hints[key] = overrides[key]
    if "image_size" in adapt:
        hints["image_size"] = adapt["image_size"]
    cfg, state, meta = read_checkpoint(path, strict=strict, **hints)
    try:
        cfg = cfg.replace(**overrides)
    except ConfigError as e:
        raise CheckpointError(f"cannot apply overrides to {path}: {e}") from None
    if overrides:
        check_buildable(cfg, state, str(path), asked=_listing(overrides))
    _check_adapted(cfg, adapt, state, path)
    model = VisionTransformer(cfg)
    skipped = list(meta.get("skipped", [])) + apply_state(model, state, strict=strict, source=str(path))
    skipped = list(dict.fromkeys(skipped))  # what the format reader skipped, apply_state misses again
    if skipped:
        warnings.warn(f"{path}: strict=False skipped {len(skipped)} tensor(s): {', '.join(skipped)}",
                      stacklevel=2)
    if "image_size" in adapt or "patch_size" in adapt:
        from vitkit.models.resize import resize_model

        try:
            model = resize_model(model, image_size=adapt.get("image_size"), patch_size=adapt.get("patch_size"))
        except ConfigError as e:
            raise CheckpointError(f"cannot resize {path}: {e}") from None
    num_classes = adapt.get("num_classes")
    if num_classes is not None and num_classes != cfg.num_classes:
        model.reset_head(num_classes)
    return model.eval(), {**meta, "skipped": skipped}


def _listing(options: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _check_adapted(cfg: ModelConfig, adapt: dict, state: dict[str, torch.Tensor], path) -> None:
    """Refuse adaptations the checkpoint cannot back (check_buildable's budget) before anything
    is built: num_classes=10**9 would allocate a head of 10**9 rows, image_size=10**6 resample
    the position table to 4 * 10**9 rows."""
    if not adapt:
        return
    changes = dict(adapt)
    if adapt.get("num_classes", cfg.num_classes) != cfg.num_classes:
        changes["class_names"] = ()  # as reset_head does
    try:
        target = cfg.replace(**changes)
    except ConfigError as e:
        raise type(e)(f"cannot apply {_listing(adapt)} to {path}: {e}") from None
    check_buildable(target, state, str(path), asked=_listing(adapt))


# Loaded here, before the function below takes the name: importing a submodule binds it on the
# package, so a first import of vitkit.formats.convert (by `vitkit convert`, or inside the
# function) would otherwise replace the function `convert` with the module.
from vitkit.formats import convert as _conversion  # noqa: E402


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, **overrides) -> dict:
    """Load `src` (any format) and write it to `dst` as `to` (vitkit|hf|timm|npz|onnx); returns a
    report with the largest relative logit difference between the two on a random batch."""
    return _conversion.convert(src, dst, to, **overrides)


__all__ = ["load", "load_with_info", "save", "read_checkpoint", "locate", "apply_state", "convert", "read_torch_file"]
