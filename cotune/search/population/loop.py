"""train_population: K members of one model shape trained as one batched model, each as its own `train()` run.

    members = [Member(cfg_k, seed=s_k, rows=rows_k, val=val_data) for ...]
    res = train_population(models, train_data, members, runtime, task="multiclass", on_eval=hook)
    res.results[k]        # a cotune.train.TrainResult, or None when member k failed (res.errors[k] says why)

A member's TrainResult is its solo run's, except train_time_s (and so samples_per_s): the population's time over
the epochs the member took part in. A failed member's model keeps the weights it came in with.

Members share the device-resident tensors (`train_data`, a TensorData); member k trains on its rows `rows_k` (its
cleaning, balancing and data fraction), with its own labels and sample weights when given, and draws each epoch's
permutation from its own generator seeded as `train()` seeds the global one, so its batches are its solo run's.
Everything else is per member too: optimizer settings, learning-rate schedule (get_lr on its own step count and
total), loss, dropout rate, L1, gradient clipping, epochs, validation, patience and best weights, `on_eval`.

Epochs are synchronous: every member's epoch e runs in the same ticks, as many as the member with most batches
needs; a member whose epoch has fewer batches (fewer rows), or a smaller last batch, is padded and masked (its
optimizer and batch-norm statistics stand still in those ticks). At the end of an epoch the members that finished
(stopped early, out of epochs, failed, `on_eval` returned True or raised) leave the population: their best weights
go back into their own zoo module (models[k], as `train()` leaves its model) and the population shrinks to the
rest, keeping their parameters and optimizer state exactly. A member whose epoch loss is NaN or infinite fails
(train() would raise TrainingError) while the others go on. Dropout masks are not the solo run's (one draw for all).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from cotune import distributed as dist
from cotune.data.batches import TensorData
from cotune.errors import ConfigError, DataError
from cotune.evaluate import Metric, metric, monitored_metric
from cotune.runtime import Runtime
from cotune.search.population.loss import LossSpecs, ensemble_rows, member_losses
from cotune.search.population.optim import StackedOptimizer, clip_members, param_info
from cotune.search.population.stack import Population, stack, take, unstack
from cotune.train import EVAL_BATCH, TrainingError, TrainResult, check_config, get_lr, val_row

SEED_STRIDE = 1_000_003  # train(): torch.manual_seed(seed * 1_000_003 + epoch)


@dataclass
class Member:
    """One trial of a population: its training config and what sets it apart from the others."""
    cfg: object                            # its TrainConfig (one train.batch_size and train.optimizer for all)
    seed: int = 0                          # runtime.seed: its shuffles, as train(seed=...)
    rows: torch.Tensor | None = None       # (n,) rows of the shared training tensors it trains on (None: all)
    y: torch.Tensor | None = None          # (n,) its labels for those rows (relabelled), else the shared ones
    w: torch.Tensor | None = None          # (n,) per-row loss weights (class weights)
    sampling: torch.Tensor | None = None   # (n,) draw each epoch's rows with replacement by these (balanced batches)
    val: TensorData | None = None          # its validation rows (members sharing one object validate in one pass)
    monitor: Metric | None = None          # what early stopping follows (default as train())
    ranking: Metric | None = None          # the search's metric, validated every time too
    augment: Callable | None = None        # aug(x, y) -> (x, y_b, lam) on its real rows of each batch
    y_scale: float | None = None           # regression: its target scale (default: train_population's y_scale)
    inverse: Callable | None = None        # regression: its target transform's inverse (default: train_population's)


@dataclass
class PopulationResult:
    results: list[TrainResult | None]                       # per member, None when it failed
    errors: list[BaseException | None] = field(default_factory=list)  # TrainingError, or what on_eval raised
    ticks: int = 0                                          # batched steps taken
    train_time_s: float = 0.0                               # the population's training time, evaluation excluded
    share_s: list[float] = field(default_factory=list)      # per member: each epoch's time over the members in it


class _State:
    """Member k's bookkeeping, as train()'s locals."""

    def __init__(self, m: Member, n: int, task: str):
        c = m.cfg
        self.n, self.bs = n, min(c.batch_size, n)
        self.steps = dist.steps(n, self.bs)
        self.total = c.epochs * self.steps
        self.has_val = m.val is not None and len(m.val) > 0
        self.monitor = (m.monitor or monitored_metric(task, c.monitor)) if self.has_val else metric("loss")
        self.key = self.monitor.history_key if self.has_val else "train_loss"
        self.names = tuple(sorted({self.monitor.name, *([m.ranking.name] if m.ranking is not None else [])}))
        self.res, self.step, self.bad, self.lr, self.best = TrainResult(), 0, 0, 0.0, None


def _check(members: list[Member], n_rows: list[int], task: str) -> None:
    for k, (m, n) in enumerate(zip(members, n_rows)):
        if n == 0:
            raise DataError(f"Population member {k} has no training rows (Member.rows is empty); leave it out.")
        check_config(m.cfg, task)
        if m.cfg.freeze_epochs > 0:
            raise ConfigError("A population does not train with train.freeze_epochs > 0; train those trials one by one.")
    if len({m.cfg.batch_size for m in members}) > 1:
        raise ConfigError("A population has one train.batch_size; group the trials by batch size.")


@torch.no_grad()
def infer(pop: Population, X: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """(K, N, C) every member's outputs on the same rows X, in eval mode."""
    was = pop.training
    pop.eval()
    dev = pop.ctx.p.device
    outs = []
    for i in range(0, X.shape[0], EVAL_BATCH):
        xb = X[i:i + EVAL_BATCH].to(dev, non_blocking=True)
        with runtime.autocast():
            outs.append(pop(xb.unsqueeze(0).expand(pop.k, *xb.shape)).float())
    pop.train(was)
    return torch.cat(outs, dim=1)


