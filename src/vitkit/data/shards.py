"""Streaming datasets too large for memory: WebDataset-style tar shards described by a
`dataset.json`, read as a torch IterableDataset of uint8 batches.

A shard is a plain tar file; each sample is two adjacent members with the same key,
`KEY.<image extension>` (the original file's bytes) and `KEY.cls` (the class index in ASCII).
`dataset.json` names the classes and, per split, the shards with their sample counts, so
every reader can plan an epoch without opening a shard.

One epoch of one split for one rank, a function of (seed, epoch, rank, world_size) only:

1. the shards are put in a random order and read as one stream of samples;
2. rank r of `world_size` takes a contiguous run of that stream; with `even` every rank takes
   the same number, so the last `N % world_size` samples of the stream sit the epoch out
   (every rank then steps equally often, which distributed training needs);
3. the rank's run goes through a shuffle buffer (an item enters, a random one leaves), which
   keeps reading sequential and memory bounded;
4. the rank's samples are cut into batches and batch j goes to DataLoader worker
   j mod workers, so the loader's round-robin yields the batches in the same order for any
   number of workers.

All of this is computed on sample numbers before any byte is read: a worker then reads only
the samples of its own batches, and an epoch can start at any batch without decoding (or even
opening the shards of) what it skips.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vitkit.data.dataset import DataSplits, ImageSet
from vitkit.data.images import (IMAGE_SUFFIXES, BadImage, ClampedReads, Size, as_size, pixel_limit, read_pixels,
                                resolve_pixel_limit, target_size)
from vitkit.errors import ConfigValueError, DataError, VitkitError

INDEX_NAME = "dataset.json"
FORMAT = "vitkit-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
DEFAULT_SHUFFLE_BUFFER = 1000
_IMAGE_EXTENSIONS = frozenset(suffix[1:] for suffix in IMAGE_SUFFIXES)
_RESHARD_HINT = "re-run `vitkit shard` to write the shards again"
_MIN_SAMPLE_BYTES = 2 * (512 + 512)


def default_workers() -> int:
    """DataLoader worker processes: one per CPU this process may use, at most 4."""
    return min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# ---------------------------------------------------------------------- the index


@dataclass(frozen=True)
class ShardFile:
    name: str
    samples: int
    bytes: int


@dataclass(frozen=True)
class ShardSplit:
    """One split of a shard folder: its shards in file order, and what reading them needs."""

    root: Path
    name: str
    shards: tuple[ShardFile, ...]
    num_classes: int
    max_image_pixels: int | None = None  # as for load_data (open_shards sets the limit that applies)

    def __len__(self) -> int:
        return sum(shard.samples for shard in self.shards)

    def path(self, shard: int) -> Path:
        return self.root / self.shards[shard].name


@dataclass
class ShardedSplits:
    """What `dataset.json` says about a shard folder; the images stay on disk. Offers what
    the training defaults need from a dataset (`DataSplits` for data in memory)."""

    root: Path
    train: ShardSplit
    val: ShardSplit
    test: ShardSplit
    class_names: list[str]
    channels: int
    image_size: Size
    index: dict
    notes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def source(self) -> str:
        return f"shards:{self.root}"

    def split(self, name: str) -> ShardSplit:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)


def is_shard_folder(spec: str | os.PathLike) -> bool:
    path = Path(spec).expanduser()
    return path.is_dir() and (path / INDEX_NAME).is_file()


def open_shards(root: str | os.PathLike, max_image_pixels: int | None = None) -> ShardedSplits:
    """Read and check `root/dataset.json`; every shard it lists must be there, whole.

    Images are decoded under the user's pixel limit (`max_image_pixels` as for load_data:
    None is $VITKIT_MAX_IMAGE_PIXELS or the default, 0 none). The limit `dataset.json` records
    (the one the shards were written with) can lower it, never raise it: a folder from
    elsewhere does not get to turn the limit off."""
    root = Path(root).expanduser()
    index_path = root / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{root} has no {INDEX_NAME}; write shards with `vitkit shard FOLDER --out {root}`") from None
    except (OSError, ValueError, RecursionError) as err:  # ValueError: undecodable, not JSON, huge numbers
        raise DataError(f"{index_path} is not readable JSON ({type(err).__name__}: {err}); {_RESHARD_HINT}") from None
    limit = _pixel_limit_for(index, index_path, max_image_pixels)
    names = list(index["class_names"])
    splits = {}
    for split in SPLITS:
        shards = tuple(ShardFile(s["file"], int(s["samples"]), int(s["bytes"]))
                       for s in index["splits"].get(split, {}).get("shards", []))
        for shard in shards:
            path = root / shard.name
            if not path.is_file():
                raise DataError(f"shard {path} is missing ({INDEX_NAME} lists it); restore it or {_RESHARD_HINT}")
            size = path.stat().st_size
            if size != shard.bytes:
                raise DataError(f"shard {path} is {size} bytes but {INDEX_NAME} says {shard.bytes}: truncated or "
                                f"replaced; {_RESHARD_HINT}")
        splits[split] = ShardSplit(root, split, shards, len(names), limit)
    return ShardedSplits(root, splits["train"], splits["val"], splits["test"], names, int(index["channels"]),
                         as_size(index["image_size"]), index, [])


def _pixel_limit_for(index, path: Path, max_image_pixels: int | None) -> int:
    """Check the index; the pixel limit for its images as a max_image_pixels value (0: none)."""
    _check_index(index, path)
    limit = resolve_pixel_limit(max_image_pixels)
    recorded = index.get("max_image_pixels")
    if recorded:
        limit = recorded if limit is None else min(limit, recorded)
    try:
        target_size(index["image_size"], limit or 0)  # every image is resized to it
    except ConfigValueError as err:
        raise DataError(f"{path}: {err}") from None
    return limit or 0


def _check_index(index, path: Path) -> None:
    def bad(what: str) -> DataError:
        return DataError(f"{path} is not a dataset index written by `vitkit shard`: {what}; {_RESHARD_HINT}")

    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise bad(f"no \"format\": \"{FORMAT}\"")
    if index.get("version") != FORMAT_VERSION:
        raise bad(f"format version {index.get('version')!r}, this vitkit reads version {FORMAT_VERSION}")
    names, splits = index.get("class_names"), index.get("splits")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("class_names must be a non-empty list of strings")
    if index.get("channels") not in (1, 3):
        raise bad("channels must be 1 or 3")
    size = index.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and 0 < s < 2**31 for s in size)):
        raise bad("image_size must be [height, width]")
    if not isinstance(splits, dict) or "train" not in splits:
        raise bad("no train split")
    for name, split in splits.items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if name not in SPLITS or not isinstance(shards, list):
            raise bad(f"split {name!r} must be one of {', '.join(SPLITS)} with a list of shards")
        for shard in shards:
            if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and "/" not in shard["file"]
                    and isinstance(shard.get("samples"), int) and shard["samples"] >= 0
                    and isinstance(shard.get("bytes"), int)):
                raise bad(f"a shard of split {name!r} needs a file name, samples and bytes")
            # Epochs are planned from these counts before a shard is opened; the shard's size is
            # checked against its file, so the count must fit in it: a sample is two tar
            # members, each at least a 512-byte header and a 512-byte block.
            if shard["samples"] * _MIN_SAMPLE_BYTES > shard["bytes"]:
                raise bad(f"shard {shard['file']} claims {shard['samples']} samples in {shard['bytes']} bytes")
    limit = index.get("max_image_pixels")
    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0):
        raise bad("max_image_pixels must be a number of pixels (0 for no limit) or null")
    made = index.get("split", {})
    if not isinstance(made, dict) or made.get("seed") is not None and not (
            isinstance(made["seed"], int) and all(isinstance(made.get(k), (int, float)) and 0 <= made[k] < 1
                                                  for k in ("val_fraction", "test_fraction"))):
        raise bad("split must record the seed and the val and test fractions it was made with")


# ---------------------------------------------------------------------- reading one shard


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything before the first dot of the file's base name."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


@dataclass
class EncodedSample:
    """One sample as stored: the image file's bytes, its extension and the class index."""

    key: str
    extension: str
    data: bytes
    label: int
    shard: str


