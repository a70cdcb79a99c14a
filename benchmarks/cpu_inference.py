"""CPU inference, vitkit vs Hugging Face transformers on the same weights and inputs.

    PYTHONPATH=src python benchmarks/cpu_inference.py [--model vit_s16] [--batch 1,8]
        [--precision fp32,bf16] [--repeats 7]

Writes benchmarks/results/cpu_inference.{json,md}.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import header, log, write
from vitkit.bench import format_rows, run_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_s16")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--compare", default="hf,timm")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--name", default="cpu_inference")
    args = p.parse_args()
    report = run_benchmark(args.model, batches=[int(b) for b in args.batch.split(",")],
                           precisions=args.precision.split(","), device="cpu", tasks=("inference",),
                           compare=tuple(args.compare.split(",")), compile=args.compile,
                           warmup=args.warmup, repeats=args.repeats, log=log)
    ceilings = ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in report["ceilings_gflops"].items())
    md = (f"### CPU inference: {args.model}, 224 px\n\n" + header(report, "python " + " ".join(sys.argv)) +
          f"- matrix-product ceilings (F.linear, 1024 x 1024 x 1024, timed alternately with the models; "
            f"median): {ceilings}\n"
          f"- native bf16 on this CPU: {report['cpu_native_bf16']}; torch threads {torch.get_num_threads()}\n"
          f"- same weights: max abs logit difference {report['max_abs_logit_diff']}\n"
          + "".join(f"- note: {n}\n" for n in report["notes"]) + "\n"
          + format_rows(report["rows"], header=True))
    write(args.name, report, md)


if __name__ == "__main__":
    main()