def _epoch_batches(states, gens, members, alive, epoch, train_data, dev):
    """This epoch's (K, T, B) rows of the shared tensors, labels, weights (or None) and counts (T, K) per tick."""
    ticks = max(states[a].steps for a in alive)
    width = max(states[a].bs for a in alive)
    Y = train_data.y
    rows = torch.zeros(len(alive), ticks, width, dtype=torch.long, device=dev)
    labels = torch.zeros(len(alive), ticks, width, dtype=Y.dtype, device=dev)
    any_w = any(members[a].w is not None or train_data.w is not None for a in alive)
    weights = torch.ones(len(alive), ticks, width, device=dev) if any_w else None
    counts = torch.zeros(ticks, len(alive), dtype=torch.long)
    for i, a in enumerate(alive):
        m, s, g = members[a], states[a], gens[a]
        g.manual_seed(m.seed * SEED_STRIDE + epoch)
        perm = (torch.randperm(s.n, device=dev, generator=g) if m.sampling is None else
                torch.multinomial(m.sampling.to(dev), s.n, replacement=True, generator=g))
        pos = torch.arange(s.steps * s.bs, device=dev).reshape(s.steps, s.bs)
        local = perm[pos.clamp(max=s.n - 1)]  # past the end: a real row as padding, masked
        glob = local if m.rows is None else m.rows.to(dev)[local]
        rows[i, :s.steps, :s.bs] = glob
        labels[i, :s.steps, :s.bs] = Y.to(dev)[glob] if m.y is None else m.y.to(dev)[local]
        if any_w:
            w = m.w.to(dev)[local] if m.w is not None else train_data.w.to(dev)[glob] if train_data.w is not None else None
            if w is not None:
                weights[i, :s.steps, :s.bs] = w
        counts[:s.steps, i] = torch.tensor([min(s.bs, s.n - j * s.bs) for j in range(s.steps)])
    return rows, labels, weights, counts


