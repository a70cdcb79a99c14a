"""Atomic writes: a failure leaves the previous file intact, success replaces it whole."""

import os
import stat

import pytest

from vitkit.io import atomic_path, write_json, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of a fi")
            raise RuntimeError("disk full")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "x.txt", "hello")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644
    assert (tmp_path / "x.txt").read_text() == "hello"


def test_the_rename_is_made_durable_by_syncing_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text(tmp_path / "x.txt", "hello")
    assert synced == ["file", "rename", "folder"]


def test_a_full_disk_at_the_final_sync_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "metrics.jsonl"
    write_text(target, "epoch 1\n")

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on device"):
        write_text(target, "epoch 1\nepoch 2\n")
    assert target.read_text() == "epoch 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_safetensors_io_failures_surface_as_the_os_error(tmp_path, monkeypatch):
    import safetensors.torch
    import torch
    from safetensors import SafetensorError

    from vitkit.io import write_safetensors

    target = tmp_path / "w.safetensors"
    write_safetensors(target, {"w": torch.ones(3)}, {"format": "pt"})
    before = target.read_bytes()

    def save_file(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(OSError) as error:
        write_safetensors(target, {"w": torch.zeros(3)}, {"format": "pt"})
    assert (error.value.errno, error.value.strerror, error.value.filename) == (27, "File too large", str(target))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_stale_temporaries_are_recognised_by_atomic_paths_naming(tmp_path):
    from vitkit.io import remove_stale_temporaries

    names = [".last.safetensors.a1b2_c3d.tmp", ".config.yaml.zz9x0k1m.tmp", "last.safetensors",
             "notes.tmp", ".hidden"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path, names=("last.safetensors",))
    assert [p.name for p in removed] == [".last.safetensors.a1b2_c3d.tmp"]
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "last.safetensors", "notes.tmp"]
