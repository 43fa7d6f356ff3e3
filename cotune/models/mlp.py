"""MLP on the flattened input. Knobs: width, depth (0 = linear / logistic model), dropout, norm,
activation, ensemble, and on tables with a layout num_embedding, embedding_dim, and for text columns
text_encoder, text_width and text_linear. Ignored:
kernel_size, pool, bidirectional, heads.

With a table layout (see registry.check_layout) the embedded categoricals go through embeddings of
`embedding_dim` each and, with num_embedding 'periodic' or 'piecewise', so do the numeric columns
(cotune.models.embeddings); the one-hot columns go in as they are; each text column's token ids become one
vector through its own text encoder (cotune.models.text). Without a layout, or when there is
nothing to embed, the model is the plain MLP on the flat input (the same parameters and state_dict keys).

text_linear = C > 0 (n-gram text, data.tokenizer=ngrams) adds a linear path from the texts' n-gram bags straight to
the outputs (embeddings.TextLinear), fitted convexly on the training rows before training starts (pipeline.setup
calls `fit_convex`: LogisticRegression / Ridge at inverse L2 strength C, what a TF-IDF + LogisticRegression pipeline
fits) and frozen; the output layer starts at zero, so the network trains from the linear model and adds to it.

ensemble = k > 1 is a parameter-efficient ensemble (TabM-mini, Gorishniy et al. 2024, in BatchEnsemble
style): the first layer's input is copied k times and member m scales its copy elementwise by its own
trainable vector r_m, initialised with random signs +-1 as TabM-mini does (so the members differ from the
first step on while every copy keeps its scale); the hidden layers are shared by all k copies and each
member has its own output head. In training mode the output is (B, k, out_dim), one prediction per member
(the training loss averages their losses); in eval mode it is (B, out_dim): the members' mean for
out_dim 1 (regression), else log of the mean of their softmax probabilities, so a softmax of the output is
the ensemble's averaged probabilities.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from cotune.errors import ModelError
from cotune.models.embeddings import EnsembleHead, TextLinear, table_input
from cotune.models.registry import act_layer, check_knobs, head, register_model


class MLP(nn.Module):
    """[table input ->] [x r_m per member ->] `depth` x [Linear(width) -> norm -> act -> dropout], then
    Linear(out_dim), one per member with an ensemble."""

    def __init__(self, in_shape: tuple, out_dim: int, width: int, depth: int, dropout: float,
                 norm: str, activation: str, layout: dict | None = None, num_embedding: str = "none",
                 embedding_dim: int = 8, ensemble: int = 1, text_encoder: str = "bag", text_width: int = 64,
                 text_linear: float = 0.0):
        super().__init__()
        self.embed = table_input(layout, num_embedding, embedding_dim, text_encoder, text_width)  # None: flat input
        self.linear, self.linear_c = None, float(text_linear)
        if text_linear > 0:
            bags = [(t, s) for t, s in zip(self.embed.texts, self.embed.text_starts) if t.get("weighted")] \
                if self.embed is not None else []
            if not bags:
                raise ModelError(f"model.text_linear={text_linear:g} reads the n-gram bags of data.tokenizer=ngrams, "
                                 "and the table has no text column tokenized that way; set data.tokenizer=ngrams, "
                                 "or model.text_linear=0.")
            self.linear = TextLinear([t for t, _ in bags], [s for _, s in bags], out_dim)
        d = math.prod(in_shape) if self.embed is None else self.embed.out_features
        self.k = ensemble
        if ensemble > 1:
            self.adapter = nn.Parameter(torch.randint(0, 2, (ensemble, d)).float() * 2 - 1)  # r_m: random signs
        layers = [nn.Flatten()]
        for _ in range(depth):
            layers.append(nn.Linear(d, width))
            if norm != "none":
                layers.append(nn.BatchNorm1d(width) if norm == "batch" else nn.LayerNorm(width))
            layers.append(act_layer(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = width
        if ensemble > 1:
            self.head = EnsembleHead(ensemble, d, out_dim)
        else:
            layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.head_name = "head" if ensemble > 1 else f"net.{len(layers) - 1}"  # the output layer (registry.head)
        if self.linear is not None:  # training starts from the linear path alone; the network learns what it leaves
            out = head(self)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def fit_convex(self, x, y, task: str, weights=None) -> dict | None:
        """Fit the linear path (model.text_linear) on the training rows and freeze it; None without one."""
        return None if self.linear is None else self.linear.fit(x, y, task, self.linear_c, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> (B, out_dim); an ensemble in training mode: (B, k, out_dim)."""
        h = x if self.embed is None else self.embed(x.flatten(1))
        lin = 0.0 if self.linear is None else self.linear(x.flatten(1))
        if self.k == 1:
            return self.net(h) + lin
        h = h.flatten(1)
        b = h.shape[0]
        h = (h[:, None, :] * self.adapter).reshape(b * self.k, h.shape[1])  # member m's copy, scaled by r_m
        h = self.net(h)  # the shared layers see all k copies
        z = self.head(h.reshape(b, self.k, h.shape[-1]))  # (B, k, out_dim)
        if self.linear is not None:
            z = z + lin.unsqueeze(1)
        if self.training:
            return z
        if z.shape[-1] == 1:
            return z.mean(1)
        return torch.logsumexp(torch.log_softmax(z, -1), dim=1) - math.log(self.k)


@register_model(modalities=("tabular", "sequence", "image"), searched=("tabular", "sequence", "image"),
                table_layout=True)
def mlp(in_shape: tuple, out_dim: int, **knobs) -> nn.Module:
    """Multilayer perceptron on the flattened input (depth 0 = linear model)."""
    k = check_knobs("mlp", in_shape, knobs, min_depth=0)
    return MLP(tuple(in_shape), out_dim, k["width"], k["depth"], k["dropout"], k["norm"], k["activation"],
               layout=k["layout"], num_embedding=k["num_embedding"], embedding_dim=k["embedding_dim"],
               ensemble=k["ensemble"], text_encoder=k["text_encoder"], text_width=k["text_width"],
               text_linear=k["text_linear"])


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