@contextlib.contextmanager
def open_shard(path: Path) -> Iterator[tarfile.TarFile]:
    """A shard as a tar file whose every read asks for no more than is left of the file:
    tarfile reads the records of a PAX or GNU long-name header in one read of the length the
    header declares (a 4 kB shard can declare gigabytes)."""
    with open(path, "rb") as f, tarfile.open(fileobj=ClampedReads(f, os.fstat(f.fileno()).st_size), mode="r:") as tar:
        yield tar


def read_shard(path: Path, first: int, stop: int, wanted: np.ndarray, num_classes: int
               ) -> Iterator[tuple[int, EncodedSample]]:
    """(offset, sample) for the samples first <= offset < stop of one shard whose `wanted[offset -
    first]` is set. The others are passed over by their tar headers: their bytes are not read."""
    last = first + int(np.flatnonzero(wanted)[-1]) if wanted.any() else first - 1
    offset = -1
    try:
        with open_shard(path) as tar:
            for offset, key, members in tar_samples(tar):
                if offset > last:
                    return
                if offset >= first and wanted[offset - first]:
                    yield offset, encoded_sample(tar, path, key, members, num_classes)
    except (tarfile.TarError, OSError, EOFError) as err:
        where = f"after sample {offset}" if offset >= 0 else "at its start"
        raise DataError(f"shard {path} is damaged {where} ({err}); {_RESHARD_HINT}") from None
    if offset < last:
        raise DataError(f"shard {path} ends after {offset + 1} samples but {INDEX_NAME} lists more: truncated or "
                        f"damaged; {_RESHARD_HINT}")


