"""Populations in a search: K trials asked together, sharing the knobs that fix a model's shape, trained as one.

    n = run_population(study, objective, lock, room)   # in a worker, under the ask lock; returns trials finished

search.population=K (or auto: probe_size) sets how many trials a worker asks at once. The first is sampled as any
trial; the other K - 1 are enqueued with its shape knobs (SHAPE_KNOBS: family, width, depth, norm, activation, kernel,
pool, batch size and the optimizer, which the stacked optimizer shares) and everything else left to the sampler, so
each member differs in learning rate, schedule, regularization, loss, dropout rate, augmentation and data knobs. Their
run directories are written by pipeline.run_many as solo trials' are (trials/NNNNN/), and each is told to Optuna
and recorded (user attrs, MLflow) by the one-trial Objective's own methods: trials.csv, MLflow and the report see
ordinary trials, with `population` (the first member's number) and `population_size` added.

Pruning inside a population (search.pruner hyperband or halving) is synchronous successive halving: at epochs
min_resource * 3^i (the study pruner's own min_resource and reduction factor) the members outside the best third
by that epoch's validation value stop, told to Optuna as PRUNED; their slots leave the population. search.pruner=
median asks the study's pruner after every epoch, as a solo trial does. A member whose loss turns NaN fails alone.
A first trial whose family has no batched layers (or an mlp with a table's embeddings) runs alone.

Seconds: a member's `seconds` and `train_seconds` are what the trial would have taken alone (its steps times the
probe's solo step time, plus its share of the population's time outside training), which is what the search's
clock (the final refit's reserve) needs; `population_seconds` is the population's wall time.
"""
from __future__ import annotations

import copy
import math
import sys
import threading
import time
import warnings

import torch

from cotune.search.population.loop import Member, train_population
from cotune.search.population.stack import PopulationError, group_by_shape, stack
from cotune.search.storage import import_optuna
from cotune.search.tracking import trial_tracker

SHAPE_KNOBS = ("model.family", "model.width", "model.depth", "model.norm", "model.activation", "model.kernel_size",
               "model.pool", "model.num_embedding", "model.ensemble", "model.bidirectional", "train.batch_size",
               "train.optimizer")
STACKED = ("mlp", "cnn1d", "cnn2d")  # families with batched layers
LADDER = (2, 4, 8, 16, 32, 64, 128, 256)
MIN_SPEEDUP = 1.2       # auto: a population must beat its members trained one by one by this much
MIN_GAIN = 1.1          # auto: doubling K must raise the speedup by this factor to be worth the longer population
BUDGET_SHARE = 0.25     # auto: a population's longest training should fit this share of the remaining budget
_PROBES: dict[tuple, tuple[float, dict]] = {}  # coarse shape -> (solo step s, {K: population step s}), per process


def stackable(cfg) -> bool:
    m = cfg.model
    return (m.family in STACKED and m.num_embedding == "none" and cfg.train.freeze_epochs == 0
            and cfg.train.adversarial == "none")  # an attack needs the member's own model


# ---------------------------------------------------------------------------------------------
# the probe: seconds per training step of one model and of K stacked ones

def _probe_key(cfg, runtime) -> tuple:
    m, t = cfg.model, cfg.train
    return (runtime.device, m.family, round(math.log2(max(1, m.width))), m.depth, m.norm, m.pool, m.kernel_size,
            round(math.log2(max(1, t.batch_size))), t.optimizer, m.ensemble)


def _time_steps(step, n: int = 3) -> float:
    step()  # warm-up: allocations, kernels chosen
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - t) / n


