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


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_regression_every_file_vitkit_writes_honours_the_umask(tmp_path, umask):
    # safetensors writes a fresh file (0600 whatever the umask) over the one atomic_path had
    # opened up, so model files came out unreadable to a teammate on a shared cluster.
    import torch

    import vitkit
    from vitkit.formats import hf
    from vitkit.io import write_safetensors
    from vitkit.train.plots import plot_confusion

    model = vitkit.create_model(image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                                num_classes=2)
    files = [vitkit.save(model, tmp_path / "m.safetensors"), tmp_path / "w.safetensors", tmp_path / "x.json",
             tmp_path / "c.png"]
    write_safetensors(files[1], {"w": torch.ones(2)}, {"format": "pt"})
    write_json(files[2], {"a": 1})
    plot_confusion([[1, 0], [0, 1]], ["a", "b"], files[3], "confusion")
    hf.write(model, tmp_path / "hf")
    for path in files + sorted((tmp_path / "hf").iterdir()):
        assert _mode(path) == 0o666 & ~umask, path.name
    assert _mode(tmp_path / "hf") == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "hf", "m.safetensors", "w.safetensors", "x.json"]


@pytest.mark.parametrize("code", ["EROFS", "EACCES", "EPERM"])
def test_regression_stale_temporaries_that_cannot_be_deleted_are_left(tmp_path, monkeypatch, code):
    # A read-only run folder (os.unlink made to fail as it does there: root ignores permission
    # bits, so the read-only mount is in the next test) raised the OSError from `--resume`.
    import errno
    from pathlib import Path

    from vitkit.io import remove_stale_temporaries

    (tmp_path / ".last.safetensors.a1b2c3.tmp").write_text("x")
    (tmp_path / ".summary.json.d4e5f6.tmp").write_text("x")

    def unlink(self, missing_ok=False):
        if self.name.startswith(".last"):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(self))
        return real_unlink(self, missing_ok)

    real_unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", unlink)
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".summary.json.d4e5f6.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.safetensors.a1b2c3.tmp"]


def _in_a_private_mount_namespace() -> list[str] | None:
    """The unshare command line that gives a process mounts of its own (as root, or as anyone
    where user namespaces are allowed), or None where there is none."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return None
    for command in (["unshare", "--mount", "--propagation", "private"],
                    ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        if subprocess.run([*command, "true"], capture_output=True).returncode == 0:
            return command
    return None


@pytest.mark.slow
def test_regression_resume_in_a_read_only_run_folder_with_a_stale_temporary(tmp_path):
    # A real read-only mount (root ignores permission bits, so chmod would prove nothing), private
    # to the vitkit process: `--resume` raised the OSError of deleting the stale temporary as a
    # traceback, instead of the one-line error it gives without one.
    import subprocess
    import sys

    unshare = _in_a_private_mount_namespace()
    if unshare is None:
        pytest.skip("no private mount namespace here (unshare)")
    run = tmp_path / "run"
    vitkit = [sys.executable, "-m", "vitkit"]
    trained = subprocess.run([*vitkit, "train", "--data", "digits", "--out", str(run), "--epochs", "1", "--quiet"],
                             capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    stale = run / "checkpoints" / ".last.safetensors.k2j3x9.tmp"
    stale.write_bytes(b"half a checkpoint")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    resumed = subprocess.run([*unshare, "sh", "-c", script, "sh", str(run), *vitkit, "train", "--resume", "--out",
                              str(run), "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 2, resumed.stderr
    error = resumed.stderr.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert error.startswith("vitkit train: error: cannot write ") and "Read-only file system" in error
    assert stale.read_bytes() == b"half a checkpoint"


def test_cache_folders_follow_their_variable_then_xdg_then_home(tmp_path, monkeypatch):
    from vitkit.evaluate.features import default_cache_dir
    from vitkit.hub import download_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("XDG_CACHE_HOME", "VITKIT_DOWNLOAD_DIR", "VITKIT_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert download_dir() == tmp_path / "home" / ".cache" / "vitkit" / "downloads"
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "vitkit" / "features"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download_dir() == tmp_path / "xdg" / "vitkit" / "downloads"
    assert default_cache_dir() == tmp_path / "xdg" / "vitkit" / "features"
    monkeypatch.setenv("VITKIT_DOWNLOAD_DIR", "~/weights")
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "features"))
    assert download_dir() == tmp_path / "home" / "weights"
    assert default_cache_dir() == tmp_path / "features"
