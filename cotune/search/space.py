"""The search space: which knobs a search draws, from what, and the trial's config.

The space comes from knobs.py (every knob with a `search` range that the user did not set),
conditional where a knob says `when`, for the tasks and modalities it declares, narrowed by
`search.space` (every value checked against the knob first), with model families from the
registry: those searched on the data's modality (cotune.models declares them per family). With
model.init_from neither the model knobs nor the preprocessing knobs it takes from its source (knobs.FROM_SOURCE,
FROM_SOURCE_TEXT) are searched: the trials start from its weights and preprocessing, so they keep its shapes,
scaling and tokenizer.
"""
from __future__ import annotations

import difflib
import math
import re

from cotune.config import RunConfig, expected
from cotune.errors import ConfigError, fmt_choices, invalid
from cotune.knobs import BY_NAME, FROM_SOURCE, FROM_SOURCE_TEXT, Knob, searchable
from cotune.search.storage import FIDELITY_RUNGS

# search.warm_start: a new study's first trial, per modality, over the knob defaults (as AutoML portfolios
# begin with configurations that do well on their kind of data); the sampler proposes every later trial.
# Sequences: a deeper CNN with batch norm and the modality's augmentations (MNIST-1D test accuracy with
# the defaults otherwise: cnn1d depth 2, 72%; this configuration, 97%). Images: a narrow cnn2d with
# batch norm and no augmentation (flips change digits and text; the sampler may turn it on), cheap
# enough on a CPU to leave the budget to the search. Tables: the published TabM recipe (Gorishniy et al.
# 2025: quantile-normal features, piecewise-linear numeric embeddings, a k-member ensemble in one MLP,
# AdamW 2e-3 / 3e-4, batch 256, constant rate with early stopping), cut to CPU size: 3 x 256, k = 4.
START = {"sequence": {"model.family": "cnn1d", "model.depth": 4, "model.norm": "batch", "model.kernel_size": 7,
                      "train.batch_size": 64, "data.augment.policy": "auto"},
         "image": {"model.family": "cnn2d", "model.width": 32, "model.norm": "batch"},
         "tabular": {"model.family": "mlp", "model.width": 256, "model.depth": 3, "model.dropout": 0.1,
                     "model.activation": "relu", "model.norm": "none", "model.num_embedding": "piecewise",
                     "model.ensemble": 4, "data.numeric": "quantile", "train.optimizer": "adamw", "train.lr": 2e-3,
                     "train.weight_decay": 3e-4, "train.batch_size": 256, "train.schedule": "constant",
                     "train.warmup": 0.0, "train.label_smoothing": 0.0, "train.l1": 0.0,
                     # tables with text (the text knobs are in the space only then): a bag of TF-IDF-weighted word and
                     # character n-grams, fastText's input with the classic weights, which on a few thousand texts
                     # beats subword sequences (fortunes, one split: 54% against 44-48% for bpe / word bags)
                     "data.tokenizer": "ngrams", "data.vocab_size": 32000, "data.max_tokens": 256,
                     "model.text_width": 64}}
# on a table with text columns the start's MLP is one hidden layer and no in-model ensemble: the deeper start
# memorizes the n-gram embeddings within a few epochs (fortunes, one split, same knobs otherwise: 54.0% test
# accuracy and val log loss 2.9 for 3 x 256, k = 4, against 56.3% and 1.4 for 1 x 256, k = 1, in under half the
# time); the search still tries deeper ones
# and the texts' n-grams get a linear path fitted convexly first (model.text_linear at LogisticRegression's default C):
# the network alone, trained as networks are, stops at 56.7% where LogisticRegression on the same n-grams reaches
# 59.4% (bench/text_gap.py, 3 seeds), the regularized convex fit being what the network does not find
START_TEXT = {"model.depth": 1, "model.ensemble": 1, "model.text_linear": 1.0}

# the base configuration of a search, per modality, for knobs that are not searched and that the user did not
# set: tables train for up to 200 epochs with TabM's patience of 16 and gradient clipping at 1 (small tables
# take 10-20 steps an epoch, so the 30 epochs of the knob default stop long before early stopping would)
BASE = {"tabular": {"train.epochs": 200, "train.patience": 16, "train.grad_clip": 1.0}}


