"""Crash-safe file writing: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    On any failure the temporary file is removed and whatever `path` held before is kept: the
    old file is never opened for writing. The new file's data is synced before the rename and
    the folder after it, so after a crash `path` holds either the old or the new content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # After the writer, which may have made the file anew (safetensors writes a fresh 0600 one).
        honour_umask(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def honour_umask(path: Path) -> None:
    """Give a file (or folder) vitkit made the permissions `open` (`mkdir`) would have given it:
    0666 (0777) less the umask. mkstemp, mkdtemp and safetensors make theirs private (0600, 0700),
    which leaves a model unreadable to the teammates the umask lets read it."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _umask() -> int:
    # Linux reports it; elsewhere os.umask can only read it by setting it, briefly, for every thread.
    with contextlib.suppress(OSError, AttributeError, ValueError):
        return int(re.search(r"^Umask:\s*([0-7]+)$", Path("/proc/self/status").read_text(), re.M).group(1), 8)
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _sync_folder(folder: Path) -> None:
    """A rename is durable only once the folder's entry is on disk (POSIX); Windows has no
    folder handles to sync."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (and some FUSE mounts) cannot sync a folder; the rename still happened.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete the temporary files atomic_path left in `folder` when its process was killed
    mid-write (for the target `names` only, or for any target). Call it only when no other
    process writes there. Returns the files removed; those it may not delete (a read-only
    folder) are left."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        target = _temporary_target(entry.name)
        if target is not None and (names is None or target in names) and entry.is_file():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                # A read-only folder (or file system) keeps its temporaries: nothing will be written
                # there either, and the write that fails says so in its own words.
                if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    continue
                raise
            removed.append(entry)
    return removed


def _temporary_target(name: str) -> str | None:
    """'last.safetensors' for '.last.safetensors.k2j3_x9.tmp' (atomic_path's names), else None."""
    match = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]+\.tmp", name)
    return match.group(1) if match else None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> None:
    """safetensors' save_file through atomic_path. An I/O failure inside safetensors (which
    reports it as a SafetensorError with the OS error in its text) is raised as that OSError,
    so callers can name the reason: "No space left on device", "File too large", ..."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def file_digest(path: str | os.PathLike, digest=None) -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks: sha256 by default, or `digest`, a
    hashlib object that may already hold a prefix (git's "blob SIZE\\0")."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def user_cache_dir(kind: str, variable: str) -> Path:
    """One of vitkit's cache folders: $`variable` if set, else $XDG_CACHE_HOME/vitkit/`kind`
    (~/.cache/vitkit/`kind` without it)."""
    if os.environ.get(variable):
        return Path(os.environ[variable]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "vitkit" / kind
