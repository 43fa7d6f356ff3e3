"""MLP on the flattened input. Knobs: width, depth (0 = linear / logistic model), dropout, norm,
activation. Ignored: kernel_size, pool, bidirectional, heads."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from cotune.models.registry import act_layer, check_knobs, register_model


class MLP(nn.Module):
    """`depth` x [Linear(width) -> norm -> act -> dropout], then Linear(out_dim)."""

    def __init__(self, in_shape: tuple, out_dim: int, width: int, depth: int, dropout: float,
                 norm: str, activation: str):
        super().__init__()
        layers, d = [nn.Flatten()], math.prod(in_shape)
        for _ in range(depth):
            layers.append(nn.Linear(d, width))
            if norm != "none":
                layers.append(nn.BatchNorm1d(width) if norm == "batch" else nn.LayerNorm(width))
            layers.append(act_layer(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = width
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *in_shape) -> (B, out_dim)
        return self.net(x)


@register_model(modalities=("tabular", "sequence", "image"), searched=("tabular", "sequence", "image"))
def mlp(in_shape: tuple, out_dim: int, **knobs) -> nn.Module:
    """Multilayer perceptron on the flattened input (depth 0 = linear model)."""
    k = check_knobs("mlp", in_shape, knobs, min_depth=0)
    return MLP(tuple(in_shape), out_dim, k["width"], k["depth"], k["dropout"], k["norm"], k["activation"])


@register_model
def mlp_s(in_shape, out_dim, **kw):
    """MLP, small preset: width 64, depth 1."""
    return mlp(in_shape, out_dim, **{"width": 64, "depth": 1, **kw})


@register_model
def mlp_m(in_shape, out_dim, **kw):
    """MLP, medium preset: width 128, depth 2."""
    return mlp(in_shape, out_dim, **{"width": 128, "depth": 2, **kw})


@register_model
def mlp_l(in_shape, out_dim, **kw):
    """MLP, large preset: width 256, depth 3."""
    return mlp(in_shape, out_dim, **{"width": 256, "depth": 3, **kw})
