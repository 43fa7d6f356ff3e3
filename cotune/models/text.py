"""Text encoders over token ids, for free-text columns of a table: `text_encoder(name, vocab, length, width)`.

A tokenizer turns each text into a row of `length` ids, padded at the end: id 0 (PAD) is padding, id 1 (UNK)
an unknown token, ids >= 2 real tokens; `vocab` counts every id, 0 and 1 included. Every encoder maps
(B, length) ids to (B, width) float features (`out_features` = width). The ids may arrive as floats, since
the table's feature matrix is float and mixup can blend two rows: they are rounded and clamped to
0..vocab-1. Padding never reaches the output: pad positions get a zero embedding whatever the pad row holds,
every pooling is over the non-pad positions only, and an all-pad row (an empty text) gives finite features.

Embeddings (and the transformer's positions) are initialised U(-1/sqrt(width), 1/sqrt(width)), the pad row 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cotune.errors import ModelError, fmt_choices, invalid

PAD, UNK = 0, 1
TEXT_ENCODERS: dict[str, type] = {}  # name -> nn.Module subclass taking (vocab, length, width), in registration order


def register_text_encoder(name: str):
    """Class decorator: register an encoder class under `name` (a name registered twice is a ValueError)."""
    def add(cls: type) -> type:
        if name in TEXT_ENCODERS:
            raise ValueError(f"text encoder {name!r} is already registered")
        TEXT_ENCODERS[name] = cls
        return cls
    return add


def list_text_encoders() -> list[str]:
    """The registered encoder names, in registration order."""
    return list(TEXT_ENCODERS)


def text_encoder(name: str, vocab: int, length: int, width: int) -> nn.Module:
    """A new `name` encoder of `length` ids over a vocabulary of `vocab` ids to `width` features."""
    if name not in TEXT_ENCODERS:
        raise ModelError(invalid("the text encoder", f"one of {fmt_choices(TEXT_ENCODERS)}", name))
    for key, v, lo in (("vocab", vocab, 2), ("length", length, 1), ("width", width, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ModelError(invalid(f"the text encoder's {key!r}", f"an integer >= {lo}", v))
    return TEXT_ENCODERS[name](vocab, length, width)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) features, (B, L) mask of 1 (keep) / 0 -> (B, D) mean over the kept positions (0 where none)."""
    m = mask.unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


class TextEncoder(nn.Module):
    """The shared part: the ids' embedding (B, length) -> (B, length, width) and the mask of real tokens.

    `delta`, when set to a (B, length, width) tensor, is added to the next forward's embeddings (the real
    tokens' only) and then cleared: an attack in embedding space (cotune.robust) sets it before each forward
    it takes, adversarial training before the training step's."""

    delta: torch.Tensor | None = None

    def __init__(self, vocab: int, length: int, width: int):
        super().__init__()
        self.vocab, self.length, self.out_features = vocab, length, width
        self.embedding = nn.Embedding(vocab, width, padding_idx=PAD)
        bound = 1 / math.sqrt(width)
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()

    def ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Float or integer ids -> long ids in 0..vocab-1 (NaN -> PAD)."""
        return torch.nan_to_num(ids).round().long().clamp(0, self.vocab - 1)

    def embed(self, idx: torch.Tensor) -> tuple:
        """Long ids (B, L) -> (embeddings with pad positions zeroed (B, L, width), float mask (B, L))."""
        mask = (idx != PAD).float()
        e, delta, self.delta = self.embedding(idx), self.delta, None
        if delta is not None:
            e = e + delta.to(e.dtype)
        return e * mask.unsqueeze(-1), mask


@register_text_encoder("bag")
class BagEncoder(TextEncoder):
    """fastText-style bag of embeddings: the mean embedding of the real tokens, or with `weights` (B, length)
    (a bag of TF-IDF-weighted n-grams, cotune.data.text) their weighted sum. A training step without an attack's
    `delta` takes the fused F.embedding_bag (pads left out of the reduction, as below); evaluation, attacks
    and the ONNX export take the gathered embeddings."""

    def forward(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        idx = self.ids(ids)
        if self.training and self.delta is None:  # the same sum / mean fused, at about half the step's cost
            return F.embedding_bag(idx, self.embedding.weight, padding_idx=PAD, mode="mean" if weights is None else "sum",
                                   per_sample_weights=None if weights is None else weights.to(self.embedding.weight.dtype))
        e, mask = self.embed(idx)
        return masked_mean(e, mask) if weights is None else (e * weights.unsqueeze(-1)).sum(1)


@register_text_encoder("cnn1d")
class CNNEncoder(TextEncoder):
    """Embedding -> Conv1d(width, width, kernel 3, padding 1) -> ReLU -> max over the real positions.
    A pad position's input is zero, the same as the convolution's own zero padding, so trailing pads do not
    change the real positions' outputs."""

    def __init__(self, vocab: int, length: int, width: int):
        super().__init__(vocab, length, width)
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e, mask = self.embed(self.ids(ids))
        h = torch.relu(self.conv(e.transpose(1, 2)))  # (B, width, L), >= 0
        # after the ReLU every value is >= 0, so zeroing the pads gives the max over the real positions
        # exactly (as setting them very negative would) and 0 for an all-pad row
        return (h * mask.unsqueeze(1)).amax(2)


