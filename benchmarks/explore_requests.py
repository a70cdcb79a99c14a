"""Time per `vitkit explore` request against one plain forward pass, on the CPU.

    PYTHONPATH=src python benchmarks/explore_requests.py [--models vit_s16,vit_b16] [--repeats 7]
        [--concurrent 4]

For each model (random weights, 1000 classes, 224 x 224, fp32), median milliseconds of:
- `model(x)`: one plain forward of one image (the fast path, fused attention);
- `forward_intermediates(x, attention=True)`: the same with every layer's attention weights kept;
- POST /api/predict of a 224 x 224 PNG to a server on 127.0.0.1, one request at a time (upload,
  decode, forward with attention, rollout, attention distance, JSON);
- GET /api/attention/<id>?token=T: a click on a patch (no forward; the kept weights);
- `--concurrent` requests sent at once, which the server runs as one batch: the time until the
  last answer, divided by their number.
The calls alternate round by round (benchmarks/_common.py `medians`). Writes
benchmarks/results/explore_requests.{json,md}.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import subprocess
import sys
import threading
import uuid
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image

from _common import header, log, medians, write
from vitkit import create_model
from vitkit.bench import machine_info
from vitkit.explore import Explorer, ExploreServer


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(host: str, port: int, content: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'.encode()
            + content + f"\r\n--{boundary}--\r\n".encode())
    return _request(host, port, "POST", "/api/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _request(host: str, port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection(host, port, timeout=600)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        return json.loads(payload)
    finally:
        connection.close()


def _concurrent(host: str, port: int, images: list[bytes]) -> None:
    threads = [threading.Thread(target=_post, args=(host, port, image)) for image in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _lscpu() -> dict:
    """The CPU's model name and the flags that decide matrix-product speed."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")
    return {"model_name": fields.get("Model name", "").strip(), "flags": [f for f in wanted if f in flags]}


def measure(name: str, repeats: int, concurrent: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    explorer = Explorer(model, name=name, max_batch=max(1, concurrent))
    server = ExploreServer(explorer, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = urlsplit(server.address)
    host, port = url.hostname, url.port
    try:
        image = _png(0)
        # The click asks about the latest answer: the server keeps only the most recent images.
        latest = _post(host, port, image)
        token = 1 + len(latest["rollout"][0]) * 7 + 7  # a patch near the middle
        burst = [_png(seed) for seed in range(1, concurrent + 1)]
        with torch.no_grad():
            calls = {
                "plain forward": lambda: model(x),
                "forward with attention": lambda: model.forward_intermediates(x, attention=True),
                "POST /api/predict": lambda: latest.update(_post(host, port, image)),
                "GET /api/attention": lambda: _request(host, port, "GET", f"/api/attention/{latest['id']}?token={token}"),
                f"{concurrent} requests at once": lambda: _concurrent(host, port, burst),
            }
            times = medians(calls, repeats)
    finally:
        server.shutdown()
        server.server_close()
        explorer.close()
    times[f"{concurrent} requests at once, per request"] = times.pop(f"{concurrent} requests at once") / concurrent
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vit_s16,vit_b16")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--concurrent", type=int, default=4)
    args = p.parse_args()
    rows = {}
    for name in args.models.split(","):
        log(f"{name}: measuring")
        rows[name] = measure(name, args.repeats, args.concurrent)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {"machine": machine_info("cpu"), "lscpu": _lscpu(), "uptime_at_end": uptime, "rows": rows,
              "repeats": args.repeats, "concurrent": args.concurrent}
    cpu = report["lscpu"]
    names = list(next(iter(rows.values())))
    md = ("### vitkit explore: time per request, 224 px, fp32, CPU\n\n"
          + header(report, "PYTHONPATH=src python " + " ".join(sys.argv))
          + f"- lscpu: {cpu.get('model_name', '?')}; flags {', '.join(cpu.get('flags', [])) or 'none of interest'}\n"
          + f"- uptime at the end: `{uptime}`\n\n"
          + "| model | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
          + "".join(f"| {model} | " + " | ".join(f"{t[n]:.1f} ms" for n in names) + " |\n" for model, t in rows.items())
          + "\nMedians of " + str(args.repeats) + " rounds; each request from a new connection.")
    write("explore_requests", report, md)


if __name__ == "__main__":
    main()
