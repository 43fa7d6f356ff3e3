"""K zoo models of one shape as one batched model, and back.

    pop = stack([create_model("mlp", (40,), 10, width=100, depth=2, dropout=d) for d in rates])
    out = pop(x)            # x (K, B, *in_shape) -> (K, B, out_dim)
    unstack(pop, 3, model)  # member 3's parameters and buffers into a zoo module of its shape

Members may differ in their dropout rate (present or not: a member without dropout has rate 0); everything that
fixes the layers (family, input and output size, width, depth, norm, activation, kernel, pool) must be equal, else
`stack` raises a PopulationError naming the knob, and the caller trains those trials one by one.

Every stacked tensor has its members along dim 0 in order (K rows, or K blocks of rows), so `tensor.view(K, -1)[k]`
is member k's flattened slice: the optimizer, clipping and `shrink` use that.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from cotune.errors import ModelError
from cotune.models.cnn1d import CNN1D
from cotune.models.cnn2d import CNN2D, BasicBlock
from cotune.models.mlp import MLP
from cotune.search.population import layers as L

ACTS = {nn.ReLU: "relu", nn.GELU: "gelu", nn.Tanh: "tanh", nn.SiLU: "silu", nn.SELU: "selu", nn.Mish: "mish"}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.Identity)


class PopulationError(ModelError):
    """Models that cannot train as one population (different shapes, or a family without batched layers)."""


class Block(nn.Module):
    """cnn2d's BasicBlock on the grouped layout: act(body(x) + shortcut(x))."""

    def __init__(self, body: nn.Module, shortcut: nn.Module, act: nn.Module):
        super().__init__()
        self.body, self.shortcut, self.act = body, shortcut, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Population(nn.Module):
    """The batched model. forward: (K, B, *in_shape) -> (K, B, out_dim)."""

    def __init__(self, family: str, k: int, in_shape: tuple, p: torch.Tensor):
        super().__init__()
        self.family, self.k, self.in_shape = family, k, tuple(in_shape)
        self.ensemble, self.adapter = 1, None  # mlp's in-model ensemble (e copies of each row, e output layers)
        self.ctx = L.Ctx(p)
        self.flatten = False
        self.features: nn.Module = nn.Identity()
        self.head: nn.Module = nn.Identity()
        self.slots: list[tuple[nn.Module, list[str], bool]] = []  # (batched layer, member prefixes, in the output layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        if self.family == "mlp" and self.ensemble > 1:
            return self._ensemble(x.reshape(k, b, -1))
        if self.family == "mlp":
            return self.head(self.features(x.reshape(k, b, -1)))
        h = self.features(L.to_grouped(x if self.family == "cnn2d" else x.reshape(k, b, *self.in_shape)))  # (B, K*C, *S)
        if self.flatten:
            h = h.reshape(b, k, -1).transpose(0, 1)
        else:
            h = L.from_grouped(h.mean(dim=tuple(range(2, h.dim()))), k)  # (K, B, C)
        return self.head(h)

    def _ensemble(self, x: torch.Tensor) -> torch.Tensor:
        """The in-model ensemble as cotune.models.mlp.MLP.forward: (K, B, e, out) in training (the loss averages the
        copies' losses), else (K, B, out): the mean for one output, else log of the mean of the softmax probabilities."""
        k, b, e = x.shape[0], x.shape[1], self.ensemble
        mask = self.ctx.mask
        if mask is not None:  # each row's copies are as real as it is
            self.ctx.mask = mask.repeat_interleave(e, dim=1)
        try:
            h = self.features(self.adapter(x))  # (K, B*e, width)
        finally:
            self.ctx.mask = mask
        z = self.head(h.reshape(k, b, e, h.shape[-1]))
        if self.training:
            return z
        if z.shape[-1] == 1:
            return z.mean(2)
        return torch.logsumexp(torch.log_softmax(z, -1), dim=2) - math.log(e)

    def stacked(self):
        """(name, tensor, is_parameter) for every stacked tensor."""
        return [*((n, t, True) for n, t in self.named_parameters()), *((n, t, False) for n, t in self.named_buffers())]

    def shrink(self, keep: list[int]) -> None:
        """Keep members `keep` (in that order): every stacked tensor is indexed along its members, as new leaves."""
        idx = torch.as_tensor(keep, dtype=torch.long, device=self.ctx.p.device)
        for mod in self.modules():
            for name, t in list(mod._parameters.items()) + list(mod._buffers.items()):
                if t is None:
                    continue
                new = take(t.detach(), self.k, idx).clone()
                if name in mod._parameters:
                    mod._parameters[name] = nn.Parameter(new, requires_grad=t.requires_grad)
                else:
                    mod._buffers[name] = new
            if hasattr(mod, "k") and mod is not self:
                mod.k = len(keep)
        self.ctx.set_p(self.ctx.p[idx])
        self.slots = [(m, [pre[i] for i in keep], head) for m, pre, head in self.slots]
        self.k = len(keep)


