"""Position embeddings: learned 1-D, learned 2-D, fixed 2-D sine-cosine, relative; and resizing.

Resizing is 2-D interpolation over the patch grid; the class/distillation slots are kept
apart. The same functions serve checkpoint loading at a new resolution and inference at a
dynamic image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

INTERPOLATION = "bicubic"


def resample_grid(emb: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                  mode: str = INTERPOLATION) -> torch.Tensor:
    """Resize (N, D) or (1, N, D) embeddings laid out on `old_grid` (raster order) to `new_grid`."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    squeeze = emb.dim() == 2
    if squeeze:
        emb = emb.unsqueeze(0)
    if old_grid == new_grid:
        return emb[0] if squeeze else emb
    d = emb.shape[-1]
    grid = emb.reshape(1, *old_grid, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False)
    out = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(emb.dtype)
    return out[0] if squeeze else out


def resample_line(emb: torch.Tensor, new_len: int) -> torch.Tensor:
    """Resize a (L, D) table along its first axis (rows or columns of a learned 2-D embedding)."""
    if emb.shape[0] == new_len:
        return emb
    line = emb.t().unsqueeze(0).float()
    line = F.interpolate(line, size=new_len, mode="linear", align_corners=False)
    return line[0].t().to(emb.dtype)


def sincos2d(grid: tuple[int, int], width: int, temperature: float = 10000.0) -> torch.Tensor:
    """big_vision's fixed 2-D embedding: [sin(x w), cos(x w), sin(y w), cos(y w)], x = column."""
    gh, gw = grid
    quarter = width // 4
    omega = torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1)
    omega = 1.0 / temperature**omega
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                          torch.arange(gw, dtype=torch.float64), indexing="ij")
    x = x.reshape(-1, 1) * omega
    y = y.reshape(-1, 1) * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


class PositionEmbedding(nn.Module):
    """Additive position embedding for `num_slots` prefix tokens plus a grid of patches.

    `num_slots` is the number of prefix tokens (class, distillation) that get an embedding
    of their own; prefix tokens without a slot get none.
    """

    def __init__(self, kind: str, width: int, grid: tuple[int, int], num_slots: int):
        super().__init__()
        self.kind = kind
        self.grid = tuple(grid)
        self.num_slots = num_slots
        gh, gw = self.grid
        if kind == "learned1d":
            self.weight = nn.Parameter(torch.empty(1, num_slots + gh * gw, width))
        elif kind == "learned2d":
            self.row = nn.Parameter(torch.empty(gh, width // 2))
            self.col = nn.Parameter(torch.empty(gw, width - width // 2))
            self.slots = nn.Parameter(torch.empty(1, num_slots, width)) if num_slots else None
        elif kind == "sincos2d":
            # Fixed embeddings have nothing to learn for the class token: it gets none (big_vision).
            self.num_slots = 0
            self.register_buffer("fixed", sincos2d(self.grid, width), persistent=False)
        else:
            raise ValueError(f"no additive embedding for kind {kind!r}")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            nn.init.trunc_normal_(p, std=0.02)

    def patch_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(N, D) embedding of the patch positions, resampled if `grid` differs."""
        if self.kind == "learned1d":
            emb = resample_grid(self.weight[0, self.num_slots:], self.grid, grid)
        elif self.kind == "learned2d":
            rows = resample_line(self.row, grid[0])
            cols = resample_line(self.col, grid[1])
            emb = torch.cat([rows[:, None, :].expand(-1, grid[1], -1),
                             cols[None, :, :].expand(grid[0], -1, -1)], dim=-1)
            emb = emb.reshape(grid[0] * grid[1], -1)
        elif tuple(grid) == self.grid:
            emb = self.fixed
        else:
            emb = sincos2d(grid, self.fixed.shape[-1]).to(self.fixed)
        return emb

    def slot_embedding(self) -> torch.Tensor | None:
        if not self.num_slots:
            return None
        if self.kind == "learned1d":
            return self.weight[0, : self.num_slots]
        return self.slots[0]

    def forward(self, tokens: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
        emb = self.patch_embedding(grid)
        slots = self.slot_embedding()
        if slots is not None:
            return tokens + torch.cat([slots, emb], dim=0)
        if num_prefix == 0:
            return tokens + emb
        return torch.cat([tokens[:, :num_prefix], tokens[:, num_prefix:] + emb], dim=1)


def relative_offsets(grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """(T, T) index into a relative table: one entry per 2-D offset, the last for prefix pairs."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + gh - 1
    dx = xs[:, None] - xs[None, :] + gw - 1
    patch_index = dy * (2 * gw - 1) + dx
    prefix_index = (2 * gh - 1) * (2 * gw - 1)
    t = num_prefix + gh * gw
    index = torch.full((t, t), prefix_index, dtype=torch.long)
    index[num_prefix:, num_prefix:] = patch_index
    return index


class RelativePositionBias(nn.Module):
    """Relative attention (paper appendix D.4): a learned embedding per relative offset acts as
    a key for the content query; the resulting logits are added to the attention logits.

    Offsets are 2-D (dy, dx) on the patch grid, so the table resizes like an image; every pair
    involving a class or distillation token shares one extra entry.
    """

    def __init__(self, grid: tuple[int, int], head_dim: int, num_prefix: int):
        super().__init__()
        self.grid = tuple(grid)
        self.num_prefix = num_prefix
        gh, gw = self.grid
        self.table = nn.Parameter(torch.empty((2 * gh - 1) * (2 * gw - 1) + 1, head_dim))
        self.register_buffer("index", relative_offsets(self.grid, num_prefix), persistent=False)
        self.scale = head_dim**-0.5
        nn.init.trunc_normal_(self.table, std=0.02)

    def table_for(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(grid) == self.grid:
            return self.table, self.index
        gh, gw = self.grid
        offsets = self.table[:-1]
        new = (2 * grid[0] - 1, 2 * grid[1] - 1)
        offsets = resample_grid(offsets, (2 * gh - 1, 2 * gw - 1), new)
        table = torch.cat([offsets, self.table[-1:]], dim=0)
        return table, relative_offsets(grid, self.num_prefix).to(self.index.device)

    def forward(self, q: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Attention-logit bias (B, H, T, T) for queries q (B, H, T, head_dim)."""
        table, index = self.table_for(grid)
        keys = table[index]  # (T, T, head_dim)
        return torch.einsum("bhtd,tsd->bhts", q * self.scale, keys)


def grid_from_tokens(num_tokens: int) -> tuple[int, int]:
    """The square grid of a raster sequence of `num_tokens` patches (checkpoints store no grid)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} position embeddings do not form a square grid")
    return (side, side)
