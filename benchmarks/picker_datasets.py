"""What `vitkit train --data FOLDER` picks, and what it reaches in what time, on datasets made
from real images at several pixel sizes (issue 16: the default run on a small folder should
fit the time the README promises and stop when validation has long stopped improving).

Datasets, written under --work (all from images that ship with scikit-learn or scikit-image;
`pip install scikit-image` for the LFW faces and the photos):
  digits-8            the bundled 8x8 digits (`--data digits`)
  digits-16/32/64     the same digits saved as PNG class folders, upscaled with Pillow's
                      default (bicubic), as a user saving them at that size would
  digits-32-cifar     the digits at 32x32, bilinear, RGB, in the CIFAR-10 python layout
  lfw-25              scikit-image's lfw_subset: 100 faces and 100 non-faces, 25x25 grey
  photo-crops-32      32x32 RGB crops of 5 scikit-image photos (60 each), class = the photo
Each is trained with `vitkit train --data DATASET --seed S` and nothing else.

    PYTHONPATH=src python benchmarks/picker_datasets.py [--seeds 0] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import log, write
from vitkit.bench import machine_info
from vitkit.data import load_data


def save_folder(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def digits(side: int | None = None, method=Image.BICUBIC, rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    data = load_data("digits", val_fraction=0.0, test_fraction=0.0)
    images, labels = data.train.images[:, 0].numpy(), data.train.labels.numpy()
    if side is not None:
        images = np.stack([np.asarray(Image.fromarray(d).resize((side, side), method)) for d in images])
    if rgb:
        images = np.repeat(images[..., None], 3, axis=-1)
    return images, labels


def cifar_layout(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The CIFAR-10 python batches: 5 training batches and a test batch of 3072-byte rows."""
    root.mkdir(parents=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    order = np.random.default_rng(0).permutation(len(images))
    test, train = order[:len(order) // 6], order[len(order) // 6:]
    for i, part in enumerate(np.array_split(train, 5)):
        with open(root / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": rows[part], b"labels": labels[part].tolist()}, f)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": rows[test], b"labels": labels[test].tolist()}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [str(i).encode() for i in range(10)]}, f)
    return root


def make(name: str, work: Path) -> str:
    target = work / name
    if name == "digits-8":
        return "digits"
    if target.exists():
        return str(target)
    if name.startswith("digits-") and not name.endswith("cifar"):
        images, labels = digits(int(name.split("-")[1]))
        return str(save_folder(target, images, labels, [str(i) for i in range(10)]))
    if name == "digits-32-cifar":
        images, labels = digits(32, Image.BILINEAR, rgb=True)
        return str(cifar_layout(target, images, labels))
    import skimage.data as skdata

    if name == "lfw-25":
        faces = (skdata.lfw_subset() * 255).round().astype(np.uint8)
        labels = np.array([0] * 100 + [1] * 100)  # the first 100 are faces (scikit-image's docs)
        return str(save_folder(target, faces, labels, ["face", "non-face"]))
    if name == "photo-crops-32":
        photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.immunohistochemistry()]
        rng = np.random.default_rng(0)
        crops, labels = [], []
        for label, photo in enumerate(photos):
            for _ in range(60):
                y, x = rng.integers(0, photo.shape[0] - 32), rng.integers(0, photo.shape[1] - 32)
                crops.append(photo[y:y + 32, x:x + 32])
                labels.append(label)
        return str(save_folder(target, np.stack(crops), np.array(labels),
                               ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"]))
    raise SystemExit(f"unknown dataset {name}")


DATASETS = ["digits-8", "digits-16", "digits-32", "digits-64", "digits-32-cifar", "lfw-25", "photo-crops-32"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--only", nargs="*", default=None, help="datasets to run (default: all)")
    p.add_argument("--work", default=None, help="where to write the datasets (default: a temporary folder)")
    p.add_argument("--extra", nargs="*", default=[], help="more `vitkit train` flags for every run")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="picker-"))
    rows = []
    for name in args.only or DATASETS:
        source = make(name, work)
        for seed in (int(s) for s in args.seeds.split(",")):
            out = work / "runs" / f"{name}-s{seed}-{int(time.time())}"
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "vitkit", "train", "--data", source, "--seed", str(seed),
                                     "--out", str(out), "--json", *args.extra], capture_output=True, text=True,
                                    env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
            wall = time.perf_counter() - start
            if result.returncode:
                log(result.stderr)
                raise SystemExit(f"{name} seed {seed} failed")
            summary = json.loads(result.stdout.strip().splitlines()[-1])
            config = (out / "config.yaml").read_text()
            picks = [line[len("auto: "):] for line in result.stderr.splitlines() if line.startswith("auto: ")]
            model = next((line for line in picks if line.startswith("model:")), "")
            row = {"dataset": name, "seed": seed, "test_acc": summary["test_acc"], "test_n": summary["test_n"],
                   "train_seconds": summary["train_seconds"], "wall_seconds": round(wall, 1),
                   "epochs_run": summary["epochs"], "epochs_picked": int(config.split("\nepochs: ")[1].split()[0]),
                   "stopped_on_plateau": summary.get("stopped_on_plateau"), "select": summary["select"],
                   "model": model, "picks": picks}
            rows.append(row)
            log(f"{name} seed {seed}: test {summary['test_acc']:.4f}, {summary['train_seconds']:.1f} s, "
                f"{summary['epochs']} epochs")
    report = {"machine": machine_info("cpu"), "command": "python " + " ".join(sys.argv), "rows": rows}
    md = ["### What the picker chooses on small datasets, and what it reaches\n",
          f"- machine: {report['machine']['cpu']}, {report['machine']['cpu_cores']} cores; load average at the "
          f"end {', '.join(f'{v:.2f}' for v in report['machine'].get('load_average') or [])}",
          f"- command: `{report['command']}`\n",
          "| dataset | seed | test accuracy | training s | epochs run / picked | stopped early | input picked |",
          "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        stopped = f"plateau at {r['stopped_on_plateau']['epoch']}" if r["stopped_on_plateau"] else "no"
        model = r["model"].split(" -> ")[-1] if r["model"] else ""
        md.append(f"| {r['dataset']} | {r['seed']} | {r['test_acc']:.4f} ({round(r['test_acc'] * r['test_n'])}/"
                  f"{r['test_n']}) | {r['train_seconds']:.1f} | {r['epochs_run']} / {r['epochs_picked']} | {stopped} | "
                  f"{model} |")
    write("picker_datasets", report, "\n".join(md))


if __name__ == "__main__":
    main()