def train_population(models: list[torch.nn.Module], train_data: TensorData, members: list[Member], runtime: Runtime, *,
                     task: str, y_scale: float = 1.0, inverse: Callable | None = None,
                     on_eval: Callable[[int, int, dict], bool | None] | None = None,
                     cull: Callable[[int, dict], dict] | None = None) -> PopulationResult:
    """Train models[k] as member k (each in place; the best validation weights end up loaded, as train()).

    on_eval(k, epoch, row) is member k's train() hook: True stops it; what it raises ends that member alone and
    is kept in errors[k] (a pruned trial's TrialPruned, say). cull(epoch, {k: row}) sees the epoch's rows of the
    members going on, all at once, and returns {k: exception} for those to end (synchronous successive halving):
    as if their on_eval had raised it."""
    if len(models) != len(members) or not members:
        raise ConfigError(f"train_population needs one Member per model; got {len(models)} models and {len(members)} members.")
    n_rows = [len(train_data) if m.rows is None else len(m.rows) for m in members]
    _check(members, n_rows, task)
    dev = torch.device(runtime.device)
    for m in models:
        m.to(dev)
    pop = stack(models).to(dev)
    pop.ctx.set_p(pop.ctx.p.to(dev))
    opt = StackedOptimizer(pop, [m.cfg for m in members])
    decayed = [n for n, (dec, _) in param_info(pop).items() if dec]
    states = [_State(m, n, task) for m, n in zip(members, n_rows)]
    gens = [torch.Generator(device=dev) for _ in members]
    out = PopulationResult([None] * len(members), [None] * len(members), share_s=[0.0] * len(members))
    alive = list(range(len(members)))  # slot i of the population is member alive[i]
    specs = LossSpecs.of([m.cfg for m in members], task, dev)
    f64 = lambda vals: torch.tensor(vals, dtype=torch.float64, device=dev)  # noqa: E731
    l1 = f64([m.cfg.l1 for m in members])
    clip = f64([m.cfg.grad_clip for m in members])
    X = train_data.X
    for k in alive:
        states[k].best = {n: take(t.detach(), pop.k, torch.tensor([k], device=dev)).clone() for n, t, _ in pop.stacked()}
    epoch = 0
    while alive:
        torch.manual_seed(members[alive[0]].seed * SEED_STRIDE + epoch)  # dropout: one stream for the population
        t0 = time.perf_counter()
        pop.train()
        rows, labels, weights, counts = _epoch_batches(states, gens, members, alive, epoch, train_data, dev)
        width = rows.shape[2]
        running = torch.zeros(len(alive), dtype=torch.float64, device=dev)
        use_l1, use_clip = any(members[a].cfg.l1 > 0 for a in alive), any(members[a].cfg.grad_clip > 0 for a in alive)
        for i, cnt in enumerate(counts.tolist()):  # cnt: each member's real rows in this tick, on the host
            full = all(c == width for c in cnt)
            active = None if full else [c > 0 for c in cnt]
            mask = None if full else torch.arange(width, device=dev)[None, :] < torch.tensor(cnt, device=dev)[:, None]
            lrs = []
            for j, a in enumerate(alive):
                s, c = states[a], members[a].cfg
                if cnt[j] > 0:
                    s.lr = get_lr(s.step, s.total, c.lr, c.schedule, c.warmup, c.gamma, c.step_every * s.steps)
                lrs.append(s.lr)
            idx = rows[:, i]
            xb, yb = X[idx.reshape(-1)].to(dev, non_blocking=True), labels[:, i]
            xb = xb.reshape(len(alive), width, *X.shape[1:])
            wb = None if weights is None else weights[:, i]
            yb2, lam = _augment(members, alive, xb, yb, cnt)
            pop.ctx.mask = mask
            with runtime.autocast():
                z = pop(xb).float()
            z, yl, wl, ml, yl2 = ensemble_rows(z, yb, wb, mask, yb2)  # an in-model ensemble: one row per copy
            loss = member_losses(z, yl, wl, ml, specs)
            if yb2 is not None:
                loss = lam * loss + (1 - lam) * member_losses(z, yl2, wl, ml, specs)
            if use_l1:
                params = dict(pop.named_parameters())
                loss = loss + l1.to(loss.dtype) * sum(params[n].reshape(pop.k, -1).abs().sum(1) for n in decayed)
            if active is not None:
                loss = torch.where(torch.tensor(active, device=dev), loss, torch.zeros_like(loss))
            opt.zero_grad()
            loss.sum().backward()
            if use_clip:
                clip_members(pop, clip)
            opt.step(f64(lrs), active)
            running += loss.detach().to(torch.float64)
            for j, a in enumerate(alive):
                states[a].step += cnt[j] > 0
        pop.ctx.mask = None
        epoch_losses = running.tolist()  # the epoch's one host sync
        dt = time.perf_counter() - t0
        out.ticks += rows.shape[1]
        out.train_time_s += dt
        leave = _end_epoch(pop, members, states, alive, epoch, epoch_losses, dt, runtime, task, y_scale, inverse, on_eval, out)
        rest = [a for a in alive if a not in leave]
        for a, err in ((cull(epoch + 1, {a: states[a].res.history[-1] for a in rest}) or {}) if cull and rest else {}).items():
            out.errors[a] = err
            _close(states[a], out, a)
            leave.add(a)
        for a in leave:
            if out.results[a] is not None:
                _restore(pop, alive.index(a), states[a].best)
                unstack(pop, alive.index(a), models[a])
        keep = [i for i, a in enumerate(alive) if a not in leave]
        if leave and keep:
            pop.shrink(keep)
            opt.shrink(keep)
            idx = torch.as_tensor(keep, device=dev)
            specs, l1, clip = specs.take(idx), l1[idx], clip[idx]
        alive = [alive[i] for i in keep]
        epoch += 1
    return out


