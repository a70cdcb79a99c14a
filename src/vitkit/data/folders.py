"""Image-folder layouts: one sub-folder per class, optionally inside train/, val/, test/."""

from __future__ import annotations

import os
from pathlib import Path

from vitkit.data.images import IMAGE_SUFFIXES, is_image_file
from vitkit.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
_LAYOUT_HINT = "put the images of each class in their own sub-folder (cats/1.png, dogs/2.png)"


def _visible_children(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if not child.name.startswith("."))


def _image_files_under(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted. Walked with a stack rather than recursion (as
    Path.rglob does), so no depth of nesting fails; links to folders are not followed, so no
    cycle either; folders that cannot be listed are passed over."""
    found, stack = [], [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif is_image_file(Path(entry.path)):
                        found.append(Path(entry.path))
        except PermissionError:
            continue
    return sorted(found)


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """Class name -> image files (searched recursively, in sorted order) for one split folder."""
    children = _visible_children(folder)
    class_dirs = [child for child in children if child.is_dir()]
    if not children:
        raise DataError(f"folder {folder} is empty; {_LAYOUT_HINT}")
    if not class_dirs:
        if any(is_image_file(child) for child in children):
            raise DataError(f"folder {folder} holds images but no class sub-folders; {_LAYOUT_HINT}")
        raise DataError(f"folder {folder} has no class sub-folders and no images; {_LAYOUT_HINT}")
    files = {d.name: _image_files_under(d) for d in class_dirs}
    if not any(files.values()):
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"no images found under {folder} (looked for {suffixes})")
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} in {folder} have no images; "
                        "add images or remove the folder(s)")
    return files


def find_split_files(root: Path) -> dict[str, dict[str, list[Path]]]:
    """Split name -> class name -> files. A folder without train/ is one split named "all"."""
    if not (root / "train").is_dir():
        return {"all": _class_files(root)}
    return {name: _class_files(root / name) for name in SPLIT_NAMES if (root / name).is_dir()}
