"""The property every fuzzer checks, and the ways it damages valid files.

`reads_or_refuses(call)` runs one reader call and returns its result, or the VitkitError it
raised. Anything else fails the test: another exception type, a message of more than one
line, a message that hides an allocation failure, or a call that runs longer than
EXAMPLE_SECONDS (a hang).

The call runs under a memory cap: RLIMIT_DATA (the private writable memory numpy, torch and
Pillow allocate from) set to what the process uses when the call starts plus
MEMORY_HEADROOM. A reader that believes a size declared in a damaged file and allocates it
fails with MemoryError instead of exhausting the machine (or, worse, succeeding lazily and
unnoticed). Where the platform has no RLIMIT_DATA or /proc, calls run without a cap.
"""

from __future__ import annotations

import faulthandler
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import strategies as st

from vitkit.errors import VitkitError

# One call on a small fuzzed file takes milliseconds; this is a hang, not a slow machine.
EXAMPLE_SECONDS = 20
# A reader of a file of a few kilobytes has no business allocating more.
MEMORY_HEADROOM = 1 << 30
_ALLOCATION_FAILURES = ("MemoryError", "Unable to allocate", "can't allocate", "DefaultCPUAllocator",
                        "out of memory")


def _data_in_use() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmData:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else None


@contextmanager
def memory_cap(headroom: int = MEMORY_HEADROOM):
    """Let the block allocate at most `headroom` bytes more than the process holds now."""
    in_use = _data_in_use()
    if in_use is None or not hasattr(resource, "RLIMIT_DATA"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = in_use + headroom if hard == resource.RLIM_INFINITY else min(in_use + headroom, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


class Hang(Exception):
    """A reader call that did not return within EXAMPLE_SECONDS."""


@contextmanager
def watchdog(seconds: float = EXAMPLE_SECONDS):
    """Interrupt Python code that runs too long; if native code never returns to Python, dump
    every thread's stack and end the process, so CI fails instead of waiting forever."""
    def interrupt(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def reads_or_refuses(call, *, names: str | Path | None = None):
    """Run `call()`: its result, or the VitkitError it raised (checked: one line, no hidden
    allocation failure, and naming `names` when given, e.g. the damaged file)."""
    try:
        with watchdog(), memory_cap():
            return call()
    except VitkitError as err:
        message = str(err)
        assert "\n" not in message, f"a multi-line error: {message!r}"
        assert not any(sign in message for sign in _ALLOCATION_FAILURES), (
            f"the reader tried a huge allocation before refusing: {message}")
        if names is not None:
            name = Path(names).name
            assert name in message, f"the error does not name {name}: {message}"
        return err


# ----------------------------------------------------------------------------- in a capped process

# What a reader of a small hostile file may take on top of a fresh interpreter that has imported
# torch and vitkit (0.70 GiB of address space with torch 2.13 on the 2-core Xeon, read from
# /proc/self/status after the prelude's imports). The regressions that asked for more (2 and
# 6 GiB in these tests) die of MemoryError under it; those that fit (a 400 MB decode) fail the
# tests' checks of the refusal.
ADDRESS_HEADROOM = 1 << 30
# The capped interpreter computes on one thread, in one malloc arena, and sees no GPU: address
# space grows with each thread that allocates (glibc reserves 64 MiB for its arena), so on a
# machine with many cores torch's own threads would fill the headroom (with torch set to 32
# threads on the 2-core Xeon, a 7 MB tensor could no longer be allocated under the cap), and a
# CUDA context reserves far more than the headroom.
_CAPPED_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1",
                       "CUDA_VISIBLE_DEVICES": ""}

_CAPPED_PRELUDE = """
import re, resource, sys
import torch
import vitkit.data, vitkit.formats
from vitkit.errors import VitkitError
torch.ones(64, 64) @ torch.ones(64, 64)  # thread pools set themselves up before the cap
in_use = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (in_use + HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
{body}
except VitkitError as err:
    print("REFUSED:", err)
"""


def refusal_under_address_cap(code: str, headroom: int = ADDRESS_HEADROOM, timeout: float = 300) -> str | None:
    """Run `code` (Python statements) in a fresh interpreter whose address space (RLIMIT_AS) is
    capped at what torch and vitkit take plus `headroom`: the message of the VitkitError it
    raised, or None if it finished without one. Anything else fails the test with the process's
    output: a reader that believes a size a file declares dies of MemoryError within the cap,
    fast, instead of swapping the machine. RLIMIT_AS covers every mapping (unlike RLIMIT_DATA,
    which misses memory numpy or Pillow map directly), so nothing escapes it."""
    if not (hasattr(resource, "RLIMIT_AS") and Path("/proc/self/status").exists()):
        pytest.skip("needs RLIMIT_AS and /proc (Linux)")
    body = textwrap.indent(textwrap.dedent(code), "    ")
    script = _CAPPED_PRELUDE.replace("HEADROOM", str(headroom)).format(body=body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **_CAPPED_ENVIRONMENT})
    assert done.returncode == 0, f"exit {done.returncode} under the memory cap:\n{done.stdout}{done.stderr[-3000:]}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("REFUSED: ")]
    return lines[-1][len("REFUSED: "):] if lines else None


# ----------------------------------------------------------------------------- damage

def truncations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Every proper prefix of a valid file, the empty file included."""
    return st.integers(0, len(valid) - 1).map(lambda n: valid[:n])


def byte_flips(valid: bytes, most: int = 8) -> st.SearchStrategy[bytes]:
    """A valid file with up to `most` bytes replaced; the file header is hit more often, since
    that is where readers decide how much to read."""
    position = st.one_of(st.integers(0, min(len(valid), 256) - 1), st.integers(0, len(valid) - 1))
    changes = st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=most)

    def apply(edits):
        data = bytearray(valid)
        for where, value in edits:
            data[where] = value
        return bytes(data)
    return changes.map(apply)


def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, truncations and byte flips of `valid`."""
    return st.one_of(st.binary(max_size=2 * len(valid) if len(valid) < 512 else 1024), truncations(valid),
                     byte_flips(valid))


# ----------------------------------------------------------------------------- wrong contents

TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8,
                torch.uint8, torch.bool, torch.complex64]
NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def _edit(tensors: dict, name: str, kind: str, shape: list[int], dtype: torch.dtype, value: float) -> None:
    if kind == "drop":
        del tensors[name]
    elif kind == "shape":
        tensors[name] = torch.zeros(shape)
    elif kind == "ndim":
        tensors[name] = tensors[name].reshape(-1) if tensors[name].ndim != 1 else tensors[name][None]
    elif kind == "dtype":
        tensors[name] = tensors[name].to(dtype)
    elif kind == "value" and tensors[name].numel():
        tensors[name] = tensors[name].clone().float()
        tensors[name].view(-1)[0] = value
    elif kind == "add":
        tensors[name + ".extra"] = torch.zeros(shape)


def tensor_edits(names: list[str]) -> st.SearchStrategy:
    """1-3 edits of a state dict with these names: a tensor dropped, reshaped, flattened, cast
    to another dtype, given a NaN/inf, or an unknown tensor added. Apply with `edits(tensors)`."""
    one = st.tuples(st.sampled_from(names), st.sampled_from(["drop", "shape", "ndim", "dtype", "value", "add"]),
                    st.lists(st.integers(0, 5), max_size=4), st.sampled_from(TORCH_DTYPES),
                    st.sampled_from(NON_FINITE))

    def apply_all(edits):
        def apply(tensors: dict) -> dict:
            tensors = dict(tensors)
            for name, kind, shape, dtype, value in edits:
                if name in tensors:
                    _edit(tensors, name, kind, shape, dtype, value)
            return tensors
        return apply
    return st.lists(one, min_size=1, max_size=3).map(apply_all)


# ----------------------------------------------------------------------------- hostile pickles

# Opcodes followed by a declared length: (opcode, bytes of the length field).
_COUNTED = [(b"B", 4), (b"T", 4), (b"X", 4), (b"\x8d", 8), (b"\x8e", 8), (b"\x96", 8), (b"\x8b", 4),
            (b"\x95", 8)]
# Memo stores with an index: LONG_BINPUT (4 bytes) and PUT (decimal text).
_MEMO = [b"r", b"p"]


def pickles_declaring_sizes() -> st.SearchStrategy[bytes]:
    """A pickle that declares a length (of bytes, text, a long, a frame) or a memo index far
    beyond its own size, with a little real data after it."""
    counted = st.tuples(st.sampled_from(_COUNTED), st.integers(2**20, 2**40), st.binary(max_size=16)).map(
        lambda t: b"\x80\x04" + t[0][0] + (t[1] % 2 ** (8 * t[0][1])).to_bytes(t[0][1], "little") + t[2])
    memo = st.tuples(st.sampled_from(_MEMO), st.integers(2**24, 2**31 - 1)).map(
        lambda t: b"\x80\x02N" + (t[0] + t[1].to_bytes(4, "little") if t[0] == b"r" else
                                 t[0] + str(t[1]).encode() + b"\n") + b".")
    return st.one_of(counted, memo)


def json_paths(value, prefix=()):
    """The path (a tuple of keys and indices) of every value inside a JSON value, itself first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_paths(v, prefix + (i,))
