"""GPU benchmark (written for an H100): ViT-S/16, ViT-B/16 and ViT-L/16 at 224 px, bf16 (and
optionally fp16/fp32), inference and training, vitkit eager and torch.compile'd, against
Hugging Face transformers and timm (when installed) on the same weights and inputs. MFU is
over the measured bf16 matrix-product ceiling (8192^3, F.linear).

    PYTHONPATH=src python benchmarks/gpu.py [--models vit_s16,vit_b16,vit_l16]
        [--batch 256] [--precision bf16] [--no-compile]

Writes benchmarks/results/gpu.{json,md}.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import header, log, write
from vitkit.bench import format_rows, run_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vit_s16,vit_b16,vit_l16")
    p.add_argument("--batch", default="256")
    p.add_argument("--latency-batch", default="1", help="batch for the latency rows ('' for none)")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--tasks", default="inference,training")
    p.add_argument("--compare", default="hf,timm")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    sections, reports = [], {}
    for name in args.models.split(","):
        batches = [int(b) for b in (args.latency_batch + "," + args.batch).split(",") if b]
        report = run_benchmark(name, batches=batches, precisions=args.precision.split(","), device="cuda",
                               tasks=tuple(args.tasks.split(",")), compare=tuple(args.compare.split(",")),
                               compile=not args.no_compile, warmup=args.warmup, repeats=args.repeats, log=log)
        reports[name] = report
        ceilings = ", ".join(f"{k} {v / 1e3:.0f} TFLOP/s" for k, v in report["ceilings_gflops"].items())
        sections.append(f"#### {name}\n\n- ceilings: {ceilings}; same weights, max abs logit difference "
                        f"{report['max_abs_logit_diff']}\n" + "".join(f"- note: {n}\n" for n in report["notes"])
                        + "\n" + format_rows(report["rows"], header=True) + "\n")
    first = next(iter(reports.values()))
    md = ("### GPU: inference and training\n\n" + header(first, "python " + " ".join(sys.argv)) + "\n"
          + "\n".join(sections))
    write("gpu", {"reports": reports}, md)


if __name__ == "__main__":
    main()
