"""The search's final model: the chosen trial refitted (search.reeval's choice, reeval.py, else the best on
validation), or a soft-voting ensemble of the top-k trials when that ensemble beats the chosen trial on
validation.

    choice = ensemble_choice(cfg, study, done, chosen)  # None, or the candidate and the keep-or-reject decision
    final, how = final_model(cfg, chosen, choice, out, deadline)

Both ways the final model is refitted on train+val like the single model: each member with its own
knobs for its own early-stopping epoch count, each member while the budget's remainder covers its refit
(estimated from its own time, best member first); a member it does not cover stays as the search trained
it, on the training part only. `how` (fit.json 'final') says which ('trained_on': train+val, mixed or
train; 'refitted': the refitted trials), and the report shows it.
"""
from __future__ import annotations

import time
from pathlib import Path

from cotune.config import RunConfig
from cotune.evaluate import MODEL_METRICS
from cotune.search.objective import AFTER_FINAL_S, refit_seconds
from cotune.search.storage import study_metric
from cotune.track import read_json, write_json

def ensemble_choice(cfg: RunConfig, study, done, single=None) -> dict | None:
    """Soft voting over the top-k completed trials, scored on validation as the search trained them; kept
    only if it beats the single model it would replace there: `single` (the trial search.reeval chose),
    by default the best trial. None when there is no candidate (top_k 1, two objectives, fewer than two
    trials with a saved model)."""
    from cotune.pipeline import evaluate_ensemble
    k = cfg.search.top_k
    metric = study_metric(study)
    if k < 2 or len(study.directions) > 1 or len(done) < 2 or metric.name in MODEL_METRICS:  # voting is not attacked
        return None
    top = sorted(done, key=lambda t: t.values[0], reverse=metric.maximize)[:k]
    top = [t for t in top if (Path(t.user_attrs.get("run_dir", "")) / "model.safetensors").exists()]
    if len(top) < 2:
        return None
    metrics = evaluate_ensemble(cfg, [t.user_attrs["run_dir"] for t in top])
    single = top[0] if single is None else single
    ens, single_val = metrics["val"][metric.name], single.values[0]
    return {"members": [t.number for t in top], "val": ens, "best_single_val": single_val, "single": single.number,
            "metric": metric.name, "kept": metric.better(ens, single_val), "trials": top, "metrics": metrics}


def final_model(cfg: RunConfig, best, choice: dict | None, out: Path, deadline: float | None):
    """Train (or assemble) out/final; returns (RunResult, how) with how = fit.json's 'final' record."""
    from cotune.launch import run  # search.final_nproc processes (1: this one)
    if choice is None or not choice["kept"]:
        epochs = trial_epochs(best, cfg)
        final = run(cfg.replace(**best.params, **{"out": str(out / "final"), "runtime.progress": False}),
                    refit_epochs=epochs, nproc=cfg.search.final_nproc, on_eval=until(deadline, cfg))
        ended = final.train.epochs_run if final.train.stopped_early else None  # a refit stops early only by `until`
        cut = f"; the budget ended it after epoch {ended}" if ended else ""
        return final, {"kind": "single", "trials": [best.number], "epochs": [epochs], "trained_on": "train+val",
                       "processes": cfg.search.final_nproc, **({"budget_ended_at": {str(best.number): ended}} if ended else {}),
                       "summary": f"trial #{best.number}'s knobs, refitted on train + validation for its "
                                  f"early-stopping epoch count ({epochs}{cut}), then tested once"}
    return _ensemble(cfg, choice, out, deadline)


def until(deadline: float | None, cfg: RunConfig):
    """train()'s hook for a refit the budget covers: stop after the epoch that ends past the deadline less the work
    after the final model (AFTER_FINAL_S). The refit's time is estimated from its trial (refit_seconds); this holds
    the budget when a loaded machine makes it slower. None without a deadline, or with search.final_nproc > 1 (the
    training runs in other processes, which no hook reaches)."""
    if deadline is None or cfg.search.final_nproc > 1:
        return None
    return lambda epoch, row: time.time() > deadline - AFTER_FINAL_S


def trial_epochs(trial, cfg: RunConfig) -> int:
    """The epochs a trial's knobs are refitted (and cross-validated, reeval.py) for: its early-stopping epoch."""
    return max(1, int(trial.user_attrs.get("best_epoch", cfg.train.epochs)))


