"""Model registry (timm style) plus the knob checks and small helpers every family shares.

A family file defines an nn.Module, a base factory named after the family (e.g. `mlp`) and sized
variants (`mlp_s`, `mlp_m`, `mlp_l`), each decorated with `@register_model`; the base factory's
decorator declares the family's facts (what it accepts, where a search holds it by default). Every
factory takes `(in_shape, out_dim, **knobs)`, the model knobs of knobs.py (stage 'model' except
'family' and 'init_from', which say which model to build and from what weights), and fills them with
`check_knobs`; a family ignores the knobs that do not apply to it.

Every family's module names its output layer, the one that maps to out_dim, in `head_name` (a dotted
module path, also the prefix of its state_dict keys): `head(model)` returns it. Transfer learning
re-initializes it for new classes, and train.freeze_epochs / train.backbone_lr tell it from the rest.

Tabular factories also take `layout=`, not a knob but data the preprocessing computes (see
`check_layout`): which input columns are numeric, one-hot or integer codes of embedded categoricals.
A family that reads it declares `table_layout=True`; the others accept a layout without embedded
categoricals (their input is then a plain table) and reject one with them.
"""
from __future__ import annotations

import difflib
import fnmatch
import math
import numbers
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from cotune.data.text import token_columns
from cotune.errors import ModelError, fmt_choices, invalid
from cotune.knobs import BY_NAME, KNOBS as KNOB_TABLE

NOT_FACTORY = ("model.family", "model.init_from")  # which model to build and from what weights, not how
KNOBS = tuple(k.name.split(".", 1)[1] for k in KNOB_TABLE if k.stage == "model" and k.name not in NOT_FACTORY)
# a factory called directly (not from a config) builds without dropout; the config's default is for training
DEFAULTS = {**{n: BY_NAME[f"model.{n}"].default for n in KNOBS}, "dropout": 0.0}
NORMS, ACTIVATIONS, POOLS, NUM_EMBEDDINGS, TEXT_CHOICES = (
    BY_NAME[f"model.{n}"].choices for n in ("norm", "activation", "pool", "num_embedding", "text_encoder"))
LAYOUT = "layout"  # the one factory keyword that is not a knob
MODALITY_OF_NDIM = {1: "tabular", 2: "sequence", 3: "image"}  # per-sample shape (F,) / (C, L) / (C, H, W)


@dataclass(frozen=True)
class Family:
    modalities: tuple          # input modalities it accepts
    searched: tuple = ()       # modalities whose default search space holds it
    # On CPU the recurrent and attention families cost 10-50x a CNN per epoch on the same data (an LSTM
    # trial on MNIST-1D took 230 s against 20-60 s for a CNN), so the default space leaves them out
    # there; name them in search.space to search them anyway.
    cpu_costly: bool = False
    # reads a table layout (numeric / one-hot / embedded categorical columns); the preprocessing builds
    # integer-code columns for embedded categoricals only for such families (see takes_layout)
    table_layout: bool = False


_MODELS: dict = {}    # name -> factory
_FAMILIES: dict = {}  # family -> Family, in registration order


def family_of(name: str) -> str:
    """'mlp_s' -> 'mlp': the family is the name up to the first underscore."""
    return name.partition("_")[0]


def register_model(fn=None, *, modalities=None, searched=(), cpu_costly=False, table_layout=False):
    """Register a factory under its function name. Use as `@register_model` or, on a family's base
    factory, `@register_model(modalities=("tabular", ...), searched=(...), cpu_costly=..., table_layout=...)`
    (see Family); variants inherit the family's facts."""
    if modalities is None and (searched or cpu_costly or table_layout):
        raise ValueError("searched=, cpu_costly= and table_layout= are facts of a family: "
                         "declare modalities= with them")
    if not set(searched) <= set(modalities or ()):
        raise ValueError(f"a family is searched only on modalities it accepts: {searched} vs {modalities}")
    if table_layout and "tabular" not in modalities:
        raise ValueError(f"a family reads a table layout only if it accepts tabular data: {modalities}")

    def deco(f):
        if f.__name__ in _MODELS:
            raise ValueError(f"model {f.__name__!r} is registered twice")
        _MODELS[f.__name__] = f
        if modalities is not None:
            _FAMILIES[family_of(f.__name__)] = Family(tuple(modalities), tuple(searched), bool(cpu_costly),
                                                      bool(table_layout))
        return f
    return deco(fn) if fn is not None else deco


def families() -> tuple:
    """The registered families, in registration order."""
    return tuple(_FAMILIES)


def searched_families(modality: str, cpu: bool = False) -> tuple:
    """The families a search holds by default for `modality` data, in registration order; on CPU (cpu=True)
    without the costly ones."""
    return tuple(f for f, fam in _FAMILIES.items() if modality in fam.searched and not (cpu and fam.cpu_costly))


def takes_layout(name: str) -> bool:
    """Whether a family (or one of its models: 'mlp_s') reads a table layout, so that the preprocessing
    should hand it embedded categoricals as integer-code columns (the others take one-hot tables only)."""
    fam = _FAMILIES.get(family_of(name))
    if fam is None:
        _lookup(name)  # an unknown name: the registry's error
        return False
    return fam.table_layout


