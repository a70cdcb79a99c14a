"""Writing shards (`vitkit shard`): a data source -> WebDataset-style tar shards + dataset.json.

An image folder (class sub-folders, or train/ val/ test/ holding them) is checked image by
image (every file is decoded once; bad ones are an error or, when asked, skipped and counted),
split as `load_data` splits it, and each file's own bytes are stored. The other sources
(digits, CIFAR, .npz) are read by `load_data` and each image is stored as a PNG.

Samples are written in a random order (seeded by the split seed), so that every shard holds
a mix of classes: the reader's shard order and shuffle buffer then mix well. Every file is
written atomically and dataset.json last, so a folder with a dataset.json is complete.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from vitkit.data import cifar
from vitkit.data.dataset import carve_splits
from vitkit.data.folders import find_split_files
from vitkit.data.images import (BadImage, ImageHeader, Size, describe_bad, most_common_size, pixel_limit,
                                raise_if_bad, read_header, read_pixels, relative_bad)
from vitkit.data.shards import (FORMAT, FORMAT_VERSION, INDEX_NAME, SPLITS, ShardFile, is_shard_folder,
                                read_whole_shard)
from vitkit.data.sources import load_data
from vitkit.data.spec import DataSpec
from vitkit.errors import ConfigError, DataError
from vitkit.io import atomic_path, write_json
from vitkit.progress import Progress, track

DEFAULT_SHARD_SIZE = 1000
_SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar$")


@dataclass
class _Item:
    """One sample to write: a file's bytes as they are, or pixels to store as PNG."""

    label: int
    path: Path | None = None
    pixels: np.ndarray | None = None

    def encoded(self) -> tuple[str, bytes]:
        if self.path is not None:
            try:
                return self.path.suffix.lower()[1:], self.path.read_bytes()
            except OSError as err:
                raise DataError(f"cannot read {self.path} ({err.strerror}); was it moved while sharding?") from None
        buffer = io.BytesIO()
        pixels = self.pixels[0] if self.pixels.shape[0] == 1 else self.pixels.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
        return "png", buffer.getvalue()


def shard_data(source: DataSpec | str | os.PathLike, out: str | os.PathLike, *,
               shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False, quiet: bool = False,
               **options) -> dict:
    """Write `source` (a DataSpec or a source string; `options` override the spec's fields) as
    shards of `shard_size` images into `out`, split as `load_data` splits it; returns
    dataset.json's content."""
    data = DataSpec.of(source, **options)
    split_seed, val_fraction, test_fraction = data.split_seed, data.val_fraction, data.test_fraction
    skip_bad_images, max_image_pixels = data.skip_bad_images, data.max_image_pixels
    if shard_size <= 0:
        raise ConfigError(f"shard size must be a positive number of images, not {shard_size}")
    out = Path(out).expanduser()
    spec = data.source
    folder = Path(spec).expanduser()
    is_folder = spec != "digits" and folder.is_dir() and not is_shard_folder(folder) \
        and cifar.find_cifar_folder(folder) is None
    if is_folder and out.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"--out {out} is inside the image folder {folder}; write the shards elsewhere")
    _check_out(out, overwrite)
    fractions = {"val": val_fraction, "test": test_fraction}
    if is_folder:
        found = _folder_items(folder, split_seed, fractions, skip_bad_images, max_image_pixels, quiet)
    else:
        found = _array_items(spec, split_seed, fractions, quiet)
    splits, names, channels, sizes, given, notes = found
    rng_by_split = {name: np.random.default_rng([split_seed, i]) for i, name in enumerate(SPLITS)}
    splits = {name: [splits[name][i] for i in rng_by_split[name].permutation(len(splits[name]))] for name in SPLITS}

    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / INDEX_NAME).unlink(missing_ok=True)  # the old index must not describe half-replaced shards
        with Progress(sum(map(len, splits.values())), "writing shards", quiet=quiet) as bar:
            written = {name: _write_split(out, name, items, shard_size, bar) for name, items in splits.items()}
        for stale in set(p.name for p in out.iterdir() if _SHARD_NAME.match(p.name)) - \
                {shard.name for shards in written.values() for shard in shards}:
            (out / stale).unlink()
    except OSError as err:
        raise ConfigError(f"cannot write the shards into {out}: {err.strerror or err}") from None
    index = _index(str(folder.resolve()) if is_folder else spec, names, channels, sizes, max_image_pixels,
                   {"seed": split_seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "given": given},
                   notes, {name: ([item.label for item in splits[name]], shards) for name, shards in written.items()})
    write_json(out / INDEX_NAME, index)
    return index


