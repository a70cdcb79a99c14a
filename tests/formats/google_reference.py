"""An independent reference for Google's ViT checkpoints: random parameter dicts under the
official (vit_jax) and big_vision names, and a float64 numpy forward pass that reads those
dicts directly with the Flax model's numerics (SPEC section 6): tanh GELU, LayerNorm eps 1e-6,
per-head q/k/v kernels (D, H, D/H), out kernel (H, D/H, D), HWIO convolutions, TF "SAME"
padding, weight standardisation (w - mean) / (std + 1e-5), GroupNorm 32 groups eps 1e-6.
Inputs are NHWC in [-1, 1]. Nothing here imports vitkit."""

from __future__ import annotations

import io
import math
import re

import numpy as np

COUNTERS = {
    "original": ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
    "big_vision": ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
}


# ----------------------------------------------------------------------------- parameters

def _dense(rng, p, name, n_in, n_out):
    p[f"{name}/kernel"] = rng.normal(0, 1 / math.sqrt(n_in), (n_in, n_out)).astype(np.float32)
    p[f"{name}/bias"] = rng.normal(0, 0.1, (n_out,)).astype(np.float32)


def _norm(rng, p, name, n):
    p[f"{name}/scale"] = (1 + rng.normal(0, 0.1, (n,))).astype(np.float32)
    p[f"{name}/bias"] = rng.normal(0, 0.1, (n,)).astype(np.float32)


def _attention(rng, p, name, width, heads):
    hd = width // heads
    for part in ("query", "key", "value"):
        p[f"{name}/{part}/kernel"] = rng.normal(0, 1 / math.sqrt(width), (width, heads, hd)).astype(np.float32)
        p[f"{name}/{part}/bias"] = rng.normal(0, 0.1, (heads, hd)).astype(np.float32)
    p[f"{name}/out/kernel"] = rng.normal(0, 1 / math.sqrt(width), (heads, hd, width)).astype(np.float32)
    p[f"{name}/out/bias"] = rng.normal(0, 0.1, (width,)).astype(np.float32)


def _conv(rng, p, name, k, cin, cout):
    p[f"{name}/kernel"] = rng.normal(0, 1 / math.sqrt(k * k * cin), (k, k, cin, cout)).astype(np.float32)


def make_params(layout="original", *, seed=0, width=32, depth=2, heads=4, mlp=64, patch=8, grid=(4, 4),
                chans=3, classes=5, pool="token", rep=None, posemb="learn", hybrid=None, root=32):
    """Random checkpoint arrays. pool: token|gap|map; hybrid: units per stage (root width `root`)."""
    rng = np.random.default_rng(seed)
    p: dict[str, np.ndarray] = {}
    embed_in = chans
    if hybrid:
        _conv(rng, p, "conv_root", 7, chans, root)
        _norm(rng, p, "gn_root", root)
        cin = root
        for s, units in enumerate(hybrid, 1):
            f = root * 2 ** (s - 1)
            for u in range(1, units + 1):
                unit = f"block{s}/unit{u}"
                stride = 2 if (u == 1 and s > 1) else 1
                if cin != 4 * f or stride != 1:
                    _conv(rng, p, f"{unit}/conv_proj", 1, cin, 4 * f)
                    _norm(rng, p, f"{unit}/gn_proj", 4 * f)
                _conv(rng, p, f"{unit}/conv1", 1, cin, f)
                _norm(rng, p, f"{unit}/gn1", f)
                _conv(rng, p, f"{unit}/conv2", 3, f, f)
                _norm(rng, p, f"{unit}/gn2", f)
                _conv(rng, p, f"{unit}/conv3", 1, f, 4 * f)
                _norm(rng, p, f"{unit}/gn3", 4 * f)
                cin = 4 * f
        embed_in = cin
    _conv(rng, p, "embedding", patch, embed_in, width)
    p["embedding/bias"] = rng.normal(0, 0.1, (width,)).astype(np.float32)
    n = grid[0] * grid[1]
    if pool == "token":
        p["cls"] = rng.normal(0, 0.5, (1, 1, width)).astype(np.float32)
    if posemb == "learn":
        if layout == "original":
            p["Transformer/posembed_input/pos_embedding"] = rng.normal(
                0, 0.5, (1, n + int(pool == "token"), width)).astype(np.float32)
        else:
            p["pos_embedding"] = rng.normal(0, 0.5, (1, n, width)).astype(np.float32)
    ln1, attn, ln2, mlpb = COUNTERS[layout]
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}"
        _norm(rng, p, f"{b}/{ln1}", width)
        _attention(rng, p, f"{b}/{attn}", width, heads)
        _norm(rng, p, f"{b}/{ln2}", width)
        _dense(rng, p, f"{b}/{mlpb}/Dense_0", width, mlp)
        _dense(rng, p, f"{b}/{mlpb}/Dense_1", mlp, width)
    _norm(rng, p, "Transformer/encoder_norm", width)
    if pool == "map":
        p["MAPHead_0/probe"] = rng.normal(0, 0.5, (1, 1, width)).astype(np.float32)
        _attention(rng, p, "MAPHead_0/MultiHeadDotProductAttention_0", width, heads)
        _norm(rng, p, "MAPHead_0/LayerNorm_0", width)
        _dense(rng, p, "MAPHead_0/MlpBlock_0/Dense_0", width, mlp)
        _dense(rng, p, "MAPHead_0/MlpBlock_0/Dense_1", mlp, width)
    features = width
    if rep:
        _dense(rng, p, "pre_logits", width, rep)
        features = rep
    if classes:
        _dense(rng, p, "head", features, classes)
    return p


