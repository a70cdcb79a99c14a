"""The parts of a step, each timed alone: what the speed choices in docs/training.md and
docs/benchmarks.md rest on.

Digits model's attention block (width 64, 17 tokens, batch 128; forward + backward), all with
vitkit's `Attention` module, on 4 heads of 16 and 2 heads of 32:
- as trained: `scaled_dot_product_attention`, its fused kernel;
- the same under SDPA's math backend;
- vitkit's explicit softmax(QK^T)V, the path taken when attention weights are asked for
  (`keep_weights=True`);
- (4 heads) q, k, v unbound and transposed one by one instead of one permute, which saves a copy
  in the backward (tried: 0-11% faster per block in seven runs of this script, within the
  spread, so the simpler permute stays).

ViT-S/16 at batch 8 (inference): the first MLP layer (1576 x 384 -> 1536) alone, GELU alone,
the two in a row, oneDNN's fused linear + GELU, and attention at 197 tokens.

Calls alternate round by round; medians are reported.

    PYTHONPATH=src python benchmarks/step_parts.py [--threads-digits 1] [--threads-vit 2] [--repeats 30]

Writes benchmarks/results/step_parts.{json,md}.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from _common import header, medians, write
from vitkit.bench import machine_info
from vitkit.models.config import ModelConfig
from vitkit.models.vit import Attention


def unbound_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    """The alternative layout: unbind q, k, v, then transpose each."""
    b, t, d = x.shape
    q, k, v = (part.transpose(1, 2) for part in
               module.qkv(x).view(b, t, 3, module.num_heads, module.head_dim).unbind(2))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
    return module.proj(out)


def backward_of(fn, x):
    def call():
        fn(x).sum().backward()
    return call


def in_math_backend(fn):
    def attend(x):
        with sdpa_kernel(SDPBackend.MATH):
            return fn(x)
    return attend


def digits_parts(repeats: int) -> dict:
    x = torch.randn(128, 17, 64, requires_grad=True)
    calls = {}
    for heads in (4, 2):
        cfg = ModelConfig(image_size=16, patch_size=4, in_chans=1, num_classes=10, width=64, depth=4,
                          num_heads=heads, mlp_dim=128)
        module, grid = Attention(cfg, cfg.grid_size), cfg.grid_size
        fused = lambda x, module=module, grid=grid: module(x, grid)[0]  # noqa: E731
        explicit = lambda x, module=module, grid=grid: module(x, grid, keep_weights=True)[0]  # noqa: E731
        shape = f"{heads} heads of {64 // heads}"
        calls[f"fused SDPA (as trained), {shape}"] = backward_of(fused, x)
        calls[f"SDPA math backend, {shape}"] = backward_of(in_math_backend(fused), x)
        calls[f"explicit softmax (keep_weights), {shape}"] = backward_of(explicit, x)
        if heads == 4:
            calls[f"q/k/v unbound one by one, {shape}"] = backward_of(
                lambda x, module=module: unbound_attention(module, x), x)
    return medians(calls, repeats)


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
          + f"\nDigits model's attention block, batch 128, forward + backward, {args.threads_digits} thread(s):\n\n"
          "| part | ms (median) |\n|---|---:|\n" + rows(digits)
          + f"\nViT-S/16 at batch 8, inference, {args.threads_vit} thread(s):\n\n"
          "| part | ms (median) |\n|---|---:|\n" + rows(vit_s)
          + f"\nThe linear layer alone runs at {linear_gflops:.0f} GFLOP/s.\n")
    write("step_parts", report, md)


if __name__ == "__main__":
    main()
