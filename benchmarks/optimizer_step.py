"""One optimiser step on the digits model (width 64, depth 4; 137k parameters), timed alone:
what the Muon default for small data costs per step (docs/training.md, sixth round).

- AdamW, fused (the default for larger sets);
- vitkit's Muon: the blocks' 16 weight matrices by Muon, orthogonalised in float32 in one
  batched Newton-Schulz iteration per shape, the rest by fused AdamW;
- torch.optim.Muon on the same 16 matrices (bfloat16 Newton-Schulz, one matrix at a time) plus
  fused AdamW on the rest;
- for scale, one forward + backward of the model on a batch of 128 (the default batch).

Calls alternate round by round; medians are reported, each over 20 steps.

    PYTHONPATH=src python benchmarks/optimizer_step.py [--threads 1 2] [--repeats 15]

Writes benchmarks/results/optimizer_step.{json,md}.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from _common import header, medians, write
from vitkit.bench import machine_info
from vitkit.models.config import ModelConfig
from vitkit.models.vit import VisionTransformer
from vitkit.train.optim import build_optimizer, muon_groups

STEPS = 20


class TorchMuonPair:
    """torch.optim.Muon for the matrices vitkit's Muon takes, fused AdamW for the rest."""

    def __init__(self, model: VisionTransformer, lr: float, weight_decay: float):
        groups = muon_groups(model, weight_decay)
        matrices = [p for g in groups if g["muon"] for p in g["params"]]
        rest = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups if not g["muon"]]
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(rest, lr=lr, fused=True)

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()


def time_steps(repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, patch_size=4, in_chans=1, num_classes=10, width=64, depth=4,
                      num_heads=4, mlp_dim=128)
    model = VisionTransformer(cfg)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {"AdamW (fused)": build_optimizer(model, "adamw", 6e-3, 0.1),
                  "vitkit Muon + AdamW": build_optimizer(model, "muon", 6e-3, 0.1),
                  "torch.optim.Muon + AdamW": TorchMuonPair(model, 6e-3, 0.1)}

    def steps(optimizer):
        def call():
            for _ in range(STEPS):
                optimizer.step()
        return call

    calls = {name: steps(opt) for name, opt in optimizers.items()}
    images, labels = torch.randn(128, 1, 16, 16), torch.randint(0, 10, (128,))
    grads = {n: p.grad for n, p in model.named_parameters()}

    def forward_backward():
        for _ in range(STEPS // 10):
            F.cross_entropy(model(images), labels).backward()
        for n, p in model.named_parameters():
            p.grad = grads[n]

    calls["forward + backward, batch 128 (for scale)"] = forward_backward
    times = medians(calls, repeats)
    return {name: ms / (STEPS // 10 if name.startswith("forward") else STEPS) for name, ms in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    by_threads = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        by_threads[threads] = time_steps(args.repeats)
    report = {"machine": machine_info("cpu"), "ms_per_step": by_threads}
    names = list(next(iter(by_threads.values())))
    md = ("### One optimiser step on the digits model\n\n" + header(report, "python " + " ".join(sys.argv))
          + "\n| ms per step (median) | " + " | ".join(f"{t} thread(s)" for t in by_threads) + " |\n|---|"
          + "---:|" * len(by_threads) + "\n"
          + "".join(f"| {name} | " + " | ".join(f"{by_threads[t][name]:.2f}" for t in by_threads) + " |\n"
                    for name in names))
    write("optimizer_step", report, md)


if __name__ == "__main__":
    main()
