"""How fast do streamed shards decode? Writes a folder of photo-sized JPEGs, shards it with
`vitkit shard`'s code, then times whole epochs of the training stream (shard order, shuffle
buffer, decoding and resizing to the model input in DataLoader workers) for each worker count.

The JPEGs are smooth colour fields with noise (about the size of ImageNet's: 500x375,
quality 90), generated from a fixed seed; nothing is downloaded. Besides wall-clock images/s
it reports the CPU time per image of the whole pipeline (this process plus its finished
DataLoader workers), which says what one core sustains when the machine is shared.

    PYTHONPATH=src python benchmarks/shard_decode.py [--images 1000] [--workers 0,1,2] [--size 224]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import log, write
from PIL import Image

from vitkit.bench import machine_info
from vitkit.data.shard_writer import shard_data
from vitkit.data.shards import ShardBatches, load_batches, open_shards


def write_photos(root: Path, count: int, width: int, height: int) -> int:
    """`count` JPEGs in 10 class folders; returns their total bytes."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    total = 0
    for i in range(count):
        a, b, c = rng.uniform(-3, 3, 3)
        field = np.stack([np.sin(a * xs + b * ys + c + k) for k in range(3)], axis=-1) * 100 + 128
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        path = root / f"class{i % 10}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def epoch_seconds(split, workers: int, size: int, batch: int, epoch: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one epoch of the training stream."""
    batches = ShardBatches(split, batch_size=batch, image_size=size, channels=3, shuffle=True, epoch=epoch)
    start, cpu = time.perf_counter(), cpu_seconds()
    seen = sum(labels.shape[0] for _, labels in load_batches(batches, workers))
    assert seen == len(split)
    return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--source-size", default="500x375", help="WIDTHxHEIGHT of the JPEGs")
    p.add_argument("--size", type=int, default=224, help="model input side the images are decoded to")
    p.add_argument("--workers", default="0,1,2", help="worker counts to time")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per worker count (median reported)")
    p.add_argument("--name", default="shard_decode", help="results file name")
    args = p.parse_args()
    width, height = map(int, args.source_size.split("x"))
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "photos", Path(tmp) / "shards"
        total_bytes = write_photos(folder, args.images, width, height)
        start = time.perf_counter()
        shard_data(folder, out, shard_size=250, val_fraction=0, test_fraction=0, quiet=True)
        shard_seconds = time.perf_counter() - start
        log(f"vitkit shard: {args.images} images ({total_bytes / 2**20:.1f} MiB) in {shard_seconds:.1f} s")
        split = open_shards(out).train
        seconds: dict[int, list[float]] = {w: [] for w in workers}
        cpu: dict[int, list[float]] = {w: [] for w in workers}
        for repeat in range(args.repeats):  # alternating, so a change of load hits every count alike
            for w in workers:
                wall, used = epoch_seconds(split, w, args.size, args.batch, repeat)
                seconds[w].append(wall)
                cpu[w].append(used)
                log(f"workers {w}: epoch {repeat}: {args.images / wall:.0f} img/s, "
                    f"{1000 * used / args.images:.2f} CPU ms/img")
    rows = {w: args.images / statistics.median(s) for w, s in seconds.items()}
    cpu_ms = {w: 1000 * statistics.median(c) / args.images for w, c in cpu.items()}
    report = {"machine": machine_info(), "images": args.images, "source_size": [width, height],
              "mean_jpeg_bytes": total_bytes / args.images, "decoded_to": args.size, "batch": args.batch,
              "shard_seconds": shard_seconds, "epoch_seconds": seconds, "epoch_cpu_seconds": cpu,
              "images_per_second": rows, "cpu_ms_per_image": cpu_ms}
    m = report["machine"]
    command = "PYTHONPATH=src python benchmarks/shard_decode.py " + " ".join(sys.argv[1:])
    lines = ["# Streamed shard decoding\n",
             f"- machine: {m['cpu']}, {m['cpu_cores']} cores; torch {m['torch']}, python {m['python']}",
             f"- date: {m['date_utc']}; load average at the end: {', '.join(f'{v:.2f}' for v in m['load_average'])}",
             f"- command: `{command}`",
             f"- {args.images} JPEGs of {width}x{height} (mean {total_bytes / args.images / 1024:.0f} KiB), "
             f"decoded and resized to {args.size}x{args.size} RGB, batches of {args.batch}, shuffle buffer on",
             f"- `vitkit shard` (check every image, write shards): {args.images / shard_seconds:.0f} img/s\n",
             f"| DataLoader workers | images/s (median of {args.repeats} epochs) | CPU ms per image | "
             "images/s per core |", "|---:|---:|---:|---:|"]
    lines += [f"| {w} | {rows[w]:.0f} | {cpu_ms[w]:.2f} | {1000 / cpu_ms[w]:.0f} |" for w in workers]
    write(args.name, report, "\n".join(lines))


if __name__ == "__main__":
    main()