def read_whole_shard(path: Path, num_classes: int | None = None) -> Iterator[EncodedSample]:
    """Every sample of a shard, in file order, however many there are."""
    try:
        with open_shard(path) as tar:
            for _, key, members in tar_samples(tar):
                yield encoded_sample(tar, path, key, members, num_classes)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"shard {path} is not a readable tar file ({err})") from None


def tar_samples(tar: tarfile.TarFile) -> Iterator[tuple[int, str, dict[str, tarfile.TarInfo]]]:
    """(offset, key, extension -> member) per sample: adjacent regular files sharing a key."""
    offset, key, members = -1, None, {}
    for info in tar:
        if not info.isfile():
            continue
        member_key, extension = split_member_name(info.name)
        if member_key != key:
            if members:
                yield offset, key, members
            offset, key, members = offset + 1, member_key, {}
        members[extension] = info
    if members:
        yield offset, key, members


def encoded_sample(tar: tarfile.TarFile, path: Path, key: str, members: dict[str, tarfile.TarInfo],
                   num_classes: int | None) -> EncodedSample:
    images = [ext for ext in members if ext in _IMAGE_EXTENSIONS]
    if len(images) != 1 or "cls" not in members:
        found = ", ".join(sorted(members))
        raise DataError(f"shard {path}: sample {key} has members {found}; it needs one image and a .cls label")
    text = member_bytes(tar, path, members["cls"])
    try:
        label = int(text)
    except ValueError:
        raise DataError(f"shard {path}: sample {key} has label {text[:20]!r}, not a class index") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise DataError(f"shard {path}: sample {key} has label {label} but there are {num_classes} classes")
    return EncodedSample(key, images[0], member_bytes(tar, path, members[images[0]]), label, path.name)


def member_bytes(tar: tarfile.TarFile, path: Path, member: tarfile.TarInfo) -> bytes:
    """A member's bytes. tarfile reads a sparse member (GNU or PAX sparse headers, as `tar
    --sparse` writes) with its holes filled in, so a shard of a few kilobytes could hand over
    gigabytes; shards hold plain files. (A plain member cannot claim more than the shard holds:
    tarfile stops at the end of the file before it yields the member, and `open_shard`
    clamps what it reads.)"""
    if member.issparse():
        raise DataError(f"shard {path}: member {member.name} is a sparse file ({member.size:,} bytes, mostly holes "
                        f"reading would fill in); shards hold plain files, {_RESHARD_HINT}")
    return tar.extractfile(member).read()


