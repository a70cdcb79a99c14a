"""Weights prepacked for oneDNN against plain `F.linear`, for CPU inference of ViT-S/16 at 224:
the fast path docs/benchmarks.md weighed and left out.

- Each dense layer shape of ViT-S/16 (qkv, attention output, MLP in and out) at 197 rows
  (batch 1) and 1,576 rows (batch 8): `F.linear` against oneDNN's `_linear_pointwise` on weights
  reordered once for that row count (`torch.ops.mkldnn._reorder_linear_weight`).
- The whole model at batch 1 and 8: as it is, against a copy whose every `nn.Linear` calls the
  prepacked op, and (batch 8) `torch.compile` with inductor's `freezing`, which prepacks by
  itself. Largest logit difference to the plain model reported.

Calls alternate round by round; medians. The private ops are those of torch 2.13's CPU build.

    PYTHONPATH=src python benchmarks/cpu_linear_packing.py [--threads 2] [--repeats 15] [--no-compile]

Writes benchmarks/results/cpu_linear_packing.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F

import vitkit
from _common import header, log, medians, write
from vitkit.bench import machine_info

LAYERS = {"qkv 384 -> 1152": (384, 1152), "attention out 384 -> 384": (384, 384),
          "MLP in 384 -> 1536": (384, 1536), "MLP out 1536 -> 384": (1536, 384)}


class PackedLinear(torch.nn.Module):
    """An `nn.Linear` whose weight oneDNN has reordered for inputs of `rows` rows."""

    def __init__(self, linear: torch.nn.Linear, rows: int):
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def packed_copy(model: torch.nn.Module, rows: int) -> torch.nn.Module:
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, PackedLinear(child, rows))
    return model


def layer_rows(repeats: int) -> list[dict]:
    rows = []
    for batch in (1, 8):
        m = 197 * batch
        for name, (k, n) in LAYERS.items():
            linear = torch.nn.Linear(k, n)
            x = torch.randn(m, k)
            packed = PackedLinear(linear, m)
            ms = medians({"F.linear": lambda: F.linear(x, linear.weight, linear.bias),
                          "prepacked": lambda: packed(x)}, repeats)
            rows.append({"batch": batch, "rows": m, "layer": name, **ms,
                         "gflops_plain": 2 * m * k * n / ms["F.linear"] / 1e6})
    return rows


def model_rows(repeats: int, compile_too: bool) -> list[dict]:
    torch.manual_seed(0)
    model = vitkit.create_model("vit_s16").eval()
    rows = []
    for batch in (1, 8):
        x = torch.rand(batch, 3, 224, 224)
        calls = {"plain": model, "prepacked": packed_copy(model, 197 * batch)}
        if compile_too and batch == 8:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            calls["compiled, freezing"] = torch.compile(copy.deepcopy(model))
        with torch.inference_mode():
            reference = model(x)
            diffs = {name: float((fn(x) - reference).abs().max()) for name, fn in calls.items()}
            ms = medians({name: (lambda fn=fn: fn(x)) for name, fn in calls.items()}, repeats)
        rows.append({"batch": batch, "ms": ms, "max_abs_logit_diff": diffs})
        log(str(rows[-1]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled model (about 25 s to compile)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layers = layer_rows(4 * args.repeats)
    models = model_rows(args.repeats, not args.no_compile)
    report = {"machine": machine_info("cpu"), "layers": layers, "models": models}
    layer_table = "".join(
        f"| {r['batch']} | {r['rows']} | {r['layer']} | {r['F.linear']:.2f} | {r['prepacked']:.2f} | "
        f"{r['F.linear'] / r['prepacked']:.2f}x | {r['gflops_plain']:.0f} |\n" for r in layers)
    model_table = "".join(
        f"| {r['batch']} | {name} | {ms:.1f} | {r['ms']['plain'] / ms:.2f}x | {r['max_abs_logit_diff'][name]:.2g} |\n"
        for r in models for name, ms in r["ms"].items())
    md = ("### oneDNN prepacked weights against F.linear, ViT-S/16 at 224, inference, fp32\n\n"
          + header(report, "python " + " ".join(sys.argv))
          + f"\nDense layers ({4 * args.repeats} alternating rounds; speed-up = F.linear / prepacked):\n\n"
          "| batch | rows | layer | F.linear ms | prepacked ms | speed-up | F.linear GFLOP/s |\n"
          "|---:|---:|---|---:|---:|---:|---:|\n" + layer_table
          + f"\nWhole model ({args.repeats} alternating rounds; speed-up against the plain model):\n\n"
          "| batch | model | ms (median) | speed-up | max abs logit difference |\n|---:|---|---:|---:|---:|\n"
          + model_table)
    write("cpu_linear_packing", report, md)


if __name__ == "__main__":
    main()
