"""Structured pruning of the zoo's own families: rebuild the model through the registry with a smaller
`width` and copy into it the weights of the most important channels / hidden units of each layer.

A narrow model is an ordinary zoo model (the same family, kwargs with a smaller width), so it saves,
loads and trains like any other; nothing stays masked or dense with zeros (torch.nn.utils.prune gives
neither a smaller file nor a faster model).

Each family is described by its channel groups: a set of channels that must be kept or dropped together
(a layer's output channels; in a ResNet every tensor added by a residual connection shares one set),
listing every tensor dimension it indexes (a slot). A unit's importance is the |gamma| of the norm that
follows it when there is one (network slimming, Liu et al. 2017), else the L1 norm of its incoming
weights (Li et al. 2017); summed over the producers of a shared group. `importance=` overrides it per
group. Each group keeps its top k units, k read from the narrow model (so each family's own rounding of
its stage widths holds), in their original order.

Normalization over a whole layer (LayerNorm, GroupNorm(1, C)) computes its statistics over the kept
channels only after pruning, so even a channel with no outgoing weight changes the output a little;
fine-tuning recovers that. The transformer is not pruned: its width must stay divisible by the heads,
so a narrower one may get other heads and attend differently.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cotune.errors import ModelError, invalid
from cotune.models.cnn1d import CNN1D
from cotune.models.cnn2d import CNN2D
from cotune.models.mlp import MLP
from cotune.models.registry import create_model, family_of
from cotune.models.rnn import RNN

def unit(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Unit j is index j: (k,) -> (k, 1)."""
    return idx[:, None]


def blocks(b: int):
    """Unit j is index j of each of b consecutive blocks of n (the gates of an RNN layer; the directions
    of a bidirectional output; timesteps x directions of a flattened RNN output)."""
    return lambda idx, n: idx[:, None] + n * torch.arange(b)


def inner(m: int):
    """Unit j owns m consecutive indices j*m .. j*m + m-1 (a channel's positions in a channel-major flatten)."""
    return lambda idx, n: idx[:, None] * m + torch.arange(m)


@dataclass(frozen=True)
class Slot:
    """One tensor dimension a group indexes. role: 'w_in' / 'b_in' a unit's incoming weights and bias,
    'gamma' / 'beta' its norm's scale and shift, 'stat' the norm's running statistics, 'out' where the next
    layer (or the head) reads the unit."""
    key: str          # a state_dict key
    dim: int          # the dimension the group indexes
    role: str
    spread: object = unit  # (idx (k,), group size n) -> (k, m) indices along dim: the m entries of each unit


@dataclass
class Group:
    """Channels kept or dropped together, named after the module that produces them first."""
    name: str
    size: int
    slots: list = field(default_factory=list)

    def add(self, key: str, dim: int, role: str, spread=unit) -> None:
        self.slots.append(Slot(key, dim, role, spread))

    def produce(self, sd: dict, prefix: str) -> None:
        """A Linear / conv named `prefix` produces this group's units (rows of its weight, its bias)."""
        self.add(f"{prefix}.weight", 0, "w_in")
        if f"{prefix}.bias" in sd:
            self.add(f"{prefix}.bias", 0, "b_in")

    def norm(self, sd: dict, prefix: str) -> None:
        """The norm named `prefix` (BatchNorm, LayerNorm, GroupNorm; nothing for Identity) follows the units."""
        if f"{prefix}.weight" in sd:
            self.add(f"{prefix}.weight", 0, "gamma")
            self.add(f"{prefix}.bias", 0, "beta")
        for stat in ("running_mean", "running_var"):
            if f"{prefix}.{stat}" in sd:
                self.add(f"{prefix}.{stat}", 0, "stat")


# ---- one plan per family: its channel groups, read from a built model --------------------------------
def _mlp(model: MLP, sd: dict) -> list:
    layers = list(model.net.named_children())
    linears = [i for i, (_, m) in enumerate(layers) if isinstance(m, nn.Linear)]
    hidden = linears if model.k > 1 else linears[:-1]  # without an ensemble the last Linear is the head
    if not hidden:
        raise ModelError("The mlp has depth 0 (a linear model), so it has no hidden units to prune; "
                         "train one with model.depth >= 1 to prune it.")
    groups = []
    for j, i in enumerate(hidden):
        g = Group(f"net.{layers[i][0]}", layers[i][1].out_features)
        g.produce(sd, f"net.{layers[i][0]}")
        nxt = layers[i + 1]
        if isinstance(nxt[1], (nn.BatchNorm1d, nn.LayerNorm)):
            g.norm(sd, f"net.{nxt[0]}")
        if j + 1 < len(hidden):
            g.add(f"net.{layers[hidden[j + 1]][0]}.weight", 1, "out")
        elif model.k > 1:
            g.add("head.weight", 1, "out")  # (k, d_in, out_dim)
        else:
            g.add(f"net.{layers[linears[-1]][0]}.weight", 1, "out")
        groups.append(g)
    return groups


