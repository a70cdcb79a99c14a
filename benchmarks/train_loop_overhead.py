"""Does the training loop cost anything? Default training on the bundled digits, timed step
by step two ways in one process on the same model and optimiser:

- "loop": what `Trainer.train_epoch` does per step: slice the uint8 images kept on the
  device, convert, augment (batched, on the device), then the training step (normalise,
  forward, loss), backward, accumulate loss and accuracy in device tensors (no .item()), LR
  schedule, clip, optimiser step;
- "fixed": the same step/backward/update on one pre-made, pre-augmented tensor.

The two alternate in blocks of steps; the ratio of medians is the loop's efficiency
(target >= 95%). On a loaded machine whole steps are noisy, so the data path alone is also
timed over many calls; fixed / (fixed + data path) is the steadier estimate. Also times one whole default `vitkit train --data digits` run unless
--no-full-run.

    PYTHONPATH=src python benchmarks/train_loop_overhead.py [--steps 20] [--blocks 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from _common import header, log, write
from vitkit.bench import machine_info
from vitkit.objectives.base import Draws
from vitkit.train.config import TrainConfig
from vitkit.train.loop import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=5, help="timed blocks per mode (alternating)")
    p.add_argument("--data-calls", type=int, default=200, help="calls of the data path alone")
    p.add_argument("--no-full-run", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(TrainConfig(data="digits", out=f"{tmp}/run", device="cpu"), quiet=True)
        images, labels = trainer.hold_train_images()  # uint8 at the model's size, as `run` keeps them
        batch = trainer.cfg.batch_size
        n = labels.shape[0]
        trainer.model.train()
        fixed_x, fixed_t = trainer._input(images[:batch], labels[:batch])
        fixed_x, fixed_t = fixed_x.detach().clone(), fixed_t.detach().clone()
        loss_sum = torch.zeros(())
        correct = torch.zeros(())

        def step(x, targets):
            out = trainer.step(x, targets, Draws(0, (0, 0), range(x.shape[0]), trainer.device))
            out["loss"].backward()
            loss_sum.add_(out["loss"].detach() * x.shape[0])
            correct.add_((out["logits"].detach().argmax(1) == targets.argmax(1)).sum())
            trainer._update(0)

        def loop_block():
            order = torch.randperm(n)
            for s in range(args.steps):
                index = order[(s * batch) % (n - batch):][:batch]
                step(*trainer._input(images[index], labels[index]))

        def fixed_block():
            for _ in range(args.steps):
                step(fixed_x, fixed_t)

        for block in (loop_block, fixed_block):  # warm-up
            block()
        times = {"loop": [], "fixed": []}
        for _ in range(args.blocks):
            for name, block in (("loop", loop_block), ("fixed", fixed_block)):
                start = time.perf_counter()
                block()
                times[name].append((time.perf_counter() - start) / args.steps)
        # The data path alone (slice, convert, augment), timed over many calls: small
        # and steady enough to measure precisely even when the whole steps are noisy.
        data_times = []
        for _ in range(args.data_calls):
            index = torch.randint(0, n, (batch,))
            start = time.perf_counter()
            trainer._input(images[index], labels[index])
            data_times.append(time.perf_counter() - start)
        model_cfg = trainer.model.config
        augment = trainer.cfg.augment
    loop_s, fixed_s = statistics.median(times["loop"]), statistics.median(times["fixed"])
    data_s = statistics.median(data_times)
    report = {"machine": machine_info("cpu"), "batch": batch, "steps_per_block": args.steps,
              "model": model_cfg.to_dict(), "augment": augment, "seconds_per_step": times,
              "loop_images_per_s": batch / loop_s, "fixed_images_per_s": batch / fixed_s,
              "efficiency": fixed_s / loop_s, "data_path_seconds": data_s,
              "efficiency_from_data_path": fixed_s / (fixed_s + data_s)}
    active = ", ".join(f"{k}={v}" for k, v in augment.items() if v not in (0, 0.0, False, "none"))
    md = ("### Training loop overhead: default training on the bundled digits (CPU)\n\n"
          + header(report, "python " + " ".join(sys.argv))
          + f"- model: width {model_cfg.width}, depth {model_cfg.depth}, patch {model_cfg.patch_size}, "
            f"image {model_cfg.image_size}; batch {batch}; augmentation: {active}\n\n"
          "| mode | ms/step (median) | images/s |\n|---|---:|---:|\n"
          f"| training with the loop's data path and augmentation | {loop_s * 1e3:.1f} | {batch / loop_s:.0f} |\n"
          f"| training on one fixed tensor | {fixed_s * 1e3:.1f} | {batch / fixed_s:.0f} |\n"
          f"| efficiency, whole steps (fixed / loop time) | {100 * fixed_s / loop_s:.1f}% | |\n"
          f"| the data path alone (slice, uint8 -> float, augment; median of {args.data_calls}) "
          f"| {data_s * 1e3:.2f} | |\n"
          f"| **efficiency from the data path (fixed / (fixed + data path))** | "
          f"**{100 * fixed_s / (fixed_s + data_s):.1f}%** | |\n"
          f"\nPer-block step times (s): loop {[round(t, 2) for t in times['loop']]}, "
          f"fixed {[round(t, 2) for t in times['fixed']]}.\n")
    if not args.no_full_run:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vitkit", "train", "--data", "digits", "--out", f"{tmp}/run",
                            "--device", "cpu", "--quiet"], check=True)
            wall = time.perf_counter() - start
        report["full_default_run_seconds"] = wall
        md += f"\nWhole default run, `vitkit train --data digits --device cpu --quiet`: {wall:.0f} s wall.\n"
    log(f"loop {loop_s * 1e3:.1f} ms/step, fixed {fixed_s * 1e3:.1f} ms/step")
    write("train_loop_overhead", report, md)


if __name__ == "__main__":
    main()
