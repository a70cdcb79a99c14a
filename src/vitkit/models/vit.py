"""The Vision Transformer: one class, every variant of the paper a config value.

    image -> stem (patch conv, or ResNet + 1x1 conv) -> [class, distillation] + patch tokens
          -> + position embedding -> L pre-norm blocks -> LayerNorm -> pool -> pre-logits -> head

`forward(x)` returns logits through the fast path (fused scaled-dot-product attention).
`forward_intermediates(x, attention=True)` returns the named tensors the analyses read; its
`patch_hook` and `keep` arguments let training objectives corrupt or drop patch tokens
(masked patch prediction, masked autoencoders) without reaching into the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.errors import ConfigError, ConfigTypeError, ConfigValueError
from vitkit.models.config import ModelConfig
from vitkit.models.posemb import PositionEmbedding, RelativePositionBias
from vitkit.models.resnet import ResNetStem


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, grid: tuple[int, int]):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.attn_dropout = cfg.attn_dropout
        self.proj_drop = nn.Dropout(cfg.dropout)
        self.relative = (RelativePositionBias(grid, cfg.head_dim, cfg.num_prefix_tokens)
                         if cfg.posemb == "relative" else None)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], keep_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.relative(q, grid) if self.relative is not None else None
        dropout = self.attn_dropout if self.training else 0.0
        weights = None
        if keep_weights:
            logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            weights = logits.softmax(dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.proj_drop(self.proj(out)), weights


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh" if act == "gelu_tanh" else "none")
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, width)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm encoder block: z' = z + MSA(LN(z)); z = z' + MLP(LN(z'))."""

    def __init__(self, cfg: ModelConfig, grid: tuple[int, int], drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg, grid)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.act, cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], keep_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, weights = self.attn(self.norm1(x), grid, keep_weights)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