def stack_blocks(p: dict) -> dict:
    """big_vision's scanned layout: Transformer/encoderblock/... with blocks on axis 0."""
    out, blocks = {}, {}
    for k, v in p.items():
        if k.startswith("Transformer/encoderblock_"):
            i, rest = k[len("Transformer/encoderblock_"):].split("/", 1)
            blocks.setdefault(rest, {})[int(i)] = v
        else:
            out[k] = v
    for rest, per in blocks.items():
        out[f"Transformer/encoderblock/{rest}"] = np.stack([per[i] for i in sorted(per)])
    return out


def as_old_flax(p: dict) -> dict:
    """GroupNorm scales and biases as (1, 1, 1, C): how Flax before 0.3.6 stored them, and so
    how the released hybrid files (R50+ViT-B/16, ...) hold them."""
    return {k: v.reshape(1, 1, 1, -1) if re.fullmatch(r"(.*/)?gn\w*/(scale|bias)", k) else v for k, v in p.items()}


def npz_bytes(p: dict) -> bytes:
    """The arrays as an .npz file's bytes, as np.savez writes them."""
    buffer = io.BytesIO()
    np.savez(buffer, **p)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- forward

def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, p, name, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p[f"{name}/scale"] + p[f"{name}/bias"]


def dense(x, p, name):
    return x @ p[f"{name}/kernel"].astype(np.float64) + p[f"{name}/bias"]


def attention(xq, xkv, p, name):
    def proj(x, part):
        return np.einsum("btd,dhk->bthk", x, p[f"{name}/{part}/kernel"].astype(np.float64)) + p[f"{name}/{part}/bias"]

    q, k, v = proj(xq, "query"), proj(xkv, "key"), proj(xkv, "value")
    logits = np.einsum("bqhk,bthk->bhqt", q / math.sqrt(q.shape[-1]), k)
    logits = logits - logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w = w / w.sum(-1, keepdims=True)
    out = np.einsum("bhqt,bthk->bqhk", w, v)
    return np.einsum("bqhk,hkd->bqd", out, p[f"{name}/out/kernel"].astype(np.float64)) + p[f"{name}/out/bias"]


def mlp_block(x, p, name):
    return dense(gelu_tanh(dense(x, p, f"{name}/Dense_0")), p, f"{name}/Dense_1")


def _same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv(x, kernel, stride, same=True):
    """NHWC x HWIO convolution, TF padding SAME (or VALID)."""
    k = kernel.shape[0]
    if same:
        (t, b), (l, r) = _same_pads(x.shape[1], k, stride), _same_pads(x.shape[2], k, stride)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for i in range(k):
        for j in range(k):
            patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out += patch @ kernel[i, j].astype(np.float64)
    return out


