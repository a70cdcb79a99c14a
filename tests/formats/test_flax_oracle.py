"""A second, independent oracle for the Google layouts: a small Flax (linen) ViT built here
from flax.linen's own modules (nn.gelu, nn.LayerNorm, nn.MultiHeadDotProductAttention,
nn.GroupNorm, SAME convolutions and max-pooling) runs the checkpoint fixtures, whose names and
shapes must be exactly the ones Flax declares; vitkit's logits are compared with Flax's.
Skipped when flax is not installed."""

import numpy as np
import pytest
import torch

import vitkit

from .conftest import rel_diff
from .google_reference import COUNTERS, make_params, sincos2d, stack_blocks

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
jnp = jax.numpy

TOL = 1e-5


class StdConv(nn.Conv):
    """Weight-standardised convolution: the kernel is standardised whenever it is read."""

    def param(self, name, *args, **kwargs):
        value = super().param(name, *args, **kwargs)
        if name == "kernel":
            value = value - jnp.mean(value, axis=(0, 1, 2))
            value = value / (jnp.std(value, axis=(0, 1, 2)) + 1e-5)
        return value


class Unit(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x):
        s = (self.stride, self.stride)
        residual = x
        if x.shape[-1] != 4 * self.features or self.stride != 1:
            residual = StdConv(4 * self.features, (1, 1), s, use_bias=False, name="conv_proj")(x)
            residual = nn.GroupNorm(name="gn_proj")(residual)
        y = nn.relu(nn.GroupNorm(name="gn1")(StdConv(self.features, (1, 1), use_bias=False, name="conv1")(x)))
        y = nn.relu(nn.GroupNorm(name="gn2")(StdConv(self.features, (3, 3), s, use_bias=False, name="conv2")(y)))
        y = nn.GroupNorm(name="gn3")(StdConv(4 * self.features, (1, 1), use_bias=False, name="conv3")(y))
        return nn.relu(residual + y)


class Mlp(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(x.shape[-1], name="Dense_1")(nn.gelu(nn.Dense(self.dim, name="Dense_0")(x)))


class Block(nn.Module):
    layout: str
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        ln1, attn, ln2, mlp = COUNTERS[self.layout]
        y = nn.LayerNorm(name=ln1)(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name=attn)(y, y)
        return x + Mlp(self.mlp, name=mlp)(nn.LayerNorm(name=ln2)(x))


class PosEmb(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + self.param("pos_embedding", nn.initializers.normal(0.5), (1,) + x.shape[1:])


class Encoder(nn.Module):
    layout: str
    depth: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        if self.layout == "original":
            x = PosEmb(name="posembed_input")(x)
        for i in range(self.depth):
            x = Block(self.layout, self.heads, self.mlp, name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(name="encoder_norm")(x)


class MapHead(nn.Module):
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", nn.initializers.normal(0.5), (1, 1, x.shape[-1]))
        probe = jnp.tile(probe, [x.shape[0], 1, 1])
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, name="MultiHeadDotProductAttention_0")(probe, x)
        y = y + Mlp(self.mlp, name="MlpBlock_0")(nn.LayerNorm(name="LayerNorm_0")(y))
        return y[:, 0]


class FlaxViT(nn.Module):
    layout: str = "original"
    width: int = 32
    depth: int = 2
    heads: int = 4
    mlp: int = 64
    patch: int = 8
    classes: int = 5
    pool: str = "token"
    rep: int | None = None
    hybrid: tuple = ()
    root: int = 32
    posemb: str = "learn"

    @nn.compact
    def __call__(self, x):
        if self.hybrid:
            x = StdConv(self.root, (7, 7), (2, 2), use_bias=False, name="conv_root")(x)
            x = nn.relu(nn.GroupNorm(name="gn_root")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for s, units in enumerate(self.hybrid, 1):
                for u in range(1, units + 1):
                    stride = 2 if (u == 1 and s > 1) else 1
                    x = Unit(self.root * 2 ** (s - 1), stride, name=f"block{s}_unit{u}")(x)
        x = nn.Conv(self.width, (self.patch, self.patch), strides=(self.patch, self.patch), padding="VALID",
                    name="embedding")(x)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        if self.layout == "big_vision":
            x = PosEmb(name="top")(x) if self.posemb == "learn" else x + jnp.asarray(sincos2d(h, w, c), x.dtype)
        if self.pool == "token":
            cls = self.param("cls", nn.initializers.normal(0.5), (1, 1, c))
            x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)
        x = Encoder(self.layout, self.depth, self.heads, self.mlp, name="Transformer")(x)
        if self.pool == "token":
            x = x[:, 0]
        elif self.pool == "map":
            x = MapHead(self.heads, self.mlp, name="MAPHead_0")(x)
        else:
            x = x.mean(axis=1)
        if self.rep:
            x = nn.tanh(nn.Dense(self.rep, name="pre_logits")(x))
        return nn.Dense(self.classes, name="head")(x)


def flax_tree(flat: dict) -> dict:
    """Checkpoint names -> Flax's nested params (module names cannot hold '/': units are
    blockS_unitU, big_vision's top-level embedding sits in a helper module)."""
    tree: dict = {}
    for key, value in flat.items():
        if key.startswith("block"):
            key = key.replace("/unit", "_unit", 1)
        if key == "pos_embedding":
            key = "top/pos_embedding"
        node = tree
        *path, leaf = key.split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    return tree


def shapes(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(shapes(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = tuple(value.shape)
    return out


CASES = {
    "original-token-prelogits": (dict(layout="original", rep=24), dict(rep=24)),
    "original-gap": (dict(layout="original", pool="gap"), dict(pool="gap")),
    "original-hybrid": (dict(layout="original", hybrid=(1, 2), patch=1), dict(hybrid=(1, 2), patch=1)),
    "big_vision-token": (dict(layout="big_vision"), {}),
    "big_vision-map-stacked": (dict(layout="big_vision", pool="map"), dict(pool="map")),
    "big_vision-gap-sincos": (dict(layout="big_vision", pool="gap", posemb="sincos"),
                              dict(pool="gap", posemb="sincos")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_vitkit_matches_flax(tmp_path, images, case):
    flax_opts, fixture_opts = CASES[case]
    module = FlaxViT(**flax_opts)
    params = make_params(flax_opts["layout"], seed=11, **fixture_opts)
    x = jnp.asarray(images.permute(0, 2, 3, 1).numpy())
    # The fixture has exactly Flax's parameter names and shapes (traced, not computed) ...
    declared = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
    assert shapes(declared) == shapes(flax_tree(params))
    # ... and vitkit's logits are Flax's.
    expected = np.asarray(module.apply({"params": flax_tree(params)}, x))
    saved = params
    if case.endswith("stacked"):
        saved = {f"params/{k}": v for k, v in stack_blocks(params).items()}
    np.savez(tmp_path / "flax.npz", **saved)
    model = vitkit.load(tmp_path / "flax.npz", image_size=32)
    with torch.no_grad():
        assert rel_diff(model(images), expected) <= TOL
