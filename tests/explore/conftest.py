"""Small random models of every variant (fixed seeds), servers on free loopback ports, and an
HTTP client that writes its own multipart bodies (independent of the server's parser)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.explore import Explorer, ExploreServer

TINY = dict(image_size=16, patch_size=4, in_chans=3, num_classes=5, width=32, depth=2, num_heads=2, mlp_dim=64,
            class_names=("apple", "bee", "cat", "dog", "eel"))
# Every variant the page must handle; each value the ModelConfig fields that make it.
VARIANTS = {
    "token": {},
    "gap": dict(pool="gap"),
    "map": dict(pool="map"),
    "distill": dict(distill_token=True),
    "gap_distill": dict(pool="gap", distill_token=True),
    "non_square": dict(image_size=(12, 20)),
    "hybrid": dict(stem="resnet", patch_size=1, resnet_layers=(1,), image_size=32),
    "relative": dict(posemb="relative"),
    "no_posemb": dict(posemb="none"),
    "learned2d_every_layer": dict(posemb="learned2d", posemb_where="every_layer"),
    "sincos": dict(posemb="sincos2d"),
}


def make_model(variant: str = "token", seed: int = 0, **overrides):
    """A model whose every weight is random (the head too: a zero head predicts uniformly)."""
    torch.manual_seed(seed)
    model = vitkit.create_model("custom", **{**TINY, **VARIANTS[variant], **overrides})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("head", "map_head.probe")) or "token" in name:
                p.normal_(0, 0.5)
    return model.eval()


def write_png(path, size=(23, 31), seed=0, mode="RGB") -> bytes:
    """A PNG of smooth colour gradients plus noise, `size` (h, w); returns its bytes."""
    h, w = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 0 * x], axis=-1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    image.convert(mode).save(path, format="PNG")
    return path.read_bytes()


def multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of name -> (filename, content), and its content type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, content) in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class Client:
    """A fresh connection per request, as a script would use; `host` overrides the Host header."""

    def __init__(self, address: str):
        url = urlsplit(address)
        self.host, self.port = url.hostname, url.port

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Reply:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def predict(self, content: bytes, filename: str = "image.png", field: str = "image", query: str = "") -> Reply:
        body, content_type = multipart({field: (filename, content)})
        return self.request("POST", "/api/predict" + query, body=body, headers={"Content-Type": content_type})


def wait_until(condition, limit_s: float = 60.0) -> None:
    """Poll `condition` until it holds; fail (rather than hang) if it never does."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)


@contextmanager
def serving(explorer: Explorer, host: str = "127.0.0.1"):
    """The explorer served on a free port in a background thread; yields (server, client)."""
    server = ExploreServer(explorer, host, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, Client(server.address)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        explorer.close()


@pytest.fixture(scope="module")
def token_server():
    """A class-token model served for the whole module."""
    with serving(Explorer(make_model("token"), name="tiny.safetensors")) as (server, client):
        yield server, client
