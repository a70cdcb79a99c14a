"""What vitkit's hardened CIFAR reader costs: a batch of 10,000 random 32x32 RGB images with
labels and file names, pickled as the official batches are (protocol 2, with bytes keys) and
under protocol 4, read by `cifar.load_pickle` (Python's unpickler with an allow-list and a byte
budget) against `pickle.loads` (the C unpickler with nothing checked, safe only because this
script wrote the file). Best of 5 calls each.

    PYTHONPATH=src python benchmarks/cifar_read.py
"""

from __future__ import annotations

import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import write
from vitkit.bench import machine_info
from vitkit.data.cifar import load_pickle


def best_of(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": rng.integers(0, 10, 10_000).tolist(),
             b"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
             b"filenames": [f"image_{i:05d}.png".encode() for i in range(10_000)]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in (2, 4):
            path = Path(tmp) / f"data_batch_p{protocol}"
            path.write_bytes(pickle.dumps(batch, protocol=protocol))
            raw = path.read_bytes()
            rows.append({"protocol": protocol, "megabytes": path.stat().st_size / 1e6,
                         "vitkit_s": best_of(lambda: load_pickle(path)), "c_unpickler_s": best_of(lambda: pickle.loads(raw))})
    report = {"machine": machine_info("cpu"), "rows": rows}
    md = ["### Reading a CIFAR batch: vitkit's checked reader against the C unpickler\n",
          "- command: `PYTHONPATH=src python benchmarks/cifar_read.py`\n",
          "| protocol | file MB | cifar.load_pickle s | pickle.loads s |", "|---:|---:|---:|---:|"]
    md += [f"| {r['protocol']} | {r['megabytes']:.0f} | {r['vitkit_s']:.3f} | {r['c_unpickler_s']:.3f} |" for r in rows]
    write("cifar_read", report, "\n".join(md))


if __name__ == "__main__":
    main()
