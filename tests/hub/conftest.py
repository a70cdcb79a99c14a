import pytest

from .server import FakeHub


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake Hub and bucket, with every cache and setting of this test in tmp_path."""
    import huggingface_hub.utils._http as hf_http

    for name in ("HF_HUB_OFFLINE", "VITKIT_OFFLINE", "HF_TOKEN", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("VITKIT_DOWNLOAD_DIR", str(tmp_path / "vitkit-cache"))
    # huggingface_hub backs off for up to half a minute before it gives up on a server error or a
    # dead connection; the tests need its decisions, not its waiting.
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def cache_files(root):
    """Every file under a cache folder (links to blobs included), as relative paths."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture
def images():
    """A small batch of NCHW float32 inputs in [-1, 1] (normalised pixels)."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