def _ensemble(cfg: RunConfig, choice: dict, out: Path, deadline: float | None):
    from cotune.bundle import save_ensemble
    from cotune.launch import run
    from cotune.pipeline import RunResult, evaluate_ensemble
    from cotune.train import TrainResult
    trials, final = choice["trials"], out / "final"
    need = sum(refit_seconds(t, cfg.data.split.val) for t in trials)
    epochs = [trial_epochs(t, cfg) for t in trials]
    members = ", ".join(f"#{t.number}" for t in trials)
    dirs, refitted, ended = [], [], {}
    for i, (t, n) in enumerate(zip(trials, epochs)):  # best first: the budget's remainder goes to the top members
        if deadline is None or time.time() + refit_seconds(t, cfg.data.split.val) + AFTER_FINAL_S <= deadline:
            d = final / "members" / str(i)
            res = run(cfg.replace(**t.params, **{"out": str(d), "runtime.progress": False}), refit_epochs=n,
                      nproc=cfg.search.final_nproc, on_eval=until(deadline, cfg))
            if res.train.stopped_early:  # the budget ended its refit (until)
                ended[str(t.number)] = res.train.epochs_run
            dirs.append(d)
            refitted.append(t.number)
        else:
            dirs.append(t.user_attrs["run_dir"])
    save_ensemble(final, dirs)  # the refitted members are in place already: they are not copied
    if refitted:
        metrics = {k: v for k, v in evaluate_ensemble(cfg, dirs).items() if k == "test"}  # val rows were trained on
    else:
        metrics = choice["metrics"]
    if len(refitted) == len(trials):
        trained_on = "train+val"
        summary = (f"a soft-voting ensemble of trials {members}, each refitted on train + validation with its own "
                   f"knobs for its early-stopping epoch count ({', '.join(map(str, epochs))}), then tested once")
    elif refitted:
        trained_on = "mixed"
        kept = ", ".join(f"#{t.number}" for t in trials if t.number not in refitted)
        one, many = ("its",) if len(refitted) == 1 else ("their",), len(trials) - len(refitted) > 1
        summary = (f"a soft-voting ensemble of trials {members}: {', '.join(f'#{n}' for n in refitted)} refitted on "
                   f"train + validation for {one[0]} early-stopping epoch count{'s' if len(refitted) > 1 else ''}, "
                   f"{kept} as the search trained {'them' if many else 'it'} (refitting every member needed about "
                   f"{need:.0f} s, more than the budget had left), then tested once")
    else:
        trained_on = "train"
        summary = (f"a soft-voting ensemble of trials {members} as the search trained them, on the training part "
                   f"only: refitting them on train + validation needed about {need:.0f} s, more than the budget had "
                   "left")
    if ended:
        summary += f" (the budget ended the refit of {', '.join(f'#{k} after epoch {v}' for k, v in ended.items())})"
    info = {k: v for k, v in choice.items() if k not in ("trials", "metrics")}
    write_json(final / "metrics.json", {**metrics, "ensemble": info})
    write_json(final / "config.json", cfg.to_dict())
    n_params = sum(int(read_json(d / "model.json").get("n_params", 0)) for d in sorted((final / "members").iterdir()))
    result = RunResult(path=final, metrics=metrics, train=TrainResult(), n_params=n_params,
                       config=cfg.replace(**trials[0].params))
    how = {"kind": "ensemble", "trials": [t.number for t in trials], "epochs": epochs,
           "trained_on": trained_on, "refitted": refitted, "refit_seconds_needed": need, "summary": summary,
           "processes": cfg.search.final_nproc if refitted else None, **({"budget_ended_at": ended} if ended else {})}
    return result, how