def _accepted(family: str) -> tuple:
    fam = _FAMILIES.get(family)
    return fam.modalities if fam else tuple(MODALITY_OF_NDIM.values())


def list_models(pattern: str = "*") -> list:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def _lookup(name: str):
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), list(_MODELS), n=3, cutoff=0.5)
        hint = f"closest: {', '.join(map(repr, close))}" if close else f"families: {', '.join(families())}"
        raise ModelError(invalid("'model.family'", f"a registered model ({hint})", name,
                                 "run `cotune models` to list them"))
    return _MODELS[name]


def model_info(name: str) -> dict:
    """Family, accepted input modalities and the first docstring line of a registered model."""
    fn, fam = _lookup(name), family_of(name)
    doc = (fn.__doc__ or "").strip().splitlines()
    return {"name": name, "family": fam, "modalities": _accepted(fam),
            "summary": doc[0].strip() if doc else ""}


def create_model(name: str, in_shape, out_dim: int, **kw) -> nn.Module:
    """Build a registered model for per-sample input shape `in_shape` and `out_dim` outputs.

    Knobs passed as None are dropped here (so the factory default applies); unknown knobs raise.
    `layout=` (a table layout, see check_layout) is passed on to the factory."""
    fn = _lookup(name)
    kw = {k: v for k, v in kw.items() if v is not None}  # None means "use the default"
    _check_names(kw)
    return fn(check_shape(in_shape), check_int("out_dim", out_dim, 1), **kw)


def factory_knobs(model_cfg: dict) -> dict:
    """The factory keyword arguments among a model config's values (its model_dump()): KNOBS only."""
    return {k: v for k, v in model_cfg.items() if k in KNOBS}


def head(model: nn.Module) -> nn.Module:
    """The model's output layer (the module that maps to out_dim), named by the model's `head_name`."""
    name = getattr(model, "head_name", None)
    if not isinstance(name, str):
        raise ModelError(f"{type(model).__name__} does not name its output layer; give the class a `head_name` "
                         "(the dotted module path of the layer that maps to out_dim).")
    return model.get_submodule(name)


def head_keys(model: nn.Module) -> set:
    """The model's state_dict keys that belong to its output layer."""
    return {f"{model.head_name}.{k}" for k in head(model).state_dict()}


# ---- shared checks -------------------------------------------------------------------------------
def _check_names(knobs: dict) -> None:
    unknown = sorted(set(knobs) - set(KNOBS) - {LAYOUT})
    if unknown:
        raise ModelError(invalid("a model knob", f"one of {fmt_choices(KNOBS)}", unknown[0],
                                 "remove it or fix its spelling"))


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