def index_shards(root: str | os.PathLike, class_names: list[str] | None = None, *,
                 max_image_pixels: int | None = None, quiet: bool = False) -> dict:
    """Write dataset.json for shards another tool wrote in the same layout (e.g. webdataset's
    ShardWriter): `{train,val,test}-*.tar` in `root`, each sample an image and a `.cls` label.
    Every sample is read once (labels checked, image headers read for the sizes, nothing
    decoded). Without `class_names` the classes are named 0..largest label."""
    root = Path(root).expanduser()
    found = {split: sorted(root.glob(f"{split}-*.tar")) for split in SPLITS}
    if not found["train"]:
        raise DataError(f"no train-*.tar shards in {root}; name the shards train-000000.tar, val-..., test-...")
    labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    headers: list[ImageHeader] = []
    shards: dict[str, list[ShardFile]] = {split: [] for split in SPLITS}
    limit = len(class_names) if class_names else None
    with pixel_limit(max_image_pixels), Progress(None, "indexing shards", quiet=quiet) as bar:
        for split, paths in found.items():
            for path in paths:
                count = 0
                for sample in read_whole_shard(path, limit):
                    try:
                        headers.append(read_header(io.BytesIO(sample.data)))
                    except BadImage as err:
                        raise DataError(f"shard {path}: sample {sample.key}.{sample.extension} is not a readable "
                                        f"image ({err})") from None
                    labels[split].append(sample.label)
                    count += 1
                    bar.update(1)
                shards[split].append(ShardFile(path.name, count, path.stat().st_size))
    if not headers:
        raise DataError(f"the shards in {root} hold no samples")
    largest = max(label for split in labels.values() for label in split)
    names = list(class_names) if class_names else [str(i) for i in range(largest + 1)]
    sizes = [header.size for header in headers]
    index = _index(str(root), names, 1 if all(h.grey for h in headers) else 3, sizes, max_image_pixels,
                   {"seed": None, "val_fraction": None, "test_fraction": None,
                    "given": [split for split in SPLITS if found[split]]},
                   [], {split: (labels[split], shards[split]) for split in SPLITS})
    write_json(root / INDEX_NAME, index)
    return index


