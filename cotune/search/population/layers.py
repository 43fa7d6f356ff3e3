"""Batched layers: K members of one shape in one module, each member with its own weights.

Dense parts carry (K, B, F) tensors (member first). Convolution stacks carry the grouped layout (B, K*C, *spatial),
member k's channels at k*C..(k+1)*C, so a convolution is one call with groups=K and a batch norm is one
F.batch_norm over K*C channels (as HFTA fuses them); `to_grouped` / `from_grouped` convert at the ends.

A batch may be padded: `Ctx.mask` (K, B) marks each member's real rows (None: every row is real). Only batch
norm in training mode looks across rows, so only it reads the mask (masked statistics, and no running-stat
update for a member without rows). Dropout takes a per-member rate `Ctx.p` (K,), 0 for members without dropout.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cotune.models.registry import act_fn


class Ctx:
    """What every layer of one population shares: the batch's row mask and the members' dropout rates."""

    def __init__(self, p: torch.Tensor):
        self.mask: torch.Tensor | None = None  # (K, B) bool, or None when no row is padding
        self.set_p(p)

    def set_p(self, p: torch.Tensor) -> None:
        self.p = p                                   # (K,) dropout rates
        self.dropout = bool((p > 0).any())           # on the host: no device sync per forward


def to_grouped(x: torch.Tensor) -> torch.Tensor:
    """(K, B, C, *S) -> (B, K*C, *S)."""
    k, b, c = x.shape[:3]
    return x.transpose(0, 1).reshape(b, k * c, *x.shape[3:])


def from_grouped(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K*C, *S) -> (K, B, C, *S)."""
    b = x.shape[0]
    return x.reshape(b, k, x.shape[1] // k, *x.shape[2:]).transpose(0, 1)


class Linear(nn.Module):
    """K linear layers as one baddbmm: weight (K, in, out), bias (K, 1, out); (K, B, in) -> (K, B, out)."""

    def __init__(self, mods: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in mods]).contiguous())
        self.bias = None if mods[0].bias is None else nn.Parameter(torch.stack([m.bias.detach() for m in mods])[:, None, :].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias, x, self.weight)

    def member(self, k: int) -> dict:
        out = {"weight": self.weight[k].t()}
        return out if self.bias is None else {**out, "bias": self.bias[k, 0]}


class Conv(nn.Module):
    """K Conv1d/Conv2d as one grouped convolution on the grouped layout: weight (K*Cout, Cin, *k)."""

    def __init__(self, mods: list[nn.Module]):
        super().__init__()
        m = mods[0]
        self.k, self.cout, self.nd = len(mods), m.out_channels, m.weight.dim() - 2
        self.stride, self.padding, self.dilation = m.stride, m.padding, m.dilation
        self.weight = nn.Parameter(torch.cat([c.weight.detach() for c in mods]).clone())
        self.bias = None if m.bias is None else nn.Parameter(torch.cat([c.bias.detach() for c in mods]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv1d if self.nd == 1 else F.conv2d
        return conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, groups=self.k)

    def member(self, k: int) -> dict:
        s = slice(k * self.cout, (k + 1) * self.cout)
        out = {"weight": self.weight[s]}
        return out if self.bias is None else {**out, "bias": self.bias[s]}


class BatchNorm(nn.Module):
    """K batch norms with per-member running statistics, on (K, B, C) (dense) or the grouped layout (conv)."""

    def __init__(self, mods: list[nn.Module], ctx: Ctx, grouped: bool):
        super().__init__()
        m = mods[0]
        self.ctx, self.grouped, self.k, self.c, self.eps, self.momentum = ctx, grouped, len(mods), m.num_features, m.eps, m.momentum
        self.weight = nn.Parameter(torch.cat([b.weight.detach() for b in mods]).clone())
        self.bias = nn.Parameter(torch.cat([b.bias.detach() for b in mods]).clone())
        self.register_buffer("running_mean", torch.cat([b.running_mean for b in mods]).clone())
        self.register_buffer("running_var", torch.cat([b.running_var for b in mods]).clone())
        self.register_buffer("num_batches_tracked", torch.stack([b.num_batches_tracked for b in mods]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = not self.grouped
        if dense:  # (K, B, C) -> (B, K*C)
            x = x.transpose(0, 1).reshape(x.shape[1], -1)
        mask = self.ctx.mask
        if not self.training or mask is None:
            if self.training:
                self.num_batches_tracked += 1
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                             self.momentum, self.eps)
        else:
            y = self._masked(x, mask)
        return y.reshape(y.shape[0], self.k, self.c).transpose(0, 1) if dense else y

    def _masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Training-mode batch norm over each member's real rows only (padded batches)."""
        b = x.shape[0]
        shape = (b, self.k, self.c, *x.shape[2:])
        xv = x.reshape(shape)
        m = mask.t().to(x.dtype).reshape(b, self.k, 1, *([1] * (x.dim() - 2)))  # (B, K, 1, ...)
        dims = (0, *range(3, xv.dim()))
        per_row = 1 if x.dim() == 2 else x[0, 0].numel()
        cnt = m.sum(0).reshape(self.k, 1) * per_row  # (K, 1) values per channel
        mean = (xv * m).sum(dims) / cnt.clamp(min=1)  # (K, C)
        bshape = (1, self.k, self.c, *([1] * (x.dim() - 2)))
        var = (((xv - mean.reshape(bshape)) ** 2) * m).sum(dims) / cnt.clamp(min=1)
        y = (xv - mean.reshape(bshape)) / torch.sqrt(var.reshape(bshape) + self.eps)
        y = y * self.weight.reshape(bshape) + self.bias.reshape(bshape)
        with torch.no_grad():
            live = (cnt > 0).reshape(-1)
            unbiased = var * cnt / (cnt - 1).clamp(min=1)
            upd = lambda old, new: torch.where(live[:, None], (1 - self.momentum) * old + self.momentum * new, old)  # noqa: E731
            self.running_mean.copy_(upd(self.running_mean.reshape(self.k, self.c), mean.detach()).reshape(-1))
            self.running_var.copy_(upd(self.running_var.reshape(self.k, self.c), unbiased.detach()).reshape(-1))
            self.num_batches_tracked += live.long()
        return y.reshape(x.shape)

    def member(self, k: int) -> dict:
        s = slice(k * self.c, (k + 1) * self.c)
        return {"weight": self.weight[s], "bias": self.bias[s], "running_mean": self.running_mean[s],
                "running_var": self.running_var[s], "num_batches_tracked": self.num_batches_tracked[k]}


class LayerNorm(nn.Module):
    """K LayerNorm(C) on (K, B, C): normalise each row, then the member's scale and shift."""

    def __init__(self, mods: list[nn.LayerNorm]):
        super().__init__()
        self.shape, self.eps = mods[0].normalized_shape, mods[0].eps
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods])[:, None, :].clone())
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in mods])[:, None, :].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, self.shape, eps=self.eps), self.weight)

    def member(self, k: int) -> dict:
        return {"weight": self.weight[k, 0], "bias": self.bias[k, 0]}


