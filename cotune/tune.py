"""Joint search over data and model knobs with Optuna: one space, worker processes, resumable.

    result = fit("mnist1d", budget="10m", workers=2, out="runs/x")

The space comes from knobs.py (every knob with a `search` range that the user did not set),
conditional where a knob says `when`, narrowed by `search.space`, with model families limited
to those that fit the data's modality. The study lives in storage (SQLite in the run directory
by default, PostgreSQL across machines) together with the base config, so `cotune worker
--storage URL --study NAME` on any machine can join it. Trials never run in the parent: it
starts worker processes, watches the study, and trains the final model once the budget is spent.
"""
from __future__ import annotations

import math
import os
import re
import socket
import time
import traceback
from pathlib import Path

from cotune.config import RunConfig, from_dict
from cotune.errors import ConfigError, CotuneError, one_line
from cotune.knobs import BY_NAME, searchable
from cotune.track import trial_tracker
from cotune.workers import AskLock, import_optuna, rdb_storage


FAMILIES_FOR = {"tabular": ("mlp", "transformer"), "image": ("mlp", "cnn2d"),
                "sequence": ("mlp", "cnn1d", "gru", "lstm", "transformer")}
# On CPU the recurrent and attention families cost 10-50x a CNN per epoch on the same data (an LSTM
# trial on MNIST-1D took 230 s against 20-60 s for a CNN), so the default space leaves them out
# there; name them in search.space to search them anyway.
FAMILIES_FOR_CPU = {"tabular": ("mlp",), "image": ("mlp", "cnn2d"), "sequence": ("mlp", "cnn1d")}
CLASSIFICATION_ONLY = ("data.balance", "data.clean.label_issues", "data.clean.label_threshold", "train.label_smoothing",
                       "train.focal_gamma")
# search.warm_start: a new study's first trial, per modality, over the knob defaults (as AutoML portfolios
# begin with configurations that do well on their kind of data); the sampler proposes every later trial.
# Sequences: a deeper CNN with batch norm and the modality's augmentations (MNIST-1D test accuracy with
# the defaults otherwise: cnn1d depth 2, 72%; this configuration, 97%). Images: a narrow cnn2d with
# batch norm and no augmentation (flips change digits and text; the sampler may turn it on), cheap
# enough on a CPU to leave the budget to the search.
START = {"sequence": {"model.family": "cnn1d", "model.depth": 4, "model.norm": "batch", "model.kernel_size": 7,
                      "train.batch_size": 64, "data.augment.policy": "auto"},
         "image": {"model.family": "cnn2d", "model.width": 32, "model.norm": "batch"},
         "tabular": {"model.family": "mlp"}}
FIDELITY_RUNGS = 3  # search.fidelity=data: train on 1/9, 1/3, then all of the trial's rows
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def parse_budget(text) -> float | None:
    """'90s' / '10m' / '1.5h' / '600' -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"search.budget must look like '90s', '10m' or '1h'. Got {text!r} instead; e.g. --budget 10m.")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ---------------------------------------------------------------------------------------------
# the space

def search_space(cfg: RunConfig, fixed: set[str], modality: str, task: str, cpu: bool | None = None) -> dict[str, tuple]:
    """{knob: choices or (low, high)} for every searchable knob not fixed by the user."""
    if cpu is None:
        import torch
        cpu = cfg.runtime.device == "cpu" or (cfg.runtime.device == "auto" and not torch.cuda.is_available())
    space = {}
    for k in searchable():
        if k.name in fixed or (task == "regression" and k.name in CLASSIFICATION_ONLY):
            continue
        spec = tuple(cfg.search.space.get(k.name, k.search))
        if k.name == "model.family":
            fits = FAMILIES_FOR[modality] if k.name in cfg.search.space or not cpu else FAMILIES_FOR_CPU[modality]
            spec = tuple(f for f in spec if f in fits) or (cfg.model.family,)
        if k.name == "data.balance" and modality != "tabular":
            spec = tuple(b for b in spec if b != "smote")
        if not (k.choices or k.type in (bool, str)):
            if len(spec) != 2:
                raise ConfigError(f"search.space[{k.name!r}] must be [low, high]. Got {list(spec)!r} instead.")
            spec = tuple(k.type(float(v)) for v in spec)
        space[k.name] = spec
    for name in cfg.search.space:
        if name not in BY_NAME or BY_NAME[name].search is None:
            raise ConfigError(f"search.space names {name!r}, which is not a searchable knob; see `cotune knobs` (column 'searched').")
    return space


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


def start_params(cfg: RunConfig, space: dict[str, tuple], modality: str) -> dict:
    """The warm-start trial's knobs: START for the modality over the defaults, each where the space holds it."""
    flat, params = cfg.flat(), {}
    for name, spec in space.items():
        k, v = BY_NAME[name], START.get(modality, {}).get(name, flat[name])
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


