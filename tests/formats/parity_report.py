"""Measure every format path's parity and print the table for docs/formats.md.

    PYTHONPATH=src python -m tests.formats.parity_report [--size ti|b]

Loading is checked against the source implementation (the float64 Flax reference for Google
layouts, timm's semantics for timm, transformers itself for HF); export against the target's
implementation (transformers, onnxruntime) or the file read back. Measure: max|a-b| / max|b|
of the logits, fp32 on CPU, a random batch of 2 in [-1, 1]."""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import vitkit
from vitkit.formats import convert

from .conftest import rel_diff
from .google_reference import forward as google_forward
from .google_reference import make_params, stack_blocks
from .timm_reference import forward as timm_forward
from .timm_reference import make_state

SIZES = {"ti": dict(width=192, depth=12, heads=3, mlp=768), "b": dict(width=768, depth=12, heads=12, mlp=3072)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=SIZES, default="ti")
    size = SIZES[parser.parse_args().size]
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    image, patch = 224, 16
    grid = (image // patch, image // patch)
    x = torch.rand(2, 3, image, image) * 2 - 1
    nhwc = x.permute(0, 2, 3, 1).numpy()
    rows = []
    tmp = Path(tempfile.mkdtemp())

    def google(name, layout, saved=None, **kw):
        params = make_params(layout, patch=kw.pop("patch", patch), grid=kw.pop("grid", grid), classes=10,
                             width=size["width"], depth=size["depth"], heads=size["heads"], mlp=size["mlp"], **kw)
        np.savez(tmp / "g.npz", **(saved(params) if saved else params))
        with torch.no_grad():
            rows.append((name, "load", "float64 Flax-numerics reference (tests/formats/google_reference.py)",
                         rel_diff(vitkit.load(tmp / "g.npz")(x), google_forward(params, nhwc, layout))))

    google("Google npz, original, token + pre_logits", "original", rep=size["width"])
    google("Google npz, original, GAP", "original", pool="gap")
    google("Google npz, original, hybrid R(1,2,2)+ViT, stride 16 (SAME pad, StdConv, GN)", "original",
           hybrid=(1, 2, 2), patch=1, root=32)
    google("big_vision npz, params/ prefix, stacked blocks, MAP head", "big_vision", pool="map",
           saved=lambda p: {f"params/{k}": v for k, v in stack_blocks(p).items()})
    google("big_vision npz, token, no class slot", "big_vision", pool="token")
    google("big_vision npz, GAP, sincos2d (not stored)", "big_vision", pool="gap", posemb="sincos")

    for name, variant in [("timm, token", {}), ("timm, no_embed_class", dict(no_embed_class=True)),
                          ("timm, GAP + fc_norm", dict(pool="gap", fc_norm=True)),
                          ("timm, MAP attn_pool", dict(pool="map")), ("timm, DeiT distilled", dict(distilled=True))]:
        state = make_state(width=size["width"], depth=size["depth"], mlp=size["mlp"], patch=patch, grid=grid,
                           classes=10, **variant)
        torch.save(state, tmp / "t.pth")
        with torch.no_grad():
            ours = vitkit.load(tmp / "t.pth", num_heads=size["heads"])(x)
            rows.append((name, "load", "timm semantics, float64 (tests/formats/timm_reference.py)",
                         rel_diff(ours, timm_forward(state, x, size["heads"]))))

    import transformers

    hf_cfg = transformers.ViTConfig(hidden_size=size["width"], num_hidden_layers=size["depth"],
                                    num_attention_heads=size["heads"], intermediate_size=size["mlp"],
                                    image_size=image, patch_size=patch, num_labels=10)
    hf_model = transformers.ViTForImageClassification(hf_cfg).eval()
    with torch.no_grad():
        for p in hf_model.classifier.parameters():
            p.normal_(0, 0.2)
    hf_model.save_pretrained(tmp / "hf")
    with torch.no_grad():
        rows.append(("Hugging Face ViTForImageClassification", "load", "transformers",
                     rel_diff(vitkit.load(tmp / "hf")(x), hf_model(pixel_values=x).logits)))

    params = make_params("original", patch=patch, grid=grid, classes=10, rep=size["width"], width=size["width"],
                         depth=size["depth"], heads=size["heads"], mlp=size["mlp"])
    np.savez(tmp / "src.npz", **params)
    for to, dst in [("vitkit", "o.safetensors"), ("npz", "o.npz"), ("timm", "o.safetensors"), ("onnx", "o.onnx")]:
        r = convert(tmp / "src.npz", tmp / dst, to)
        rows.append((f"export Google npz -> {to}", "export", r["checked_with"], r["max_rel_diff"]))
    r = convert(tmp / "hf", tmp / "hf_out", "hf")
    rows.append(("export HF -> hf", "export", r["checked_with"], r["max_rel_diff"]))
    tanh = make_params("original", patch=patch, grid=grid, classes=10, width=size["width"], depth=size["depth"],
                       heads=size["heads"], mlp=size["mlp"])
    np.savez(tmp / "src2.npz", **tanh)
    r = convert(tmp / "src2.npz", tmp / "hf_tanh", "hf")
    rows.append(("export Google npz -> hf (gelu_pytorch_tanh, eps 1e-6)", "export", r["checked_with"],
                 r["max_rel_diff"]))

    print(f"| path | direction | checked against | max rel. diff |  (size {size}, 224 px, /16)")
    print("|---|---|---|---:|")
    for name, direction, against, diff in rows:
        print(f"| {name} | {direction} | {against} | {diff:.1e} |")


if __name__ == "__main__":
    main()
