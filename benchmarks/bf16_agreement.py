"""Do bf16 predictions agree with fp32? Top-1 agreement on the test split of the bundled
digits, for a model trained by the default `vitkit train --data digits` (or a checkpoint
given with --checkpoint), and the bf16 / fp32 inference speed of that model on this machine.

    PYTHONPATH=src python benchmarks/bf16_agreement.py [--checkpoint run/checkpoints/best.safetensors]

Writes benchmarks/results/bf16_agreement.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from _common import header, log, write
from vitkit.bench import cpu_has_native_bf16, machine_info
from vitkit.data import load_data
from vitkit.evaluate.classification import predict_logits
from vitkit.formats import load
from vitkit.train.config import TrainConfig
from vitkit.train.loop import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, help="train this many epochs instead of the default")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint
        train_seconds = None
        if not path:
            start = time.perf_counter()
            Trainer(TrainConfig(data="digits", out=f"{tmp}/run", device="cpu", epochs=args.epochs),
                    quiet=True).run()
            train_seconds = time.perf_counter() - start
            path = f"{tmp}/run/checkpoints/final.safetensors"  # the run's result (--select last)
        model = load(path).eval()
    test = load_data("digits").test
    labels = test.labels
    logits, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        predict_logits(model, test.images, 512, precision)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            logits[precision] = predict_logits(model, test.images, 512, precision)
            times.append(time.perf_counter() - start)
        seconds[precision] = statistics.median(times)
    top1 = {k: float((v.argmax(1) == labels).float().mean()) for k, v in logits.items()}
    agreement = float((logits["bf16"].argmax(1) == logits["fp32"].argmax(1)).float().mean())
    max_diff = float((logits["bf16"] - logits["fp32"]).abs().max())
    n = len(labels)
    report = {"machine": machine_info("cpu"), "test_images": n, "agreement": agreement, "top1": top1,
              "max_abs_logit_diff": max_diff, "seconds": seconds, "train_seconds": train_seconds,
              "native_bf16": cpu_has_native_bf16()}
    md = ("### bf16 vs fp32 predictions: digits test split\n\n" + header(report, "python " + " ".join(sys.argv))
          + f"- model: the default digits model ({'trained here in ' + f'{train_seconds:.0f} s' if train_seconds else path}"
            f"{f', {args.epochs} epochs' if args.epochs else ''}); "
            f"native bf16 on this CPU: {report['native_bf16']}\n\n"
          "| precision | test top-1 | images/s (whole test split) |\n|---|---:|---:|\n"
          + "".join(f"| {k} | {100 * top1[k]:.2f}% | {n / seconds[k]:.0f} |\n" for k in ("fp32", "bf16"))
          + f"\nTop-1 agreement bf16 vs fp32: **{100 * agreement:.2f}%** of {n} images; "
            f"max abs logit difference {max_diff:.3f}.\n")
    log(md)
    write("bf16_agreement", report, md)


if __name__ == "__main__":
    main()
