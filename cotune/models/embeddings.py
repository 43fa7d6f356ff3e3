"""Layers the mlp family uses on tables: the input of a table layout (categorical embeddings and numeric
feature embeddings, periodic or piecewise-linear) and the batched head of a parameter-efficient ensemble.

Every per-feature (or per-member) linear layer is one einsum over a stacked weight, never a Python loop.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from cotune.data.text import token_columns
from cotune.errors import ModelError
from cotune.models.text import text_encoder as text_encoder_for


def _uniform(shape: tuple, fan_in: int) -> nn.Parameter:
    """nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class NLinear(nn.Module):
    """n independent Linear(d_in -> d_out), one per feature: (B, n, d_in) -> (B, n, d_out)."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = _uniform((n, d_in, d_out), d_in)
        self.bias = _uniform((n, d_out), d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bni,nio->bno", x, self.weight) + self.bias


class PeriodicEmbedding(nn.Module):
    """PLR embeddings (Gorishniy et al. 2022; RTDL's PeriodicEmbeddings, lite=False): per feature j,
    trainable frequencies w_j (16 of them, initialised N(0, sigma) truncated at 3 sigma), the features
    [cos(2 pi w_j x_j), sin(2 pi w_j x_j)], then a per-feature Linear(32 -> d) and ReLU.
    (B, n) -> (B, n, d)."""

    def __init__(self, n: int, d: int, n_frequencies: int = 16, sigma: float = 0.1):
        super().__init__()
        self.frequencies = nn.Parameter(nn.init.trunc_normal_(torch.empty(n, n_frequencies), 0.0, sigma,
                                                              -3 * sigma, 3 * sigma))
        self.linear = NLinear(n, 2 * n_frequencies, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 2 * math.pi * self.frequencies * x[..., None]  # (B, n, 16)
        return torch.relu(self.linear(torch.cat([torch.cos(v), torch.sin(v)], -1)))


class PiecewiseLinearEmbedding(nn.Module):
    """Piecewise-linear encoding (PLE, Gorishniy et al. 2022) on given bin edges, then a per-feature
    Linear(T_max -> d) and ReLU. (B, n) -> (B, n, d).

    Bin t of a feature, edges [e_{t-1}, e_t], encodes (x - e_{t-1}) / (e_t - e_{t-1}) clamped to [0, 1],
    except that the first bin is not clamped below and the last not above (a one-bin feature: not at all).
    Features with fewer bins than T_max are padded with masked (always 0) bins. The edges (padded) and
    the mask are buffers, so they are saved with the weights."""

    def __init__(self, bins: list, d: int):
        super().__init__()
        n, t_max = len(bins), max(len(e) - 1 for e in bins)
        edges, mask = torch.zeros(n, t_max + 1), torch.zeros(n, t_max)
        for j, e in enumerate(bins):
            t = len(e) - 1
            edges[j, :t + 1] = torch.tensor(e, dtype=torch.float32)
            edges[j, t + 1:] = e[-1] + torch.arange(1, t_max - t + 1, dtype=torch.float32)  # width-1 padding
            mask[j, :t] = 1.0
        self.register_buffer("edges", edges)   # (n, T_max + 1)
        self.register_buffer("bin_mask", mask)  # (n, T_max): 1 for a real bin
        self.linear = NLinear(n, t_max, d)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B, n, T_max): the encoding itself, before the linear layer."""
        left, right = self.edges[:, :-1], self.edges[:, 1:]
        r = (x[..., None] - left) / (right - left)
        t = torch.arange(left.shape[1], device=x.device)
        last = self.bin_mask.sum(1, keepdim=True) - 1  # (n, 1): each feature's last real bin
        inf = torch.tensor(math.inf, device=x.device, dtype=r.dtype)
        lo = torch.where(t == 0, -inf, torch.zeros_like(inf)).expand_as(left)
        hi = torch.where(t == last, inf, torch.ones_like(inf))
        return torch.clamp(r, lo, hi) * self.bin_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(self.encode(x)))