def std_conv(x, kernel, stride):
    w = kernel.astype(np.float64)
    w = w - w.mean(axis=(0, 1, 2))
    w = w / (w.std(axis=(0, 1, 2)) + 1e-5)
    return conv(x, w, stride)


def group_norm(x, p, name, groups=32, eps=1e-6):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(n, h, w, c) * p[f"{name}/scale"] + p[f"{name}/bias"]


def max_pool_same(x, k=3, s=2):
    (t, b), (l, r) = _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s)
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, i:i + s * oh:s, j:j + s * ow:s, :])
    return out


def resnet(x, p):
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = relu(group_norm(std_conv(x, p["conv_root/kernel"], 2), p, "gn_root"))
    x = max_pool_same(x)
    s = 1
    while f"block{s}/unit1/conv1/kernel" in p:
        u = 1
        while f"block{s}/unit{u}/conv1/kernel" in p:
            unit = f"block{s}/unit{u}"
            stride = 2 if (u == 1 and s > 1) else 1
            residual = x
            if f"{unit}/conv_proj/kernel" in p:
                residual = group_norm(std_conv(x, p[f"{unit}/conv_proj/kernel"], stride), p, f"{unit}/gn_proj")
            y = relu(group_norm(std_conv(x, p[f"{unit}/conv1/kernel"], 1), p, f"{unit}/gn1"))
            y = relu(group_norm(std_conv(y, p[f"{unit}/conv2/kernel"], stride), p, f"{unit}/gn2"))
            y = group_norm(std_conv(y, p[f"{unit}/conv3/kernel"], 1), p, f"{unit}/gn3")
            x = relu(residual + y)
            u += 1
        s += 1
    return x


def sincos2d(h, w, width):
    quarter = width // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / (quarter - 1))
    y, x = np.mgrid[:h, :w]
    x = x.reshape(-1, 1) * omega
    y = y.reshape(-1, 1) * omega
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


def forward(p, images, layout="original"):
    """Logits of the Flax model for NHWC images in [-1, 1]; `p` holds per-block names."""
    x = images.astype(np.float64)
    if "conv_root/kernel" in p:
        x = resnet(x, p)
    x = conv(x, p["embedding/kernel"], p["embedding/kernel"].shape[0], same=False) + p["embedding/bias"]
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    if layout == "big_vision":
        x = x + (p["pos_embedding"] if "pos_embedding" in p else sincos2d(h, w, d))
    if "cls" in p:
        x = np.concatenate([np.tile(p["cls"], (n, 1, 1)), x], axis=1)
    if layout == "original":
        x = x + p["Transformer/posembed_input/pos_embedding"]
    ln1, attn, ln2, mlpb = COUNTERS[layout]
    i = 0
    while f"Transformer/encoderblock_{i}/{ln1}/scale" in p:
        b = f"Transformer/encoderblock_{i}"
        y = layer_norm(x, p, f"{b}/{ln1}")
        x = x + attention(y, y, p, f"{b}/{attn}")
        x = x + mlp_block(layer_norm(x, p, f"{b}/{ln2}"), p, f"{b}/{mlpb}")
        i += 1
    x = layer_norm(x, p, "Transformer/encoder_norm")
    if "cls" in p:
        x = x[:, 0]
    elif "MAPHead_0/probe" in p:
        probe = np.tile(p["MAPHead_0/probe"], (n, 1, 1)).astype(np.float64)
        y = attention(probe, x, p, "MAPHead_0/MultiHeadDotProductAttention_0")
        y = y + mlp_block(layer_norm(y, p, "MAPHead_0/LayerNorm_0"), p, "MAPHead_0/MlpBlock_0")
        x = y[:, 0]
    else:
        x = x.mean(axis=1)
    if "pre_logits/kernel" in p:
        x = np.tanh(dense(x, p, "pre_logits"))
    if "head/kernel" in p:
        x = dense(x, p, "head")
    return x
