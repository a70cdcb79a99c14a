"""Dataset sources, detected from the `--data` string, read into memory as uint8 tensors.

    digits            the bundled 8x8 grey digits (1797 images, 10 classes)
    path/to/folder    one sub-folder of images per class, or train/ [val/] [test/] holding them
    path/to/cifar     the extracted python version of CIFAR-10 or CIFAR-100
    path/to/file.npz  x (N, H, W[, C]) uint8, y (N,) integers, optional class_names
    path/to/shards    a folder written by `vitkit shard` (dataset.json + tar shards), read
                      whole; training streams it instead (data/shards.py)

The source and how it is split and read are one `DataSpec` (data/spec.py).

Parts a source does not provide (val, or val and test) are carved from its training images
by a stratified split, deterministic for `split_seed`.
"""

from __future__ import annotations

import os
import zipfile
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vitkit.data import cifar
from vitkit.data.dataset import DataSplits, ImageSet, carve_splits
from vitkit.data.folders import find_split_files
from vitkit.data.images import (BadImage, Size, decode_all, describe_bad, most_common_size,
                                pixel_limit, raise_if_bad, read_header, read_pixels, relative_bad,
                                target_size)
from vitkit.data.shards import is_shard_folder, read_shards
from vitkit.data.spec import DataSpec
from vitkit.errors import ConfigError, DataError
from vitkit.npz import read_arrays
from vitkit.progress import track

_SOURCES_HINT = "give 'digits', an image folder, a CIFAR python folder, an .npz file or a shard folder"
# ITU-R 601 luma, the weights Pillow uses for RGB -> L, so arrays and files agree.
_LUMA = (0.299, 0.587, 0.114)
_RESIZE_CHUNK = 1024


def load_data(spec: DataSpec | str | os.PathLike = "digits", *, image_size: int | Sequence[int] | None = None,
              channels: int | None = None, quiet: bool = False, **options) -> DataSplits:
    """Read a data source into train/val/test splits of uint8 images.

    `spec` is a `DataSpec` or a source string (digits, an image folder, a CIFAR folder, an
    .npz file, a shard folder); `options` override the spec's fields (`split_seed`,
    `val_fraction`, `test_fraction`, `skip_bad_images`, `max_image_pixels`: see `DataSpec`).
    `image_size` (int or (H, W)) and `channels` (1 or 3) convert every image; by default a
    folder's images take its most common size and are grey only if every file is grey.
    """
    data = DataSpec.of(spec, **options)
    check_channels(channels, images_own=True)
    spec, split_seed = data.source, data.split_seed
    skip_bad_images, max_image_pixels = data.skip_bad_images, data.max_image_pixels
    size = target_size(image_size, max_image_pixels)
    fractions = {"val": data.val_fraction, "test": data.test_fraction}
    if spec == "digits":
        images, labels, names = _digits()
        parts = {"all": _image_set(images, labels, size, channels)}
        return _assemble(parts, names, "digits", split_seed, fractions, [])
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data source {spec!r} not found: no such file or folder; {_SOURCES_HINT}"
                        + _cifar_hint(spec))
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"cannot read {path} as data: unsupported file type{_archive_hint(path)}; "
                            f"{_SOURCES_HINT}")
        images, labels, names = _read_npz(path)
        return _assemble({"all": _image_set(images, labels, size, channels)}, names, f"npz:{path}",
                         split_seed, fractions, [])
    if is_shard_folder(path):
        return read_shards(path, size, channels, max_image_pixels)
    cifar_folder = cifar.find_cifar_folder(path)
    if cifar_folder is not None:
        (train_x, train_y), (test_x, test_y), names = cifar.read_cifar(cifar_folder)
        kind = "cifar10" if cifar.is_cifar10(cifar_folder) else "cifar100"
        parts = {"train": _image_set(train_x, train_y, size, channels),
                 "test": _image_set(test_x, test_y, size, channels)}
        return _assemble(parts, names, f"{kind}:{cifar_folder}", split_seed, fractions, [])
    parts, names, notes = _read_folder(path, size, channels, skip_bad_images, max_image_pixels, quiet)
    return _assemble(parts, names, f"folder:{path}", split_seed, fractions, notes)