def check_knobs(family: str, in_shape, knobs: dict, min_depth: int = 1) -> dict:
    """`knobs` (a factory's keyword arguments) over DEFAULTS, every one validated (even knobs the family
    ignores), and the check that the family accepts the input's modality. The result's 'layout' is the
    checked table layout (None without one)."""
    _check_names(knobs)
    k = {**DEFAULTS, LAYOUT: None, **knobs}
    for key, lo in (("width", 1), ("depth", min_depth), ("kernel_size", 1), ("heads", 1), ("embedding_dim", 1),
                    ("ensemble", 1), ("text_width", 1)):
        check_int(key, k[key], lo)
    dropout = k["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ModelError(invalid("'model.dropout'", "a number in [0, 1)", dropout))
    c = k["text_linear"]
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c < math.inf:
        raise ModelError(invalid("'model.text_linear'", "a number >= 0 (0: off)", c))
    for key, choices in (("norm", NORMS), ("activation", ACTIVATIONS), ("pool", POOLS),
                         ("num_embedding", NUM_EMBEDDINGS), ("text_encoder", TEXT_CHOICES)):
        if k[key] not in choices:
            raise ModelError(invalid(f"'model.{key}'", f"one of {fmt_choices(choices)}", k[key]))
    if not isinstance(k["bidirectional"], bool):
        raise ModelError(invalid("'model.bidirectional'", "true or false", k["bidirectional"]))
    modality = MODALITY_OF_NDIM[len(check_shape(in_shape))]
    accepted = _accepted(family)
    if modality not in accepted:
        fits = [f for f, fam in _FAMILIES.items() if modality in fam.modalities]
        raise ModelError(invalid(f"the input of model family {family!r}", f"{_or(accepted)} data",
                                 tuple(in_shape), f"for {modality} data use {_or(fits)}"))
    k[LAYOUT] = layout = check_layout(k[LAYOUT], in_shape)
    if layout is not None and (layout["cardinalities"] or layout["text"]) and not takes_layout(family):
        readers = [f for f, fam in _FAMILIES.items() if fam.table_layout]
        raise ModelError(f"Model family {family!r} takes one-hot tables only, but the table layout has "
                         f"{len(layout['cardinalities'])} embedded categorical and {len(layout['text'])} tokenized "
                         f"text column(s); use {_or(readers) or 'a family that reads a table layout'}.")
    if layout is not None and layout["bins"] is None and layout["numeric"] and k["num_embedding"] == "piecewise":
        raise ModelError(invalid("the table layout's 'bins'", "bin edges for every numeric column with "
                                 "model.num_embedding='piecewise'", None))
    return k


def check_layout(layout, in_shape) -> dict | None:
    """A table layout, checked against the input shape and returned in plain types (None stays None):

        {"numeric": n_num, "onehot": n_onehot, "cardinalities": [c1, ...], "bins": [[e0, e1, ...], ...],
         "text": [{"name": col, "length": L, "vocab": V, "weighted": bool}, ...]}

    The input (F,) holds, in this order, n_num numeric columns, n_onehot one-hot columns, one column
    per embedded categorical i holding its integer code 0..c_i-1 (as a float), then L token-id columns
    (0..V-1, as floats) per text column, and L weight columns after them for a weighted one (a bag of
    n-grams): F = n_num + n_onehot + len(cardinalities) + the sum of the L (2 L weighted). 'bins' (optional, None or absent without) are, per numeric column, >= 2 strictly
    increasing finite edges for the piecewise-linear encoding. Missing counts are 0; other keys are ignored."""
    if layout is None:
        return None
    what = "the table layout's"
    if not isinstance(layout, dict):
        raise ModelError(invalid("the table layout", "a dict with 'numeric', 'onehot', 'cardinalities' and 'bins'",
                                 _short(layout)))
    n_num = _count(f"{what} 'numeric'", layout.get("numeric", 0), 0)
    n_hot = _count(f"{what} 'onehot'", layout.get("onehot", 0), 0)
    cards = layout.get("cardinalities")
    cards = [] if cards is None else cards
    if not _is_list(cards):
        raise ModelError(invalid(f"{what} 'cardinalities'", "a list of category counts", cards))
    cards = [_count(f"{what} 'cardinalities'[{i}]", c, 1) for i, c in enumerate(cards)]
    texts = layout.get("text") or []
    if not _is_list(texts) or not all(isinstance(t, dict) for t in texts):
        raise ModelError(invalid(f"{what} 'text'", "a list of {'name', 'length', 'vocab'} dicts", _short(texts)))
    texts = [{"name": str(t.get("name", i)), "length": _count(f"{what} 'text'[{i}] length", t.get("length"), 1),
              "vocab": _count(f"{what} 'text'[{i}] vocab", t.get("vocab"), 2), "weighted": t.get("weighted") is True}
             for i, t in enumerate(texts)]
    width = n_num + n_hot + len(cards) + sum(token_columns(t) for t in texts)
    if len(in_shape) != 1 or in_shape[0] != width:
        raise ModelError(invalid("the model input shape with a table layout", f"({width},): {n_num} numeric + "
                                 f"{n_hot} one-hot + {len(cards)} embedded categorical + "
                                 f"{width - n_num - n_hot - len(cards)} token columns", tuple(in_shape)))
    bins = layout.get("bins")
    if bins is not None:
        if not _is_list(bins) or len(bins) != n_num:
            raise ModelError(invalid(f"{what} 'bins'", f"a list of {n_num} edge lists (one per numeric column)",
                                     _short(bins)))
        bins = [_edges(f"{what} 'bins'[{j}]", e) for j, e in enumerate(bins)]
    return {"numeric": n_num, "onehot": n_hot, "cardinalities": cards, "bins": bins, "text": texts}


def _count(what: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ModelError(invalid(what, f"an integer >= {lo}", v))
    return int(v)


def _edges(what: str, e) -> list:
    try:
        edges = [float(v) for v in e] if _is_list(e) else []
    except (TypeError, ValueError):
        edges = []
    if len(edges) < 2 or not all(math.isfinite(v) for v in edges) or any(a >= b for a, b in zip(edges, edges[1:])):
        raise ModelError(invalid(what, ">= 2 strictly increasing finite bin edges", _short(e)))
    return edges


def _is_list(v) -> bool:
    """A list, tuple or 1-D array (what JSON and numpy hand over), not a string or a dict."""
    return not isinstance(v, (str, bytes, dict)) and hasattr(v, "__len__") and hasattr(v, "__iter__")


def _short(v):
    """v itself for a message, or the start of its repr when that is long."""
    return v if len(repr(v)) <= 80 else repr(v)[:77] + "..."


def _or(words) -> str:
    words = list(words)
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


def check_pool(family: str, pool: str, allowed: tuple) -> str:
    if pool not in allowed:
        raise ModelError(invalid(f"'model.pool' for {family}", f"one of {fmt_choices(allowed)}", pool))
    return pool


# ---- shared layers -------------------------------------------------------------------------------
def act_layer(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "selu": nn.SELU,
            "mish": nn.Mish}[name]()


def act_fn(name: str):
    return {"relu": F.relu, "gelu": F.gelu, "tanh": F.tanh, "silu": F.silu, "selu": F.selu, "mish": F.mish}[name]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
