"""`vitkit bench`: throughput, latency, peak memory and MFU of a preset, side by side with
Hugging Face transformers (and timm where installed) on identical weights and inputs."""

from __future__ import annotations

import sys

from vitkit.cli.main import print_json
from vitkit.errors import ConfigError


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(v) for v in text.split(",") if v)
        except ValueError:
            raise ConfigError(f"cannot read {text!r} as a comma-separated list") from None
    return parse


def register(sub, parent) -> None:
    p = sub.add_parser("bench", parents=[parent], help="measure speed against transformers/timm",
                       description="Measure inference (and training) throughput, batch latency, peak "
                                   "memory and MFU of a preset; compare with other implementations "
                                   "holding the same weights. Timings: warm-up, then the median of "
                                   "repeats that alternate between the implementations.")
    p.add_argument("--model", default="vit_s16", help="preset name (default vit_s16)")
    p.add_argument("--batch", type=_csv(int), default=(1, 8), help="batch sizes, e.g. 1,8 (default)")
    p.add_argument("--precision", type=_csv(str), default=("fp32",), help="fp32,bf16,fp16 (default fp32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--task", type=_csv(str), default=("inference",), help="inference,training (default inference)")
    p.add_argument("--compare", type=_csv(str), default=("hf",), help="hf,timm or none (default hf)")
    p.add_argument("--compile", action="store_true", help="also time vitkit under torch.compile")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls; the median is reported (default 10)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from vitkit.bench import format_rows, run_benchmark

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    log = None if (args.quiet or args.json) else (lambda line: print(line, file=sys.stderr))
    report = run_benchmark(args.model, batches=args.batch, precisions=args.precision, device=args.device,
                           tasks=args.task, compare=args.compare, compile=args.compile,
                           image_size=args.image_size, warmup=args.warmup, repeats=args.repeats, log=log)
    if args.json:
        print_json(report)
        return 0
    m = report["machine"]
    print(f"{args.model} at {args.image_size}px, {report['forward_gflops']:.2f} GFLOPs/image; "
          f"{m.get('gpu') or m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} threads); "
          f"torch {m['torch']}, transformers {m['transformers']}, timm {m['timm']}; load {m['load_average']}")
    for precision, gflops in report["ceilings_gflops"].items():
        print(f"ceiling {precision}: {gflops:.1f} GFLOP/s (square matrix product timed alternately with the models)")
    for impl, diff in report["max_abs_logit_diff"].items():
        print(f"{impl}: same weights, max abs logit difference {diff:.1e}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(format_rows(report["rows"], header=True))
    return 0
