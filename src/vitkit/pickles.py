"""Checks of a pickle before an unpickler reads it.

Unpicklers allocate what a pickle declares before they read it: CPython's C unpickler a
bytes object of each declared length and a memo table as long as the largest memo index,
torch's weights-only unpickler (reading a real file) a buffer of each declared string
length, and torch's legacy format a storage of the size its persistent ids name. A damaged
or hostile file can declare terabytes in a few bytes. The walks here read the opcodes with
pickletools and Python's own unpickler, which take only the bytes that are there, and never
call anything a pickle names."""

from __future__ import annotations

import pickle
import pickletools
import struct
import warnings
from typing import BinaryIO

# The opcodes that store into the memo; an index beyond the number of opcodes read so far
# cannot come from a real pickler, which numbers memo entries 0, 1, 2, ...
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class DamagedPickle(ValueError):
    """Not a whole pickle: a declared length runs past the end of the data, a memo index is
    out of all proportion, or the opcodes are not a pickle's. Unpicklers differ in which of
    these they notice, and some allocate first, so none of it is left to them."""


def check_pickle(stream: BinaryIO) -> None:
    """Walk one pickle from the stream's position to its STOP opcode, or raise DamagedPickle.
    The stream must give short reads at its end (a BytesIO or an mmap), never allocate ahead."""
    try:
        with warnings.catch_warnings():
            # Text opcodes of random bytes hold odd escapes, which pickletools warns about.
            warnings.simplefilter("ignore", DeprecationWarning)
            for count, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
                if opcode.name in _MEMO_PUTS and isinstance(arg, int) and not 0 <= arg <= count:
                    raise DamagedPickle(f"memo index {arg} at opcode {count}")
    except (ValueError, OverflowError, struct.error) as e:  # pickletools' words for all of the above
        if isinstance(e, DamagedPickle):
            raise
        raise DamagedPickle(" ".join(str(e).split()) or type(e).__name__) from None


class _Anything:
    """Stands in for every global a skimmed pickle names: it can be called, built and filled."""

    def __call__(self, *args, **kwargs) -> "_Anything":
        return _Anything()

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass

    def append(self, value) -> None:
        pass

    def extend(self, values) -> None:
        pass


class _Skimmer(pickle._Unpickler):
    """Python's unpickler with every global replaced by _Anything, collecting persistent ids."""

    def __init__(self, stream: BinaryIO):
        super().__init__(stream)
        self.persistent_ids: list = []

    def find_class(self, module, name):
        return _Anything()

    def persistent_load(self, pid):
        self.persistent_ids.append(pid)
        return _Anything()


def persistent_ids(stream: BinaryIO) -> list:
    """The persistent ids of one pickle that check_pickle has passed; nothing it names runs."""
    skimmer = _Skimmer(stream)
    skimmer.load()
    return skimmer.persistent_ids