def modality_base(cfg: RunConfig, fixed: set[str], modality: str) -> RunConfig:
    """cfg with BASE's values for the modality wherever the user did not set the knob."""
    values = {k: v for k, v in BASE.get(modality, {}).items() if k not in fixed}
    return cfg.replace(**values) if values else cfg


def parse_budget(text) -> float | None:
    """'90s' / '10m' / '1.5h' / '600' -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"search.budget must look like '90s', '10m' or '1h'. Got {text!r} instead; e.g. --budget 10m.")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_population(text) -> int | str:
    """search.population: '1' / '16' / 'auto' -> 1 / 16 / 'auto'."""
    t = str(text).strip().lower()
    if t == "auto":
        return t
    if not t.isdigit() or not 1 <= int(t) <= 1024:
        raise ConfigError(f"search.population must be a whole number of trials from 1 to 1024 or 'auto'. Got {text!r} "
                          "instead; e.g. --set search.population=auto.")
    return int(t)


def search_space(cfg: RunConfig, fixed: set[str], modality: str, task: str, cpu: bool | None = None,
                 text: bool = False) -> dict[str, tuple]:
    """{knob: choices or (low, high)} for every searchable knob not fixed by the user (text: the table has
    free-text columns, for the text_only knobs). Every value of search.space is checked first, so a bad one
    is a ConfigError before the first trial."""
    from cotune.evaluate import primary_metric
    from cotune.models import searched_families  # torch: imported when a space is built, not with this module
    check_space(cfg.search.space)
    ranked_by = primary_metric(task, cfg.search.metric).name
    if ranked_by == "robust_accuracy" and cfg.train.adv_epsilon <= 0:
        raise ConfigError("search.metric=robust_accuracy scores the models under attack within train.adv_epsilon: set "
                          "it > 0 (standardized input units), e.g. --set train.adv_epsilon=0.1.")
    if cpu is None:
        import torch
        cpu = cfg.runtime.device == "cpu" or (cfg.runtime.device == "auto" and not torch.cuda.is_available())
    space = {}
    for k in searchable():
        if (k.name in fixed or (k.tasks and task not in k.tasks) or (k.modalities and modality not in k.modalities)
                or ranked_by in k.unless_metric or (k.text_only and not text)):
            continue
        if cfg.model.init_from is not None and (k.stage == "model" or k.name in FROM_SOURCE + FROM_SOURCE_TEXT):
            continue  # the model and its preprocessing are model.init_from's (cotune.transfer)
        named = k.name in cfg.search.space
        spec = tuple(cfg.search.space[k.name]) if named else k.search
        if k.name == "model.family":  # search=(): the registry's for the modality; named ones skip the CPU cut
            fits = searched_families(modality, cpu=cpu and not named)
            spec = tuple(f for f in (spec if named else fits) if f in fits) or (cfg.model.family,)
        if k.choice_modalities:
            only = dict(k.choice_modalities)
            spec = tuple(c for c in spec if modality in only.get(c, (modality,)))
            if not spec:
                why = ", ".join(f"{c!r} is for {'/'.join(m)} data" for c, m in only.items())
                raise ConfigError(f"search.space[{k.name!r}] leaves no choice for {modality} data ({why}); add another.")
        if not (k.choices or k.type in (bool, str)):
            spec = tuple(k.type(float(v)) for v in spec)
        space[k.name] = spec
    return space


def check_space(space: dict) -> None:
    """Every name and value of search.space against its knob: the knob's choices (the registered families
    for model.family), or two numbers low <= high in its valid range (above 0 where searched on a log scale)."""
    from cotune.models import families
    for name, values in space.items():
        k = BY_NAME.get(name)
        if k is None or k.search is None:
            raise ConfigError(f"search.space names {name!r}, which is not a searchable knob; see `cotune knobs` (column 'searched').")
        where = f"search.space[{name!r}]"
        if k.choices or k.type in (bool, str):
            allowed = k.choices or ((False, True) if k.type is bool else families())
            must = expected(k) if k.choices or k.type is bool else f"a registered model family, one of {fmt_choices(allowed)}"
            if not values:
                raise ConfigError(invalid(where, f"a list of choices, each {must}", values, f"name one or drop {name}"))
            for v in values:
                if v not in allowed or isinstance(v, bool) != (k.type is bool):
                    close = difflib.get_close_matches(str(v), [str(c) for c in allowed], n=1)
                    fix = f"use {close[0]!r} or drop it" if close else "drop it or see `cotune knobs`"
                    raise ConfigError(invalid(f"Each value in {where}", must, v, fix))
            continue
        example = f"e.g. {{{name}: [{k.search[0]:g}, {k.search[1]:g}]}}"
        if len(values) != 2:
            raise ConfigError(invalid(where, "[low, high]", values, example))
        for v in values:
            if not _in_range(k, v):
                raise ConfigError(invalid(f"Each bound in {where}", expected(k), v, example))
        low, high = (float(v) for v in values)
        if low > high:
            raise ConfigError(invalid(where, "[low, high] with low <= high", values, f"write [{values[1]}, {values[0]}]"))
        if k.log and low <= 0:
            raise ConfigError(invalid(f"The low bound in {where}", "> 0 (the knob is searched on a log scale)",
                                      values[0], example))


def _in_range(k: Knob, v) -> bool:
    """A number (YAML reads 1e-3 as a string: a numeric string counts) of the knob's type in its valid range."""
    try:
        x = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        return False
    return (math.isfinite(x) and (k.type is float or x.is_integer())
            and (k.low is None or (x > k.low if k.open_low else x >= k.low)) and (k.high is None or x <= k.high))


