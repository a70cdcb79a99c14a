"""timm-layout fixtures: random state dicts under timm's VisionTransformer names and a
functional torch forward pass written from timm's semantics (fused qkv, exact GELU,
LayerNorm eps 1e-6, `no_embed_class`, average pooling with `fc_norm`, MAP `attn_pool`,
DeiT's distillation head). Nothing here imports vitkit."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_state(*, seed=0, width=32, depth=2, mlp=64, patch=8, grid=(4, 4), classes=5, pool="token",
               no_embed_class=False, fc_norm=False, distilled=False, qkv_bias=True):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    def linear(name, n_in, n_out, bias=True):
        sd[f"{name}.weight"] = rnd(n_out, n_in, std=n_in**-0.5)
        if bias:
            sd[f"{name}.bias"] = rnd(n_out, std=0.1)

    def norm(name):
        sd[f"{name}.weight"] = 1 + rnd(width, std=0.1)
        sd[f"{name}.bias"] = rnd(width, std=0.1)

    sd: dict[str, torch.Tensor] = {}
    sd["patch_embed.proj.weight"] = rnd(width, 3, patch, patch, std=(3 * patch * patch) ** -0.5)
    sd["patch_embed.proj.bias"] = rnd(width, std=0.1)
    prefix = 0
    if pool == "token":
        sd["cls_token"] = rnd(1, 1, width)
        prefix += 1
        if distilled:
            sd["dist_token"] = rnd(1, 1, width)
            prefix += 1
    n = grid[0] * grid[1]
    sd["pos_embed"] = rnd(1, n + (0 if no_embed_class else prefix), width)
    for i in range(depth):
        b = f"blocks.{i}"
        norm(f"{b}.norm1")
        linear(f"{b}.attn.qkv", width, 3 * width, bias=qkv_bias)
        linear(f"{b}.attn.proj", width, width)
        norm(f"{b}.norm2")
        linear(f"{b}.mlp.fc1", width, mlp)
        linear(f"{b}.mlp.fc2", mlp, width)
    norm("fc_norm" if fc_norm else "norm")
    if pool == "map":
        sd["attn_pool.latent"] = rnd(1, 1, width)
        linear("attn_pool.q", width, width)
        linear("attn_pool.kv", width, 2 * width)
        linear("attn_pool.proj", width, width)
        norm("attn_pool.norm")
        linear("attn_pool.mlp.fc1", width, mlp)
        linear("attn_pool.mlp.fc2", mlp, width)
    linear("head", width, classes)
    if distilled:
        linear("head_dist", width, classes)
    return sd


def _attend(q, k, v, heads):
    b, tq, d = q.shape
    tk = k.shape[1]
    q = q.reshape(b, tq, heads, -1).transpose(1, 2)
    k = k.reshape(b, tk, heads, -1).transpose(1, 2)
    v = v.reshape(b, tk, heads, -1).transpose(1, 2)
    w = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    return (w @ v).transpose(1, 2).reshape(b, tq, d)


def forward(sd, x, heads):
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    d = sd["patch_embed.proj.weight"].shape[0]
    ln = lambda t, name: F.layer_norm(t, (d,), sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-6)  # noqa: E731
    lin = lambda t, name: F.linear(t, sd[f"{name}.weight"], sd.get(f"{name}.bias"))  # noqa: E731
    p = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    prefix = [sd[k].expand(x.shape[0], -1, -1) for k in ("cls_token", "dist_token") if k in sd]
    if sd["pos_embed"].shape[1] == x.shape[1]:  # no_embed_class
        x = torch.cat(prefix + [x + sd["pos_embed"]], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + sd["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}"
        q, k, v = lin(ln(x, f"{b}.norm1"), f"{b}.attn.qkv").chunk(3, dim=-1)
        x = x + lin(_attend(q, k, v, heads), f"{b}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{b}.norm2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
        i += 1
    if "norm.weight" in sd:
        x = ln(x, "norm")
    if "attn_pool.latent" in sd:
        latent = sd["attn_pool.latent"].expand(x.shape[0], -1, -1)
        k, v = lin(x, "attn_pool.kv").chunk(2, dim=-1)
        y = lin(_attend(lin(latent, "attn_pool.q"), k, v, heads), "attn_pool.proj")
        y = y + lin(F.gelu(lin(ln(y, "attn_pool.norm"), "attn_pool.mlp.fc1")), "attn_pool.mlp.fc2")
        return lin(y[:, 0], "head")
    if "cls_token" not in sd:
        pooled = x.mean(dim=1)
        if "fc_norm.weight" in sd:
            pooled = ln(pooled, "fc_norm")
        return lin(pooled, "head")
    if "dist_token" in sd:
        return (lin(x[:, 0], "head") + lin(x[:, 1], "head_dist")) / 2
    return lin(x[:, 0], "head")
