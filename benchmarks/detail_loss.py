"""The measurements behind the picker's detail rule (train/auto.py DETAIL_LOSS_LIMIT): the share
of their variance images lose when shrunk f times and brought back (`auto.detail_loss`, on the
even sample of 256 the picker takes), for the digits upscaled with Pillow's filters and for
images with detail at their own size (the digits themselves, scikit-image's LFW faces, whole
scenes shrunk to 32x32, crops of large photos). Needs scikit-image.

    PYTHONPATH=src python benchmarks/detail_loss.py
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from _common import write
from vitkit.bench import machine_info
from vitkit.data import load_data
from vitkit.train.auto import DETAIL_LOSS_LIMIT, detail_loss, even_sample


def resized(images: np.ndarray, side: int, method) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(image).resize((side, side), method)) for image in images])


def as_tensor(images: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(images)
    return t[:, None] if t.dim() == 3 else t.permute(0, 3, 1, 2)


def main() -> None:
    import skimage.data as skdata

    digits = load_data("digits").train.images[:, 0].numpy()
    sets = {"digits 8x8": digits}
    for side in (16, 32, 64):
        for name, method in (("nearest", Image.NEAREST), ("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC),
                             ("Lanczos", Image.LANCZOS)):
            sets[f"digits upscaled to {side}x{side}, {name}"] = resized(digits, side, method)
    sets["LFW faces 25x25"] = (skdata.lfw_subset() * 255).round().astype(np.uint8)
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.immunohistochemistry()]
    sets["whole scenes shrunk to 32x32"] = np.stack([np.asarray(Image.fromarray(p).resize((32, 32), Image.BICUBIC))
                                                      for p in photos])
    rng = np.random.default_rng(0)
    crops = []
    for photo in photos:
        for _ in range(50):
            y, x = rng.integers(0, photo.shape[0] - 32), rng.integers(0, photo.shape[1] - 32)
            crops.append(photo[y:y + 32, x:x + 32])
    sets["32x32 crops of large photos"] = np.stack(crops)
    rows = {}
    for name, images in sets.items():
        sample = even_sample(as_tensor(images))
        side = sample.shape[-1]
        rows[name] = {f: detail_loss(sample, f) for f in (2, 4, 8) if side // f >= 4}
    report = {"machine": machine_info("cpu"), "limit": DETAIL_LOSS_LIMIT, "rows": rows}
    md = ["### Variance lost by shrinking images f times and bringing them back (auto.detail_loss)\n",
          "- command: `PYTHONPATH=src python benchmarks/detail_loss.py`",
          f"- the picker's limit: {100 * DETAIL_LOSS_LIMIT:.1f}%\n",
          "| images | f = 2 | f = 4 | f = 8 |", "|---|---:|---:|---:|"]
    for name, losses in rows.items():
        md.append(f"| {name} | " + " | ".join(f"{100 * losses[f]:.2f}%" if f in losses else "" for f in (2, 4, 8))
                  + " |")
    write("detail_loss", report, "\n".join(md))


if __name__ == "__main__":
    main()
