"""Throughput and memory against image size and batch size: where attention's quadratic cost
takes over. Each point runs in a fresh process, so that allocator caches of one point do not
hide the memory of the next (peak memory as defined in `vitkit.bench`). Beside the measurement, the analytic
share of the forward FLOPs spent in attention's two T x T products.

    PYTHONPATH=src python benchmarks/scaling.py [--model vit_s16] [--sizes 224,384,512]
        [--batch 1,4] [--device cpu] [--precision fp32]

Writes benchmarks/results/scaling_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from _common import header, log, write
from vitkit.bench import format_rows, machine_info, measure_inference
from vitkit.models import create_model, forward_flops


def attention_share(cfg) -> float:
    gh, gw = cfg.grid_size
    t = gh * gw + cfg.num_prefix_tokens
    d, m = cfg.width, cfg.mlp_dim
    return 2 * t * t * d / (t * (4 * d * d + 2 * d * m) + 2 * t * t * d)


def point(args) -> None:
    size, batch = args.point
    device = torch.device(args.device)
    model = create_model(args.model, image_size=size).to(device)
    r = measure_inference(model, batch, image_size=(size, size), device=device, precision=args.precision,
                          warmup=args.warmup, repeats=args.repeats, flops_per_image=forward_flops(model.config),
                          name=args.model)
    r.extra.update(image_size=size, tokens=model.config.grid_size[0] * model.config.grid_size[1] + 1,
                   attention_flop_share=attention_share(model.config))
    print(json.dumps(r.to_dict()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_s16")
    p.add_argument("--sizes", default="224,384,512")
    p.add_argument("--batch", default="1,4")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--point", type=lambda s: tuple(int(v) for v in s.split(",")), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.point:
        return point(args)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            cmd = [sys.executable, __file__, "--point", f"{size},{batch}"]
            cmd += [f"--{k}={getattr(args, k)}" for k in ("model", "device", "precision", "warmup", "repeats")]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            log(format_rows(rows[-1:]) + f" {size}px")
    ceiling = statistics.median(r["ceiling_flops_per_s"] for r in rows)
    report = {"machine": machine_info(args.device), "ceiling_gflops": ceiling / 1e9, "rows": rows}
    table = ["| image | tokens | batch | images/s | ms/batch | GFLOPs/image | MFU | peak MiB | attention share of FLOPs |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e = r["extra"]
        table.append(f"| {e['image_size']} | {e['tokens']} | {r['batch']} | {r['images_per_s']:.2f} | "
                     f"{r['latency_ms']:.0f} | {r['model_flops_per_s'] / r['images_per_s'] / 1e9:.1f} | {100 * r['mfu']:.1f}% | {r['peak_mem_mib']:.0f} | "
                     f"{100 * e['attention_flop_share']:.1f}% |")
    md = (f"### Scaling: {args.model} inference, {args.precision}, {args.device}\n\n"
          + header(report, "python " + " ".join(sys.argv))
          + f"- ceiling (timed alternately with each point; median over points) {ceiling / 1e9:.1f} GFLOP/s; "
            "peak memory: "
          + ("growth of the resident set at its peak during the measurement (VmHWM - VmRSS)"
             if args.device == "cpu" else "torch.cuda.max_memory_allocated") + "\n\n" + "\n".join(table))
    write(f"scaling_{args.device}", report, md)


if __name__ == "__main__":
    main()
