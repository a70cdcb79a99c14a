"""ONNX export: one graph `normalized_pixels (batch, C, H, W) -> logits (batch, K)` with a
dynamic batch, for onnxruntime and other runtimes. Export only: an .onnx file is not loaded back
as a model.

The file says what to feed it, in its metadata_props (onnxruntime:
`session.get_modelmeta().custom_metadata_map`; docs/formats.md has an example, run by the
tests, that gives `vitkit predict`'s probabilities):

    vitkit.input        JSON: the input's name, shape, channel order and Pillow mode, how an
                        image is resized, and its scaling: (pixel / 255 - mean) / std per channel
    vitkit.class_names  JSON list: the class of each logit
    vitkit.config       the model's ModelConfig JSON, as vitkit's own files carry it
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from vitkit.errors import CheckpointError
from vitkit.io import atomic_path

# The input's name says what it takes: pixels already scaled and normalised, not raw [0, 1] or
# [0, 255] values (fed those, a model answers without complaint, and wrongly).
INPUT, OUTPUT = "normalized_pixels", "logits"
META_INPUT, META_CLASSES, META_CONFIG = "vitkit.input", "vitkit.class_names", "vitkit.config"
_RELEASE_RESIZING = ("interpolation", "crop_pct", "crop_mode")


def input_spec(cfg) -> dict:
    """How an image file becomes the graph's input, as `vitkit predict` makes it."""
    h, w = cfg.image_size
    config = cfg.to_dict()
    release = {k: config[k] for k in _RELEASE_RESIZING if config.get(k) is not None}
    if release:
        resize = {**release, "to": [h, w], "how": "resize the [0, 1] pixels with `interpolation` (antialiased) "
                  "to size / crop_pct (crop_mode center: the shorter side, aspect kept; squash: both sides), "
                  "then crop the central `to` region"}
    else:
        resize = {"library": "Pillow", "method": "bicubic", "to": [h, w],
                  "how": "Image.resize((width, height), Image.Resampling.BICUBIC) on the 8-bit image"}
    grey = cfg.in_chans == 1
    return {"name": INPUT, "dtype": "float32", "shape": ["batch", cfg.in_chans, h, w], "layout": "NCHW",
            "height": h, "width": w, "channel_order": "grey" if grey else "RGB", "pil_mode": "L" if grey else "RGB",
            "resize": resize, "value_range": [0.0, 1.0], "mean": list(cfg.input_mean), "std": list(cfg.input_std),
            "formula": f"{INPUT} = (pixel / 255 - mean) / std per channel (one mean or std value: every channel)"}


def metadata(cfg) -> dict[str, str]:
    """The file's metadata_props: what to feed it, what its outputs are, the vitkit config."""
    names = list(cfg.class_names) or [str(i) for i in range(cfg.num_classes)]
    return {META_INPUT: json.dumps(input_spec(cfg)), META_CLASSES: json.dumps(names), META_CONFIG: cfg.to_json()}


def _describe(cfg) -> str:
    spec = input_spec(cfg)
    return (f"vitkit {cfg.name} ViT. Input {INPUT}: float32 (batch, {cfg.in_chans}, {spec['height']}, "
            f"{spec['width']}) {spec['channel_order']}, {spec['formula']} with mean {spec['mean']} and std "
            f"{spec['std']}. Output {OUTPUT}: (batch, {cfg.num_classes}); softmax gives the class probabilities, "
            f"in the order of metadata {META_CLASSES}. Details: metadata {META_INPUT}.")


# torch's exporter writes the graph with these; `pip install vitkit` does not bring them.
EXPORT_PACKAGES = ("onnx", "onnxscript")


def write(model, path: Path, opset: int | None = None) -> dict:
    absent = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if absent:
        raise CheckpointError(f"ONNX export needs {' and '.join(absent)}, which is not installed; "
                              "pip install 'vitkit[onnx]'")
    cfg = model.config
    model = model.eval()
    example = torch.zeros(2, cfg.in_chans, *cfg.image_size)
    batch = torch.export.Dim("batch", min=1)
    kwargs = dict(input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: batch},), dynamo=True,
                  external_data=False, verbose=False)
    if opset is not None:
        kwargs["opset_version"] = opset
    with atomic_path(path) as tmp, warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(tmp), **kwargs)
        except Exception as e:  # the exporter raises many kinds; the user needs one line
            raise CheckpointError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        _write_metadata(tmp, cfg)
    return {"input": INPUT, "output": OUTPUT, "dynamic_axes": {"batch": 0}, "metadata": sorted(metadata(cfg))}


def _write_metadata(path: Path, cfg) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata(cfg))
    proto.doc_string = _describe(cfg)
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def run(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Logits from onnxruntime (CPU) for a float32 NCHW batch."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: pixels.astype(np.float32)})[0]