def probe(cfg, in_shape: tuple, out_dim: int, task: str, runtime, ks) -> tuple[float, dict]:
    """(seconds per step of one model as train() steps it, {K: seconds per step of K stacked}) on random rows of the
    trial's shape, batch size and optimizer. Cached per process by a coarse shape (width and batch to a power of 2)."""
    from cotune.models import create_model
    from cotune.models import factory_knobs
    from cotune.search.population.loss import LossSpecs, ensemble_rows, member_losses
    from cotune.search.population.optim import StackedOptimizer
    from cotune.train import compute_loss, make_optimizer, resolve_loss
    key = _probe_key(cfg, runtime)
    solo, pops = _PROBES.get(key, (None, {}))
    dev, tc = torch.device(runtime.device), cfg.train
    kwargs = factory_knobs(cfg.model.model_dump())
    x = torch.randn(tc.batch_size, *in_shape, device=dev)
    y = (torch.randn(tc.batch_size, device=dev) if task == "regression" else
         torch.randint(0, max(2, out_dim), (tc.batch_size,), device=dev))
    state = torch.random.get_rng_state()
    if solo is None:
        model = create_model(cfg.model.family, in_shape, out_dim, **kwargs).to(dev).train()
        opt, loss_name = make_optimizer(model, tc), resolve_loss(tc.loss, task)

        def solo_step():
            opt.zero_grad()
            compute_loss(model(x).float(), y, None, loss_name, tc).backward()
            opt.step()
        solo = _time_steps(solo_step)
    for k in ks:
        if k in pops:
            continue
        pop = stack([create_model(cfg.model.family, in_shape, out_dim, **kwargs) for _ in range(k)]).to(dev)
        pop.ctx.set_p(pop.ctx.p.to(dev))
        sopt, specs = StackedOptimizer(pop, [tc] * k), LossSpecs.of([tc] * k, task, dev)
        xs, ys, lrs = x.unsqueeze(0).expand(k, *x.shape), y.unsqueeze(0).expand(k, *y.shape), torch.full(
            (k,), tc.lr, dtype=torch.float64, device=dev)

        def pop_step():
            sopt.zero_grad()
            member_losses(*ensemble_rows(pop(xs).float(), ys), None, None, specs).sum().backward()
            sopt.step(lrs)
        pops[k] = _time_steps(pop_step)
    torch.random.set_rng_state(state)  # the trials' own seeds are untouched
    _PROBES[key] = (solo, pops)
    return solo, pops


def probe_size(cfg, shapes: tuple, task: str, runtime, room: int, seconds_left: float | None, n_train: int) -> tuple[int, float]:
    """search.population=auto: (K, the solo step's seconds). K is the largest on LADDER (up to `room` trials) whose
    probe is MIN_SPEEDUP faster than K solo trainings, going up while doubling K still raises the speedup by MIN_GAIN
    and the population's longest training (train.epochs x steps x its step) fits BUDGET_SHARE of the time left."""
    best, prev, last = 1, 0.0, None
    solo, _ = probe(cfg, *shapes, task, runtime, ())
    steps = cfg.train.epochs * max(1, math.ceil(n_train / cfg.train.batch_size))
    for k in (k for k in LADDER if k <= room):
        guess = 2 * last if last is not None else k * solo  # this K's step, from the last one's (no faster than 2x)
        if seconds_left is not None and steps * guess > BUDGET_SHARE * seconds_left:
            break
        solo, pops = probe(cfg, *shapes, task, runtime, (k,))
        last, speed = pops[k], k * solo / pops[k]
        if speed >= MIN_SPEEDUP and (best == 1 or speed >= MIN_GAIN * prev):
            best, prev = k, speed
        elif best > 1 or (k >= 16 and speed < 1.0):  # flat from here on, or no gain in sight
            break
    return best, solo


# ---------------------------------------------------------------------------------------------
# training a population's prepared runs (pipeline.run_many's trainer)

def halving(min_resource: int, eta: int, history_key: str, better):
    """cull(epoch, {k: row}) for train_population: at epochs min_resource * eta^i, the members outside the best
    1/eta (at least one stays) by the row's `history_key` end with TrialPruned."""
    optuna = import_optuna()
    rungs = {min_resource * eta ** i for i in range(40)}

    def cull(epoch: int, rows: dict) -> dict:
        scored = [(k, r[history_key]) for k, r in rows.items() if history_key in r and math.isfinite(r[history_key])]
        if epoch not in rungs or len(scored) < 2:
            return {}
        order = sorted(scored, key=lambda kv: kv[1], reverse=better(1.0, 0.0))
        keep = max(1, math.ceil(len(order) / eta))
        return {k: optuna.TrialPruned(f"pruned at epoch {epoch} by the population's successive halving")
                for k, _ in order[keep:]}
    return cull


