"""Measurement library: throughput, latency, peak memory, the device's matrix-product ceiling
and model FLOP utilisation (MFU), for vitkit and, side by side, for other implementations.

Timing rules: warm-up calls first, the device synchronised around every timed call (CUDA),
the median of the repeats reported, inputs drawn from a normal distribution (never zeros).

Peak memory: on CUDA `torch.cuda.max_memory_allocated` after a reset (tensors only). On a
Linux CPU, the process's resident-set high-water mark (VmHWM) is reset through
/proc/self/clear_refs before the measurement, and the peak reported is VmHWM at the end
minus the resident set at the start: the memory the measurement added at its peak
(activations, gradients, optimiser state, allocator caches). Elsewhere it falls back to the
growth of `resource.getrusage` ru_maxrss, which reads 0 when the run fits under an earlier peak.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from vitkit.errors import ConfigError
from vitkit.models import forward_flops

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Result:
    """One measurement. Throughputs in images/s, latency in ms, memory in MiB, FLOP/s raw."""

    impl: str
    task: str
    model: str
    batch: int
    precision: str
    device: str
    compiled: bool = False
    images_per_s: float = 0.0
    latency_ms: float = 0.0
    peak_mem_mib: float = 0.0
    model_flops_per_s: float = 0.0
    ceiling_flops_per_s: float = 0.0
    mfu: float = 0.0
    repeats: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10,
              inner: int = 1) -> list[float]:
    """Seconds per call of `fn`, one value per repeat (each the mean of `inner` calls)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / inner)
    return times


def model_flop_utilisation(model_flops_per_s: float, ceiling_flops_per_s: float) -> float:
    """MFU: the model's useful FLOPs per second over what the device's matrix product reaches."""
    return model_flops_per_s / ceiling_flops_per_s if ceiling_flops_per_s > 0 else 0.0


def training_flops(forward: int) -> int:
    """Forward + backward of one image: the backward costs two forwards (input and weight grads)."""
    return 3 * forward


def ceiling_step(device: torch.device | str, dtype: torch.dtype = torch.float32,
                 size: int | None = None) -> tuple[Callable[[], object], int]:
    """A closure computing one large square matrix product in `dtype`, and its FLOPs.

    It goes through `F.linear`, the call the model's layers make: on CPUs without native
    bf16, `torch.mm` in bf16 takes a reference path ten times slower than oneDNN's, which
    would make the ceiling meaningless."""
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 1024
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    inner = 20 if device.type == "cuda" else 2

    def step():
        for _ in range(inner):
            F.linear(a, b)

    return step, inner * 2 * size**3


def matmul_ceiling(device: torch.device | str, dtype: torch.dtype = torch.float32, size: int | None = None,
                   repeats: int = 5) -> float:
    """FLOP/s of a large square matrix product in `dtype`: the practical ceiling MFU divides by."""
    device = torch.device(device)
    step, flops = ceiling_step(device, dtype, size)
    return flops / statistics.median(time_call(step, device, warmup=2, repeats=repeats))