def take(t: torch.Tensor, k: int, idx: torch.Tensor) -> torch.Tensor:
    """Members idx of a stacked tensor t of k members (members along dim 0)."""
    return t.reshape(k, -1)[idx].reshape(len(idx) * (t.shape[0] // k), *t.shape[1:])


def _differ(knob: str, detail: str = "") -> PopulationError:
    return PopulationError(f"These models cannot train as one population: their {knob} differs{detail}; "
                           "train them one by one.")


def _strip(seq: nn.Sequential, prefix: str) -> tuple[list, list, float]:
    """(children without dropout, their names, the dropout rate) of a Sequential."""
    kids, names, p = [], [], 0.0
    for name, m in seq.named_children():
        if isinstance(m, nn.Dropout):
            p = max(p, m.p)
            if m.p > 0:
                kids.append(None)
                names.append(None)
            continue
        kids.append(m)
        names.append(f"{prefix}{name}")
    return kids, names, p


def _convert(mods: list, names: list[str], pop: Population, grouped: bool, head: bool) -> nn.Module:
    """One batched layer (or container) from the members' modules at one position."""
    m0 = mods[0]
    if any(type(m) is not type(m0) for m in mods):
        kind = "model.norm" if isinstance(m0, NORMS) else "model.activation" if type(m0) in ACTS else "model.depth"
        raise _differ(kind)
    if isinstance(m0, nn.Sequential):
        return _sequence(mods, names, pop, grouped, head)
    if isinstance(m0, BasicBlock):
        sub = lambda attr: _convert([getattr(m, attr) for m in mods], [f"{n}.{attr}" for n in names], pop, grouped, head)  # noqa: E731
        return Block(sub("body"), sub("shortcut"), sub("act"))
    if type(m0) in ACTS:
        return L.Act(ACTS[type(m0)])
    if isinstance(m0, (nn.Identity, nn.Flatten)):
        return nn.Identity()
    for attr in ("weight", "bias"):
        ts = [getattr(m, attr, None) for m in mods]
        if any((t is None) != (ts[0] is None) or (t is not None and t.shape != ts[0].shape) for t in ts):
            kernel = isinstance(m0, nn.Conv1d) and any(m.kernel_size != m0.kernel_size for m in mods)
            knob = "model.kernel_size" if kernel else "model.norm" if attr == "bias" and None in ts else "model.width"
            raise _differ(knob, f" ({names[0]}.{attr})")
    if isinstance(m0, nn.Linear):
        layer = L.Linear(mods)
    elif isinstance(m0, (nn.Conv1d, nn.Conv2d)) and grouped and m0.groups == 1:
        layer = L.Conv(mods)
    elif isinstance(m0, (nn.BatchNorm1d, nn.BatchNorm2d)) and m0.affine and m0.track_running_stats:
        layer = L.BatchNorm(mods, pop.ctx, grouped)
    elif isinstance(m0, nn.LayerNorm) and not grouped and m0.elementwise_affine and len(m0.normalized_shape) == 1:
        layer = L.LayerNorm(mods)
    elif isinstance(m0, nn.GroupNorm) and grouped and m0.num_groups == 1 and m0.affine:
        layer = L.GroupNorm1(mods)
    else:
        raise PopulationError(f"A population has no batched layer for {type(m0).__name__} ({names[0]}); "
                              "train these models one by one.")
    pop.slots.append((layer, list(names), head))
    return layer


def _sequence(mods: list, names: list[str], pop: Population, grouped: bool, head: bool) -> nn.Sequential:
    """A Sequential: positions line up once dropout layers are set aside (a member without them has rate 0)."""
    parts = [_strip(m, f"{n}." if n else "") for m, n in zip(mods, names)]
    core = [[c for c in kids if c is not None] for kids, _, _ in parts]
    if len({len(c) for c in core}) > 1:
        n_weighted = {sum(isinstance(x, (nn.Linear, nn.Conv1d, nn.Conv2d, BasicBlock)) for x in c) for c in core}
        raise _differ("model.depth" if len(n_weighted) > 1 else "model.norm")
    drop_at = set()  # positions (in the core list) after which some member has dropout
    for kids, _, _ in parts:
        pos = -1
        for c in kids:
            if c is None:
                drop_at.add(pos)
            else:
                pos += 1
    out = [L.Dropout(pop.ctx, grouped)] if -1 in drop_at else []
    for i in range(len(core[0])):
        kid_names = [[n for n in nm if n is not None][i] for _, nm, _ in parts]
        out.append(_convert([c[i] for c in core], kid_names, pop, grouped, head))
        if i in drop_at:
            out.append(L.Dropout(pop.ctx, grouped))
    return nn.Sequential(*out)


def _rate(m: nn.Module) -> float:
    return max([d.p for d in m.modules() if isinstance(d, nn.Dropout)] or [0.0])


def stack(models: list[nn.Module]) -> Population:
    """One Population from K zoo modules (mlp, cnn1d, cnn2d) of one shape; their weights are copied."""
    if not models:
        raise PopulationError("A population needs at least one model.")
    m0 = models[0]
    kinds = {MLP: "mlp", CNN1D: "cnn1d", CNN2D: "cnn2d"}
    if any(type(m) is not type(m0) for m in models):
        raise _differ("model.family")
    family = kinds.get(type(m0))
    if family is None:
        raise PopulationError(f"A population has no batched layers for {type(m0).__name__} (only mlp, cnn1d and cnn2d); "
                              "train these models one by one.")
    if family == "mlp" and any(m.embed is not None for m in models):
        raise PopulationError("A population has no batched layers for an mlp with a table layout's embeddings; "
                              "train these models one by one.")
    if family == "mlp" and len({m.k for m in models}) > 1:
        raise _differ("model.ensemble")
    if family == "cnn1d" and len({m.in_shape for m in models}) > 1:
        raise _differ("input shape")
    if family != "mlp" and len({m.pool if family == "cnn1d" else m.flatten for m in models}) > 1:
        raise _differ("model.pool")
    dev = next(m0.parameters()).device
    p = torch.tensor([_rate(m) for m in models], device=dev, dtype=next(m0.parameters()).dtype)
    in_shape = m0.in_shape if family == "cnn1d" else ()
    pop = Population(family, len(models), in_shape, p)
    if family == "mlp" and m0.k > 1:
        pop.ensemble, pop.adapter = m0.k, L.Adapter([m.adapter for m in models])
        pop.slots.append((pop.adapter, [""] * len(models), False))
        pop.features = _convert([m.net for m in models], ["net"] * len(models), pop, False, False)
        pop.head = L.EnsembleHead([m.head for m in models])
        pop.slots.append((pop.head, ["head"] * len(models), True))
    elif family == "mlp":
        kids = [nn.Sequential(*m.net[:-1]) for m in models]
        pop.features = _convert(kids, ["net"] * len(models), pop, False, False)
        pop.head = _convert([m.net[-1] for m in models], [f"net.{len(m.net) - 1}" for m in models], pop, False, True)
    elif family == "cnn1d":
        pop.features = _convert([m.features for m in models], ["features"] * len(models), pop, True, False)
        pop.flatten = m0.pool == "flatten"
        pop.head = _convert([m.head for m in models], ["head"] * len(models), pop, False, True)
    else:
        pop.features = _convert([m.features for m in models], ["features"] * len(models), pop, True, False)
        pop.flatten = m0.flatten
        pop.head = _convert([m.head for m in models], ["head"] * len(models), pop, False, True)
    pop.train(m0.training)
    return pop


def shape_key(model: nn.Module) -> tuple:
    """What must be equal for models to stack: class, input shape, pool, and every layer's type and tensor shapes
    (dropout layers left out: their rate is per member). Equal keys stack; a search groups its trials by this key
    (and train.batch_size, train.optimizer) before train_population."""
    layers = tuple((type(m).__name__, *(tuple(t.shape) for t in m.parameters(recurse=False)))
                   for m in model.modules() if not isinstance(m, (nn.Dropout, nn.Sequential)))
    extra = tuple(getattr(model, a, None) for a in ("in_shape", "pool", "flatten", "k"))
    return (type(model).__name__, extra, layers, getattr(model, "embed", None) is None)


def group_by_shape(models: list[nn.Module]) -> list[list[int]]:
    """Indices of models grouped by shape_key, in first-seen order (each group can be one population)."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(shape_key(m), []).append(i)
    return list(groups.values())


def unstack(pop: Population, k: int, into: nn.Module) -> nn.Module:
    """Write member k's parameters and buffers into `into` (a zoo module of its shape); returns it."""
    sd = {}
    for layer, prefixes, _ in pop.slots:
        sd.update({f"{prefixes[k]}.{n}".lstrip("."): t.detach().clone() for n, t in layer.member(k).items()})
    into.load_state_dict(sd, strict=True)
    return into
