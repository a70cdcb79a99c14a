"""The model a run starts from: a new one built from its config, or a checkpoint (`--init`)
fitted to the run: its resolution if asked, and a new zero-initialised head for the run's
classes (what changes is decided and printed by `auto.init_model_config`)."""

from __future__ import annotations

from vitkit.models.config import ModelConfig
from vitkit.models.resize import resize_image_size
from vitkit.models.vit import VisionTransformer

# Model options that `--init` may change on the checkpoint it fine-tunes: regularisation only.
INIT_OVERRIDES = ("dropout", "attn_dropout", "drop_path")


def model_from_init(source: VisionTransformer, model_cfg: ModelConfig) -> VisionTransformer:
    """The checkpoint `source` as `model_cfg` (from `auto.init_model_config`) says: its input
    resolution (position embeddings resampled over the patch grid), its regularisation options,
    and a new zero-initialised head for the run's classes. Its input channels stay: a run feeds
    its images in the channels the checkpoint was trained on (grey as R = G = B)."""
    overrides = {k: getattr(model_cfg, k) for k in INIT_OVERRIDES}
    model = VisionTransformer(source.config.replace(**overrides))
    model.load_state_dict(source.state_dict())
    model = resize_image_size(model, model_cfg.image_size)
    model.reset_head(model_cfg.num_classes)
    # A run resizes its images itself (no crop): the release's own resize and crop, kept for
    # predicting with the release, would not be what the fine-tuned model was trained on.
    model.config = model.config.replace(class_names=model_cfg.class_names, interpolation=None, crop_pct=None,
                                        crop_mode=None)
    return model


def build_model(model_cfg: ModelConfig, init: VisionTransformer | None, freeze: str) -> VisionTransformer:
    """The run's model: `model_cfg` built anew, or the checkpoint `init` (loaded) fitted to it;
    with freeze="backbone" only the heads train."""
    model = model_from_init(init, model_cfg) if init is not None else VisionTransformer(model_cfg)
    if freeze == "backbone":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(("head.", "head_dist."))
    return model