def read_images(paths: Sequence[str | Path], image_size: int | Sequence[int], channels: int, *,
                max_image_pixels: int | None = None, quiet: bool = False) -> torch.Tensor:
    """Image files as (N, C, H, W) uint8, each converted and resized to a model's input;
    `max_image_pixels` as for load_data."""
    paths = [Path(p).expanduser() for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} image file(s) not found: {', '.join(str(p) for p in missing[:5])}")
    check_channels(channels)
    with pixel_limit(max_image_pixels):
        images, _, bad = decode_all(paths, target_size(image_size, max_image_pixels), channels, quiet)
    raise_if_bad(bad, "the given files", skip_hint=False)
    return images


def read_image_files(paths: Sequence[str | Path], channels: int = 3, *, max_image_pixels: int | None = None
                     ) -> list[torch.Tensor]:
    """Image files as (C, H, W) uint8 tensors, each at its own size; `max_image_pixels` as for
    load_data."""
    paths = [Path(p).expanduser() for p in paths]
    check_channels(channels)
    images, bad = [], {}
    with pixel_limit(max_image_pixels):
        for path in paths:
            try:
                images.append(torch.from_numpy(read_pixels(path, read_header(path).size, channels).copy()))
            except BadImage as err:
                bad[path] = str(err)
    raise_if_bad(bad, "the given files", skip_hint=False)
    return images


def check_channels(channels: int | None, *, images_own: bool = False) -> None:
    """1 (grey) or 3 (RGB), or with `images_own` None (the images' own channels)."""
    if channels not in ((None, 1, 3) if images_own else (1, 3)):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), not {channels}")


def _cifar_hint(spec: str) -> str:
    if spec.lower().replace("-", "") in ("cifar10", "cifar100"):
        return (" (vitkit downloads nothing: extract the official python tarball and pass its folder, "
                "e.g. cifar-10-batches-py)")
    return ""


def _archive_hint(path: Path) -> str:
    if path.name.lower().endswith((".tar.gz", ".tgz", ".tar", ".zip")):
        return f" (an archive: extract it with `tar xzf {path.name}` and pass the folder)"
    return ""


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    with resources.files("vitkit.data").joinpath("digits.npz").open("rb") as f:
        data = np.load(f, allow_pickle=False)
        return data["x"][:, None], data["y"], [str(i) for i in range(10)]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """x as (N, C, H, W) uint8, y as int64 and the class names, every one checked."""
    layout = "it needs x (N, H, W[, C]) uint8, y (N,) integer labels and optionally class_names"
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable .npz file (not a zip archive); {layout}")
    data = read_arrays(path, DataError, layout + " (store class_names as a string array, "
                                              "e.g. np.array(names, dtype=str))")
    missing = [key for key in ("x", "y") if key not in data]
    if missing:
        raise DataError(f"{path} has no {' or '.join(missing)} array; {layout}")
    x, y, names = data["x"], data["y"], data.get("class_names")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x is {x.dtype}; it must be uint8 with values 0..255")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: x has shape {x.shape}; it must be (N, H, W) or (N, H, W, C) with C 1 or 3")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
        raise DataError(f"{path}: y is {y.dtype} {y.shape}; "
                        f"it must be {x.shape[0]} integer labels, one per image")
    if len(y) == 0:
        raise DataError(f"{path} holds no images")
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "US"):
        raise DataError(f"{path}: class_names is {names.dtype} {names.shape}; it must be a 1-D string array")
    if names is None and y.max() >= len(y):
        # Classes named by number would be 0..max: never more of them than there are images.
        raise DataError(f"{path}: labels run up to {y.max()} for only {len(y)} images; number the classes "
                        "0..classes-1, or store their names in class_names")
    class_names = [str(n) for n in names] if names is not None else [str(i) for i in range(int(y.max()) + 1)]
    if y.min() < 0 or y.max() >= len(class_names):
        raise DataError(f"{path}: labels run from {y.min()} to {y.max()} but there are {len(class_names)} "
                        "classes; labels must be 0..classes-1")
    return np.ascontiguousarray(x), y.astype(np.int64), class_names


