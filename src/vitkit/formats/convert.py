"""Convert a checkpoint of any readable format to vitkit, Hugging Face, timm, Google npz or
ONNX, and measure what the conversion cost: the largest relative logit difference
max|a - b| / max|b| between the source model and the converted file, run by the target's
own implementation where it is installed (transformers, onnxruntime) and by vitkit's reader
of that format otherwise."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from vitkit.errors import CheckpointError
from vitkit.formats import google_npz, hf, onnx, timm
from vitkit.formats.native import save

TARGETS = ("vitkit", "hf", "timm", "npz", "onnx")


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    return float((a - b).abs().max().item() / scale) if scale else float((a - b).abs().max().item())


def random_batch(cfg, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Normalised pixels: uniform in [-1, 1], the range of the default normalisation."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.in_chans, *cfg.image_size, generator=g) * 2 - 1


def _outputs_back(to: str, dst: Path, model, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    from vitkit.formats import load

    cfg = model.config
    # Formats whose files do not carry the numerics are read back with the source's.
    same_numerics = dict(act=cfg.act, norm_eps=cfg.norm_eps, input_mean=cfg.input_mean,
                         input_std=cfg.input_std, class_names=cfg.class_names)
    if to == "vitkit":
        return load(dst)(x), "vitkit"
    if to == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            return model(x), "not checked (onnxruntime is not installed)"
        return torch.from_numpy(onnx.run(dst, x.numpy())), "onnxruntime"
    if to == "hf":
        if importlib.util.find_spec("transformers") is None:
            return load(dst)(x), "vitkit's Hugging Face reader (transformers is not installed)"
        import transformers

        if cfg.num_classes:
            return transformers.ViTForImageClassification.from_pretrained(dst).eval()(pixel_values=x).logits, \
                "transformers ViTForImageClassification"
        out = transformers.ViTModel.from_pretrained(dst).eval()(pixel_values=x)
        if cfg.representation_size:
            return out.pooler_output, "transformers ViTModel (pooler_output)"
        return out.last_hidden_state[:, 0], "transformers ViTModel (class token)"
    if to == "timm":
        return load(dst, num_heads=cfg.num_heads, **same_numerics)(x), "vitkit's timm reader"
    return load(dst, **same_numerics)(x), "vitkit's npz reader"


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, batch: int = 2, **overrides) -> dict:
    """Load `src` (any readable format; overrides as for vitkit.load), write it to `dst` as `to`,
    read it back with the target's implementation, and report the largest relative difference."""
    from vitkit.formats import load_with_info

    if to not in TARGETS:
        raise CheckpointError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    dst = Path(dst)
    if dst.resolve() == Path(src).resolve():
        raise CheckpointError(f"{dst} is the source file; choose another destination")
    model, meta = load_with_info(src, **overrides)
    if to == "vitkit":
        dst = save(model, dst)
        details = {}
    elif to == "hf":
        details = hf.write(model, dst)
    elif to == "timm":
        details = timm.write(model, dst)
    elif to == "npz":
        details = google_npz.write(model, dst)
    else:
        details = onnx.write(model, dst)
    x = random_batch(model.config, batch)
    with torch.no_grad():
        ours = model(x)
        theirs, checked_with = _outputs_back(to, dst, model, x)
    return {"src": str(src), "dst": str(dst), "from": meta.get("format", "vitkit"), "to": to,
            "max_rel_diff": max_rel_diff(theirs, ours), "checked_with": checked_with,
            "batch": batch, "image_size": list(model.config.image_size),
            **{k: v for k, v in details.items() if k != "notes"}, "notes": details.get("notes", [])}