def suggest(trial, cfg: RunConfig, space: dict[str, tuple]) -> RunConfig:
    """Ask the trial for every knob of the space whose conditions hold; return the trial's config."""
    values: dict = {}
    current = cfg.flat()
    for name, spec in space.items():
        k = BY_NAME[name]
        if any(values.get(dep, current[dep]) not in allowed for dep, allowed in k.when):
            continue
        if k.choices or k.type in (bool, str):
            values[name] = trial.suggest_categorical(name, list(spec))
        elif k.type is int:
            values[name] = trial.suggest_int(name, int(spec[0]), int(spec[1]), log=k.log)
        else:
            values[name] = trial.suggest_float(name, float(spec[0]), float(spec[1]), log=k.log)
    return cfg.replace(**values)


# the table start's in-model ensemble costs k times a plain MLP per row: k rows x members at most this many per
# epoch (4 members up to 10,000 training rows, 1 from 40,000), so that a large table's first trial trains for
# more than an epoch or two of a short budget
START_ROW_MEMBERS = 40_000


def start_params(cfg: RunConfig, space: dict[str, tuple], modality: str, rows: int | None = None) -> dict:
    """The warm-start trial's knobs: START for the modality over the defaults, each where the space holds it.
    rows: the training rows, which cut a table start's ensemble (START_ROW_MEMBERS)."""
    flat, params = cfg.flat(), {}
    start = dict(START.get(modality, {}))
    if modality == "tabular" and "data.tokenizer" in space:  # the text knobs are in the space only with text
        start.update(START_TEXT)
    if rows and "model.ensemble" in start:
        start["model.ensemble"] = max(1, min(start["model.ensemble"], START_ROW_MEMBERS // max(1, rows)))
    for name, spec in space.items():
        k, v = BY_NAME[name], start.get(name, flat[name])
        if k.choices or k.type in (bool, str):
            v = v if v in spec else flat[name]  # the start narrowed away: the default, if it is left
            if v in spec:
                params[name] = v
        elif v is not None:  # the nearest end of a range that leaves it out (train.l1 0 -> 1e-8: off in effect)
            params[name] = k.type(min(max(v, spec[0]), spec[1]))
    return params


def rungs(cfg: RunConfig) -> list[float]:
    """The data fractions a trial trains on in turn: [fraction] for search.fidelity=epochs, else 1/9, 1/3, 1 of it."""
    f = cfg.data.fraction
    if cfg.search.fidelity != "data":
        return [f]
    return [f / 3 ** (FIDELITY_RUNGS - 1 - i) for i in range(FIDELITY_RUNGS)]