# ---------------------------------------------------------------------------------------------
# one trial

def _objective(study, cfg: RunConfig, space: dict, out: Path, deadline: float | None, threads: int):
    from cotune.pipeline import run
    optuna = import_optuna()
    multi = cfg.search.objective != "quality"
    track = study.user_attrs.get("mlflow")  # the search's MLflow parent run (None: not tracked)

    def objective(trial):
        tdir = out / "trials" / f"{trial.number:05d}"
        tcfg = suggest(trial, cfg, space).replace(**{"runtime.threads": threads, "runtime.progress": False,
                                                       "out": str(tdir)})
        t0 = time.time()
        tracker = trial_tracker(track, study.study_name, trial.number)

        by_epoch = not multi and cfg.search.fidelity == "epochs"

        def on_eval(epoch: int, row: dict):
            key = "val_rmse" if "val_rmse" in row else "val_accuracy"
            if by_epoch and key in row:
                trial.report(row[key], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
            return out_of_time()  # stop, keeping the best epoch so far

        stop = [0.0, math.inf]  # (last refresh, stop time): the final refit's estimate changes as trials finish

        def out_of_time() -> bool:
            if deadline is None:
                return False
            now = time.time()
            if now - stop[0] > 5:
                stop[:] = [now, deadline - estimate_final(study.get_trials(deepcopy=False), cfg.data.split.val)]
            # this config may win: its refit on train+val (about this trial's time so far) must fit too
            return now > stop[1] or now + (now - t0) * (1 + cfg.data.split.val) * 1.1 > deadline

        try:
            fractions = rungs(tcfg)
            for i, f in enumerate(fractions):  # search.fidelity=data: smaller shares first, judged after each
                if i == len(fractions) - 1:
                    res = run(tcfg, on_eval=on_eval, tracker=tracker)
                    break
                part = run(tcfg.replace(**{"data.fraction": f, "out": str(tdir.with_name(f"{tdir.name}.rung{i}"))}),
                           on_eval=on_eval)
                trial.report(_value(part), 3 ** i)
                if not multi and trial.should_prune():
                    trial.set_user_attr("pruned_fraction", f)
                    raise optuna.TrialPruned(f"pruned on {f:.3g} of the training rows")
        except optuna.TrialPruned as err:
            tracker.set_tags({"pruned": str(err)})
            tracker.close("KILLED")
            _trial_note(trial, tdir, "pruned", t0)
            raise
        except Exception as err:
            reason = one_line(err) if isinstance(err, CotuneError) else f"{type(err).__name__}: {one_line(err)}"
            trial.set_user_attr("fail_reason", reason[:500])
            tracker.log_params(tcfg.flat())  # when the run failed before it logged them
            tracker.set_tags({"fail_reason": reason[:500]})
            tracker.close("FAILED")
            tdir.mkdir(parents=True, exist_ok=True)
            (tdir / "error.txt").write_text(traceback.format_exc())
            _trial_note(trial, tdir, "failed", t0)
            raise
        name = "accuracy" if "accuracy" in res.metrics["val"] else "rmse"
        value = _value(res)
        trial.set_user_attr("val_loss", res.metrics["val"].get("log_loss", res.metrics["val"].get("rmse")))
        for k, v in (("run_dir", str(tdir)), ("n_params", res.n_params), ("best_epoch", res.train.best_epoch),
                     ("epochs_run", res.train.epochs_run), ("seconds", time.time() - t0), ("metric", name)):
            trial.set_user_attr(k, v)
        if not multi:
            return value
        second = res.n_params if cfg.search.objective.endswith("size") else _latency_ms(tdir)
        trial.set_user_attr("second_objective", second)
        return value, second

    return objective


def _value(res) -> float:
    """The trial's quality: validation accuracy (classification) or RMSE (regression)."""
    val = res.metrics["val"]
    return val["accuracy"] if "accuracy" in val else val["rmse"]


def _trial_note(trial, tdir: Path, state: str, t0: float) -> None:
    trial.set_user_attr("seconds", time.time() - t0)
    for f in ("checkpoint.safetensors", "checkpoint.json"):  # unfinished trials keep only their logs
        (tdir / f).unlink(missing_ok=True)


def _latency_ms(run_dir: Path) -> float:
    """CPU milliseconds per sample of the trial's model, batch 64, median of 5."""
    import statistics

    import torch

    from cotune.bundle import load
    b = load(run_dir)
    x = torch.zeros(64, *b.spec["in_shape"])
    times = []
    with torch.no_grad():
        for _ in range(6):
            t = time.perf_counter()
            b.model(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[1:]) / 64


# ---------------------------------------------------------------------------------------------
# studies and workers

def _sampler(cfg: RunConfig, space: dict, worker: int = 0, start: int = 0):
    """Each worker gets its own seed (search.seed + worker index), or identical workers propose identical trials;
    `start` (trials already in the study) keeps a resumed search from replaying the first run's proposals."""
    optuna = import_optuna()
    s, seed = cfg.search.sampler, (cfg.search.seed + 7919 * worker + 104729 * start) % 2**32
    if cfg.search.objective != "quality" and s not in ("nsga2", "random"):
        s = "nsga2"  # TPE/CMA-ES here rank one objective; two objectives need NSGA-II
    if s == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed, constant_liar=True)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "grid":
        grid = {k: list(v) for k, v in space.items() if BY_NAME[k].choices or BY_NAME[k].type in (bool, str)}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _pruner(cfg: RunConfig):
    optuna = import_optuna()
    p, epochs = cfg.search.pruner, cfg.train.epochs
    if cfg.search.fidelity == "data":  # the resource is the rung's share of the rows, in ninths: 1, 3, 9
        epochs = 3 ** (FIDELITY_RUNGS - 1)
    if p == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs, reduction_factor=3)
    if p == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 10), reduction_factor=3)
    if p == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 10))
    return optuna.pruners.NopPruner()


