"""The runs behind docs/objectives.md's tables: scratch vs masked-patch-prediction and MAE
pre-training, distillation from a ResNet teacher, adversarial training and robustness, on the
bundled digits, seeds 0-2, two runs at a time with one thread each.

    PYTHONPATH=src python benchmarks/objectives_digits.py --work /tmp/objectives [--jobs 2]

Every run is a plain `vitkit` command (printed); a run whose summary.json exists is reused, so
an interrupted measurement continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import log, write
from vitkit.bench import machine_info

M = ["--model", "custom", "--width", "64", "--depth", "2", "--num-heads", "2", "--mlp-dim", "128", "--patch-size", "2"]
TEACHER = ["--model", "custom", "--stem", "resnet", "--depth", "0", "--pool", "gap", "--resnet-layers", "1", "1",
           "--resnet-width", "32", "--patch-size", "1"]
SEEDS = (0, 1, 2)
EPS = ("0.03", "0.05", "0.1")


def vitkit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [sys.executable, "-m", "vitkit", *args]
    log("$ vitkit " + " ".join(args))
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{result.stderr[-2000:]}")
    return result


def run(work: Path, name: str, *args: str) -> dict:
    out = work / name
    if not (out / "summary.json").exists():
        command = args[0]
        vitkit(command, "--out", str(out), "--quiet", *args[1:])
    return json.loads((out / "summary.json").read_text())


def evaluate(checkpoint: str, *args: str) -> dict:
    return json.loads(vitkit("eval", checkpoint, "--json", "--quiet", *args).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(args.jobs)

    def submit(name, *cmd):
        return pool.submit(run, work, name, *cmd)

    first = {"teacher": submit("teacher", "train", *TEACHER, "--epochs", "30", "--seed", "0")}
    for s in SEEDS:
        for epochs in (30, 100):
            first[f"scratch{epochs}_{s}"] = submit(f"scratch{epochs}_{s}", "train", *M, "--epochs", str(epochs),
                                                   "--seed", str(s))
            first[f"adv{epochs}_{s}"] = submit(f"adv{epochs}_{s}", "train", *M, "--epochs", str(epochs), "--seed", str(s),
                                               "--adversarial", "pgd", "--adv-eps", "0.1", "--adv-steps", "3")
        for objective in ("mpp", "mae"):
            first[f"{objective}_{s}"] = submit(f"{objective}_{s}", "pretrain", "--objective", objective, *M,
                                               "--epochs", "30", "--seed", str(s))
    results = {name: future.result() for name, future in first.items()}
    second = {}
    teacher = results["teacher"]["checkpoint"]
    for s in SEEDS:
        for epochs in (30, 100):
            for objective in ("mpp", "mae"):
                name = f"{objective}ft{epochs}_{s}"
                second[name] = submit(name, "train", "--init", results[f"{objective}_{s}"]["checkpoint"], "--recipe",
                                      "default", "--epochs", str(epochs), "--seed", str(s))
            for kind in ("soft", "hard"):
                name = f"{kind}{epochs}_{s}"
                second[name] = submit(name, "train", *M, "--epochs", str(epochs), "--seed", str(s), "--teacher", teacher,
                                      "--distill", kind)
    results.update({name: future.result() for name, future in second.items()})
    evals = {}
    for name, summary in results.items():
        if name.startswith(("scratch", "adv", "teacher")):
            evals[name] = {attack: pool.submit(evaluate, summary["checkpoint"], "--attack", attack, "--eps", *EPS,
                                               *(["--steps", "10"] if attack == "pgd" else []))
                           for attack in ("fgsm", "pgd")}
        if name.startswith(("soft", "hard")):
            evals[name] = {head: pool.submit(evaluate, summary["checkpoint"], "--head", head) for head in ("cls", "dist")}
    evals = {name: {key: future.result() for key, future in parts.items()} for name, parts in evals.items()}
    report = {"machine": machine_info("cpu"), "command": "python " + " ".join(sys.argv), "runs": results,
              "evals": evals}

    def cell(values: list[float]) -> str:
        values = [100 * v for v in values]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f} ({', '.join(f'{v:.1f}' for v in values)})"

    md = ["### Objectives on the digits (seeds 0-2)\n", f"- command: `{report['command']}`",
          f"- machine: {report['machine']['cpu']}\n", "| run | test accuracy % |", "|---|---|"]
    for stem in ("scratch30", "mppft30", "maeft30", "soft30", "hard30", "adv30",
                 "scratch100", "mppft100", "maeft100", "soft100", "hard100", "adv100"):
        md.append(f"| {stem} | {cell([results[f'{stem}_{s}']['test_acc'] for s in SEEDS])} |")
    md.append(f"| teacher | {100 * results['teacher']['test_acc']:.1f} |")
    write("objectives_digits", report, "\n".join(md))


if __name__ == "__main__":
    main()