class RNNEncoder(TextEncoder):
    """Embedding -> a one-layer bidirectional GRU / LSTM of width // 2 units per direction (at least 1;
    then Linear to width when 2 * units != width) -> mean of the outputs over the real tokens.

    The two directions are two batch-first one-directional cells, `forward_rnn` over the real tokens in
    order and `backward_rnn` over them in reverse, each reading the row's real tokens first and its pads
    after them (the ids are reordered by a sort, so even pads between tokens are skipped). A direction's
    outputs at the real tokens then never see a pad: a plain bidirectional cell would run its backward
    direction through the trailing pads before the first real token."""

    cell: type = nn.GRU

    def __init__(self, vocab: int, length: int, width: int):
        super().__init__(vocab, length, width)
        units = max(width // 2, 1)
        self.forward_rnn = self.cell(width, units, batch_first=True)
        self.backward_rnn = self.cell(width, units, batch_first=True)
        self.proj = nn.Linear(2 * units, width) if 2 * units != width else None
        self.register_buffer("positions", torch.arange(length), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        idx = self.ids(ids)
        e, mask = self.embed(idx)
        pad = (idx == PAD).long() * self.length  # sort keys: every real token before every pad
        in_order = torch.argsort(self.positions + pad, dim=1)
        reverse = torch.argsort(self.length - 1 - self.positions + pad, dim=1)
        e_fwd, e_bwd = (e.gather(1, o.unsqueeze(-1).expand_as(e)) for o in (in_order, reverse))
        mask = mask.gather(1, in_order)  # 1 at the first n positions, n = the row's real tokens
        h = torch.cat([masked_mean(self.forward_rnn(e_fwd)[0], mask),
                       masked_mean(self.backward_rnn(e_bwd)[0], mask)], 1)  # (B, 2 * units)
        return h if self.proj is None else self.proj(h)


@register_text_encoder("gru")
class GRUEncoder(RNNEncoder):
    """RNNEncoder with GRU cells."""

    cell = nn.GRU


@register_text_encoder("lstm")
class LSTMEncoder(RNNEncoder):
    """RNNEncoder with LSTM cells."""

    cell = nn.LSTM


@register_text_encoder("transformer")
class TransformerEncoder(TextEncoder):
    """Embedding + learned positional embedding (length, width) -> one pre-norm nn.TransformerEncoderLayer
    (heads: the largest of 4, 2, 1 dividing width; feed-forward 2 * width; no dropout) with the pads masked
    as keys -> mean over the real positions. An all-pad row keeps position 0 unmasked (a fully masked row's
    attention is NaN) and its output is that position's."""

    def __init__(self, vocab: int, length: int, width: int):
        super().__init__(vocab, length, width)
        bound = 1 / math.sqrt(width)
        self.position = nn.Parameter(torch.empty(length, width).uniform_(-bound, bound))
        heads = next(h for h in (4, 2, 1) if width % h == 0)
        self.layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.register_buffer("first", torch.arange(length) == 0, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e, mask = self.embed(self.ids(ids))
        keep = (mask > 0) | ((mask.sum(1, keepdim=True) == 0) & self.first)  # (B, L): position 0 of an empty row
        h = self.layer(e + self.position, src_key_padding_mask=~keep)
        return masked_mean(h, keep.float())