def decode(sample: EncodedSample, size: Size, channels: int) -> np.ndarray:
    """(C, H, W) uint8 at `size`, by the same Pillow code that reads image folders."""
    try:
        return read_pixels(io.BytesIO(sample.data), size, channels)
    except BadImage as err:
        raise DataError(f"shard {sample.shard}: sample {sample.key}.{sample.extension} cannot be decoded ({err}); "
                        f"{_RESHARD_HINT}") from None


# ---------------------------------------------------------------------- planning an epoch


@dataclass(frozen=True)
class RankPlan:
    """A rank's share of one epoch, in sample numbers (the i-th sample of shard s is
    sum(samples of shards < s) + i, shards in file order).

    `pieces` is the rank's contiguous run of the epoch's stream as (shard, first, stop);
    `order[i]` is the position within that run of the rank's i-th sample."""

    pieces: tuple[tuple[int, int, int], ...]
    order: np.ndarray
    left_out: int

    def samples(self, split: ShardSplit) -> np.ndarray:
        """The rank's samples in the order it yields them, as sample numbers."""
        starts = np.cumsum([0] + [s.samples for s in split.shards])
        run = np.concatenate([np.arange(starts[s] + a, starts[s] + b) for s, a, b in self.pieces]
                             or [np.empty(0, dtype=np.int64)])
        return run[self.order]


def plan_epoch(split: ShardSplit, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
               buffer_size: int = DEFAULT_SHUFFLE_BUFFER, rank: int = 0, world_size: int = 1,
               even: bool = True) -> RankPlan:
    """Which samples `rank` reads in this epoch and in which order; a function of its
    arguments only. With `even` every rank gets N // world_size samples (the rest of the
    stream is left out of this epoch); without it the first N % world_size ranks get one more."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    counts = [shard.samples for shard in split.shards]
    total = sum(counts)
    shard_order = (np.random.default_rng([seed, epoch, 0]).permutation(len(counts)) if shuffle
                   else np.arange(len(counts)))
    base, extra = divmod(total, world_size)
    if even:
        lo, hi, left_out = rank * base, (rank + 1) * base, extra
    else:
        lo = rank * base + min(rank, extra)
        hi, left_out = lo + base + (rank < extra), 0
    pieces, start = [], 0
    for shard in shard_order:
        stop = start + counts[shard]
        first, last = max(lo, start), min(hi, stop)
        if first < last:
            pieces.append((int(shard), first - start, last - start))
        start = stop
    n = hi - lo
    if shuffle:
        order = buffer_shuffle(n, buffer_size, np.random.default_rng([seed, epoch, 1, rank]))
    else:
        order = np.arange(n)
    return RankPlan(tuple(pieces), order, left_out)


def buffer_shuffle(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer emits a stream of n items: the first `buffer_size`
    fill it, then each arriving item takes the place of a uniformly drawn one, which leaves;
    at the end the buffer empties in random order. Item i never leaves before step
    i - buffer_size, so a reader holds at most `buffer_size` items it has read but not used."""
    size = max(1, min(buffer_size, n))
    buffer = list(range(min(size, n)))
    out = []
    for slot, item in zip(rng.integers(0, size, size=max(0, n - size)).tolist(), range(size, n)):
        out.append(buffer[slot])
        buffer[slot] = item
    out += [buffer[i] for i in rng.permutation(len(buffer)).tolist()]
    return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------------- the dataset


