"""`Explorer`: the explore page's API without HTTP. One model on its device, the batcher in front
of it, the samples of `--data`, and the attention of recent images kept for the clicks."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

import torch

from vitkit.analysis.report import attention_batch_size, rounded
from vitkit.data.dataset import ImageSet
from vitkit.data.images import resolve_pixel_limit
from vitkit.errors import ConfigValueError
from vitkit.evaluate.preprocess import resize_images
from vitkit.explore.batching import ForwardBatcher
from vitkit.explore.uploads import DEFAULT_MAX_UPLOAD_BYTES, RequestError, multipart_fields, read_upload
from vitkit.explore.views import (TOP_K, ImageView, image_views, model_summary, png_data_url, predictions,
                                  prefix_token_names, token_attention)

# Attention weights of recent images, kept so that clicking a patch costs no forward: a ViT-B/16
# at 224 holds 22 MB per image. The newest image is always kept, whatever its size.
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


class Explorer:
    """Serves the page's questions about `model` (any vitkit model with attention layers).

    `samples` (uint8 images with labels, named by `sample_classes`) are what `--data` offers.
    Uploads over `max_upload_bytes` or `max_image_pixels` (as for the image readers: None is
    $VITKIT_MAX_IMAGE_PIXELS or Pillow's default, 0 none) are refused. Call close() when done.
    """

    def __init__(self, model, *, name: str = "model", samples: ImageSet | None = None,
                 sample_classes: list[str] | None = None, sample_source: str | None = None,
                 max_batch: int = 8, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_image_pixels: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.model = model.eval()
        self.config = model.config
        resolve_pixel_limit(max_image_pixels)  # a bad limit fails here, not on the first upload
        if max_upload_bytes < 1:
            raise ConfigValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
        self.max_upload_bytes = max_upload_bytes
        self.max_image_pixels = max_image_pixels
        self.summary = model_summary(model, name)
        self.samples = samples
        self.summary["device"] = str(next(model.parameters()).device)
        self.summary["samples"] = None if samples is None else {
            "count": len(samples), "source": sample_source, "classes": list(sample_classes or [])}
        self.summary["max_upload_bytes"] = max_upload_bytes
        self.batcher: ForwardBatcher[ImageView] = ForwardBatcher(
            lambda pixels: image_views(self.model, pixels), attention_batch_size(self.config, max_batch))
        self._cache: OrderedDict[str, ImageView] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        self.batcher.close()

    # ------------------------------------------------------------------ requests
    def predict_upload(self, body: bytes, content_type: str, top_k: int = TOP_K) -> dict:
        """POST /api/predict: the multipart field `image` through the model."""
        fields = multipart_fields(body, content_type)
        if "image" not in fields:
            names = ", ".join(sorted(fields)) or "none"
            raise RequestError(400, f"the upload has no field 'image' (fields: {names}); "
                                    "send the file as the form field 'image'")
        cfg = self.config
        # As `vitkit predict` reads files: decoded at the model's size, except that a released
        # model gets its release's resize and crop of the image at its own size.
        size = cfg.image_size if cfg.interpolation is None else None
        pixels = read_upload(fields["image"], size, cfg.in_chans, self.max_image_pixels)
        return self._answer(resize_images([torch.tensor(pixels)], cfg)[0], top_k)

    def predict_sample(self, index: int, top_k: int = TOP_K) -> dict:
        """GET /api/sample/<index>: a sample of --data through the model, with its true label."""
        if self.samples is None:
            raise RequestError(404, "no samples: start `vitkit explore` with --data to browse a data set")
        if not 0 <= index < len(self.samples):
            raise RequestError(404, f"sample {index} does not exist; there are {len(self.samples)} (0 to "
                                    f"{len(self.samples) - 1})")
        pixels = resize_images(self.samples.images[index:index + 1], self.config)[0]
        answer = self._answer(pixels, top_k)
        label = int(self.samples.labels[index])
        classes = self.summary["samples"]["classes"]
        answer["sample"] = {"index": index, "label": classes[label] if label < len(classes) else str(label),
                            "label_index": label}
        return answer

    def attention(self, image_id: str, token: int) -> dict:
        """GET /api/attention/<id>?token=T: where token T of that image attends, every layer and head."""
        with self._cache_lock:
            view = self._cache.get(image_id)
        if view is None:
            raise RequestError(404, f"no image {image_id!r} is held any more (the server keeps the most recent "
                                    "ones); send the image again")
        total = view.attention.shape[-1]
        if not 0 <= token < total:
            raise RequestError(400, f"token {token} is outside the sequence of {total} tokens "
                                    f"({self.config.num_prefix_tokens} prefix tokens, then the patches in raster order)")
        return {"id": image_id, "token": token, "grid": list(view.grid),
                **token_attention(view, token, self.config.num_prefix_tokens)}

    # ------------------------------------------------------------------ internals
    def _answer(self, pixels: torch.Tensor, top_k: int) -> dict:
        view = self.batcher.submit(pixels)
        image_id = self._keep(view)
        queries = list(view.rollouts)
        cfg = self.config
        return {
            "id": image_id,
            "predictions": predictions(view.probabilities, cfg.class_names, top_k),
            "grid": list(view.grid),
            "rollout": rounded(view.rollouts[queries[0]], 8),
            "rollout_query": queries[0],
            "rollouts": {q: rounded(m, 8) for q, m in view.rollouts.items()},
            "attention_distance": rounded(view.attention_distance, 4),
            "layers": cfg.depth, "heads": cfg.num_heads, "prefix_tokens": prefix_token_names(cfg),
            "image": png_data_url(view.pixels),
            "image_size": list(view.pixels.shape[-2:]),
        }

    def _keep(self, view: ImageView) -> str:
        image_id = secrets.token_hex(8)
        with self._cache_lock:
            self._cache[image_id] = view
            total = sum(v.nbytes for v in self._cache.values())
            while len(self._cache) > 1 and total > self._cache_bytes:
                total -= self._cache.popitem(last=False)[1].nbytes
        return image_id
