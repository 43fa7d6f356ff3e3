"""Transformer encoder. Tokens: tabular (F,) -> one token per feature (FT-Transformer style: a learned
per-feature embedding of the scalar value); sequence (C, L) -> L tokens, Linear(C -> width) per step;
image (C, H, W) -> H row tokens, Linear(C*W -> width). A CLS token is prepended and a learned
positional embedding added. Knobs: width (d_model; feed-forward is 2*width), depth (encoder layers),
heads (reduced to the largest divisor of width that is <= heads), dropout, activation, pool ('auto' =
CLS token, 'mean' = mean of the non-CLS tokens, 'last' = last token, 'flatten' = all tokens). Layers
are pre-norm with a final LayerNorm. Ignored: norm (always LayerNorm), kernel_size, bidirectional and
the mlp-only num_embedding, embedding_dim, ensemble."""
from __future__ import annotations

import torch
import torch.nn as nn

from cotune.models.registry import act_fn, check_knobs, register_model
from cotune.models.rnn import as_steps, to_steps


def fit_heads(width: int, heads: int) -> int:
    """Largest divisor of width that is <= heads (so that d_model splits evenly across heads)."""
    return max(h for h in range(1, min(heads, width) + 1) if width % h == 0)


class FeatureTokenizer(nn.Module):
    """(B, F) -> (B, F, width): token_f = x_f * weight_f + bias_f."""

    def __init__(self, n_features: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, width) / width ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n_features, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias


class Transformer(nn.Module):
    """Tokenize -> [CLS] + tokens + positions -> `depth` pre-norm encoder layers -> LayerNorm -> pool -> Linear."""

    head_name = "head"  # the output layer (registry.head)

    def __init__(self, in_shape: tuple, out_dim: int, width: int, depth: int, dropout: float, activation: str,
                 pool: str, heads: int):
        super().__init__()
        steps, feats = as_steps(in_shape)
        self.tokenize = FeatureTokenizer(steps, width) if len(in_shape) == 1 else nn.Linear(feats, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, steps + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, fit_heads(width, heads), dim_feedforward=2 * width,
                                           dropout=dropout, activation=act_fn(activation), batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.pool = "cls" if pool == "auto" else pool
        self.head = nn.Linear(width * (steps + 1 if pool == "flatten" else 1), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = to_steps(x)  # (B, T, D)
        tok = self.tokenize(steps.squeeze(-1) if isinstance(self.tokenize, FeatureTokenizer) else steps)  # (B, T, width)
        tok = torch.cat([self.cls.expand(tok.shape[0], -1, -1), tok], dim=1) + self.pos  # (B, T + 1, width)
        h = self.encoder(tok)  # (B, T + 1, width)
        if self.pool == "cls":
            h = h[:, 0]
        elif self.pool == "mean":
            h = h[:, 1:].mean(dim=1)
        elif self.pool == "last":
            h = h[:, -1]
        else:
            h = h.flatten(1)  # (B, (T + 1) * width)
        return self.head(h)  # (B, out_dim)


@register_model(modalities=("tabular", "sequence", "image"), searched=("tabular", "sequence"), cpu_costly=True)
def transformer(in_shape: tuple, out_dim: int, **knobs) -> nn.Module:
    """Pre-norm transformer encoder over feature / timestep / row tokens with a CLS token."""
    k = check_knobs("transformer", in_shape, knobs)
    return Transformer(tuple(in_shape), out_dim, k["width"], k["depth"], k["dropout"], k["activation"], k["pool"],
                       k["heads"])


@register_model
def transformer_s(in_shape, out_dim, **kw):
    """Transformer, small preset: width 32, depth 1."""
    return transformer(in_shape, out_dim, **{"width": 32, "depth": 1, **kw})


@register_model
def transformer_m(in_shape, out_dim, **kw):
    """Transformer, medium preset: width 64, depth 2."""
    return transformer(in_shape, out_dim, **{"width": 64, "depth": 2, **kw})


@register_model
def transformer_l(in_shape, out_dim, **kw):
    """Transformer, large preset: width 128, depth 4."""
    return transformer(in_shape, out_dim, **{"width": 128, "depth": 4, **kw})