class CategoricalEmbedding(nn.Module):
    """One embedding table of c_i rows per categorical column i (stored as one table with row offsets, so
    the lookup is one kernel), initialised U(-1/sqrt(d), 1/sqrt(d)) as RTDL's. Codes arrive as floats:
    they are rounded and clamped to 0..c_i-1 (mixup can blend two codes). (B, n_cat) -> (B, n_cat, d)."""

    def __init__(self, cardinalities: list, d: int):
        super().__init__()
        cards = torch.tensor(cardinalities, dtype=torch.long)
        self.register_buffer("offsets", torch.cumsum(cards, 0) - cards, persistent=False)
        self.register_buffer("max_code", cards - 1, persistent=False)
        self.embedding = nn.Embedding(int(cards.sum()), d)
        bound = 1 / math.sqrt(d)
        nn.init.uniform_(self.embedding.weight, -bound, bound)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        idx = torch.minimum(torch.nan_to_num(codes).round().long().clamp(min=0), self.max_code)
        return self.embedding(idx + self.offsets)


class TableInput(nn.Module):
    """The first layer's input from a table laid out as numeric | one-hot | categorical-code | token-id
    columns: the numeric columns as they are or embedded, the one-hot columns as they are, the categorical
    embeddings, flattened, then one vector of `text_width` per text column from its `text_encoder`
    (cotune.models.text). (B, F) -> (B, out_features)."""

    def __init__(self, layout: dict, num_embedding: str, d: int, text_encoder: str = "bag", text_width: int = 64):
        super().__init__()
        n, self.n_num, self.n_hot = layout["numeric"], layout["numeric"], layout["onehot"]
        cards = layout["cardinalities"]
        texts = layout.get("text") or []
        self.n_cat, self.texts = len(cards), texts
        if any(t.get("weighted") for t in texts) and text_encoder != "bag":
            raise ModelError(f"data.tokenizer=ngrams gives each text as a bag of weighted n-grams, which only "
                             f"model.text_encoder=bag reads (not {text_encoder!r}); set it to bag, or use another tokenizer.")
        self.num = (PeriodicEmbedding(n, d) if num_embedding == "periodic" else
                    PiecewiseLinearEmbedding(layout["bins"], d) if num_embedding == "piecewise" else None)
        self.cat = CategoricalEmbedding(cards, d) if cards else None
        self.text = nn.ModuleList(text_encoder_for(text_encoder, t["vocab"], t["length"], text_width)
                                  for t in layout.get("text") or [])
        starts = n + self.n_hot + self.n_cat + np.cumsum([0] + [token_columns(t) for t in texts])
        self.text_starts = [int(s) for s in starts[:-1]]  # each text column's first feature column
        self.out_features = (n * d if self.num is not None else n) + self.n_hot + len(cards) * d + \
            len(self.text) * text_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = self.n_num + self.n_hot
        num, hot = x[:, :self.n_num], x[:, self.n_num:split]
        parts = [num if self.num is None else self.num(num).flatten(1), hot]
        if self.cat is not None:
            parts.append(self.cat(x[:, split:split + self.n_cat]).flatten(1))
        for encoder, t, start in zip(self.text, self.texts, self.text_starts):
            length = t["length"]
            ids = x[:, start:start + length]
            parts.append(encoder(ids, x[:, start + length:start + 2 * length]) if t.get("weighted") else encoder(ids))
        return torch.cat(parts, 1)


def table_input(layout: dict | None, num_embedding: str, d: int, text_encoder: str = "bag",
                text_width: int = 64) -> TableInput | None:
    """The input layer a layout asks for, or None when the plain flat input is the same thing (no layout,
    no embedded categoricals or text and no numeric embedding to apply)."""
    if layout is None:
        return None
    num_embedding = num_embedding if layout["numeric"] else "none"
    if num_embedding == "none" and not layout["cardinalities"] and not layout.get("text"):
        return None
    return TableInput(layout, num_embedding, d, text_encoder, text_width)


