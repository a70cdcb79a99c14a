"""Frozen features: the pre-logits representation of a model, batched, with an on-disk cache.

The cache holds one safetensors file per (checkpoint content, images) pair:

    <cache dir>/<sha256 of the checkpoint, 16 hex>/<split>-<sha256 of images and labels, 16 hex>.safetensors

The cache dir is `$VITKIT_CACHE_DIR` if set, else `$XDG_CACHE_HOME/vitkit/features`, else
`~/.cache/vitkit/features`. Hashing the file content (not its name or time) means a
retrained checkpoint at the same path never reuses stale features, and hashing the images
means another `--data` never reuses another data set's features.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitkit.evaluate.preprocess import prepare_images
from vitkit.io import atomic_path, user_cache_dir
from vitkit.progress import Progress

# Bumped whenever what is stored changes meaning (e.g. the preprocessing).
FEATURE_VERSION = "pre_logits-2"  # 2: released models resized and cropped as their release does

_hash_memo: dict[tuple[str, int, int], str] = {}


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256,
                     progress: bool = True) -> torch.Tensor:
    """(N, F) float32 pre-logits features of uint8 images (N, C, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    try:
        with Progress(len(images), "extracting features", "img", quiet=not progress) as bar:
            for start in range(0, len(images), batch_size):
                x = prepare_images(images[start:start + batch_size], model.config).to(device)
                chunks.append(model.forward_intermediates(x)["pre_logits"].float().cpu())
                bar.update(x.shape[0])
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0, model.num_features)
    return torch.cat(chunks)


def default_cache_dir() -> Path:
    return user_cache_dir("features", "VITKIT_CACHE_DIR")


def checkpoint_digest(checkpoint: str | os.PathLike) -> str:
    """sha256 of a checkpoint's bytes (of every file, in name order, for a folder checkpoint);
    a release name, Hub address or URL by its cached file, a release also by its name, since the
    registry gives the model its release's preprocessing."""
    from vitkit.formats import locate

    path, release = locate(checkpoint)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256(release.name.encode() if release else b"")
    for f in files:
        stat = f.stat()
        key = (str(f.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _hash_memo:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            _hash_memo[key] = h.hexdigest()
        digest.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        digest.update(_hash_memo[key].encode())
    return digest.hexdigest()


def data_digest(images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    h = hashlib.sha256(FEATURE_VERSION.encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_path(checkpoint: str | os.PathLike, split: str, images: torch.Tensor,
               labels: torch.Tensor | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"{split}-{data_digest(images, labels)[:16]}.safetensors"
    return root / checkpoint_digest(checkpoint)[:16] / name


def cached_features(checkpoint: str | os.PathLike, model: torch.nn.Module, split: str,
                    images: torch.Tensor, labels: torch.Tensor | None = None, *,
                    cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                    batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """`extract_features` for the model read from `checkpoint`, reusing the cached result of an
    earlier call with the same checkpoint content, split name and images."""
    if not use_cache:
        return extract_features(model, images, batch_size, progress)
    path = cache_path(checkpoint, split, images, labels, cache_dir)
    if path.exists():
        try:
            stored = load_file(str(path))["features"]
            # Anything but (N, F) float32 features is a damaged entry, recomputed and overwritten.
            if stored.dtype == torch.float32 and tuple(stored.shape) == (len(images), model.num_features):
                return stored
        except (SafetensorError, OSError, KeyError, RuntimeError, ValueError):
            pass
    features = extract_features(model, images, batch_size, progress)
    with atomic_path(path) as tmp:
        save_file({"features": features.contiguous()}, str(tmp),
                  metadata={"split": split, "version": FEATURE_VERSION})
    return features


def split_features(checkpoint: str | os.PathLike, data, splits=("train", "val", "test"), *,
                   model: torch.nn.Module | None = None, cache_dir: str | os.PathLike | None = None,
                   use_cache: bool = True, batch_size: int = 256, progress: bool = True
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (features, labels)} of a `DataSplits` for the checkpoint, through the cache.
    The model is read from `checkpoint` (with `vitkit.load`) unless given."""
    if model is None:
        from vitkit.formats import load

        model = load(checkpoint)
    out = {}
    for name in splits:
        part = data.split(name)
        feats = cached_features(checkpoint, model, name, part.images, part.labels, cache_dir=cache_dir,
                                use_cache=use_cache, batch_size=batch_size, progress=progress)
        out[name] = (feats, part.labels)
    return out
