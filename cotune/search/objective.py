"""One trial of a search, in a worker: its knobs, its training (one data rung after another), its record.

    objective = Objective(study, cfg, space, out, deadline, threads)
    study.optimize(objective, n_trials=1)

A trial trains through `pipeline.run` in its own run directory (trials/NNNNN/). The pruner sees each
validated epoch (search.fidelity=epochs) or each data rung (search.fidelity=data); a trial that would not
leave time for the final refit stops early, keeping its best epoch. What happened is stored on the trial
(user attrs: run_dir, n_params, best_epoch, seconds, fail_reason, ...) and, when tracked, in its MLflow run.
"""
from __future__ import annotations

import math
import time
import traceback
from pathlib import Path

from cotune.config import RunConfig
from cotune.errors import CotuneError, one_line
from cotune.search.space import parse_budget, rungs, suggest
from cotune.search.storage import import_optuna, study_metric
from cotune.search.tracking import trial_tracker

CLOCK_REFRESH_S = 5.0  # how often a trial re-reads the study to re-estimate the final refit's time


class Objective:
    """Callable on an Optuna trial: returns its quality (and, with two objectives, size or latency)."""

    def __init__(self, study, cfg: RunConfig, space: dict, out: Path, deadline: float | None, threads: int):
        self.study, self.cfg, self.space, self.out, self.deadline, self.threads = study, cfg, space, out, deadline, threads
        self.multi = cfg.search.objective != "quality"
        self.by_epoch = not self.multi and cfg.search.fidelity == "epochs"
        self.metric = study_metric(study)  # what ranks the trials, and what the pruner sees
        self.track = study.user_attrs.get("mlflow")  # the search's MLflow parent run (None: not tracked)
        self._refreshed, self._stop_at = 0.0, math.inf  # the final refit's estimate changes as trials finish

    def __call__(self, trial):
        optuna = import_optuna()
        tdir = self.out / "trials" / f"{trial.number:05d}"
        t0 = time.time()
        tracker = trial_tracker(self.track, self.study.study_name, trial.number)
        tcfg = None
        try:  # the trial's config too: knobs that make an invalid config fail the trial with their reason
            tcfg = self.trial_config(trial, tdir)
            res = self.train(trial, tcfg, tdir, tracker, t0)
        except optuna.TrialPruned as err:
            tracker.set_tags({"pruned": str(err)})
            tracker.close("KILLED")
            _finish(trial, tdir, t0)
            raise
        except optuna.exceptions.UpdateFinishedTrialError:  # ended elsewhere (its heartbeat was late): nothing to record
            tracker.set_tags({"fail_reason": TAKEN})
            tracker.close("KILLED")
            raise
        except Exception as err:
            self.record_failure(trial, tcfg, tdir, tracker, err, t0)
            raise
        return self.record(trial, res, tdir, t0)

    def trial_config(self, trial, tdir: Path) -> RunConfig:
        return suggest(trial, self.cfg, self.space).replace(**{"runtime.threads": self.threads, "runtime.progress": False,
                                                               "out": str(tdir)})

    def train(self, trial, tcfg: RunConfig, tdir: Path, tracker, t0: float):
        """The trial's run; with search.fidelity=data, smaller shares of its rows first, judged after each."""
        from cotune.pipeline import run
        optuna = import_optuna()
        on_eval = self.on_eval_for(trial, t0)
        fractions = rungs(tcfg)
        for i, f in enumerate(fractions[:-1]):
            part = run(tcfg.replace(**{"data.fraction": f, "out": str(tdir.with_name(f"{tdir.name}.rung{i}"))}),
                       on_eval=on_eval, checkpoint=False)
            trial.report(part.metrics["val"][self.metric.name], 3 ** i)
            if not self.multi and trial.should_prune():
                trial.set_user_attr("pruned_fraction", f)
                raise optuna.TrialPruned(f"pruned on {f:.3g} of the training rows")
        return run(tcfg, on_eval=on_eval, tracker=tracker, checkpoint=False)  # a trial is never resumed

    def on_eval_for(self, trial, t0: float):
        """train()'s hook for this trial: report each validated epoch to the pruner; stop when out of time."""
        optuna = import_optuna()

        def on_eval(epoch: int, row: dict):
            key = self.metric.history_key
            if self.by_epoch and key in row:
                trial.report(row[key], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
            return self.out_of_time(t0)  # stop, keeping the best epoch so far
        return on_eval

    def out_of_time(self, t0: float) -> bool:
        """True once the final refit would not fit in the budget, nor this trial's own refit if it wins."""
        if self.deadline is None:
            return False
        now = time.time()
        if now - self._refreshed > CLOCK_REFRESH_S:
            self._refreshed = now
            self._stop_at = self.deadline - estimate_final(self.study.get_trials(deepcopy=False), self.cfg, self.metric.maximize)
        # this config may win: its refit on train+val (about this trial's time so far) and the work after it must fit too
        own = (now - t0) * (1 + self.cfg.data.split.val) * REFIT_MARGIN + AFTER_FINAL_S
        return now > self._stop_at or now + own > self.deadline

    def record(self, trial, res, tdir: Path, t0: float):
        """A finished trial's attrs; returns its objective value(s)."""
        val = res.metrics["val"]
        value = val[self.metric.name]
        trial.set_user_attr("val_loss", val.get("log_loss", val.get("rmse")))
        for k, v in (("run_dir", str(tdir)), ("n_params", res.n_params), ("best_epoch", res.train.best_epoch),
                     ("epochs_run", res.train.epochs_run), ("seconds", time.time() - t0), ("metric", self.metric.name),
                     ("train_seconds", res.train.train_time_s)):
            trial.set_user_attr(k, v)
        if not self.multi:
            return value
        second = res.n_params if self.cfg.search.objective.endswith("size") else _latency_ms(tdir)
        trial.set_user_attr("second_objective", second)
        return value, second

    def record_failure(self, trial, tcfg: RunConfig | None, tdir: Path, tracker, err: Exception, t0: float) -> None:
        """The reason on the trial and its MLflow run, the traceback in trials/NNNNN/error.txt."""
        reason = one_line(err) if isinstance(err, CotuneError) else f"{type(err).__name__}: {one_line(err)}"
        trial.set_user_attr("fail_reason", reason[:500])
        # when the run failed before it logged them (with no valid config: the base and the trial's knobs)
        tracker.log_params(tcfg.flat() if tcfg is not None else {**self.cfg.flat(), **trial.params})
        tracker.set_tags({"fail_reason": reason[:500]})
        tracker.close("FAILED")
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "error.txt").write_text("".join(traceback.format_exception(err)))
        _finish(trial, tdir, t0)