def open_study(url: str, name: str, cfg: RunConfig | None = None, space: dict | None = None, direction: str = "maximize",
               load_only: bool = False):
    """Create (or load) a study; the base config, space and direction are stored with it."""
    optuna = import_optuna()
    storage = rdb_storage(url)
    if load_only:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ConfigError(f"No study named {name!r} in {url!r}; start it with `cotune fit` first.") from None
        cfg = from_dict(study.user_attrs["config"])
        space = {k: tuple(v) for k, v in study.user_attrs["space"].items()}
        worker = int(os.environ.get("COTUNE_WORKER_INDEX", os.getpid()))
        start = len(study.get_trials(deepcopy=False))
        study.sampler, study.pruner = _sampler(cfg, space, worker, start), _pruner(cfg)
        return study, cfg, space
    directions = [direction] + (["minimize"] if cfg.search.objective != "quality" else [])
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True,
                                sampler=_sampler(cfg, space), pruner=_pruner(cfg))
    study.set_user_attr("config", cfg.to_dict())
    study.set_user_attr("space", {k: list(v) for k, v in space.items()})
    return study, cfg, space


def work(url: str, name: str, *, deadline: float | None = None, threads: int = 1, out: str | None = None) -> int:
    """A worker: run trials of the study until the trial limit, the deadline, or the study's stop flag."""
    study, cfg, space = open_study(url, name, load_only=True)
    out_dir = Path(out or study.user_attrs.get("out", "."))
    deadline = deadline if deadline is not None else study.user_attrs.get("deadline")
    limit = cfg.search.trials
    objective = _objective(study, cfg, space, out_dir, deadline, threads)
    me = f"{socket.gethostname()}:{os.getpid()}"

    lock = AskLock(url)

    def run_trial(trial):
        lock.release()  # the trial is claimed: the other workers may ask
        trial.set_user_attr("worker", me)  # lets `fit --resume` tell a dead worker's trial from a live one
        return objective(trial)

    done = 0
    while True:
        lock.acquire()
        try:
            trials = study.get_trials(deepcopy=False)
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}  # each runs again as a new trial
            finished = sum(t.state.name in FINISHED and t.number not in retried for t in trials)
            if limit is not None and finished + sum(t.state.name == "RUNNING" for t in trials) >= limit:
                break
            if deadline is not None and time.time() + _reserve(trials) + estimate_final(trials, cfg.data.split.val) >= deadline:
                break
            if study.user_attrs.get("stop"):
                break
            study.optimize(run_trial, n_trials=1, catch=(Exception,))
        finally:
            lock.release()
        done += 1
    return done


def _reserve(trials) -> float:
    """Seconds a new trial is expected to take: the median of the finished ones (0 before any)."""
    secs = sorted(t.user_attrs["seconds"] for t in trials if "seconds" in t.user_attrs)
    return secs[len(secs) // 2] if secs else 0.0


def estimate_final(trials, val_share: float) -> float:
    """Seconds the final refit is expected to take: the slowest completed trial, on train+val rows."""
    secs = [t.user_attrs.get("seconds", 0.0) for t in trials if t.state.name == "COMPLETE"]
    return (max(secs) if secs else 0.0) * (1 + val_share) * 1.1

