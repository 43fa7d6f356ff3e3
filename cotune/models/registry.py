"""Model registry (timm style) plus the knob checks and small helpers every family shares.

A family file defines an nn.Module, a base factory named after the family (e.g. `mlp`) and sized
variants (`mlp_s`, `mlp_m`, `mlp_l`), each decorated with `@register_model`. Every factory has the
same signature `(in_shape, out_dim, *, width, depth, dropout, norm, activation, kernel_size, pool,
bidirectional, heads)`; a family ignores the knobs that do not apply to it.
"""
from __future__ import annotations

import difflib
import fnmatch
import numbers

import torch.nn as nn
import torch.nn.functional as F

from cotune.errors import ModelError, fmt_choices, invalid

FAMILIES = ("mlp", "cnn1d", "cnn2d", "gru", "lstm", "transformer")
NORMS = ("none", "batch", "layer")
ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
POOLS = ("auto", "flatten", "mean", "last")
KNOBS = ("width", "depth", "dropout", "norm", "activation", "kernel_size", "pool", "bidirectional", "heads")
MODALITY_OF_NDIM = {1: "tabular", 2: "sequence", 3: "image"}  # per-sample shape (F,) / (C, L) / (C, H, W)

_MODELS: dict = {}      # name -> factory
_MODALITIES: dict = {}  # family -> accepted input modalities


def family_of(name: str) -> str:
    """'mlp_s' -> 'mlp': the family is the name up to the first underscore."""
    return name.partition("_")[0]


def register_model(fn=None, *, modalities=None):
    """Register a factory under its function name. Use as `@register_model` or, on a family's base
    factory, `@register_model(modalities=("tabular", ...))`; variants inherit the family's modalities."""
    def deco(f):
        if f.__name__ in _MODELS:
            raise ValueError(f"model {f.__name__!r} is registered twice")
        _MODELS[f.__name__] = f
        if modalities is not None:
            _MODALITIES[family_of(f.__name__)] = tuple(modalities)
        return f
    return deco(fn) if fn is not None else deco


def list_models(pattern: str = "*") -> list:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def _lookup(name: str):
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), list(_MODELS), n=3, cutoff=0.5)
        hint = f"closest: {', '.join(map(repr, close))}" if close else f"families: {', '.join(FAMILIES)}"
        raise ModelError(invalid("'model.family'", f"a registered model ({hint})", name,
                                 "run `cotune models` to list them"))
    return _MODELS[name]


def model_info(name: str) -> dict:
    """Family, accepted input modalities and the first docstring line of a registered model."""
    fn, fam = _lookup(name), family_of(name)
    doc = (fn.__doc__ or "").strip().splitlines()
    return {"name": name, "family": fam, "modalities": _MODALITIES.get(fam, tuple(MODALITY_OF_NDIM.values())),
            "summary": doc[0].strip() if doc else ""}


def create_model(name: str, in_shape, out_dim: int, **kw) -> nn.Module:
    """Build a registered model for per-sample input shape `in_shape` and `out_dim` outputs.

    Knobs passed as None are dropped here (so the factory default applies); unknown knobs raise."""
    fn = _lookup(name)
    kw = {k: v for k, v in kw.items() if v is not None}  # None means "use the default"
    unknown = sorted(set(kw) - set(KNOBS))
    if unknown:
        raise ModelError(invalid("a model knob", f"one of {fmt_choices(KNOBS)}", unknown[0],
                                 "remove it or fix its spelling"))
    return fn(check_shape(in_shape), check_int("out_dim", out_dim, 1), **kw)


# ---- shared checks -------------------------------------------------------------------------------
def check_int(key: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:  # numpy ints are fine
        raise ModelError(invalid(f"'model.{key}'" if key != "out_dim" else "'out_dim'", f"an integer >= {lo}", v))
    return int(v)


def check_shape(in_shape) -> tuple:
    try:
        shape = tuple(int(s) for s in in_shape)
        ok = len(shape) in MODALITY_OF_NDIM and all(s >= 1 for s in shape) and list(shape) == list(in_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelError(invalid("the model input shape", "(F,), (C, L) or (C, H, W) of positive integers",
                                 in_shape))
    return shape


def check_knobs(family: str, in_shape, knobs: dict, min_depth: int = 1) -> str:
    """Validate every knob in `knobs` (a factory's `locals()`; even knobs the family ignores) and that
    the family accepts the input's modality; return the modality."""
    width, depth, dropout, norm, activation, kernel_size, pool, bidirectional, heads = (knobs[k] for k in KNOBS)
    check_int("width", width, 1)
    check_int("depth", depth, min_depth)
    check_int("kernel_size", kernel_size, 1)
    check_int("heads", heads, 1)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ModelError(invalid("'model.dropout'", "a number in [0, 1)", dropout))
    for key, v, choices in (("norm", norm, NORMS), ("activation", activation, ACTIVATIONS), ("pool", pool, POOLS)):
        if v not in choices:
            raise ModelError(invalid(f"'model.{key}'", f"one of {fmt_choices(choices)}", v))
    if not isinstance(bidirectional, bool):
        raise ModelError(invalid("'model.bidirectional'", "true or false", bidirectional))
    modality = MODALITY_OF_NDIM[len(check_shape(in_shape))]
    accepted = _MODALITIES.get(family, tuple(MODALITY_OF_NDIM.values()))
    if modality not in accepted:
        fits = [f for f in FAMILIES if modality in _MODALITIES.get(f, ())]
        raise ModelError(invalid(f"the input of model family {family!r}", f"{_or(accepted)} data",
                                 tuple(in_shape), f"for {modality} data use {_or(fits)}"))
    return modality


def _or(words) -> str:
    words = list(words)
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


def check_pool(family: str, pool: str, allowed: tuple) -> str:
    if pool not in allowed:
        raise ModelError(invalid(f"'model.pool' for {family}", f"one of {fmt_choices(allowed)}", pool))
    return pool


# ---- shared layers -------------------------------------------------------------------------------
def act_layer(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}[name]()


def act_fn(name: str):
    return {"relu": F.relu, "gelu": F.gelu, "tanh": F.tanh, "silu": F.silu}[name]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
