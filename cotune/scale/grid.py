"""The grid of a scaling study and its results file.

Model sizes come from the width knob: widths whose parameter counts are evenly spaced on a log scale
from the configuration's own size down by `scale.size_span`. Training-set sizes are shares of the
training part, evenly spaced on a log scale from `scale.max_fraction` down by `scale.fraction_span`.
Each (size, share, seed) is one training run and one row of scale.csv, written as soon as the run ends.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cotune.config import RunConfig
from cotune.errors import ConfigError
from cotune.track import write_csv

COLUMNS = ("size", "width", "fraction", "n_samples", "seed", "params", "samples", "epochs", "flops", "val_loss",
           "val_loss_se", "val_metric", "metric", "seconds", "extrapolated", "longer", "run_dir")
ADDED = {"val_loss_se": "nan", "longer": "False"}  # columns newer than some saved studies: what their rows read as


@dataclass(frozen=True)
class Point:
    size: int            # 0 = smallest model
    width: int
    fraction: float      # share of the training part
    seed: int
    n_samples: int       # rows the source generates (mnist1d; the configuration's own elsewhere)
    epochs: int          # at most; early stopping on validation loss usually ends a run sooner
    patience: int        # early stopping, in epochs of this share
    val_every: int       # epochs between validations: about the same steps between them on every share
    extrapolated: bool = False  # beyond the data the user has: checked against the fit, not fitted
    longer: bool = False        # the current point with twice the epochs: measures that option, not fitted

    @property
    def key(self) -> tuple:
        return (self.width, round(self.fraction, 6), self.seed, self.n_samples, self.longer)

    def params(self) -> dict:
        """The knobs this run sets over the base configuration (the study's enqueued trial)."""
        return {"model.width": self.width, "data.fraction": self.fraction, "runtime.seed": self.seed,
                "data.n_samples": self.n_samples, "train.epochs": self.epochs, "train.patience": self.patience,
                "train.val_every": self.val_every}


def model_cost(cfg: RunConfig, width: int, shapes: tuple) -> tuple[int, float]:
    """(parameters, forward FLOPs per sample) of the configuration's model at this width; shapes is
    (in_shape, out_dim) or (in_shape, out_dim, table layout) as pipeline.model_inputs gives them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cotune.models import create_model, factory_knobs
    in_shape, out_dim, layout = (*shapes, None)[:3]
    extra = {"layout": layout} if layout is not None else {}
    model = create_model(cfg.model.family, in_shape, out_dim, **{**factory_knobs(cfg.model.model_dump()), "width": width}, **extra)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *in_shape))
    return sum(p.numel() for p in model.parameters()), float(counter.get_total_flops())


def widths_for(cfg: RunConfig, shapes: tuple) -> list[tuple[int, int, float]]:
    """[(width, params, forward FLOPs per sample)], smallest first; the last is the configuration's own width."""
    s, top = cfg.scale, cfg.model.width
    cache: dict[int, tuple[int, float]] = {}

    def cost(w):
        if w not in cache:
            cache[w] = model_cost(cfg, w, shapes)
        return cache[w]

    p_top = cost(top)[0]
    chosen = [top]
    for j in range(1, s.sizes):
        target = p_top / s.size_span ** (j / (s.sizes - 1))
        lo, hi = 1, chosen[-1]  # parameters grow with width: bisect for the width nearest the target (log scale)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if cost(mid)[0] < target else (lo, mid)
        w = min((lo, hi), key=lambda w: abs(np.log(cost(w)[0] / target)))
        if w >= chosen[-1] or abs(np.log(cost(w)[0] / target)) > np.log(2):
            raise ConfigError(f"Width alone cannot shrink this {cfg.model.family} to 1/{s.size_span:g} of its "
                              f"{p_top:,} parameters (width {w} has {cost(w)[0]:,}); lower scale.size_span or "
                              "scale.sizes, or start from a larger model.width.")
        chosen.append(w)
    return [(w, *cost(w)) for w in reversed(chosen)]


def fractions_for(cfg: RunConfig) -> list[float]:
    """Shares of the training part, smallest first."""
    s = cfg.scale
    top = s.max_fraction * cfg.data.fraction
    return [top / s.fraction_span ** (j / (s.fractions - 1)) for j in reversed(range(s.fractions))]


def schedule(cfg: RunConfig, fraction: float) -> tuple[int, int, int]:
    """(epochs cap, patience, epochs between validations) of a run on `fraction` of the training part.

    Runs train until validation loss stops improving: the cap is scale.epoch_factor x the configuration's
    epochs, and a share of 1/k gets k times the epochs and the patience (as many steps as the largest
    share), so a small share is neither cut short nor stopped on a few noisy steps. It is validated every
    k x train.val_every epochs (rounded): every share about as often per step, so each run's best epoch is
    picked from about as many validations, and a small share does not spend most of its time validating."""
    k = fractions_for(cfg)[-1] / fraction
    return (math.ceil(cfg.train.epochs * cfg.scale.epoch_factor * k - 1e-9), math.ceil(cfg.train.patience * k - 1e-9),
            max(1, round(cfg.train.val_every * k)))


def stretches_with_length(train) -> bool:
    """Whether a run's learning-rate schedule depends on how many epochs it has (train.py get_lr): then
    a run twice as long is not this run continued, and its curve cannot be read off this one's."""
    return train.schedule in ("cosine", "exponential", "onecycle") or train.warmup > 0


def measures_epochs(cfg: RunConfig) -> bool:
    """Whether the study trains the current point again with twice the epochs (scale.epochs_check)."""
    return cfg.scale.epochs_check == "on" or (cfg.scale.epochs_check == "auto" and stretches_with_length(cfg.train))


def grid(cfg: RunConfig, widths: list[tuple], extrapolate: bool = False) -> list[Point]:
    """Every run of the study: sizes x shares x seeds (plus the largest model on 2x and 4x generated rows,
    and the current point at twice the epochs when measures_epochs)."""
    seeds = [cfg.runtime.seed + i for i in range(cfg.scale.seeds)]
    n, fracs = cfg.data.n_samples, fractions_for(cfg)
    points = [Point(i, w, f, s, n, *schedule(cfg, f)) for i, (w, _, _) in enumerate(widths) for f in fracs for s in seeds]
    top, (cap, patience, every) = len(widths) - 1, schedule(cfg, fracs[-1])
    if extrapolate:
        points += [Point(top, widths[-1][0], fracs[-1], s, n * k, cap, patience, every, True) for k in (2, 4) for s in seeds]
    if measures_epochs(cfg):  # same patience: a longer run may still stop early, as the user's would
        points += [Point(top, widths[-1][0], fracs[-1], s, n, 2 * cap, patience, every, longer=True) for s in seeds]
    return points


def read_rows(path: Path) -> list[dict]:
    """scale.csv as dicts with numbers parsed ([] when there is no file yet)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not set(COLUMNS) - set(ADDED) <= set(rows[0]):
        raise ConfigError(f"{path} is not a scale.csv of this version (columns {sorted(rows[0])}); move it away "
                          "or choose another --out.")
    ints, floats = ("size", "width", "n_samples", "seed", "params", "samples", "epochs"), \
        ("fraction", "flops", "val_loss", "val_loss_se", "val_metric", "seconds")
    for r in rows:
        r.update({k: v for k, v in ADDED.items() if r.get(k) in (None, "")})
        r.update({k: int(float(r[k])) for k in ints}, **{k: float(r[k]) for k in floats})
        r["extrapolated"], r["longer"] = (r[k] in ("True", "true", "1") for k in ("extrapolated", "longer"))
    return [{k: r[k] for k in COLUMNS} for r in rows]  # in this version's column order, for rewriting


def row_key(row: dict) -> tuple:
    return (row["width"], round(row["fraction"], 6), row["seed"], row["n_samples"], row["longer"])


def append_row(path: Path, rows: list[dict], row: dict) -> None:
    """Add one run's row; the file is rewritten atomically, so a kill never leaves half a row."""
    rows.append({k: row[k] for k in COLUMNS})
    write_csv(path, rows)
