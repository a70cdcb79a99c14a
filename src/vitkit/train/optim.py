"""Optimisers with the paper's weight-decay exemptions (AdamW, SGD, and Muon for the blocks'
matrices), and the warm-up + decay schedule."""

from __future__ import annotations

import math

import torch
from torch.optim.adamw import adamw

from vitkit.models.vit import VisionTransformer


def layer_id(name: str, depth: int) -> int:
    """The layer of a parameter in layer-wise learning-rate decay (BEiT, MAE): 0 for the stem,
    tokens and position embeddings, i + 1 for block i (and its own position embedding), depth + 1
    for the final norm, pooling and heads."""
    for prefix in ("blocks.", "layer_pos_embeds."):
        if name.startswith(prefix):
            return int(name.split(".")[1]) + 1
    if name.startswith(("patch_embed.", "cls_token", "dist_token", "pos_embed")):
        return 0
    return depth + 1


def param_groups(model: VisionTransformer, weight_decay: float, extra: torch.nn.Module | None = None,
                 layer_decay: float | None = None) -> list[dict]:
    """Two groups: decayed weights, and the exempt norms, biases, tokens and embeddings; then
    those two of `extra` (an objective's own parameters: its matrices decay, the rest not).
    With `layer_decay` each of the model's two is split by `layer_id`, each group's learning
    rate scaled by layer_decay ** (depth + 1 - layer) (`lr_scale`, which `set_lr` applies):
    full for the head, smaller and smaller towards the stem."""
    exempt = model.no_weight_decay()
    depth = model.config.depth
    split = layer_decay is not None and layer_decay != 1.0
    by_group: dict[tuple[int, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            layer = layer_id(name, depth) if split else depth + 1
            by_group.setdefault((layer, name in exempt), []).append(p)
    groups = []
    for (layer, is_exempt), params in sorted(by_group.items(), key=lambda item: (-item[0][0], item[0][1])):
        group = {"params": params, "weight_decay": 0.0 if is_exempt else weight_decay}
        if split:
            group["lr_scale"] = layer_decay ** (depth + 1 - layer)
        groups.append(group)
    if extra is not None:
        own = [p for p in extra.parameters() if p.requires_grad]
        groups += [{"params": [p for p in own if p.dim() > 1], "weight_decay": weight_decay},
                   {"params": [p for p in own if p.dim() <= 1], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: VisionTransformer, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, betas=(0.9, 0.999), extra: torch.nn.Module | None = None,
                    layer_decay: float | None = None) -> torch.optim.Optimizer:
    """The optimiser of `model` and of `extra`, the objective's own parameters (if any), with
    layer-wise learning-rate decay if asked (`param_groups`)."""
    if name == "muon":
        return Muon(muon_groups(model, weight_decay, extra, layer_decay), lr=lr, betas=tuple(betas))
    groups = param_groups(model, weight_decay, extra, layer_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=False)
    # The fused kernel exists for CPUs as well as GPUs: on the default digits model one AdamW
    # step takes 0.49 ms fused, 1.9 ms with foreach and 2.9 ms with the per-tensor loop
    # (1 thread, 2-core EPYC), a tenth of the training time.
    device = next(model.parameters()).device.type
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device in ("cpu", "cuda") or None)


def run_optimizer(cfg, step: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimiser a run's config asks for (a `TrainConfig`), of a TrainingStep's model and its
    objective's own parameters."""
    return build_optimizer(step.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.betas,
                           extra=step.objective, layer_decay=cfg.layer_decay)


def muon_groups(model: VisionTransformer, weight_decay: float, extra: torch.nn.Module | None = None,
                layer_decay: float | None = None) -> list[dict]:
    """`param_groups` with the weight matrices of the transformer blocks' linear layers
    (attention's qkv and projection, the MLP's two) moved to a group of their own that Muon
    updates; everything else (patch embedding, tokens, position embeddings and relative-position
    tables, norms, biases, head) stays with AdamW, as Muon's authors prescribe for the input and
    output layers."""
    linear = {id(m.weight) for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)}
    groups = [{**g, "muon": False} for g in param_groups(model, weight_decay, extra, layer_decay)]
    muon = [{**g, "params": [p for p in g["params"] if id(p) in linear], "muon": True} for g in groups]
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in linear]} for g in groups]
    return [g for g in muon + rest if g["params"]]


# The quintic Newton-Schulz coefficients of Muon (Jordan et al. 2024).
_NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)


def orthogonalize(updates: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The Newton-Schulz iteration of Muon for a batch (n, rows, cols) of matrices: each maps to
    about U V^T of its SVD U S V^T: the same singular vectors, singular values brought to about
    0.7-1.2 (the coefficients trade exactness for speed). In float32: this CPU has no native
    bfloat16 (torch.optim.Muon's choice), and the matrices of small models are cheap either way."""
    tall = updates.shape[-2] > updates.shape[-1]
    x = updates.float().mT if tall else updates.float()
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    a, b, c = _NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).to(updates.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024) for the groups marked `muon`, AdamW for the others, in one
    optimiser so that checkpoints, schedules and resumption treat it like any other.

    A Muon step: momentum (Nesterov) of the gradient, orthogonalised by `orthogonalize`, scaled
    by 0.2 * sqrt(max(rows, cols)) so that its RMS matches an AdamW update's (Liu et al. 2025,
    "Muon is Scalable for LLM Training") and the same learning rate and schedule serve both
    kinds; decoupled weight decay as in AdamW. Matrices of one shape are orthogonalised together
    in one batched iteration. Each matrix must be whole on its process (DDP, not FSDP shards)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, betas=(0.9, 0.999), eps: float = 1e-8):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, betas=tuple(betas), eps=eps, muon=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon updates 2-D weight matrices only; put other parameters in "
                                 "groups with muon=False")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["muon"] else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        momentum = group["momentum"]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
        by_shape: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        lr, decay = group["lr"], group["weight_decay"]
        if decay:
            torch._foreach_mul_(params, 1 - lr * decay)
        for shape, members in by_shape.items():
            ortho = orthogonalize(torch.stack([updates[i] for i in members]), group["ns_steps"])
            scale = lr * 0.2 * math.sqrt(max(shape))
            torch._foreach_add_([params[i] for i in members], list(ortho.unbind(0)), alpha=-scale)

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        fused = params[0].device.type in ("cpu", "cuda")
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, fused=fused or None,
              amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
              eps=group["eps"], maximize=False)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR at `step` (0-based): linear warm-up, then cosine/linear decay
    to `min_ratio`, or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate: `lr` times the group's `lr_scale` (layer-wise decay), if any."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)