def trainer(cull=None, shares: dict | None = None):
    """pipeline.run_many's trainer: the prepared runs grouped by model shape, batch size and optimizer; each group
    trained as one population (one that cannot stack: each run alone, as run() trains it). shares[run directory]:
    that run's seconds of its population's training (each epoch's time over the members in it)."""
    from cotune.data.batches import TensorData
    from cotune.pipeline import train_prepared

    def train_all(preps: list) -> list:
        out: list = [None] * len(preps)
        models = [p.setup.model for p in preps]
        groups: dict[tuple, list[int]] = {}
        for g in group_by_shape(models):
            for i in g:
                c = preps[i].setup.train_cfg
                groups.setdefault((g[0], c.batch_size, c.optimizer, stackable(preps[i].cfg)), []).append(i)
        for (_, _, _, ok), idx in groups.items():
            try:
                if not ok:
                    raise PopulationError("not stackable")
                stack([copy.deepcopy(models[i]) for i in idx[:1]])  # a family without batched layers: alone
            except PopulationError:
                for i in idx:
                    t = time.perf_counter()
                    try:
                        out[i] = train_prepared(preps[i])
                    except Exception as err:  # noqa: BLE001 - recorded as that trial's failure
                        out[i] = err
                    if shares is not None:
                        shares[str(preps[i].out)] = time.perf_counter() - t
                continue
            ps = [preps[i] for i in idx]
            sets, offsets, n = {}, {}, 0
            for p in ps:
                if id(p.train_data) not in sets:
                    sets[id(p.train_data)], offsets[id(p.train_data)] = p.train_data, n
                    n += len(p.train_data)
            parts = list(sets.values())
            ws = [d.w if d.w is not None else torch.ones(len(d), device=d.X.device) for d in parts]
            shared = TensorData(torch.cat([d.X for d in parts]), torch.cat([d.y for d in parts]),
                                torch.cat(ws) if any(d.w is not None for d in parts) else None)
            members = [Member(p.setup.train_cfg, seed=p.cfg.runtime.seed, val=p.val_data, monitor=p.setup.monitor,
                              ranking=p.setup.ranking, augment=p.setup.augment, sampling=p.sampling,
                              rows=offsets[id(p.train_data)] + torch.arange(len(p.train_data), device=shared.X.device),
                              y_scale=p.data.y_std, inverse=p.data.target.inverse if p.data.target is not None else None)
                       for p in ps]
            hooks = [p.on_eval for p in ps]
            res = train_population([p.setup.model for p in ps], shared, members, ps[0].runtime, task=ps[0].ds.task,
                                   on_eval=lambda k, e, row: hooks[k](e, row), cull=cull)
            for j, i in enumerate(idx):
                out[i] = res.errors[j] if res.errors[j] is not None else res.results[j]
                if shares is not None:
                    shares[str(preps[i].out)] = res.share_s[j]
        return out
    return train_all


# ---------------------------------------------------------------------------------------------
# the worker's side: ask, train, tell

def run_population(study, objective, lock, room: int, size, me: str) -> int:
    """Ask up to `room` trials (search.population's K, or probe_size's), train them together, tell each. Called with
    the ask lock held; releases it once every member is asked. Returns the trials finished."""
    t0 = time.time()
    first = _ask(study, me)
    try:
        cfg0 = objective.trial_config(first, _tdir(objective, first))
    except Exception:  # noqa: BLE001 - an invalid knob combination: the one-trial path records it
        cfg0 = None
    with Heartbeat(study, [first]) as beat:
        if cfg0 is None or not stackable(cfg0):
            lock.release()
            return _solo(study, objective, first)
        return _population(study, objective, lock, room, size, me, first, cfg0, beat, t0)


