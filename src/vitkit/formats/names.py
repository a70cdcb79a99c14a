"""Name tables: the machinery every foreign format shares.

A format is a list of rules `(vitkit key pattern, foreign name templates, kind)`. The kind
says how the tensors change on the way (a transpose, a reshape of per-head kernels, a split
of the fused qkv); each kind is one pair of functions, so a conversion is exact both ways.
The table is walked over the state-dict names of the model the config describes, so every
vitkit tensor has exactly one rule and every foreign tensor is either claimed by a rule or
reported by name. Expected foreign shapes come from the same rules applied to the model's
own (meta) tensors: a checkpoint is shape-checked tensor by tensor before anything is copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from vitkit.errors import CheckpointError, ConfigValueError, VitkitError
from vitkit.models.config import ModelConfig
from vitkit.models.vit import VisionTransformer


def required_shape(tensors: dict, name: str, ndim: int, source: str) -> tuple[int, ...]:
    """The shape of `tensors[name]`, which an architecture is read from: missing or of another
    rank is one CheckpointError naming the file and the tensor."""
    if name not in tensors:
        raise CheckpointError(f"{source}: missing {name}, which the architecture is read from")
    shape = tuple(tensors[name].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{source}: {name} has shape {shape}, expected {ndim} dimensions")
    return shape


def _heads_in(parts: list[torch.Tensor], heads: int) -> torch.Tensor:
    # Flax per-head input kernels (D_in, H, D/H), one per part (q, k, v) -> fused (n*D, D_in).
    return torch.cat([p.reshape(p.shape[0], -1).t() for p in parts], dim=0)


def _heads_in_back(w: torch.Tensor, n: int, heads: int) -> list[torch.Tensor]:
    return [c.t().reshape(w.shape[1], heads, -1) for c in w.chunk(n, dim=0)]


def _heads_bias(parts: list[torch.Tensor], heads: int) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in parts], dim=0)


def _heads_bias_back(b: torch.Tensor, n: int, heads: int) -> list[torch.Tensor]:
    return [c.reshape(heads, -1) for c in b.chunk(n, dim=0)]


# kind: (foreign tensors -> vitkit tensor, vitkit tensor -> foreign tensors)
KINDS = {
    # same layout
    "copy": (lambda ts, h: ts[0], lambda t, n, h: [t]),
    # Flax Dense kernel (in, out) <-> torch Linear weight (out, in)
    "dense": (lambda ts, h: ts[0].t(), lambda t, n, h: [t.t()]),
    # Flax/TF conv kernel HWIO <-> torch OIHW
    "conv": (lambda ts, h: ts[0].permute(3, 2, 0, 1), lambda t, n, h: [t.permute(2, 3, 1, 0)]),
    # Flax attention q/k/v kernels (D, H, D/H) <-> rows of a fused Linear weight
    "heads_in": (_heads_in, _heads_in_back),
    "heads_bias": (_heads_bias, _heads_bias_back),
    # Flax attention output kernel (H, D/H, D) <-> Linear weight (D, D)
    "heads_out": (lambda ts, h: ts[0].reshape(-1, ts[0].shape[-1]).t(),
                  lambda t, n, h: [t.t().reshape(h, -1, t.shape[0])]),
    # separate torch tensors (HF query/key/value) <-> fused, concatenated on the first axis
    "split": (lambda ts, h: torch.cat(ts, dim=0), lambda t, n, h: list(t.chunk(n, dim=0))),
}


@dataclass(frozen=True)
class Rule:
    pattern: str            # regular expression over vitkit state-dict keys (full match)
    # Foreign names: "{0}" is the pattern's first group, "{next0}" / "{prev0}" that number
    # plus / minus one (1-based or shifted foreign counters), "{name}" a per-layout value.
    theirs: tuple[str, ...]
    kind: str = "copy"


def meta_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's state dict as shape-only tensors: no memory, no initialisation."""
    with torch.device("meta"):
        return VisionTransformer(cfg).state_dict()


# A file may leave part of the model its config describes to fresh initialisation (strict=False),
# but not most of it: beyond this the config does not belong to the tensors.
_UNFILLED_PARAMETERS = 2**20
# Tables a model builds from its config alone and never stores (the fixed sine-cosine position
# table, each block's relative-position index, T x T for T tokens) may exceed the weights the
# file holds by this many values (64 MiB of float32): a width-64, depth-4 relative model at 448
# pixels with patch 16 builds 2.5 M, ViT-B/16 with sine-cosine embeddings at 384 pixels 0.4 M.
_BUILT_VALUES = 2**24


def implied_sizes(cfg: ModelConfig) -> tuple[int, int]:
    """(values its weights hold, values it builds from its config alone) of the model `cfg`
    describes: parameters and stored buffers, then the buffers its checkpoints leave out. Both
    counted on the meta device, which allocates nothing whatever the sizes."""
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    stored = model.state_dict()
    built = sum(b.numel() for name, b in model.named_buffers() if name not in stored)
    return sum(t.numel() for t in stored.values()), built


