"""Image files (PNG, GIF, BMP, JPEG, TIFF, WebP, PPM) through `vitkit.data.load_data` on a class
folder and through `read_images`: damaged files and headers declaring any size, up to
100000 x 100000 pixels, give sane images or one DataError line naming the file."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vitkit.data import load_data, read_images
from vitkit.errors import DataError

from .harness import damaged, reads_or_refuses
from .test_npz_data_fuzz import assert_sane_splits
from .valid_files import image_file, scratch

pytestmark = pytest.mark.filterwarnings("ignore:.*:UserWarning:PIL")

FORMATS = {"PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "JPEG": ".jpg", "TIFF": ".tiff", "WEBP": ".webp",
           "PPM": ".ppm"}
# Small enough that a fuzzed header under it decodes in no time; the default is tested on its own.
FUZZ_PIXEL_LIMIT = 1 << 20


def load_folder(name: str, data: bytes, **options):
    """A class folder with one damaged file among good ones, read as a data set."""
    with scratch() as folder:
        for label in ("cat", "dog"):
            (folder / "d" / label).mkdir(parents=True)
            (folder / "d" / label / f"good{FORMATS['PNG']}").write_bytes(image_file("PNG"))
        (folder / "d" / "dog" / name).write_bytes(data)
        result = reads_or_refuses(lambda: load_data(str(folder / "d"), val_fraction=0, test_fraction=0,
                                                    quiet=True, **options), names=name)
    if not isinstance(result, DataError):
        assert_sane_splits(result)
    return result


def read_one(name: str, data: bytes, **options):
    with scratch() as folder:
        (folder / name).write_bytes(data)
        result = reads_or_refuses(lambda: read_images([folder / name], 8, 3, quiet=True, **options), names=name)
    if not isinstance(result, DataError):
        assert isinstance(result, torch.Tensor) and result.shape == (1, 3, 8, 8) and result.dtype == torch.uint8
    return result


@given(st.sampled_from(sorted(FORMATS)).flatmap(lambda fmt: st.tuples(st.just(fmt), damaged(image_file(fmt)))),
       st.booleans())
def test_damaged_images(case, as_folder):
    fmt, data = case
    name = "x" + FORMATS[fmt]
    if as_folder:
        load_folder(name, data, max_image_pixels=FUZZ_PIXEL_LIMIT)
    else:
        read_one(name, data, max_image_pixels=FUZZ_PIXEL_LIMIT)


# ----------------------------------------------------------------------------- declared sizes

def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, idat: bytes = b"", bit_depth: int = 8, colour: int = 0) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(image_file("GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    at = data.index(b"\x2c")  # the first image descriptor
    data[at + 5:at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(image_file("BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def ppm_declaring(width: int, height: int) -> bytes:
    return f"P6 {width} {height} 255\n".encode() + bytes(64)


DECLARING = {".png": lambda w, h: png_declaring(w, h), ".gif": gif_declaring, ".bmp": bmp_declaring,
             ".ppm": ppm_declaring}
LIMITS = {".gif": 2**16 - 1, ".bmp": 2**31 - 1, ".png": 2**31 - 1, ".ppm": 2**40}


@given(st.sampled_from(sorted(DECLARING)).flatmap(
    lambda suffix: st.tuples(st.just(suffix), st.integers(1, LIMITS[suffix]), st.integers(1, LIMITS[suffix]))),
    st.booleans())
def test_headers_declaring_any_size(case, default_limit):
    suffix, width, height = case
    options = {} if default_limit else {"max_image_pixels": FUZZ_PIXEL_LIMIT}
    if default_limit and width * height <= 2**27:
        # Under the default limit a real decode of that size would run: go past it.
        width, height = min(width * 4096, LIMITS[suffix]), min(height * 4096, LIMITS[suffix])
    read_one("x" + suffix, DECLARING[suffix](width, height), **options)


@pytest.mark.parametrize("suffix", sorted(DECLARING))
def test_100000_by_100000_pixels_are_refused_by_default(suffix):
    side = 65_535 if suffix == ".gif" else 100_000
    result = read_one("huge" + suffix, DECLARING[suffix](side, side))
    assert isinstance(result, DataError)
    assert "over the limit of 89478485 pixels; raise max_image_pixels" in str(result)


def test_regression_a_class_folder_nested_1200_deep(tmp_path):
    # Path.rglob recursed once per level: RecursionError.
    levels = [tmp_path / "d" / "cat"]
    levels[0].mkdir(parents=True)
    for _ in range(1200):
        levels.append(levels[-1] / "a")
        levels[-1].mkdir()
    try:
        (levels[-1] / "x.png").write_bytes(image_file("PNG"))
        (tmp_path / "d" / "dog").mkdir()
        (tmp_path / "d" / "dog" / "y.png").write_bytes(image_file("PNG"))
        splits = reads_or_refuses(lambda: load_data(str(tmp_path / "d"), val_fraction=0, test_fraction=0,
                                                    quiet=True))
        assert splits.class_names == ["cat", "dog"] and len(splits.train) == 2
    finally:
        # Removed here, deepest first: shutil.rmtree (pytest's clean-up) recurses per level too.
        (levels[-1] / "x.png").unlink(missing_ok=True)
        for level in reversed(levels[1:]):
            level.rmdir()


def test_regression_png_whose_idat_length_says_a_gigabyte():
    # Found by the deep profile: Pillow's PNG load_end read the declared IDAT length with
    # fp.read(n), and a file's read(n) allocates n bytes first (MemoryError under the cap).
    data = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\n\x00\x00\x00\x0c\x08\x02\x00\x00\x00\xd4\t\xbb\xf7"
            b"A\x00\x00\x00IDAT\x00\x00")
    result = read_one("x.png", data)
    assert isinstance(result, DataError) and "x.png (corrupt or truncated" in str(result)