class MapHead(nn.Module):
    """big_vision's multihead attention pooling: a learned probe attends to the tokens, then a
    residual MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.width
        self.num_heads = cfg.num_heads
        self.probe = nn.Parameter(torch.zeros(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = Mlp(d, cfg.mlp_dim, cfg.act, 0.0)
        nn.init.trunc_normal_(self.probe, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads
        q = self.q(self.probe.expand(b, -1, -1)).view(b, 1, h, d // h).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, d)
        y = self.proj(y)
        y = y + self.mlp(self.norm(y))
        return y[:, 0]


class PatchStem(nn.Module):
    """Pixels to a (B, D, gh, gw) map: a P x P / P convolution, after a ResNet for hybrids."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone = None
        chans = cfg.in_chans
        if cfg.stem == "resnet":
            self.backbone = ResNetStem(cfg.in_chans, cfg.resnet_layers, cfg.resnet_width)
            chans = self.backbone.out_chans
        self.proj = nn.Conv2d(chans, cfg.width, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            x = self.backbone(x)
        return self.proj(x)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        grid = cfg.grid_size
        d = cfg.width
        self.patch_embed = PatchStem(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "token" else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.distill_token else None

        self.pos_embed = None
        self.layer_pos_embeds = None
        if cfg.posemb not in ("none", "relative"):
            slots = cfg.num_prefix_tokens if cfg.posemb_class_slot else 0
            make = lambda: PositionEmbedding(cfg.posemb, d, grid, slots)  # noqa: E731
            if cfg.posemb_where == "every_layer":
                self.layer_pos_embeds = nn.ModuleList(make() for _ in range(cfg.depth))
            else:
                self.pos_embed = make()
        self.pos_drop = nn.Dropout(cfg.dropout)

        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, grid, rate) for rate in rates)
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.map_head = MapHead(cfg) if cfg.pool == "map" else None

        features = d
        self.pre_logits = nn.Identity()
        if cfg.representation_size:
            self.pre_logits = nn.Sequential(nn.Linear(d, cfg.representation_size), nn.Tanh())
            features = cfg.representation_size
        self.num_features = features
        self.head = nn.Linear(features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.head_dist = None
        if cfg.distill_token:
            self.head_dist = nn.Linear(features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.reset_parameters()

    # ------------------------------------------------------------------ initialisation
    def reset_parameters(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith("qkv"):
                    # Xavier over each of q, k, v as if they were separate (D, D) maps.
                    bound = (6.0 / (module.weight.shape[0] // 3 + module.weight.shape[1])) ** 0.5
                    nn.init.uniform_(module.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                    if name.endswith(("fc1", "fc2")):
                        nn.init.normal_(module.bias, std=1e-6)
            elif isinstance(module, nn.Conv2d) and name == "patch_embed.proj":
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                nn.init.trunc_normal_(module.weight, std=(1.0 / fan_in) ** 0.5)
                nn.init.zeros_(module.bias)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        # Zero-initialised heads (paper): training starts from uniform predictions.
        for head in (self.head, self.head_dist):
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def reset_head(self, num_classes: int) -> None:
        """Replace the classifier with a zero-initialised one for `num_classes` classes."""
        self.config = self.config.replace(num_classes=num_classes, class_names=())
        ref = next(self.parameters())

        def make() -> nn.Module:
            if not num_classes:
                return nn.Identity()
            head = nn.Linear(self.num_features, num_classes).to(ref.device, ref.dtype)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            return head

        self.head = make()
        if self.head_dist is not None:
            self.head_dist = make()

    # ------------------------------------------------------------------ forward
    def _embed(self, x: torch.Tensor, patch_hook=None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        # A few attribute reads, so that a wrong input is one line naming it, not torch's error
        # from inside a convolution.
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigTypeError(f"expected a float tensor of normalised pixels, got {got}; "
                                  "vitkit.evaluate.prepare_images(images, model.config) makes one from uint8 images")
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ConfigValueError(
                f"expected input of shape (N, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        stride = self.config.stem_stride
        if x.shape[-2] < stride or x.shape[-1] < stride:
            raise ConfigValueError(f"input {x.shape[-2]}x{x.shape[-1]} is smaller than one patch ({stride}x{stride} "
                                   "pixels); resize it to the model's image size")
        fmap = self.patch_embed(x)
        grid = (fmap.shape[-2], fmap.shape[-1])
        if grid != self.config.grid_size and not self.config.dynamic_image_size:
            h, w = self.config.image_size
            raise ConfigValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} does not match the model's image size {h}x{w}; "
                "resize the input, or load with dynamic_image_size=True")
        patches = fmap.flatten(2).transpose(1, 2)
        inputs = patch_hook(patches) if patch_hook is not None else patches
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        tokens = torch.cat(prefix + [inputs], dim=1) if prefix else inputs
        return patches, tokens, grid

    def _add_posemb(self, tokens: torch.Tensor, layer: int, grid: tuple[int, int]) -> torch.Tensor:
        n = self.config.num_prefix_tokens
        if self.layer_pos_embeds is not None:
            return self.layer_pos_embeds[layer](tokens, n, grid)
        if self.pos_embed is not None and (layer == 0 or self.config.posemb_where == "every_layer_shared"):
            return self.pos_embed(tokens, n, grid)
        return tokens

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.config.pool
        if pool == "token":
            return x[:, 0]
        if pool == "gap":
            pooled = x[:, self.config.num_prefix_tokens:].mean(dim=1)
            return self.norm(pooled) if self.config.norm_after_pool else pooled
        return self.map_head(x[:, self.config.num_prefix_tokens:])

    def _heads(self, x: torch.Tensor, out: dict | None = None) -> torch.Tensor:
        pooled = self.pre_logits(self._pool(x))
        logits = self.head(pooled)
        if out is not None:
            out["pre_logits"] = pooled
        if self.head_dist is not None:
            dist = self.head_dist(self.pre_logits(x[:, self.config.num_prefix_tokens - 1]))
            if out is not None:
                out["logits_cls"], out["logits_dist"] = logits, dist
            logits = (logits + dist) / 2
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, x, grid = self._embed(x)
        if self.layer_pos_embeds is None:
            x = self._add_posemb(x, 0, grid)
        x = self.pos_drop(x)
        for i, block in enumerate(self.blocks):
            if i and self.config.posemb_where != "stem" or self.layer_pos_embeds is not None:
                x = self._add_posemb(x, i, grid)
            x, _ = block(x, grid)
        return self._heads(self._final_norm(x))

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.config.norm_after_pool else self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, attention: bool = False, patch_hook=None,
                              keep: torch.Tensor | None = None) -> dict:
        """Named intermediates: stem, with_posemb, blocks (list), encoder, pre_logits, logits,
        grid, and attention (list of (B, heads, T, T) per block) when asked for.

        `patch_hook(patches) -> patches` replaces the (B, N, D) patch tokens after the stem and
        before the prefix tokens and position embeddings ("stem" stays the uncorrupted tokens).
        `keep` (B, K) indexes the patch tokens that go on into the encoder after the position
        embedding (the prefix tokens always do); then "encoder" has num_prefix_tokens + K tokens.
        """
        out: dict = {}
        if keep is not None and (self.config.posemb == "relative" or self.config.posemb_where != "stem"):
            raise ConfigError("dropping patch tokens needs position embeddings added once at the stem "
                              f"(posemb={self.config.posemb!r}, posemb_where={self.config.posemb_where!r})")
        patches, x, grid = self._embed(x, patch_hook)
        out["stem"], out["grid"] = patches, grid
        if self.layer_pos_embeds is None:
            x = self._add_posemb(x, 0, grid)
        if keep is not None:
            n = self.config.num_prefix_tokens
            kept = x[:, n:].gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            x = torch.cat([x[:, :n], kept], dim=1)
        x = self.pos_drop(x)
        out["with_posemb"] = x
        out["blocks"], out["attention"] = [], []
        for i, block in enumerate(self.blocks):
            if i and self.config.posemb_where != "stem" or self.layer_pos_embeds is not None:
                x = self._add_posemb(x, i, grid)
            x, weights = block(x, grid, keep_weights=attention)
            out["blocks"].append(x)
            if attention:
                out["attention"].append(weights)
        x = self._final_norm(x)
        out["encoder"] = x
        out["logits"] = self._heads(x, out)
        return out

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: norms, biases, tokens and embeddings."""
        names = set()
        for name, p in self.named_parameters():
            if p.dim() <= 1 or "token" in name or "pos_embed" in name or "relative" in name or "probe" in name:
                names.add(name)
        return names