class EnsembleHead(NLinear):
    """k independent Linear(d_in -> out_dim) heads, one per ensemble member: (B, k, d_in) -> (B, k, out_dim)
    (NLinear over the members instead of the features)."""


class TextLinear(nn.Module):
    """A linear path from the weighted n-gram bags of a table's text columns (data.tokenizer=ngrams) straight
    to the outputs: one weight row per n-gram of each column (one table, with row offsets) and a bias, so its
    output is sum over the columns and their n-grams of weight x row. `fit` sets it to the convex solution on
    the training rows (LogisticRegression, or Ridge for regression, at inverse L2 strength C) and freezes it.
    (B, F) -> (B, out_dim). Read by the gathered rows, never the fused bag: it exports to ONNX as it trains."""

    def __init__(self, texts: list, starts: list, out_dim: int):
        super().__init__()
        self.cols = [(int(s), int(t["length"])) for t, s in zip(texts, starts)]
        vocabs = torch.tensor([int(t["vocab"]) for t in texts])
        self.register_buffer("offsets", torch.cumsum(vocabs, 0) - vocabs, persistent=False)
        self.register_buffer("max_id", vocabs - 1, persistent=False)
        self.weight = nn.Parameter(torch.zeros(int(vocabs.sum()), out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def bags(self, x: torch.Tensor) -> tuple:
        """(B, F) -> (rows of the weight table (B, T), their weights (B, T)), T the columns' lengths summed."""
        ids = [torch.minimum(torch.nan_to_num(x[:, s:s + n]).round().long().clamp(min=0), self.max_id[i]) + self.offsets[i]
               for i, (s, n) in enumerate(self.cols)]
        return torch.cat(ids, 1), torch.cat([x[:, s + n:s + 2 * n] for s, n in self.cols], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx, w = self.bags(x)
        return (self.weight[idx] * w.unsqueeze(-1).to(self.weight.dtype)).sum(1) + self.bias

    def fit(self, x: np.ndarray, y: np.ndarray, task: str, C: float, weights: np.ndarray | None = None) -> dict:
        """The convex fit on the rows `x` (B, F) and targets `y` (class indices; regression: the standardized
        targets the network learns), then frozen. Returns what was fitted, for metrics.json."""
        import warnings

        import scipy.sparse as sp
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression, Ridge
        idx, w = self.bags(torch.as_tensor(np.asarray(x, dtype=np.float32)))
        rows = np.repeat(np.arange(len(x)), idx.shape[1])
        X = sp.csr_matrix((w.numpy().ravel().astype(np.float64), (rows, idx.numpy().ravel())), shape=(len(x), self.weight.shape[0]))
        W, b, m = np.zeros(tuple(self.weight.shape)), np.zeros(self.weight.shape[1]), None
        classes = np.unique(y) if task != "regression" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if task == "regression":
                m = Ridge(alpha=1.0 / C).fit(X, np.asarray(y, dtype=np.float64), sample_weight=weights)
                W[:, 0], b[0] = m.coef_, m.intercept_
            elif len(classes) >= 2:
                m = LogisticRegression(C=C, max_iter=1000).fit(X, y, sample_weight=weights)
                cls = m.classes_.astype(int)
                if len(cls) == 2:  # one decision function: class 1's logit, class 0's at 0
                    W[:, cls[1]], b[cls[1]] = m.coef_[0], m.intercept_[0]
                else:
                    W[:, cls], b[cls] = m.coef_.T, m.intercept_
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(W))
            self.bias.copy_(torch.from_numpy(b))
        self.requires_grad_(False)
        steps = getattr(m, "n_iter_", None)
        return {"C": float(C), "ngrams": int(X.shape[1]), "rows": int(X.shape[0]), "fitted": m is not None,
                "iterations": int(np.max(steps)) if steps is not None else None}
