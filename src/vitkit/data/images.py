"""Reading image files with Pillow into one uint8 tensor: mode conversion, resizing, bad files."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from vitkit.errors import ConfigError, ConfigValueError, DataError
from vitkit.fields import as_pair
from vitkit.progress import track

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".pbm"})
# Pillow's own default; a user with genuinely huge images raises it with max_image_pixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})
_BAD_NAMES_SHOWN = 10
# EXIF orientations that turn the stored image by 90 degrees (phones store photos this way).
_EXIF_ORIENTATION_TAG = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})

Size = tuple[int, int]  # (height, width)

PIXEL_LIMIT_VARIABLE = "VITKIT_MAX_IMAGE_PIXELS"
RAISE_LIMIT = f"raise max_image_pixels (--max-image-pixels N or {PIXEL_LIMIT_VARIABLE}=N, 0 for none)"
# What Pillow's decoders raise on damaged files (besides its own UnidentifiedImageError).
_DAMAGED = (OSError, SyntaxError, ValueError, EOFError)


def _describe(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def as_size(image_size: int | Sequence[int] | None) -> Size | None:
    """(height, width) of an int (a square) or a pair of ints, each 1 to 2**31 - 1 pixels; None
    stays None. Anything else is a ConfigTypeError or ConfigValueError naming image_size."""
    if image_size is None:
        return None
    pair = as_pair(image_size)
    if not all(0 < s < 2**31 for s in pair):
        raise ConfigValueError(f"image_size must be 1 to {2**31 - 1} pixels a side, not {image_size!r}")
    return pair


def target_size(image_size: int | Sequence[int] | None, max_image_pixels: int | None) -> Size | None:
    """`as_size(image_size)`, the size images are to be resized to, if it is within the pixel
    limit that applies (see resolve_pixel_limit): no larger than an image file the limit lets
    through, or resizing would allocate what no file was allowed to."""
    size = as_size(image_size)
    limit = resolve_pixel_limit(max_image_pixels)
    if size is not None and limit is not None and size[0] * size[1] > limit:
        raise ConfigValueError(f"image_size {size[0]}x{size[1]} is over the limit of {limit} pixels; {RAISE_LIMIT}"
                               " if images that large are meant")
    return size


@dataclass
class ImageHeader:
    """What opening a file tells without decoding it."""

    size: Size
    grey: bool


class BadImage(Exception):
    """One file that cannot be used, with the reason; collected and reported together."""


def resolve_pixel_limit(max_image_pixels: int | None) -> int | None:
    """The limit that applies: `max_image_pixels` if given, else $VITKIT_MAX_IMAGE_PIXELS, else
    DEFAULT_MAX_IMAGE_PIXELS; 0 means no limit (returned as None, Pillow's word for it)."""
    if max_image_pixels is None:
        text = os.environ.get(PIXEL_LIMIT_VARIABLE, "").strip()
        if not text:
            return DEFAULT_MAX_IMAGE_PIXELS
        if not text.isdigit():
            raise ConfigError(f"{PIXEL_LIMIT_VARIABLE}={text!r} must be a number of pixels (0 = no limit)")
        max_image_pixels = int(text)
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or max_image_pixels < 0:
        raise ConfigError(f"max_image_pixels must be a number of pixels, 0 for no limit; got {max_image_pixels!r}")
    return max_image_pixels or None


@contextlib.contextmanager
def pixel_limit(max_image_pixels: int | None) -> Iterator[None]:
    """Pillow refuses images above the limit (see resolve_pixel_limit); its warning band (1-2x)
    is refused too, so the limit the user sets is the limit that applies."""
    limit = resolve_pixel_limit(max_image_pixels)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _over_limit() -> BadImage:
    return BadImage(f"over the limit of {Image.MAX_IMAGE_PIXELS} pixels; {RAISE_LIMIT} if the image is genuine")


class ClampedReads:
    """A file whose read(n) asks for no more than is left of it. Python's read(n) on a file
    allocates n bytes before reading, and Pillow asks for lengths that damaged headers declare
    (a PNG chunk claiming a gigabyte would cost a gigabyte); everything else is the file's own."""

    def __init__(self, file: BinaryIO, size: int):
        self._file, self._size = file, size

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return self._file.read()
        return self._file.read(max(0, min(n, self._size - self._file.tell())))

    def __getattr__(self, name: str):
        return getattr(self._file, name)


@contextlib.contextmanager
def _open(path: Path | BinaryIO) -> Iterator[Image.Image]:
    """The image of a file, or of an open binary stream (an in-memory one, as shards hand over)."""
    if not isinstance(path, (str, os.PathLike)):
        with _image(path) as image:
            yield image
        return
    try:
        with open(path, "rb") as f, _image(ClampedReads(f, os.fstat(f.fileno()).st_size)) as image:
            yield image
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except PermissionError:
        raise BadImage("permission denied") from None


@contextlib.contextmanager
def _image(stream: BinaryIO | ClampedReads) -> Iterator[Image.Image]:
    try:
        image = Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _over_limit() from None
    except Image.UnidentifiedImageError:
        raise BadImage("not a readable image: unknown format or damaged header") from None
    except _DAMAGED as err:
        raise BadImage(f"not a readable image ({_describe(err)})") from None
    with image:
        yield image


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
    except _DAMAGED as err:
        raise BadImage(f"unreadable EXIF data ({_describe(err)})") from None


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
        except _DAMAGED as err:
            raise BadImage(f"corrupt or truncated ({_describe(err)})") from None
    if (image.height, image.width) != size:
        image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def most_common_size(sizes: Sequence[Size]) -> Size:
    """The most frequent size; ties go to the larger image so that nothing common is shrunk."""
    counts = Counter(sizes)
    return max(counts, key=lambda size: (counts[size], size[0] * size[1], size))


def relative_bad(bad: dict[Path, str], root: Path) -> dict[Path, str]:
    """`bad` keyed by the paths under the data folder `root`, in path order (see describe_bad)."""
    return {path.relative_to(root): reason for path, reason in sorted(bad.items())}


def describe_bad(bad: dict[Path, str]) -> str:
    """The bad files with their reasons. A relative path is shown whole (the folder readers key
    by the path under the data folder, so the class folder shows: `dogs/7.png`), an absolute one
    by its file name."""
    def name(path: Path) -> str:
        return path.name if path.is_absolute() else path.as_posix()

    shown = ", ".join(f"{name(path)} ({reason})" for path, reason in list(bad.items())[:_BAD_NAMES_SHOWN])
    more = len(bad) - _BAD_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def raise_if_bad(bad: dict[Path, str], where: str, *, skip_hint: bool) -> None:
    if not bad:
        return
    hint = "; fix or delete them, or pass skip_bad_images=True (--skip-bad-images)" if skip_hint else ""
    raise DataError(f"{len(bad)} unreadable image file(s) in {where}: {describe_bad(bad)}{hint}")


def decode_all(paths: Sequence[Path], size: Size, channels: int, quiet: bool
               ) -> tuple[torch.Tensor, np.ndarray, dict[Path, str]]:
    """(N_good, C, H, W) uint8 for the files that decode, which ones those are (a mask over
    `paths`), and the reasons for those that do not."""
    out = np.empty((len(paths), channels, size[0], size[1]), dtype=np.uint8)
    good = np.zeros(len(paths), dtype=bool)
    bad: dict[Path, str] = {}
    for i, path in enumerate(track(paths, "reading images", quiet=quiet)):
        try:
            out[i] = read_pixels(path, size, channels)
            good[i] = True
        except BadImage as err:
            bad[path] = str(err)
    return torch.from_numpy(out[good]), good, bad
