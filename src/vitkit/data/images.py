"""Reading image files with Pillow into one uint8 tensor: mode conversion, resizing, bad files."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from vitkit.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".pbm"})
# Pillow's own default; a user with genuinely huge images raises it with max_image_pixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})
_BAD_NAMES_SHOWN = 5
# EXIF orientations that turn the stored image by 90 degrees (phones store photos this way).
_EXIF_ORIENTATION_TAG = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})

Size = tuple[int, int]  # (height, width)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def as_size(image_size: int | Sequence[int] | None) -> Size | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


@dataclass
class ImageHeader:
    """What opening a file tells without decoding it."""

    size: Size
    grey: bool


class BadImage(Exception):
    """One file that cannot be used, with the reason; collected and reported together."""


@contextlib.contextmanager
def pixel_limit(max_image_pixels: int | None) -> Iterator[None]:
    """Pillow refuses images above `max_image_pixels`; its warning band (1-2x) is refused too,
    so the limit the user sets is the limit that applies."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _over_limit() -> BadImage:
    return BadImage(f"over the limit of {Image.MAX_IMAGE_PIXELS} pixels; raise max_image_pixels "
                    "(--max-image-pixels) if the image is genuine")


def _open(path: Path | BinaryIO) -> Image.Image:
    try:
        return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _over_limit() from None
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not a readable image: unknown format or damaged header") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"not a readable image ({err})") from None


def read_header(path: Path | BinaryIO) -> ImageHeader:
    """Size and colour of a file (or an open binary stream), read lazily; raises BadImage."""
    with _open(path) as image:
        if image.mode not in _GREY_MODES | _COLOUR_MODES:
            raise BadImage(f"image mode {image.mode} is not supported; save it as 8-bit grey or RGB")
        size = (image.width, image.height) if _quarter_turned(image) else (image.height, image.width)
        return ImageHeader(size, image.mode in _GREY_MODES)


def _quarter_turned(image: Image.Image) -> bool:
    # A PNG keeps EXIF found after the pixels only once decoded; reading it here would decode.
    if image.format == "PNG" and "exif" not in image.info:
        return False
    try:
        return image.getexif().get(_EXIF_ORIENTATION_TAG) in _QUARTER_TURNS
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"unreadable EXIF data ({err})") from None


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """8-bit L or RGB. Transparent pixels are laid over white, as an image viewer shows them;
    16/32-bit grey is scaled from 0..65535 to 0..255."""
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def read_pixels(path: Path | BinaryIO, size: Size, channels: int) -> np.ndarray:
    """Decode, convert and resize one file (or open binary stream) to (C, H, W) uint8; raises
    BadImage."""
    with _open(path) as image:
        try:
            image.load()
            image = _to_mode(ImageOps.exif_transpose(image), channels)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _over_limit() from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise BadImage(f"corrupt or truncated ({err})") from None
    if (image.height, image.width) != size:
        image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def most_common_size(sizes: Sequence[Size]) -> Size:
    """The most frequent size; ties go to the larger image so that nothing common is shrunk."""
    counts = Counter(sizes)
    return max(counts, key=lambda size: (counts[size], size[0] * size[1], size))


def describe_bad(bad: dict[Path, str]) -> str:
    shown = ", ".join(f"{path.name} ({reason})" for path, reason in list(bad.items())[:_BAD_NAMES_SHOWN])
    more = len(bad) - _BAD_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def raise_if_bad(bad: dict[Path, str], where: str, *, skip_hint: bool) -> None:
    if not bad:
        return
    hint = "; fix or delete them, or pass skip_bad_images=True (--skip-bad-images)" if skip_hint else ""
    raise DataError(f"{len(bad)} unreadable image file(s) in {where}: {describe_bad(bad)}{hint}")


def progress(items: Sequence, description: str, quiet: bool) -> Iterator:
    """A tqdm bar on stderr, shown only to a person watching a terminal."""
    return iter(progress_bar(len(items), description, quiet, items))


def progress_bar(total: int | None, description: str, quiet: bool, items: Sequence | None = None) -> tqdm:
    """The same bar counting images (it shows images/s), advanced by `update(n)`."""
    return tqdm(items, total=total, desc=description, unit="img", file=sys.stderr,
                disable=quiet or not sys.stderr.isatty(), leave=False)


def decode_all(paths: Sequence[Path], size: Size, channels: int, quiet: bool
               ) -> tuple[torch.Tensor, np.ndarray, dict[Path, str]]:
    """(N_good, C, H, W) uint8 for the files that decode, which ones those are (a mask over
    `paths`), and the reasons for those that do not."""
    out = np.empty((len(paths), channels, size[0], size[1]), dtype=np.uint8)
    good = np.zeros(len(paths), dtype=bool)
    bad: dict[Path, str] = {}
    for i, path in enumerate(progress(paths, "reading images", quiet)):
        try:
            out[i] = read_pixels(path, size, channels)
            good[i] = True
        except BadImage as err:
            bad[path] = str(err)
    return torch.from_numpy(out[good]), good, bad