TAKEN = "ended by another worker while it ran (its heartbeat was late); it runs again as a new trial"
REFIT_MARGIN = 1.1  # a refit's estimate, with this margin
AFTER_FINAL_S = 5.0  # after the final model: calibration, the baselines' check, fit.json, MLflow's artifacts, report.html (~0.5 s)
REEVAL_SHARE = 0.25  # the search leaves time for search.reeval's cross-validation while it costs at most this share of the budget
REEVAL_MIN_BUDGET = 300.0  # under this budget (s) every second goes to trials: search.reeval is skipped


def refit_seconds(trial, val_share: float) -> float:
    """Expected seconds to refit a completed trial on train+val: its time outside the training steps (data,
    evaluation) as it was, plus its training steps up to its best epoch (the refit's epoch count) on
    1 + val_share times the rows."""
    a = trial.user_attrs
    seconds, steps = a.get("seconds", 0.0), a.get("train_seconds")
    if steps is None or not a.get("epochs_run"):  # trials recorded before train_seconds: all of it
        return seconds * (1 + val_share) * REFIT_MARGIN
    share = min(1.0, a.get("best_epoch", a["epochs_run"]) / a["epochs_run"])
    return (max(0.0, seconds - steps) + steps * share * (1 + val_share)) * REFIT_MARGIN


def cv_seconds(trials, val_share: float, folds: int) -> float:
    """Expected seconds to cross-validate these completed trials (search.reeval): per trial, `folds` trainings on
    (folds - 1) / folds of train+val for its refit's epoch count, so folds - 1 refits' worth."""
    return sum(refit_seconds(t, val_share) for t in trials) * (folds - 1)


def reeval_reserve(trials, cfg: RunConfig) -> float:
    """Seconds the search keeps back for search.reeval: the cross-validation of the search.reeval slowest completed
    trials (which ones will rank on top is not known yet), while that is at most REEVAL_SHARE of the budget;
    beyond that 0: the search itself takes the time, and the re-evaluation is then skipped (reeval.py)."""
    n, budget = cfg.search.reeval, parse_budget(cfg.search.budget)
    if n < 2 or budget is None or budget < REEVAL_MIN_BUDGET or cfg.search.objective != "quality":
        return 0.0
    slowest = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: -refit_seconds(t, cfg.data.split.val))
    need = cv_seconds(slowest[:n], cfg.data.split.val, cfg.search.reeval_folds)
    return need if need <= REEVAL_SHARE * budget else 0.0


def estimate_final(trials, cfg: RunConfig, maximize: bool | None = None) -> float:
    """Seconds the end of the search is expected to take: the top trials' cross-validation when the budget leaves
    room for it (reeval_reserve), the refit on train+val of the trial that can become the final model, then the
    work after it (AFTER_FINAL_S). Which trial that is: with `maximize` (the study's direction) the best completed
    one, or with search.reeval's cross-validation any of its top search.reeval; without it, the slowest completed
    one. (An ensemble's other members are refitted only where the remainder covers them, ensemble.py; a running
    trial that could win keeps time for its own refit, Objective.out_of_time.)"""
    done = [t for t in trials if t.state.name == "COMPLETE"]
    reserve = reeval_reserve(trials, cfg)
    if maximize is not None and done:
        done = sorted(done, key=lambda t: t.values[0], reverse=maximize)[:max(1, cfg.search.reeval) if reserve else 1]
    secs = [refit_seconds(t, cfg.data.split.val) for t in done]
    return reserve + (max(secs) if secs else 0.0) + AFTER_FINAL_S


def _finish(trial, tdir: Path, t0: float) -> None:
    trial.set_user_attr("seconds", time.time() - t0)  # an unfinished trial keeps only its logs: it has no checkpoint


def _latency_ms(run_dir: Path) -> float:
    """CPU milliseconds per sample of the trial's model, batch 64, median of 5."""
    import statistics

    import torch

    from cotune.bundle import load
    b = load(run_dir)
    x = torch.zeros(64, *b.spec.in_shape)
    times = []
    with torch.no_grad():
        for _ in range(6):
            t = time.perf_counter()
            b.model(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[1:]) / 64