def random_images(batch: int, channels: int, image_size: tuple[int, int], device: torch.device,
                  seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(batch, channels, *image_size, generator=gen).to(device)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


class _Memory:
    """Peak memory of the code inside the `with` block (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._proc = _reset_peak_rss()
            self._start = _proc_status_mib("VmRSS") if self._proc else _maxrss_mib()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._proc:
            self.peak_mib = _proc_status_mib("VmHWM") - self._start
        else:
            self.peak_mib = _maxrss_mib() - self._start


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_mib(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _maxrss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


@dataclass
class Entry:
    """One implementation to time: its module, how to call it on a batch, its name in tables."""

    impl: str
    model: torch.nn.Module
    call: Callable | None = None
    compiled: bool = False


def inference_step(entry: Entry, x: torch.Tensor, device: torch.device, precision: str) -> Callable:
    """A no-argument closure running one forward pass under `torch.inference_mode`
    (fp32: the weights as they are; bf16/fp16: autocast)."""
    entry.model.eval()
    call = entry.call or entry.model

    def step():
        with torch.inference_mode(), _autocast(device, precision):
            return call(x)

    return step


def training_step(entry: Entry, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str,
                  fused_optimizer: bool | None = None) -> Callable:
    """A closure running forward, cross-entropy, backward and an AdamW step (fused on CUDA)."""
    entry.model.train()
    call = entry.call or entry.model
    if fused_optimizer is None:
        fused_optimizer = device.type == "cuda"
    opt = torch.optim.AdamW(entry.model.parameters(), lr=1e-4, fused=fused_optimizer,
                            foreach=None if fused_optimizer else True)

    def step():
        with _autocast(device, precision):
            logits = call(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(entries: list[Entry], task: str, batch: int, *, image_size: tuple[int, int] = (224, 224),
            channels: int = 3, num_classes: int = 1000, device: torch.device | str = "cpu",
            precision: str = "fp32", warmup: int = 3, repeats: int = 10, flops_per_image: int = 0,
            ceiling: float | None = None, name: str = "") -> list[Result]:
    """Time `task` ("inference" or "training") for each entry on the same input batch.

    Warm-up (and the peak-memory reading) runs entry by entry; the timed repeats then
    alternate between the entries, so that a noisy, shared machine slows them alike and the
    ratios stay fair. `flops_per_image` is the forward cost; training MFU counts 3x it.
    With `ceiling=None` the matrix-product ceiling in this precision is timed in the same
    alternation (so it sees the same load) and recorded in each result's `extra`."""
    device = torch.device(device)
    x = random_images(batch, channels, image_size, device)
    y = torch.randint(0, num_classes, (batch,), generator=torch.Generator().manual_seed(1)).to(device)
    if task == "inference":
        steps = [inference_step(e, x, device, precision) for e in entries]
        flops = flops_per_image
    elif task == "training":
        steps = [training_step(e, x, y, device, precision) for e in entries]
        flops = training_flops(flops_per_image)
    else:
        raise ConfigError(f"unknown task {task!r}; use inference or training")
    peaks = []
    for step in steps:
        with _Memory(device) as mem:
            time_call(step, device, warmup=warmup, repeats=0)
        peaks.append(mem.peak_mib)
    ceiling_times: list[float] = []
    if ceiling is None:
        matmul, matmul_flops = ceiling_step(device, PRECISIONS[precision])
        time_call(matmul, device, warmup=2, repeats=0)
    times: list[list[float]] = [[] for _ in entries]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            times[i] += time_call(step, device, warmup=0, repeats=1)
        if ceiling is None:
            ceiling_times += time_call(matmul, device, warmup=0, repeats=1)
    if ceiling is None:
        ceiling = matmul_flops / statistics.median(ceiling_times)
    results = [_result(e.impl, task, name, batch, precision, device, e.compiled, t, statistics.median(t),
                       peak, flops, ceiling) for e, t, peak in zip(entries, times, peaks)]
    return results


def measure_inference(model: torch.nn.Module, batch: int, **options) -> Result:
    """Images/s and per-batch latency of `model`'s forward pass (see `measure`)."""
    entry = Entry(options.pop("impl", "vitkit"), model, options.pop("call", None), options.pop("compiled", False))
    return measure([entry], "inference", batch, **options)[0]


def measure_training(model: torch.nn.Module, batch: int, **options) -> Result:
    """Images/s of one training step of `model` (see `measure`)."""
    entry = Entry(options.pop("impl", "vitkit"), model, options.pop("call", None), options.pop("compiled", False))
    return measure([entry], "training", batch, **options)[0]


def _result(impl, task, name, batch, precision, device, compiled, times, seconds, peak_mib,
            flops_per_image, ceiling) -> Result:
    images_per_s = batch / seconds
    flops_per_s = images_per_s * flops_per_image
    return Result(impl=impl, task=task, model=name, batch=batch, precision=precision, device=str(device),
                  compiled=compiled, images_per_s=images_per_s, latency_ms=seconds * 1e3,
                  peak_mem_mib=peak_mib, model_flops_per_s=flops_per_s, ceiling_flops_per_s=ceiling,
                  mfu=model_flop_utilisation(flops_per_s, ceiling), repeats=[t * 1e3 for t in times])


# ---------------------------------------------------------------------- machine description
def machine_info(device: torch.device | str = "cpu") -> dict:
    """What a benchmark table must name: CPU model and cores, GPU, versions, load."""
    device = torch.device(device)
    info = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 is measured on a GPU only; use fp32 or bf16 on the CPU")


# ---------------------------------------------------------------------- other implementations
def hf_twin(model) -> torch.nn.Module:
    """A `transformers.ViTForImageClassification` holding `model`'s weights: exported by
    `vitkit.formats.hf` and read back with `from_pretrained`, the path users take."""
    import tempfile

    from transformers import ViTForImageClassification
    from transformers.utils import logging

    from vitkit.formats import hf

    logging.disable_progress_bar()
    cfg = model.config
    if not cfg.num_classes:
        raise ConfigError("the transformers comparison needs a model with a classifier head")
    with tempfile.TemporaryDirectory() as tmp:
        hf.write(model, f"{tmp}/hf")
        twin = ViTForImageClassification.from_pretrained(f"{tmp}/hf", attn_implementation="sdpa")
    return twin.to(next(model.parameters()).device)


def timm_twin(model) -> torch.nn.Module | None:
    """timm's VisionTransformer holding `model`'s weights, or None where timm is not installed."""
    try:
        import timm
    except ImportError:
        return None
    cfg = model.config
    twin = timm.models.vision_transformer.VisionTransformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
        num_classes=cfg.num_classes, embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.width, qkv_bias=cfg.qkv_bias)
    state = dict(model.state_dict())
    state["pos_embed"] = state.pop("pos_embed.weight")
    state["patch_embed.proj.weight"], state["patch_embed.proj.bias"] = (
        state.pop("patch_embed.proj.weight"), state.pop("patch_embed.proj.bias"))
    twin.load_state_dict(state, strict=True)
    return twin.to(next(model.parameters()).device)


