"""Which dataset, and how it is split and read: the options every command that reads a
dataset shares (`vitkit train`, `pretrain`, `eval`, `shard`, `fewshot`, `probe`, `analyze`,
`experiment`), in one object with one set of defaults, read by `load_data`."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.errors import ConfigValueError
from vitkit.fields import check_fields
from vitkit.io import file_digest

# Fields that older configs (and keyword arguments) give beside the source, not inside a spec.
SPLIT_FIELDS = ("split_seed", "val_fraction", "test_fraction", "skip_bad_images", "max_image_pixels")


@dataclass(frozen=True)
class DataSpec:
    """`source`: "digits", an image folder, a CIFAR python folder, an .npz file or a shard
    folder. Parts a source does not provide (val, or val and test) are carved from its
    training images by a stratified split, deterministic for `split_seed`, of `val_fraction`
    and `test_fraction` of them. Unreadable images stop the read unless `skip_bad_images`;
    image files above `max_image_pixels` pixels are refused (None: $VITKIT_MAX_IMAGE_PIXELS or
    Pillow's default of 89,478,485; 0: no limit)."""

    source: str = "digits"
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    skip_bad_images: bool = False
    max_image_pixels: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", os.fspath(self.source))
        check_fields(type(self), dataclasses.asdict(self), "data")
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        object.__setattr__(self, "test_fraction", float(self.test_fraction))
        if not self.source:
            raise ConfigValueError("the data source must be a name or a path, not empty")
        if self.max_image_pixels is not None and self.max_image_pixels < 0:
            raise ConfigValueError(f"max_image_pixels must be a number of pixels, 0 for no limit; got "
                                   f"{self.max_image_pixels}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ConfigValueError(f"val_fraction {self.val_fraction} and test_fraction {self.test_fraction} must "
                                   "be in [0, 1) and leave some images for training")

    @classmethod
    def of(cls, value: "DataSpec | str | os.PathLike | dict[str, Any]", **changes) -> "DataSpec":
        """A spec from a spec, a source string or path, or a mapping of its fields; `changes`
        (split_seed=..., ...) override it."""
        if isinstance(value, cls):
            spec = value
        elif isinstance(value, dict):
            spec = cls(**check_fields(cls, value, "data"))
        else:
            spec = cls(source=value)
        return dataclasses.replace(spec, **changes) if changes else spec

    def replace(self, **changes) -> "DataSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def absolute(spec: DataSpec) -> DataSpec:
    """The spec with a path source made absolute (the bundled "digits" stays as it is), so a run's
    config.yaml names its data wherever the run is resumed from."""
    if spec.source == "digits":
        return spec
    return spec.replace(source=str(Path(spec.source).expanduser().resolve()))


def fingerprint(spec: DataSpec) -> dict[str, Any]:
    """What identifies a dataset's content cheaply: for an image folder its image files' paths
    (relative to it) and sizes, for a CIFAR folder its batch files' names and sizes, for an
    .npz file its bytes, for a shard folder its dataset.json. {"kind", "files", "sha256"}; a
    source that is gone is {"kind": "missing"}."""
    from vitkit.data import cifar
    from vitkit.data.folders import find_split_files
    from vitkit.data.shards import INDEX_NAME, is_shard_folder

    if spec.source == "digits":
        return {"kind": "digits", "files": 1, "sha256": _digest([b"vitkit bundled digits"])}
    path = Path(spec.source).expanduser()
    if not path.exists():
        return {"kind": "missing", "files": 0, "sha256": ""}
    if path.is_file():
        return {"kind": "file", "files": 1, "sha256": file_digest(path)}
    if is_shard_folder(path):
        return {"kind": "shards", "files": 1, "sha256": file_digest(path / INDEX_NAME)}
    cifar_folder = cifar.find_cifar_folder(path)
    if cifar_folder is not None:
        files = sorted(p for p in cifar_folder.iterdir() if p.is_file())
        return {"kind": "cifar", "files": len(files),
                "sha256": _digest(f"{p.name}\0{p.stat().st_size}".encode() for p in files)}
    files = sorted(file for split in find_split_files(path).values() for paths in split.values() for file in paths)
    return {"kind": "folder", "files": len(files),
            "sha256": _digest(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}".encode("utf-8", "surrogateescape")
                              for file in files)}


def _digest(parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()