class GroupNorm1(nn.Module):
    """K GroupNorm(1, C) on the grouped layout: one group_norm with K groups over the K*C channels."""

    def __init__(self, mods: list[nn.GroupNorm]):
        super().__init__()
        self.k, self.c, self.eps = len(mods), mods[0].num_channels, mods[0].eps
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in mods]).clone())
        self.bias = nn.Parameter(torch.cat([m.bias.detach() for m in mods]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.k, self.weight, self.bias, self.eps)

    def member(self, k: int) -> dict:
        s = slice(k * self.c, (k + 1) * self.c)
        return {"weight": self.weight[s], "bias": self.bias[s]}


class Act(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name, self.fn = name, act_fn(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Dropout(nn.Module):
    """Dropout with member k's own rate ctx.p[k] (inverted, as F.dropout); `grouped`: the conv layout."""

    def __init__(self, ctx: Ctx, grouped: bool):
        super().__init__()
        self.ctx, self.grouped = ctx, grouped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.ctx.p
        if not self.training or not self.ctx.dropout:
            return x
        k = p.shape[0]
        if self.grouped:  # (B, K*C, *S): member k's channels share its rate
            rate = p.repeat_interleave(x.shape[1] // k).reshape(1, -1, *([1] * (x.dim() - 2)))
        else:  # (K, B, F)
            rate = p.reshape(k, *([1] * (x.dim() - 1)))
        rate = rate.to(x.dtype)
        keep = torch.rand_like(x) >= rate
        return x * keep / (1 - rate).clamp(min=1e-12)


class Adapter(nn.Module):
    """The in-model ensemble's input copies (cotune.models.mlp, ensemble = e > 1): member k's input copied e times,
    copy m scaled by its r_m. adapter (K, e, d); (K, B, d) -> (K, B*e, d), row b*e + m being copy m of row b."""

    def __init__(self, adapters: list[torch.Tensor]):
        super().__init__()
        self.adapter = nn.Parameter(torch.stack([a.detach() for a in adapters]).clone())  # the zoo's name for it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, d = x.shape
        return (x[:, :, None, :] * self.adapter[:, None]).reshape(k, b * self.adapter.shape[1], d)

    def member(self, k: int) -> dict:
        return {"adapter": self.adapter[k]}


class EnsembleHead(nn.Module):
    """K EnsembleHeads (e output layers each): weight (K, e, d, out), bias (K, e, out); (K, B, e, d) -> (K, B, e, out)."""

    def __init__(self, mods: list[nn.Module]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]).clone())
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in mods]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kbni,knio->kbno", x, self.weight) + self.bias[:, None]

    def member(self, k: int) -> dict:
        return {"weight": self.weight[k], "bias": self.bias[k]}
