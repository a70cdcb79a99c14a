"""The model a run starts from: a new one built from its config, or a checkpoint (`--init`)
fitted to the run's data: its input channels, resolution and a new zero-initialised head."""

from __future__ import annotations

from vitkit.errors import ConfigError
from vitkit.formats import load as load_checkpoint
from vitkit.models.config import ModelConfig
from vitkit.models.resize import resize_image_size
from vitkit.models.vit import VisionTransformer

# Model options that `--init` may change on the checkpoint it fine-tunes: regularisation only.
INIT_OVERRIDES = ("dropout", "attn_dropout", "drop_path")


def adapt_input_channels(state: dict, key: str, chans: int) -> None:
    """Fit a patch-embedding kernel to another channel count: RGB -> grey sums the colour
    filters (a grey image is R = G = B); grey -> RGB spreads the filter over the channels."""
    w = state[key]
    if w.shape[1] == chans:
        return
    if chans == 1:
        state[key] = w.sum(dim=1, keepdim=True)
    elif w.shape[1] == 1:
        state[key] = w.repeat(1, chans, 1, 1) / chans
    else:
        raise ConfigError(f"cannot adapt a {w.shape[1]}-channel checkpoint to {chans}-channel data")


def _fit_channels(values: tuple[float, ...], chans: int) -> tuple[float, ...]:
    return values if len(values) in (1, chans) else (sum(values) / len(values),)


def model_from_init(path: str, model_cfg: ModelConfig) -> VisionTransformer:
    """A checkpoint fitted to this data: input channels, resolution, and a new zero head."""
    source = load_checkpoint(path)
    cfg = source.config
    state = source.state_dict()
    stem_key = "patch_embed.backbone.conv_root.weight" if cfg.stem == "resnet" else "patch_embed.proj.weight"
    adapt_input_channels(state, stem_key, model_cfg.in_chans)
    adapted = VisionTransformer(cfg.replace(in_chans=model_cfg.in_chans))
    adapted.load_state_dict(state)
    adapted = resize_image_size(adapted, model_cfg.image_size)
    adapted.reset_head(model_cfg.num_classes)
    adapted.config = adapted.config.replace(
        class_names=model_cfg.class_names,
        input_mean=_fit_channels(cfg.input_mean, model_cfg.in_chans),
        input_std=_fit_channels(cfg.input_std, model_cfg.in_chans))
    return adapted


def build_model(model_cfg: ModelConfig, init: str | None, model_options: dict, freeze: str) -> VisionTransformer:
    """The run's model: `model_cfg` built anew, or the checkpoint `init` fitted to it with the
    regularisation options of `model_options` applied; with freeze="backbone" only the heads
    train."""
    if init:
        model = model_from_init(init, model_cfg)
        overrides = {k: v for k, v in model_options.items() if k in INIT_OVERRIDES}
        if overrides:
            state = model.state_dict()
            model = VisionTransformer(model.config.replace(**overrides))
            model.load_state_dict(state)
    else:
        model = VisionTransformer(model_cfg)
    if freeze == "backbone":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(("head.", "head_dist."))
    return model