def hf_call(twin) -> Callable:
    return lambda x: twin(pixel_values=x).logits


# ---------------------------------------------------------------------- one benchmark run
COMPARABLE = ("hf", "timm")


def twins(model, compare: tuple[str, ...]) -> tuple[list[Entry], dict, list[str]]:
    """Entries for the other implementations asked for, each holding `model`'s weights, with
    the max abs difference of its logits from vitkit's on one random batch (checked before any
    timing: a benchmark of a different model is worthless). Missing libraries are skipped
    with a note."""
    entries, diffs, notes = [], {}, []
    device = next(model.parameters()).device
    cfg = model.config
    x = random_images(2, cfg.in_chans, cfg.image_size, device, seed=7)
    model.eval()
    with torch.inference_mode():
        reference = model(x).float()
    for name in compare:
        if name == "hf":
            try:
                twin = hf_twin(model)
            except ImportError:
                notes.append("transformers is not installed: no Hugging Face comparison")
                continue
            entry = Entry("transformers", twin, hf_call(twin))
        elif name == "timm":
            twin = timm_twin(model)
            if twin is None:
                notes.append("timm is not installed: no timm comparison")
                continue
            entry = Entry("timm", twin)
        else:
            raise ConfigError(f"unknown comparison {name!r}; use {', '.join(COMPARABLE)} or none")
        twin.eval()
        with torch.inference_mode():
            diffs[entry.impl] = float((entry.call or twin)(x).float().sub(reference).abs().max())
        if diffs[entry.impl] > 1e-3:
            raise ConfigError(f"{entry.impl}'s copy of the model disagrees with vitkit "
                              f"(max abs logit diff {diffs[entry.impl]:.2e}); not timing it")
        entries.append(entry)
    return entries, diffs, notes


def run_benchmark(model_name: str = "vit_s16", *, batches=(1, 8), precisions=("fp32",), device="cpu",
                  tasks=("inference",), compare=("hf",), compile: bool = False, image_size: int = 224,
                  num_classes: int = 1000, warmup: int = 3, repeats: int = 10, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> dict:
    """Measure vitkit (and, on the same weights and inputs, the implementations in `compare`)
    for every task x precision x batch. Returns a JSON-ready dict: machine, ceilings, rows."""
    from vitkit.models import create_model

    device = torch.device(device)
    for p in precisions:
        check_precision(p, device)
    torch.manual_seed(seed)
    model = create_model(model_name, image_size=image_size, num_classes=num_classes).to(device)
    with torch.no_grad():  # the zero-initialised head would make every prediction a tie
        torch.nn.init.normal_(model.head.weight, std=0.02)
    flops = forward_flops(model.config)
    entries = [Entry("vitkit", model)]
    others, diffs, notes = twins(model, tuple(c for c in compare if c != "none"))
    if compile:
        entries.append(Entry("vitkit", torch.compile(model), compiled=True))
    entries += others
    say = log or (lambda _: None)
    ceilings: dict[str, list[float]] = {}
    rows = []
    for precision in precisions:
        for task in tasks:
            for batch in batches:
                results = measure(entries, task, batch, image_size=model.config.image_size,
                                  channels=model.config.in_chans, num_classes=num_classes, device=device,
                                  precision=precision, warmup=warmup, repeats=repeats,
                                  flops_per_image=flops, name=model_name)
                ceilings.setdefault(precision, []).append(results[0].ceiling_flops_per_s)
                base = max(r.images_per_s for r in results if r.impl == "vitkit")  # eager or compiled
                for r in results:
                    r.extra["vitkit_over_this"] = base / r.images_per_s if r.impl != "vitkit" else None
                    rows.append(r.to_dict())
                say(format_rows([r.to_dict() for r in results]))
    return {"machine": machine_info(device), "model": model_name, "image_size": image_size,
            "forward_gflops": flops / 1e9, "ceilings_gflops": {k: statistics.median(v) / 1e9 for k, v in ceilings.items()},
            "max_abs_logit_diff": diffs, "notes": notes, "cpu_native_bf16": cpu_has_native_bf16(),
            "rows": rows}


def format_rows(rows: list[dict], header: bool = False) -> str:
    """Markdown table rows: implementation, task, precision, batch, images/s, latency, MFU,
    peak memory and vitkit's speed over this implementation."""
    lines = []
    if header:
        lines.append("| impl | task | precision | batch | images/s | ms/batch | GFLOP/s | ceiling GFLOP/s "
                     "| MFU | peak MiB | vitkit / this |")
        lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        impl = r["impl"] + (" (compiled)" if r["compiled"] else "")
        ratio = r["extra"].get("vitkit_over_this")
        lines.append(f"| {impl} | {r['task']} | {r['precision']} | {r['batch']} | {r['images_per_s']:.2f} | "
                     f"{r['latency_ms']:.1f} | {r['model_flops_per_s'] / 1e9:.1f} | "
                     f"{r['ceiling_flops_per_s'] / 1e9:.1f} | {100 * r['mfu']:.1f}% | {r['peak_mem_mib']:.0f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)
