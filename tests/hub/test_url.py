"""URLs: `vitkit.load("https://.../ViT-B_16.npz")` downloads the file once into vitkit's cache
and reads it from there; every failure is one DownloadError that leaves the cache clean, and
the next call succeeds once the cause is gone."""

import hashlib

import numpy as np
import pytest
import torch

import vitkit
from vitkit import hub as vhub
from vitkit.cli.main import main
from vitkit.errors import DownloadError

from ..formats.conftest import rel_diff
from ..formats.google_reference import as_old_flax, forward, make_params, npz_bytes
from .conftest import cache_files

TOL = 1e-5


@pytest.fixture
def bucket(hub):
    """An official-layout hybrid .npz (GroupNorm stored (1, 1, 1, C), as the released hybrid
    files are) served at <endpoint>/vit_models/imagenet21k/R50+ViT-B_16.npz."""
    params = make_params("original", hybrid=(1, 2), patch=1, grid=(4, 4), seed=7)
    path = "/vit_models/imagenet21k/R50+ViT-B_16.npz"
    hub.files[path] = npz_bytes(as_old_flax(params))
    return hub, hub.url + "/vit_models/imagenet21k/R50%2BViT-B_16.npz", path, params


def test_download_once_then_served_from_the_cache(bucket, tmp_path, images):
    server, url, path, params = bucket
    model = vitkit.load(url)
    ref = forward(params, images.permute(0, 2, 3, 1).numpy(), "original")
    with torch.no_grad():
        assert rel_diff(model(images), ref) <= TOL
    assert model.config.stem == "resnet" and model.config.name == "R50+ViT-B_16"
    cached = vhub.url_cache_path(url)
    assert cached.parent.parent == tmp_path / "vitkit-cache" and cached.name == "R50+ViT-B_16.npz"
    assert cached.read_bytes() == server.files[path]
    assert server.gets() == [path]

    server.requests.clear()
    again = vitkit.load(url)
    assert server.requests == []  # nothing reaches the server the second time
    with torch.no_grad():
        assert torch.equal(again(images), model(images))


def test_offline_mode_uses_the_cache_and_refuses_what_is_not_there(bucket, monkeypatch, images):
    server, url, _, _ = bucket
    monkeypatch.setenv("VITKIT_OFFLINE", "1")
    with pytest.raises(DownloadError, match="not in vitkit's download cache .* VITKIT_OFFLINE is set; unset it"):
        vitkit.load(url)
    assert server.requests == []
    monkeypatch.delenv("VITKIT_OFFLINE")
    model = vitkit.load(url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # Hugging Face's switch is honoured too
    server.requests.clear()
    with torch.no_grad():
        assert torch.equal(vitkit.load(url)(images), model(images))
    assert server.requests == []


def test_files_of_one_name_from_different_places_do_not_collide(hub):
    a, b = make_params("original", seed=1), make_params("original", seed=2)
    hub.files["/imagenet21k/ViT.npz"] = npz_bytes(a)
    hub.files["/imagenet21k+imagenet2012/ViT.npz"] = npz_bytes(b)
    first = vitkit.load(hub.url + "/imagenet21k/ViT.npz")
    second = vitkit.load(hub.url + "/imagenet21k+imagenet2012/ViT.npz")
    assert not torch.equal(first.head.weight, second.head.weight)
    np.testing.assert_array_equal(second.head.weight.detach().numpy(), b["head/kernel"].T)


def test_sha256_in_the_fragment_is_checked(bucket, tmp_path):
    server, url, path, _ = bucket
    good = hashlib.sha256(server.files[path]).hexdigest()
    with pytest.raises(DownloadError, match=f"is corrupt: its sha256 is {good}, not {'0' * 64}"):
        vitkit.load(url + "#sha256=" + "0" * 64)
    assert cache_files(tmp_path / "vitkit-cache") == []
    assert vitkit.load(url + "#sha256=" + good.upper()).config.stem == "resnet"
    with pytest.raises(DownloadError, match="only fragment vitkit reads is #sha256="):
        vitkit.load(url + "#md5=abc")


@pytest.mark.parametrize("fault, message", [
    ("truncate", r"stopped after [\d,]+ of [\d,]+ bytes; run the command again"),
    ("corrupt", r"is corrupt \(.*Bad CRC-32.*\); run the command again"),
    ("error", r"failed with a server error \(HTTP 503\) .*; try again later"),
])
def test_failed_downloads_leave_nothing_and_the_next_call_succeeds(bucket, tmp_path, fault, message):
    server, url, path, _ = bucket
    server.faults[path] = fault
    with pytest.raises(DownloadError, match=message) as error:
        vitkit.load(url)
    assert "\n" not in str(error.value)
    assert cache_files(tmp_path / "vitkit-cache") == []
    del server.faults[path]
    assert vitkit.load(url).config.stem == "resnet"


def test_missing_file_and_no_network(hub, tmp_path):
    with pytest.raises(DownloadError, match=r"was not found \(HTTP 404\); check the address"):
        vitkit.load(hub.url + "/nothing/here.npz")
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1:9 .*check the network"):
        vitkit.load("http://127.0.0.1:9/vit_models/ViT-B_16.npz")
    assert cache_files(tmp_path / "vitkit-cache") == []


def test_cli_reports_a_download_error_in_one_line_and_exits_2(hub, tmp_path, capsys):
    image = tmp_path / "cat.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 100, 50)).save(image)
    assert main(["predict", hub.url + "/missing/ViT-B_16.npz", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vitkit predict: error: ") and "HTTP 404" in err


def test_download_cache_location_follows_its_variable_and_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("VITKIT_DOWNLOAD_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vhub.download_dir() == tmp_path / "xdg" / "vitkit" / "downloads"
    monkeypatch.setenv("VITKIT_DOWNLOAD_DIR", str(tmp_path / "elsewhere"))
    assert vhub.download_dir() == tmp_path / "elsewhere"