def decide(cfg: RunConfig, metric, best, choice: dict | None, how: dict, final) -> dict | None:
    """Calibrate the final classifier and, for a binary one ranked by a label metric, tune its decision threshold.

    Both are fitted on validation predictions that the validation rows did not train: those of the final
    model's counterpart as the search trained it (the best trial's own model, or the ensemble of the trials'
    models), since the final model itself was refitted on train + validation. The temperature (applied
    after ensembling) is kept only when it lowers the cross-fitted validation log loss; the threshold only
    when it raises the validation metric. decision.json goes into final/, metrics.json's test part is then
    the calibrated, thresholded model's, and its 'calibration' part holds log loss, Brier score and ECE on
    test before and after. Returns that part (None for regression)."""
    import numpy as np

    from cotune import bundle, evaluate
    from cotune.calibrate import apply_temperature, temperature_check, threshold_check
    from cotune.pipeline import held_out, load_data
    ds = load_data(cfg)
    if ds.task == "regression":
        return None
    va, y_val, te = held_out(cfg, ds)  # the validation labels the search ranked on (data.clean.val)
    rows = (lambda idx: ds.X.iloc[idx]) if ds.modality == "tabular" else (lambda idx: ds.X[idx])  # noqa: E731
    if choice is not None and choice["kept"]:
        dirs = [t.user_attrs["run_dir"] for t in choice["trials"]]
        counterpart, source = (final.path, "the ensemble itself") if how["trained_on"] == "train" else (dirs, "the ensemble of the search's member models")
    else:
        counterpart, source = best.user_attrs.get("run_dir"), f"trial #{best.number}'s model"
    try:
        if isinstance(counterpart, list):
            model = bundle.Ensemble(Path(counterpart[0]).parent, [bundle.load(d) for d in counterpart])
        else:
            model = bundle.load(counterpart)
            model.decision = dict(bundle.NO_DECISION)  # the raw probabilities, whatever was saved
    except Exception as err:  # a trial directory removed by hand: the final model stays uncalibrated
        return {"skipped": f"no validation predictions ({type(err).__name__}); the final model is not calibrated"}
    if not len(va):
        return {"skipped": "no validation rows; the final model is not calibrated"}
    p_val = model.predict_output(rows(va))
    cal = temperature_check(p_val, y_val, seed=cfg.runtime.seed)
    p_val = apply_temperature(p_val, cal["temperature"])
    threshold = None
    thr_info = None
    if ds.task == "binary" and metric.name in evaluate.THRESHOLD_METRICS:
        thr_info = threshold_check(p_val, y_val, metric.name, seed=cfg.runtime.seed)
        threshold = thr_info["threshold"]
    decision = {"temperature": cal["temperature"], "threshold": threshold, "metric": metric.name,
                "positive_class": str(ds.classes[1]) if ds.task == "binary" else None, "fitted_on": source,
                "temperature_check": cal, "threshold_check": thr_info}
    bundle.save_decision(final.path, decision)
    part = {"temperature": cal["temperature"], "kept": cal["kept"], "threshold": threshold, "fitted_on": source,
            "val": cal, "threshold_check": thr_info}
    if len(te):
        fresh = bundle.load(final.path)
        p_after = fresh.predict_output(rows(te))
        fresh.decision = dict(bundle.NO_DECISION)
        p_before = fresh.predict_output(rows(te))
        y_te = ds.y[te]
        keys = ("log_loss", "brier", "ece", "accuracy", *([] if metric.name in MODEL_METRICS else [metric.name]))
        kept = {k: v for k, v in final.metrics["test"].items() if k in MODEL_METRICS}  # argmax: a temperature keeps them
        part["test_before"] = {k: evaluate.score(k, y_te, p_before, ds.task) if k != "ece" else evaluate.ece(y_te, p_before)
                               for k in dict.fromkeys(keys)}
        final.metrics["test"] = {**evaluate.evaluate(y_te, p_after, ds.task, classes=list(ds.classes), threshold=threshold),
                                 **kept}
        part["test_after"] = {k: final.metrics["test"].get(k) for k in dict.fromkeys(keys)}
        prior = np.bincount(ds.y[np.setdiff1d(np.arange(len(ds.y)), np.concatenate([va, te]))], minlength=len(ds.classes))
        prior = prior / max(1, prior.sum())
        part["test_prior_log_loss"] = evaluate.score("log_loss", y_te, np.tile(np.clip(prior, 1e-15, 1), (len(te), 1)), ds.task)
    final.metrics["calibration"] = part
    m = read_json(final.path / "metrics.json")
    write_json(final.path / "metrics.json", {**m, **{k: v for k, v in final.metrics.items() if k in ("test", "calibration")}})
    return part
