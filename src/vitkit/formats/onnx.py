"""ONNX export: one graph `pixels (batch, C, H, W) -> logits (batch, K)` with a dynamic batch,
for onnxruntime and other runtimes. Export only: an .onnx file is not loaded back as a model."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from vitkit.errors import CheckpointError
from vitkit.io import atomic_path

INPUT, OUTPUT = "pixels", "logits"


def write(model, path: Path, opset: int | None = None) -> dict:
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
    return {"input": INPUT, "output": OUTPUT, "dynamic_axes": {"batch": 0}}


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