def check_buildable(cfg: ModelConfig, tensors: dict[str, torch.Tensor], source: str,
                    asked: str | None = None) -> None:
    """Refuse a config that describes a model out of all proportion to the tensors a file holds,
    before anything is built: blocks the file has no tensors for would take unbounded time to
    build, parameters it cannot fill and tables built from the config (a position table for
    any image size) unbounded memory. A config read from the file is a CheckpointError; one
    the caller `asked` for (overrides such as "num_classes=1000000000") a ConfigValueError."""
    def refuse(problem: str) -> VitkitError:
        if asked is None:
            return CheckpointError(f"{source}: its config describes {problem}; the config does not belong to "
                                   "these weights")
        return ConfigValueError(f"{asked} asks for {problem} from {source}; that is out of all proportion to the "
                                "checkpoint, ask for less")

    blocks = cfg.depth + sum(cfg.resnet_layers)
    if blocks > len(tensors):
        raise refuse(f"{blocks} blocks but the file holds only {len(tensors)} tensors")
    try:
        stored, built = implied_sizes(cfg)
    except (RuntimeError, OverflowError, ValueError, TypeError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise refuse(f"a model that cannot be built ({detail})") from None
    held = sum(t.numel() for t in tensors.values())
    if stored > 2 * held + _UNFILLED_PARAMETERS:
        raise refuse(f"a model of {stored:,} parameters but the file holds {held:,} values")
    if built > held + _BUILT_VALUES:
        h, w = cfg.image_size
        raise refuse(f"a model that builds {built:,} values of position tables for {h}x{w} inputs but the file "
                     f"holds {held:,} values")


def resolve(rules: list[Rule], key: str, values: dict) -> tuple[tuple[str, ...], str] | None:
    for rule in rules:
        m = re.fullmatch(rule.pattern, key)
        if m:
            shifted = {}
            for i, g in enumerate(m.groups()):
                if g.isdigit():
                    shifted[f"next{i}"], shifted[f"prev{i}"] = int(g) + 1, int(g) - 1
            return tuple(t.format(*m.groups(), **shifted, **values) for t in rule.theirs), rule.kind
    return None


def plan(cfg: ModelConfig, rules: list[Rule], values: dict, fmt: str, source: str | None = None):
    """[(vitkit key, foreign names, kind, expected foreign shapes)] for every tensor of the model."""
    out, unmapped = [], []
    for key, t in meta_state(cfg).items():
        found = resolve(rules, key, values)
        if found is None:
            unmapped.append(key)
            continue
        theirs, kind = found
        shapes = [tuple(x.shape) for x in KINDS[kind][1](t, len(theirs), cfg.num_heads)]
        out.append((key, theirs, kind, shapes))
    if unmapped:
        raise CheckpointError(
            (f"{source}: " if source else "")
            + f"the {fmt} format has no names for these vitkit tensors: {', '.join(unmapped[:8])}"
            + (" ..." if len(unmapped) > 8 else "") + " (this model variant cannot be expressed in it)")
    return out


def _listing(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")


def to_vitkit(foreign: dict[str, torch.Tensor], cfg: ModelConfig, rules: list[Rule], values: dict,
              fmt: str, source: str, strict: bool = True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Foreign tensors -> vitkit state dict. Missing, unexpected and mis-shaped tensors are named
    in one CheckpointError; with strict=False they are skipped and returned as a list."""
    check_buildable(cfg, foreign, source)
    complex_ = sorted(n for n, t in foreign.items() if t.is_complex())
    if complex_:
        raise CheckpointError(f"{source} holds complex tensors ({_listing(complex_)}); weights must be real")
    state, missing, mismatched, claimed = {}, [], [], set()
    for key, theirs, kind, shapes in plan(cfg, rules, values, fmt, source):
        claimed.update(theirs)
        absent = [n for n in theirs if n not in foreign]
        if absent:
            missing.extend(absent)
            continue
        bad = [f"{n}: file {tuple(foreign[n].shape)} vs expected {s}"
               for n, s in zip(theirs, shapes) if tuple(foreign[n].shape) != s]
        if bad:
            mismatched.extend(bad)
            continue
        tensors = [foreign[n].float() for n in theirs]
        state[key] = KINDS[kind][0](tensors, cfg.num_heads).contiguous()
    unexpected = sorted(set(foreign) - claimed)
    problems = []
    if missing:
        problems.append("missing " + _listing(missing))
    if unexpected:
        problems.append("unexpected " + _listing(unexpected))
    if mismatched:
        problems.append("shape mismatch " + "; ".join(mismatched[:8]))
    if problems and strict:
        raise CheckpointError(f"{source} ({fmt}) does not fit the inferred architecture: "
                              + " | ".join(problems)
                              + " (pass overrides such as num_heads=..., or strict=False to skip)")
    skipped = missing + unexpected + [m.split(":")[0] for m in mismatched]
    return state, skipped


def from_vitkit(state: dict[str, torch.Tensor], cfg: ModelConfig, rules: list[Rule], values: dict,
                fmt: str) -> dict[str, torch.Tensor]:
    """vitkit state dict -> foreign tensors (contiguous, CPU, float32)."""
    out = {}
    for key, theirs, kind, _ in plan(cfg, rules, values, fmt):
        tensors = KINDS[kind][1](state[key].detach().float().cpu(), len(theirs), cfg.num_heads)
        for name, t in zip(theirs, tensors):
            out[name] = t.contiguous()
    return out


def require(condition: bool, fmt: str, why: str) -> None:
    """Refuse an export the target format cannot express."""
    if not condition:
        raise CheckpointError(f"this model cannot be written as {fmt}: {why}")