def _population(study, objective, lock, room, size, me, first, cfg0, beat, t0) -> int:
    from cotune.pipeline import load_data, model_inputs, run_many
    from cotune.runtime import Runtime
    optuna = import_optuna()
    trials, cfgs = [first], []
    rt = Runtime.resolve(cfg0.runtime.device, cfg0.runtime.precision, cfg0.runtime.threads, cfg0.runtime.compile)
    in_shape, out_dim, _ = model_inputs(cfg0)
    ds = load_data(cfg0)
    n_train = int(len(ds) * (1 - cfg0.data.split.val - cfg0.data.split.test))
    left = None if objective.deadline is None else objective.deadline - time.time()
    try:
        if size == "auto":
            k, solo = probe_size(cfg0, (in_shape, out_dim), ds.task, rt, room, left, n_train)
        else:
            k, (solo, _) = min(int(size), room), probe(cfg0, in_shape, out_dim, ds.task, rt, ())
    except Exception as err:  # noqa: BLE001 - a shape the batched layers cannot take: the trial runs alone
        print(f"cotune worker: trial {first.number} runs alone: its population probe failed ({type(err).__name__}: {err})",
              file=sys.stderr)
        k = 1
    if k == 1:
        lock.release()
        return _solo(study, objective, first)
    shape = {n: v for n, v in first.params.items() if n in SHAPE_KNOBS}
    cfgs.append(cfg0)
    for _ in range(k - 1):
        study.enqueue_trial(shape, skip_if_exists=False)
        trials.append(_ask(study, me))
        beat.add(trials[-1])
    lock.release()  # every member is claimed: the other workers may ask
    ok, bad = [0], []
    for i, t in enumerate(trials[1:], 1):
        try:
            cfgs.append(objective.trial_config(t, _tdir(objective, t)))
            ok.append(i)
        except Exception as err:  # noqa: BLE001 - that member fails alone, with its reason
            bad.append((t, err))
    for t, err in bad:
        _fail(study, objective, t, None, err, t0)
    members = [trials[i] for i in ok]
    trackers = [trial_tracker(objective.track, study.study_name, t.number) for t in members]
    hooks = [_hook(objective, t, t0) for t in members]
    cull = None
    if cfgs[0].search.pruner in ("hyperband", "halving") and objective.by_epoch:
        m = objective.metric
        cull = halving(max(1, cfgs[0].train.epochs // 10), 3, m.history_key, m.better)
    shares: dict = {}
    try:
        outs = run_many(cfgs, trainer(cull, shares), on_eval=hooks, trackers=trackers)
    except Exception as err:  # noqa: BLE001 - what ends the whole population fails each member with its reason
        outs = [err] * len(members)
    wall = time.time() - t0
    trained = sum(shares.values()) or 1.0
    for t, tcfg, res, tracker in zip(members, cfgs, outs, trackers):
        t.set_user_attr("population", first.number)
        t.set_user_attr("population_size", len(members))
        t.set_user_attr("population_seconds", wall)
        share = shares.get(str(_tdir(objective, t)), 0.0)
        try:
            if isinstance(res, optuna.TrialPruned):
                tracker.set_tags({"pruned": str(res)})
                tracker.close("KILLED")
                _seconds(t, share / trained * wall, None)
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
                continue
            if isinstance(res, BaseException):
                raise res
            value = objective.record(t, res, _tdir(objective, t), t0)
            alone = res.train.steps * solo
            _seconds(t, alone + max(0.0, wall - trained) / len(members), alone)
            study.tell(t, value)
        except Exception as err:  # noqa: BLE001 - its failure, recorded as a solo trial's
            _fail(study, objective, t, tcfg, err, t0, tracker)
    return len(trials)


class Heartbeat:
    """The storage's heartbeat for trials asked outside Study.optimize (one thread for all of them), so that other
    workers do not take them for a dead worker's and retry them (storage.py's RDBStorage heartbeat)."""

    def __init__(self, study, trials: list):
        storage = study._storage  # what optuna's own heartbeat thread records on
        self.storage = storage if getattr(storage, "get_heartbeat_interval", lambda: None)() else None
        self.ids, self.stop = [t._trial_id for t in trials], threading.Event()
        self.thread = None

    def add(self, trial) -> None:
        self.ids.append(trial._trial_id)
        if self.storage is not None:
            self.storage.record_heartbeat(trial._trial_id)

    def __enter__(self):
        if self.storage is not None:
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def _beat(self) -> None:
        while True:
            for i in list(self.ids):
                self.storage.record_heartbeat(i)
            if self.stop.wait(self.storage.get_heartbeat_interval()):
                return

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def _ask(study, me: str):
    with warnings.catch_warnings():  # optuna warns that ask() outside optimize() has no heartbeat: Heartbeat gives it
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    trial.set_user_attr("worker", me)  # lets `fit --resume` tell a dead worker's trial from a live one
    return trial


def _tdir(objective, trial):
    return objective.out / "trials" / f"{trial.number:05d}"


def _hook(objective, trial, t0: float):
    """A member's on_eval: report each validated epoch (the study's pruner asked only under search.pruner=median;
    hyperband and halving are the population's own halving); stop when out of time."""
    optuna = import_optuna()
    median = objective.cfg.search.pruner == "median"

    def on_eval(epoch: int, row: dict):
        key = objective.metric.history_key
        if objective.by_epoch and key in row:
            trial.report(row[key], epoch)
            if median and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        return objective.out_of_time(t0)
    return on_eval


def _seconds(trial, seconds: float, train_seconds: float | None) -> None:
    trial.set_user_attr("seconds", seconds)
    if train_seconds is not None:
        trial.set_user_attr("train_seconds", train_seconds)


def _fail(study, objective, trial, tcfg, err: BaseException, t0: float, tracker=None) -> None:
    optuna = import_optuna()
    tracker = tracker or trial_tracker(objective.track, study.study_name, trial.number)
    objective.record_failure(trial, tcfg, _tdir(objective, trial), tracker, err, t0)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _solo(study, objective, trial) -> int:
    """One asked trial through the one-trial Objective, told as study.optimize tells it."""
    optuna = import_optuna()
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    except Exception:  # noqa: BLE001 - Objective recorded the reason on the trial
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)
    return 1
