"""Shared by the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from vitkit.allocator import keep_freed_memory

RESULTS = Path(__file__).resolve().parent / "results"

# As the `vitkit` command does: measured processes keep freed memory (src/vitkit/allocator.py).
keep_freed_memory()


def write(name: str, report: dict, markdown: str) -> None:
    """benchmarks/results/<name>.json and .md, and the markdown on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(markdown)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def header(report: dict, command: str) -> str:
    m = report["machine"]
    device = m.get("gpu") or f"{m['cpu']}, {m['cpu_cores']} cores, {m['torch_threads']} threads"
    load = m.get("load_average")
    return (f"- machine: {device}\n- torch {m['torch']}, transformers {m['transformers']}, timm {m['timm']}, "
            f"python {m['python']}\n- date: {m['date_utc']}; load average (1, 5, 15 min) at the end of the run: "
            f"{', '.join(f'{v:.2f}' for v in load) if load else 'n/a'}\n- command: `{command}`\n")


def medians(calls: dict, repeats: int) -> dict:
    """Median milliseconds of each call, the calls alternating round by round (after two
    warm-up calls each), so that a drift in the machine's speed slows them all alike."""
    for call in calls.values():
        call()
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}
