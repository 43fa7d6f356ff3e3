"""GRU and LSTM classifiers. A sequence (C, L) is read as L timesteps of C features; tabular (F,) as F
timesteps of 1 feature; an image (C, H, W) as H timesteps (rows) of C*W features. Knobs: width (hidden
size), depth (stacked layers), bidirectional, dropout (between layers and on the pooled features), pool
('auto' or 'last' = last timestep, for bidirectional the final forward state concatenated with the
backward state at t=0; 'mean' = mean over time; 'flatten' = all timesteps' outputs). Ignored: norm,
activation (the gates fix their own), kernel_size, heads and the mlp-only num_embedding, embedding_dim,
ensemble."""
from __future__ import annotations

import torch
import torch.nn as nn

from cotune.models.registry import check_knobs, register_model


def as_steps(in_shape: tuple) -> tuple:
    """(timesteps, features per step) for a per-sample input shape."""
    if len(in_shape) == 1:
        return in_shape[0], 1
    if len(in_shape) == 2:
        return in_shape[1], in_shape[0]
    c, h, w = in_shape
    return h, c * w


def to_steps(x: torch.Tensor) -> torch.Tensor:
    """(B, *in_shape) -> (B, T, D) as described in `as_steps`."""
    if x.dim() == 2:
        return x.unsqueeze(-1)  # (B, F, 1)
    if x.dim() == 3:
        return x.transpose(1, 2)  # (B, L, C)
    return x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C * W)


class RNN(nn.Module):
    """nn.GRU / nn.LSTM (batch_first) -> pool over time -> dropout -> Linear."""

    head_name = "head"  # the output layer (registry.head)

    def __init__(self, cell: str, in_shape: tuple, out_dim: int, width: int, depth: int, dropout: float,
                 pool: str, bidirectional: bool):
        super().__init__()
        steps, feats = as_steps(in_shape)
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(feats, width, num_layers=depth, batch_first=True, bidirectional=bidirectional,
                           dropout=dropout if depth > 1 else 0.0)
        self.width, self.pool, self.dirs = width, "last" if pool == "auto" else pool, 2 if bidirectional else 1
        n_out = width * self.dirs * (steps if self.pool == "flatten" else 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_out, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(to_steps(x))  # (B, T, dirs * width)
        if self.pool == "flatten":
            h = out.flatten(1)  # (B, T * dirs * width)
        elif self.pool == "mean":
            h = out.mean(dim=1)  # (B, dirs * width)
        elif self.dirs == 2:  # final forward state and the backward state at t=0
            h = torch.cat([out[:, -1, :self.width], out[:, 0, self.width:]], dim=1)  # (B, 2 * width)
        else:
            h = out[:, -1]  # (B, width)
        return self.head(h)  # (B, out_dim)


@register_model(modalities=("tabular", "sequence", "image"), searched=("sequence",), cpu_costly=True)
def gru(in_shape: tuple, out_dim: int, **knobs) -> nn.Module:
    """GRU recurrent net over timesteps with a linear head on the pooled outputs."""
    k = check_knobs("gru", in_shape, knobs)
    return RNN("gru", tuple(in_shape), out_dim, k["width"], k["depth"], k["dropout"], k["pool"], k["bidirectional"])


@register_model(modalities=("tabular", "sequence", "image"), searched=("sequence",), cpu_costly=True)
def lstm(in_shape: tuple, out_dim: int, **knobs) -> nn.Module:
    """LSTM recurrent net over timesteps with a linear head on the pooled outputs."""
    k = check_knobs("lstm", in_shape, knobs)
    return RNN("lstm", tuple(in_shape), out_dim, k["width"], k["depth"], k["dropout"], k["pool"], k["bidirectional"])


@register_model
def gru_s(in_shape, out_dim, **kw):
    """GRU, small preset: width 32, depth 1."""
    return gru(in_shape, out_dim, **{"width": 32, "depth": 1, **kw})


@register_model
def gru_m(in_shape, out_dim, **kw):
    """GRU, medium preset: width 64, depth 2."""
    return gru(in_shape, out_dim, **{"width": 64, "depth": 2, **kw})


@register_model
def gru_l(in_shape, out_dim, **kw):
    """GRU, large preset: width 128, depth 3."""
    return gru(in_shape, out_dim, **{"width": 128, "depth": 3, **kw})


@register_model
def lstm_s(in_shape, out_dim, **kw):
    """LSTM, small preset: width 32, depth 1."""
    return lstm(in_shape, out_dim, **{"width": 32, "depth": 1, **kw})


@register_model
def lstm_m(in_shape, out_dim, **kw):
    """LSTM, medium preset: width 64, depth 2."""
    return lstm(in_shape, out_dim, **{"width": 64, "depth": 2, **kw})


@register_model
def lstm_l(in_shape, out_dim, **kw):
    """LSTM, large preset: width 128, depth 3."""
    return lstm(in_shape, out_dim, **{"width": 128, "depth": 3, **kw})
