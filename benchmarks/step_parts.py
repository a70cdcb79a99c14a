"""The parts of a step, each timed alone: what the speed choices in docs/training.md and
docs/benchmarks.md rest on.

Digits model (width 64, 4 heads of 16, 17 tokens, batch 128; forward + backward):
- vitkit's attention block (the fused projection's output permuted to q, k, v at once) against
  the same weights with q, k, v unbound and transposed one by one, which saves a copy in the
  backward (tried: 0-5% faster in four runs of this script, about 1% of a training step, so
  the simpler permute stays);
- `scaled_dot_product_attention` (fused kernel) against its math backend and a hand-written
  softmax(QK^T)V, on 4 heads of 16 and 2 heads of 32.

ViT-S/16 at batch 8 (inference): the first MLP layer (1576 x 384 -> 1536) alone, GELU alone,
the two in a row, oneDNN's fused linear + GELU, and attention at 197 tokens.

Calls alternate round by round; medians are reported.

    PYTHONPATH=src python benchmarks/step_parts.py [--threads-digits 1] [--threads-vit 2] [--repeats 30]

Writes benchmarks/results/step_parts.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from _common import header, write
from vitkit.bench import machine_info
from vitkit.models.config import ModelConfig
from vitkit.models.vit import Attention


def medians(calls: dict, repeats: int) -> dict:
    """Median milliseconds of each call, the calls alternating round by round."""
    for call in calls.values():  # warm-up
        call()
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def unbound_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    """The alternative layout: unbind q, k, v, then transpose each."""
    b, t, d = x.shape
    q, k, v = (part.transpose(1, 2) for part in
               module.qkv(x).view(b, t, 3, module.num_heads, module.head_dim).unbind(2))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
    return module.proj(out)


def handwritten(q, k, v):
    return torch.matmul((torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1), v)


def with_backend(backend):
    def attend(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)
    return attend


def backward_of(fn, *inputs):
    def call():
        fn(*inputs).sum().backward()
    return call


def digits_parts(repeats: int) -> dict:
    cfg = ModelConfig(image_size=16, patch_size=4, in_chans=1, num_classes=10, width=64, depth=4,
                      num_heads=4, mlp_dim=128)
    module = Attention(cfg, cfg.grid_size)
    x = torch.randn(128, 17, 64, requires_grad=True)
    grid = cfg.grid_size
    block = {"attention block, q/k/v permuted at once (vitkit)": backward_of(lambda x: module(x, grid)[0], x),
             "attention block, q/k/v unbound one by one": backward_of(lambda x: unbound_attention(module, x), x)}
    kernels = {}
    for heads, dim in ((4, 16), (2, 32)):
        qkv = [torch.randn(128, heads, 17, dim, requires_grad=True) for _ in range(3)]
        for name, fn in (("fused SDPA", F.scaled_dot_product_attention),
                         ("SDPA math backend", with_backend(SDPBackend.MATH)),
                         ("hand-written", handwritten)):
            kernels[f"{name}, {heads} heads of {dim}"] = backward_of(fn, *qkv)
    return medians({**block, **kernels}, repeats)


def vit_s_parts(repeats: int) -> dict:
    x = torch.randn(8 * 197, 384)
    w, b = torch.randn(1536, 384) * 0.05, torch.randn(1536)
    h = F.linear(x, w, b)
    q, k, v = (torch.randn(8, 6, 197, 64) for _ in range(3))
    calls = {"F.linear 1576x384 -> 1536": lambda: F.linear(x, w, b),
             "F.gelu on its output": lambda: F.gelu(h),
             "F.linear then F.gelu": lambda: F.gelu(F.linear(x, w, b)),
             "oneDNN fused linear + GELU": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none"),
             "fused SDPA, 8 x 6 heads x 197 tokens x 64": lambda: F.scaled_dot_product_attention(q, k, v)}
    with torch.inference_mode():
        return medians(calls, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads-digits", type=int, default=1, help="torch threads for the digits parts")
    p.add_argument("--threads-vit", type=int, default=2, help="torch threads for the ViT-S/16 parts")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads_digits)
    digits = digits_parts(args.repeats)
    torch.set_num_threads(args.threads_vit)
    vit_s = vit_s_parts(args.repeats)
    linear_gflops = 2 * 1576 * 384 * 1536 / vit_s["F.linear 1576x384 -> 1536"] / 1e6
    report = {"machine": machine_info("cpu"), "threads": {"digits": args.threads_digits, "vit_s": args.threads_vit},
              "digits_ms": digits, "vit_s_ms": vit_s, "linear_gflops": linear_gflops}
    rows = lambda parts: "".join(f"| {name} | {value:.2f} |\n" for name, value in parts.items())  # noqa: E731
    md = ("### The parts of a step, timed alone\n\n" + header(report, "python " + " ".join(sys.argv))
          + f"\nDigits model, batch 128, forward + backward, {args.threads_digits} thread(s):\n\n"
          "| part | ms (median) |\n|---|---:|\n" + rows(digits)
          + f"\nViT-S/16 at batch 8, inference, {args.threads_vit} thread(s):\n\n"
          "| part | ms (median) |\n|---|---:|\n" + rows(vit_s)
          + f"\nThe linear layer alone runs at {linear_gflops:.0f} GFLOP/s.\n")
    write("step_parts", report, md)


if __name__ == "__main__":
    main()
