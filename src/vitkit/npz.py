""".npz archives read without believing their headers.

np.load allocates each array at the size its .npy header declares before reading the data;
that header, and the zip entry's sizes, are just bytes of the file. Here each member's
header is read first, its array size checked against the entry's declared size, and that
against the most deflate can expand the entry's stored bytes to, so an array is allocated
only at a size the file can back; the data is then read in chunks and its CRC checked.
Arrays of Python objects (pickles) are refused without being read.
"""

from __future__ import annotations

import lzma
import math
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from vitkit.errors import VitkitError

# Deflate expands at most 1032:1 (a 258-byte match from each 2-bit code); the slack covers
# tiny entries, whose headers dominate.
MAX_DEFLATE_RATIO = 1032
_SLACK = 1 << 16
_CHUNK = 1 << 22
_MAX_HEADER = 10_000  # numpy's own limit on a .npy header

# What zipfile, zlib, lzma and numpy's header parser (ast.literal_eval, then tokenize) raise on
# damaged bytes.
_DAMAGED = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, KeyError,
            struct.error, NotImplementedError, RuntimeError, SyntaxError, tokenize.TokenError, RecursionError)


class PickledArray(ValueError):
    """A member holds Python objects, which only a pickle can rebuild."""


def _check_entry(info: zipfile.ZipInfo, archive_size: int) -> None:
    if info.compress_size > archive_size:
        raise ValueError(f"{info.filename} claims {info.compress_size:,} stored bytes in a "
                         f"{archive_size:,}-byte file")
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else \
        info.compress_size * MAX_DEFLATE_RATIO + _SLACK
    if info.file_size > limit:
        raise ValueError(f"{info.filename} declares {info.file_size:,} bytes, more than its "
                         f"{info.compress_size:,} stored bytes can hold")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=_MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=_MAX_HEADER)
        else:
            raise ValueError(f"{info.filename}: .npy format version {version} is not one numpy writes")
        if dtype.hasobject:
            raise PickledArray(f"{info.filename} holds pickled objects")
        nbytes = math.prod(shape) * dtype.itemsize
        if member.tell() + nbytes != info.file_size:
            raise ValueError(f"{info.filename} declares a {'x'.join(map(str, shape)) or 'scalar'} {dtype} "
                             f"array ({nbytes:,} bytes) but its entry holds "
                             f"{info.file_size - member.tell():,} bytes of data")
        if dtype.itemsize == 0:
            return np.empty(shape, dtype)
        data = np.empty(nbytes, np.uint8)
        filled = 0
        while filled < nbytes:
            chunk = member.read(min(_CHUNK, nbytes - filled))
            if not chunk:
                raise ValueError(f"{info.filename} ends after {filled:,} of {nbytes:,} bytes")
            data[filled:filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
            filled += len(chunk)
        member.read(1)  # reach the end of the entry, where zipfile checks its CRC
    array = data.view(dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def read_arrays(path: Path, error: type[VitkitError], hint: str) -> dict[str, np.ndarray]:
    """Every .npy member of the archive by name (".npy" dropped). Anything wrong is one `error`
    naming `path`; `hint` says what the file should be."""
    try:
        archive_size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                _check_entry(info, archive_size)
                arrays[info.filename[:-len(".npy")]] = _read_member(archive, info)
            return arrays
    except PickledArray as e:
        raise error(f"refused {path}: {e}, which vitkit does not load; {hint}") from None
    except _DAMAGED as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise error(f"{path} is not a readable .npz file ({detail}); {hint}") from None