def _cnn1d(model: CNN1D, sd: dict) -> list:
    layers = list(model.features.named_children())
    convs = [i for i, (_, m) in enumerate(layers) if isinstance(m, nn.Conv1d)]
    groups = []
    for j, i in enumerate(convs):
        name, conv = layers[i]
        g = Group(f"features.{name}", conv.out_channels)
        g.produce(sd, f"features.{name}")
        if i + 1 < len(layers) and isinstance(layers[i + 1][1], (nn.BatchNorm1d, nn.GroupNorm)):
            g.norm(sd, f"features.{layers[i + 1][0]}")
        if j + 1 < len(convs):
            g.add(f"features.{layers[convs[j + 1]][0]}.weight", 1, "out")
        else:  # the head reads (B, width) or the channel-major flatten (B, width * L')
            g.add("head.weight", 1, "out", unit if model.pool == "mean" else inner(model.head.in_features // g.size))
        groups.append(g)
    return groups


def _cnn2d(model: CNN2D, sd: dict) -> list:
    stem = model.features[0]
    cur = Group("features.0", stem.out_channels)  # the stem's channels, shared with identity-shortcut blocks
    cur.produce(sd, "features.0")
    cur.norm(sd, "features.1")
    groups = [cur]
    for i, block in enumerate(model.features[3:], start=3):
        p = f"features.{i}"
        first = Group(f"{p}.body.0", block.body[0].out_channels)  # the block's inner channels: its own set
        first.produce(sd, f"{p}.body.0")
        first.norm(sd, f"{p}.body.1")
        first.add(f"{p}.body.3.weight", 1, "out")
        groups.append(first)
        cur.add(f"{p}.body.0.weight", 1, "out")
        if not isinstance(block.shortcut, nn.Identity):  # a 1x1 conv shortcut: the block's output is a new set
            cur.add(f"{p}.shortcut.0.weight", 1, "out")
            cur = Group(p, block.body[3].out_channels)
            cur.produce(sd, f"{p}.shortcut.0")
            cur.norm(sd, f"{p}.shortcut.1")
            groups.append(cur)
        cur.produce(sd, f"{p}.body.3")  # body + shortcut are added: the same channel set
        cur.norm(sd, f"{p}.body.4")
    lin = model.head[1]
    cur.add("head.1.weight", 1, "out", inner(lin.in_features // cur.size) if model.flatten else unit)
    return groups


def _rnn(model: RNN, sd: dict) -> list:
    rnn, w = model.rnn, model.width
    gates = 3 if isinstance(rnn, nn.GRU) else 4
    dirs = ("", "_reverse")[:model.dirs]
    groups = []
    for layer in range(rnn.num_layers):
        g = Group(f"rnn.l{layer}", w)  # one set for both directions
        for d in dirs:
            s = f"l{layer}{d}"
            g.add(f"rnn.weight_ih_{s}", 0, "w_in", blocks(gates))
            g.add(f"rnn.weight_hh_{s}", 0, "w_in", blocks(gates))
            g.add(f"rnn.weight_hh_{s}", 1, "out")  # the recurrent input: h_{t-1} of the same units
            g.add(f"rnn.bias_ih_{s}", 0, "b_in", blocks(gates))
            g.add(f"rnn.bias_hh_{s}", 0, "b_in", blocks(gates))
            if layer + 1 < rnn.num_layers:  # the next layer reads [forward | backward] outputs
                g.add(f"rnn.weight_ih_l{layer + 1}{d}", 1, "out", blocks(model.dirs))
        groups.append(g)
    # every pool lays the head's input out as blocks of width: [fwd | bwd], per timestep when flattened
    groups[-1].add("head.1.weight", 1, "out", blocks(model.head[1].in_features // w))
    return groups


# family -> (its module class, its plan); in every plan the first group's size is the width knob
PLANS = {"mlp": (MLP, _mlp), "cnn1d": (CNN1D, _cnn1d), "cnn2d": (CNN2D, _cnn2d), "gru": (RNN, _rnn),
         "lstm": (RNN, _rnn)}


def prunable(name: str) -> bool:
    """Whether models of this family (or registered model name, 'mlp_s') can be pruned (an mlp only
    with depth >= 1)."""
    return family_of(str(name)) in PLANS


def plan(model: nn.Module, name: str) -> list:
    """The channel groups (Group: name, size, slots) of a built model of family / model name `name`."""
    fam = family_of(str(name))
    if fam not in PLANS:
        why = ("its width must stay divisible by the attention heads, so a narrower one may get other heads"
               if fam == "transformer" else "it is not one of the zoo's prunable families")
        raise ModelError(f"Pruning is not available for the {fam!r} family ({why}); prunable: "
                         f"{', '.join(PLANS)}. Quantize or export it instead.")
    cls, build = PLANS[fam]
    if not isinstance(model, cls):
        raise ModelError(invalid(f"the model to prune as {name!r}", f"a {cls.__name__}", type(model).__name__))
    return build(model, model.state_dict())


def scores(sd: dict, g: Group) -> torch.Tensor:
    """(size,) importance of a group's units: the summed |gamma| of its norms, else the L1 norm of its
    incoming weights."""
    src = [s for s in g.slots if s.role == "gamma"] or [s for s in g.slots if s.role == "w_in"]
    total = torch.zeros(g.size)
    units = torch.arange(g.size)
    for s in src:
        t = sd[s.key].detach().float().abs().cpu()
        per = t.movedim(s.dim, 0).reshape(t.shape[s.dim], -1).sum(1)  # one value per index along dim
        total += per[s.spread(units, g.size)].sum(1)
    return total


def _mismatch(name, in_shape, out_dim, what: str) -> str:
    return (f"The model to prune is not what create_model({name!r}, {tuple(in_shape)}, {out_dim}, **kwargs) builds "
            f"at a smaller width ({what}); pass the name, input shape, out_dim and kwargs it was built with.")


def prune(model: nn.Module, name: str, kwargs: dict, in_shape: tuple, out_dim: int, keep: float,
          importance: dict | None = None) -> tuple:
    """A narrower copy of `model` (built as create_model(name, in_shape, out_dim, **kwargs)) keeping the
    fraction `keep` in (0, 1] of its width: (narrow model, its kwargs). The narrow model is built by the
    registry with width max(1, round(width * keep)), is in the mode `model` is in, on its device.

    `importance` maps a group name (see plan) to a (size,) score per unit, higher = kept, in place of
    the default |gamma| / L1 scores; groups it leaves out use the default."""
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or not 0.0 < keep <= 1.0:
        raise ModelError(invalid("the kept width fraction 'keep'", "a number in (0, 1]", keep))
    old = plan(model, name)
    new_kwargs = {**kwargs, "width": max(1, int(old[0].size * keep + 0.5))}  # kwargs may lack it (a preset)
    narrow = create_model(name, in_shape, out_dim, **new_kwargs)
    new = {g.name: g for g in plan(narrow, name)}
    if list(new) != [g.name for g in old]:  # every family keeps its structure at any width
        raise ModelError(_mismatch(name, in_shape, out_dim, f"layers {[g.name for g in old]} vs {list(new)}"))
    importance = dict(importance or {})
    unknown = sorted(set(importance) - set(new))
    if unknown:
        raise ModelError(invalid("an importance key", f"a channel group of the model ({', '.join(new)})", unknown[0]))
    sd = model.state_dict()
    picks = {}  # state_dict key -> [(dim, indices into the old tensor)]
    for g in old:
        s = importance.get(g.name)
        s = scores(sd, g) if s is None else torch.as_tensor(s, dtype=torch.float32).flatten().cpu()
        if s.numel() != g.size:
            raise ModelError(invalid(f"importance[{g.name!r}]", f"{g.size} scores, one per unit",
                                     f"{s.numel()} scores"))
        kept = torch.argsort(s, descending=True, stable=True)[:new[g.name].size].sort().values
        for slot in g.slots:
            idx = slot.spread(kept, g.size).flatten().sort().values  # every layout here is monotone in the unit
            picks.setdefault(slot.key, []).append((slot.dim, idx))
    target = narrow.state_dict()
    out = {}
    for key, t in sd.items():
        for dim, idx in picks.get(key, ()):
            t = t.index_select(dim, idx.to(t.device))
        if key not in target or t.shape != target[key].shape:
            raise ModelError(_mismatch(name, in_shape, out_dim, f"{key} sliced to {tuple(t.shape)}"))
        out[key] = t
    p = next(model.parameters())
    narrow = narrow.to(p.device, p.dtype)
    narrow.load_state_dict(out)
    return narrow.train(model.training), new_kwargs