def _index(source: str, names: list[str], channels: int, sizes: list[Size], max_image_pixels: int | None,
           split: dict, notes: list[str], contents: dict[str, tuple[list[int], list[ShardFile]]]) -> dict:
    """dataset.json: what a reader needs to plan an epoch and a model needs to be picked,
    without opening a shard."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": source,
        "class_names": names,
        "channels": channels,
        "image_size": list(most_common_size(sizes)),
        "image_sizes": {"distinct": len(set(sizes)), "smallest": list(min(sizes, key=_area)),
                        "largest": list(max(sizes, key=_area))},
        "max_image_pixels": max_image_pixels,
        "split": split,
        "notes": notes,
        "splits": {name: {"samples": len(labels),
                          "class_counts": np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names)).tolist(),
                          "shards": [{"file": s.name, "samples": s.samples, "bytes": s.bytes} for s in shards]}
                   for name, (labels, shards) in contents.items()},
    }


def _area(size: Size) -> tuple[int, int, int]:
    return (size[0] * size[1], *size)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} is not empty; pass --overwrite to replace the shards there, or choose "
                          "an empty or new folder")


def _folder_items(root: Path, seed: int, fractions: dict[str, float], skip_bad: bool, max_image_pixels: int | None,
                  quiet: bool):
    split_files = find_split_files(root)
    names = sorted(set().union(*(files.keys() for files in split_files.values())))
    class_index = {name: i for i, name in enumerate(names)}
    parts: dict[str, list[tuple[Path, int]]] = {
        split: [(path, class_index[name]) for name, paths in files.items() for path in paths]
        for split, files in split_files.items()}
    headers: dict[Path, ImageHeader] = {}
    bad: dict[Path, str] = {}
    every = [path for items in parts.values() for path, _ in items]
    with pixel_limit(max_image_pixels):
        for path in track(every, "checking images", quiet=quiet):
            try:
                header = read_header(path)
                read_pixels(path, header.size, 1 if header.grey else 3)
                headers[path] = header
            except BadImage as err:
                bad[path] = str(err)
    bad = relative_bad(bad, root)
    if not skip_bad:
        raise_if_bad(bad, str(root), skip_hint=True)
    if not headers:
        raise DataError(f"none of the {len(every)} image files under {root} can be read: {describe_bad(bad)}")
    kept = {split: [(path, label) for path, label in items if path in headers] for split, items in parts.items()}
    plan = carve_splits({split: np.array([label for _, label in items], dtype=np.int64)
                         for split, items in kept.items()}, fractions, seed)
    splits = {name: [_Item(kept[part][i][1], path=kept[part][i][0]) for i in index.tolist()]
              for name, (part, index) in plan.items()}
    if not splits["train"]:
        raise DataError(f"folder:{root}: no training images are left after the split; add images")
    sizes = [header.size for header in headers.values()]
    channels = 1 if all(header.grey for header in headers.values()) else 3
    notes = [f"skipped {len(bad)} unreadable image file(s): {describe_bad(bad)}"] if bad else []
    given = [split for split in split_files if split != "all"]
    return splits, names, channels, sizes, given, notes


def _array_items(spec: str, seed: int, fractions: dict[str, float], quiet: bool):
    data = load_data(spec, split_seed=seed, val_fraction=fractions["val"], test_fraction=fractions["test"],
                     quiet=quiet)
    splits = {name: [_Item(int(label), pixels=image) for image, label in
                     zip(data.split(name).images.numpy(), data.split(name).labels.tolist())] for name in SPLITS}
    sizes = [data.image_size] * sum(map(len, splits.values()))
    return splits, data.class_names, data.channels, sizes, [], list(data.notes)


def _write_split(out: Path, split: str, items: list[_Item], shard_size: int, bar: Progress) -> list[ShardFile]:
    shards = []
    for number, start in enumerate(range(0, len(items), shard_size)):
        chunk = items[start:start + shard_size]
        keys = (f"{split}-{start + i:09d}" for i in range(len(chunk)))
        shards.append(write_shard(out / f"{split}-{number:06d}.tar",
                                  ((key, *item.encoded(), item.label) for key, item in zip(keys, chunk)), bar))
    return shards


def write_shard(path: Path, samples: Iterable[tuple[str, str, bytes, int]], bar: Progress | None = None
                ) -> ShardFile:
    """One tar shard from (key, image extension, image bytes, label) samples, written atomically.
    Members are read-only files of root with time 0, so the same samples give the same bytes."""
    count = 0
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, extension, data, label in samples:
                _add_member(tar, f"{key}.{extension}", data)
                _add_member(tar, f"{key}.cls", str(label).encode("ascii"))
                count += 1
                if bar is not None:
                    bar.update(1)
    return ShardFile(path.name, count, path.stat().st_size)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


__all__ = ["DEFAULT_SHARD_SIZE", "index_shards", "shard_data", "write_shard"]