class ShardBatches(IterableDataset):
    """Batches `(images (B, C, H, W) uint8, labels (B,) int64)` of one epoch of a split for one
    rank, decoded at `image_size` with `channels`. Use it with `DataLoader(batch_size=None)`
    (or `load_batches`): each worker then decodes only its own batches and the loader yields
    them in the rank's order. `start_batch` starts the epoch after that many of the rank's
    batches (mid-epoch resume); nothing skipped is decoded."""

    def __init__(self, split: ShardSplit, *, batch_size: int, image_size: int | tuple[int, int], channels: int,
                 shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 buffer_size: int = DEFAULT_SHUFFLE_BUFFER, rank: int = 0, world_size: int = 1,
                 even: bool | None = None, start_batch: int = 0):
        if batch_size <= 0 or buffer_size <= 0:
            raise ValueError("batch_size and buffer_size must be positive")
        self.split = split
        self.batch_size = batch_size
        self.size = as_size(image_size)
        self.channels = channels
        self.start_batch = start_batch
        self.plan = plan_epoch(split, seed=seed, epoch=epoch, shuffle=shuffle, buffer_size=buffer_size,
                               rank=rank, world_size=world_size, even=shuffle if even is None else even)
        self.samples = len(self.plan.order)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.samples / self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = list(range(self.start_batch + worker, self.batches_per_epoch, workers))
        if not mine:
            return
        order, batch = self.plan.order, self.batch_size
        position = np.empty(self.samples, dtype=np.int64)
        position[order] = np.arange(self.samples)
        batch_of = position // batch
        wanted = (batch_of >= self.start_batch) & ((batch_of - self.start_batch) % workers == worker)
        stream = self._read(wanted)
        held: dict[int, EncodedSample] = {}
        for j in mine:
            members = order[j * batch:(j + 1) * batch]
            last = int(members.max())
            while last not in held:
                at, sample = next(stream)
                held[at] = sample
            encoded = [held.pop(int(i)) for i in members]
            # The limit is set around decoding only: a generator's yield must not leave it set.
            with pixel_limit(self.split.max_image_pixels):
                images = np.stack([decode(sample, self.size, self.channels) for sample in encoded])
            labels = torch.tensor([sample.label for sample in encoded], dtype=torch.int64)
            yield torch.from_numpy(images), labels

    def _read(self, wanted: np.ndarray) -> Iterator[tuple[int, EncodedSample]]:
        """(position in the rank's run, sample) for the wanted positions, in stream order;
        a shard with nothing wanted is not opened."""
        start = 0
        for shard, first, stop in self.plan.pieces:
            want = wanted[start:start + stop - first]
            if want.any():
                for offset, sample in read_shard(self.split.path(shard), first, stop, want, self.split.num_classes):
                    yield start + offset - first, sample
            start += stop - first


@dataclass
class _Failure:
    """A user-facing error raised in a worker, carried to the main process as data: the
    DataLoader would otherwise wrap it in a multi-line message with the worker's traceback."""

    error: VitkitError


class _Reported(IterableDataset):
    def __init__(self, dataset: ShardBatches):
        self.dataset = dataset

    def __iter__(self):
        try:
            yield from self.dataset
        except VitkitError as err:
            yield _Failure(err)


def _leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """Ctrl-C and a scheduler's SIGTERM reach the whole process group. The main process then
    finishes the optimiser update, writes a checkpoint and ends the workers; a worker that
    died first would only turn that clean stop into a DataLoader error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def load_batches(batches: ShardBatches, workers: int = 0, *, pin_memory: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate `batches` decoded by `workers` DataLoader processes (0: in this process)."""
    loader = DataLoader(_Reported(batches), batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        worker_init_fn=_leave_stop_signals_to_the_main_process,
                        # Its own generator: making the loader must not draw from the global RNG
                        # that augmentation uses.
                        generator=torch.Generator().manual_seed(0),
                        prefetch_factor=2 if workers else None)
    for item in loader:
        if isinstance(item, _Failure):
            raise item.error
        yield item


def read_split(split: ShardSplit, image_size: Size, channels: int, workers: int = 0) -> ImageSet:
    """A whole split in memory, in file order (for commands that need the images at once)."""
    if len(split) == 0:
        return ImageSet(torch.empty(0, channels, *image_size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    parts = list(load_batches(ShardBatches(split, batch_size=256, image_size=image_size, channels=channels),
                              workers))
    return ImageSet(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def read_shards(root: str | os.PathLike, image_size: Size | None = None, channels: int | None = None,
                max_image_pixels: int | None = None) -> DataSplits:
    """A shard folder read into memory: `load_data` on a folder written by `vitkit shard`
    (`max_image_pixels` as for open_shards)."""
    shards = open_shards(root, max_image_pixels)
    size, channels = image_size or shards.image_size, channels or shards.channels
    parts = {name: read_split(shards.split(name), size, channels) for name in SPLITS}
    return DataSplits(parts["train"], parts["val"], parts["test"], shards.class_names, source=shards.source)