def _augment(members, alive, xb, yb, cnt):
    """Each member's augmentation on its real rows of the batch (in place in xb); (mixing labels, lam) or (None, 1)."""
    if not any(members[a].augment is not None for a in alive):
        return None, 1.0
    yb2, lam = yb.clone(), torch.ones(len(alive), device=xb.device)
    mixed = False
    for j, a in enumerate(alive):
        aug, c = members[a].augment, int(cnt[j])
        if aug is None or c == 0:
            continue
        x2, y2, lm = aug(xb[j, :c], yb[j, :c])
        xb[j, :c] = x2
        if y2 is not None:
            yb2[j, :c], lam[j], mixed = y2, float(lm), True
    return (yb2, lam) if mixed else (None, 1.0)


def _restore(pop: Population, slot: int, best: dict) -> None:
    """Member `slot`'s stacked tensors from its saved best (one member's slices)."""
    with torch.no_grad():
        for n, t, _ in pop.stacked():
            per = t.shape[0] // pop.k
            t[slot * per:(slot + 1) * per] = best[n]


def _end_epoch(pop, members, states, alive, epoch, losses, dt, runtime, task, y_scale, inverse, on_eval, out) -> set:
    """train()'s end of an epoch for every member still in: history, validation, best weights, early stopping,
    on_eval. Returns the members that leave."""
    leave, outputs = set(), {}
    for j, a in enumerate(alive):
        m, s = members[a], states[a]
        c = m.cfg
        s.res.train_time_s += dt
        out.share_s[a] += dt / len(alive)
        loss = losses[j] / s.steps
        if not math.isfinite(loss):
            out.errors[a] = TrainingError(f"Training diverged: the loss became {loss} in epoch {epoch + 1}; "
                                          "lower train.lr or set train.grad_clip (e.g. 1.0).")
            leave.add(a)
            continue
        row = {"epoch": epoch + 1, "train_loss": loss, "lr": s.lr}
        check = not s.has_val or (epoch + 1) % c.val_every == 0 or epoch + 1 == c.epochs
        if check:
            if s.has_val:
                if id(m.val) not in outputs:
                    outputs[id(m.val)] = infer(pop, m.val.X, runtime)
                row.update(val_row(outputs[id(m.val)][j], m.val, task, y_scale if m.y_scale is None else m.y_scale, s.names,
                                   inverse if m.inverse is None else m.inverse))
            score = row[s.key]
            if s.res.best_epoch == 0 or s.monitor.better(score, s.res.best_score):
                s.res.best_epoch, s.res.best_score = epoch + 1, score
                s.best = {n: take(t.detach(), pop.k, torch.tensor([j], device=t.device)).clone() for n, t, _ in pop.stacked()}
            s.bad = epoch + 1 - s.res.best_epoch
        s.res.history.append(row)
        stop = check and c.patience > 0 and s.bad >= c.patience
        if on_eval is not None:
            try:
                stop = bool(on_eval(a, epoch + 1, row)) or stop
            except Exception as err:  # noqa: BLE001 - the member's own hook: it ends that member alone
                out.errors[a], stop = err, True
        if stop or epoch + 1 >= c.epochs:
            s.res.stopped_early = epoch + 1 < c.epochs
            leave.add(a)
        if a in leave:
            _close(s, out, a)
    return leave


def _close(s: _State, out: PopulationResult, a: int) -> None:
    """Member a leaves with its result as train() returns it."""
    s.res.epochs_run, s.res.steps = len(s.res.history), s.step
    s.res.samples_per_s = s.res.steps * s.bs / s.res.train_time_s if s.res.train_time_s > 0 else 0.0
    out.results[a] = s.res
