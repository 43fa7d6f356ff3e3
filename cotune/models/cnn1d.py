"""1-D CNN for sequences (C, L); tabular (F,) is read as (1, F). Knobs: width (channels), depth (conv
layers), kernel_size (first layer; later layers use 3), dropout, norm, activation, pool ('auto' or
'mean' = global average pool, 'flatten' = flatten all positions). Ignored: bidirectional, heads and the
mlp-only num_embedding, embedding_dim, ensemble.

'auto' is mean pooling so that the parameter count always grows with depth: with 'flatten' each extra
stride-2 layer halves the linear head (the MNIST-1D paper CNN, width 25, loses params going from
depth 1 to 2). Pass pool='flatten' for the paper model."""
from __future__ import annotations

import torch
import torch.nn as nn

from cotune.errors import ModelError, invalid
from cotune.models.registry import act_layer, check_knobs, check_pool, register_model


def conv_lengths(length: int, depth: int, kernel_size: int) -> list:
    """Sequence length after each stride-2, padding-1 conv layer."""
    out = []
    for i in range(depth):
        length = (length + 2 - (kernel_size if i == 0 else 3)) // 2 + 1
        out.append(length)
    return out


class CNN1D(nn.Module):
    """`depth` x [Conv1d(width, stride 2, padding 1) -> norm -> act -> dropout], then pool -> Linear."""

    head_name = "head"  # the output layer (registry.head)

    def __init__(self, in_shape: tuple, out_dim: int, width: int, depth: int, dropout: float, norm: str,
                 activation: str, kernel_size: int, pool: str):
        super().__init__()
        self.in_shape = in_shape if len(in_shape) == 2 else (1, in_shape[0])  # tabular (F,) -> (1, F)
        c, length = self.in_shape
        lengths = conv_lengths(length, depth, kernel_size)
        if lengths[0] < 1:  # later kernel-3 layers never shrink a length >= 1 below 1
            raise ModelError(invalid("'model.kernel_size'", f"at most {length + 2} for cnn1d on sequences "
                                     f"of length {length}", kernel_size, "reduce model.kernel_size"))
        layers = []
        for i in range(depth):
            layers.append(nn.Conv1d(c if i == 0 else width, width, kernel_size if i == 0 else 3, stride=2, padding=1))
            if norm != "none":
                layers.append(nn.BatchNorm1d(width) if norm == "batch" else nn.GroupNorm(1, width))
            layers.append(act_layer(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.pool = "mean" if pool in ("auto", "mean") else "flatten"
        self.head = nn.Linear(width * (1 if self.pool == "mean" else lengths[-1]), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.in_shape)  # (B, C, L)
        h = self.features(x)  # (B, width, L')
        h = h.mean(dim=2) if self.pool == "mean" else h.flatten(1)  # (B, width) or (B, width * L')
        return self.head(h)  # (B, out_dim)


@register_model(modalities=("tabular", "sequence"), searched=("sequence",))
def cnn1d(in_shape: tuple, out_dim: int, **knobs) -> nn.Module:
    """1-D convolutional net: stride-2 convs, then mean-pool (or flatten) and a linear head."""
    k = check_knobs("cnn1d", in_shape, knobs)
    check_pool("cnn1d", k["pool"], ("auto", "flatten", "mean"))
    return CNN1D(tuple(in_shape), out_dim, k["width"], k["depth"], k["dropout"], k["norm"], k["activation"],
                 k["kernel_size"], k["pool"])


@register_model
def cnn1d_s(in_shape, out_dim, **kw):
    """1-D CNN, small preset: width 16, depth 2."""
    return cnn1d(in_shape, out_dim, **{"width": 16, "depth": 2, **kw})


@register_model
def cnn1d_m(in_shape, out_dim, **kw):
    """1-D CNN, medium preset: width 64, depth 3."""
    return cnn1d(in_shape, out_dim, **{"width": 64, "depth": 3, **kw})


@register_model
def cnn1d_l(in_shape, out_dim, **kw):
    """1-D CNN, large preset: width 128, depth 4."""
    return cnn1d(in_shape, out_dim, **{"width": 128, "depth": 4, **kw})