def _image_set(images: np.ndarray, labels: np.ndarray, size: Size | None, channels: int | None) -> ImageSet:
    return ImageSet(_conform(torch.from_numpy(images), size, channels), torch.from_numpy(labels))


def _conform(images: torch.Tensor, size: Size | None, channels: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) converted to `channels` and resized to `size` where they differ."""
    if channels is not None and channels != images.shape[1]:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1).contiguous()
        else:
            weights = torch.tensor(_LUMA).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if size is None or tuple(images.shape[-2:]) == size:
        return images
    chunks = [F.interpolate(chunk.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
              .round().clamp(0, 255).to(torch.uint8) for chunk in images.split(_RESIZE_CHUNK)]
    return torch.cat(chunks)


def _read_folder(root: Path, size: Size | None, channels: int | None, skip_bad: bool,
                 max_image_pixels: int | None, quiet: bool) -> tuple[dict[str, ImageSet], list[str], list[str]]:
    split_files = find_split_files(root)
    names = sorted(set().union(*(files.keys() for files in split_files.values())))
    class_index = {name: i for i, name in enumerate(names)}
    paths, labels, splits = [], [], []
    for split, files in split_files.items():
        for name, class_paths in files.items():
            paths += class_paths
            labels += [class_index[name]] * len(class_paths)
            splits += [split] * len(class_paths)
    with pixel_limit(max_image_pixels):
        headers, bad = {}, {}
        for path in track(paths, "checking images", quiet=quiet):
            try:
                headers[path] = read_header(path)
            except BadImage as err:
                bad[path] = str(err)
        readable = [i for i, path in enumerate(paths) if path in headers]
        if not readable:
            raise DataError(f"none of the {len(paths)} image files under {root} can be read: "
                            f"{describe_bad(relative_bad(bad, root))}")
        common = size or most_common_size([headers[paths[i]].size for i in readable])
        channels = channels or (1 if all(headers[paths[i]].grey for i in readable) else 3)
        # Every file is decoded before any is reported: one error names the unknown formats and
        # the truncated files together, each under its class folder.
        images, decoded, late_bad = decode_all([paths[i] for i in readable], common, channels, quiet)
    bad = relative_bad({**bad, **late_bad}, root)
    if not skip_bad:
        raise_if_bad(bad, str(root), skip_hint=True)
    kept = np.asarray(readable)[decoded]
    notes = _folder_notes(bad, [headers[paths[i]].size for i in kept], common, size is None)
    labels_kept, splits_kept = torch.tensor(labels)[kept], np.asarray(splits)[kept]
    parts = {split: ImageSet(images[torch.from_numpy(splits_kept == split)],
                             labels_kept[torch.from_numpy(splits_kept == split)]) for split in split_files}
    return parts, names, notes


def _folder_notes(bad: dict[Path, str], sizes: list[Size], size: Size, size_was_chosen: bool) -> list[str]:
    notes = []
    if bad:
        notes.append(f"skipped {len(bad)} unreadable image file(s): {describe_bad(bad)}")
    resized = sum(s != size for s in sizes)
    if resized:
        why = "the most common size; pass image_size to choose" if size_was_chosen else "image_size"
        notes.append(f"resized {resized} of {len(sizes)} images to {size[0]}x{size[1]} ({why})")
    return notes


def _assemble(parts: dict[str, ImageSet], names: list[str], source: str, seed: int,
              fractions: dict[str, float], notes: list[str]) -> DataSplits:
    """Carve the missing val/test parts from train (or from "all") with a stratified split."""
    plan = carve_splits({name: part.labels.numpy() for name, part in parts.items()}, fractions, seed)
    pool = "all" if "all" in parts else "train"
    sets = {name: parts[part].subset(index) if part == pool else parts[part] for name, (part, index) in plan.items()}
    if len(sets["train"]) == 0:
        raise DataError(f"{source}: no training images are left after the split; add images")
    return DataSplits(sets["train"], sets["val"], sets["test"], names, source=source, notes=notes)
