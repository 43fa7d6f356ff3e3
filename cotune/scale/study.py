"""`cotune scale RUN`: train the best configuration of a search over model sizes x training-set sizes x seeds.

    result = scale("runs/x", workers=2)            # -> runs/x/scale/{scale.csv, scale.json, runs/}

The runs go through the search's machinery (cotune.search's storage and parent): an Optuna study (SQLite in
the scale directory) holds one enqueued trial per grid point, `cotune worker` processes train them
(--workers N, started and watched by search.parent.run_workers), and the parent
appends each finished run to scale.csv at once. Points already in scale.csv are not run again, so a
killed study continues where it stopped. Then the law is fitted and the advice written (advice.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cotune.config import RunConfig, from_dict
from cotune.errors import ConfigError, CotuneError
from cotune.evaluate import part_loss, primary_metric
from cotune.scale.grid import append_row, grid, read_rows, row_key, widths_for
from cotune.search.parent import live_view, run_workers
from cotune.search.storage import open_study, storage_url
from cotune.track import read_json, write_json

SCALE_DB = "scale.db"
# knobs that may differ between two invocations on the same scale directory (how, not what, is trained)
FREE = ("scale.", "runtime.progress", "runtime.threads", "search.", "out")


@dataclass
class ScaleResult:
    path: Path
    rows: list[dict]        # scale.csv
    summary: dict           # scale.json: fits, held-out check, advice
    ran: int                # runs trained by this call (the others were in scale.csv already)


def base_config(run: Path) -> RunConfig:
    """The configuration to study: a finished search's best trial, or a training run's own config."""
    if (run / "fit.json").is_file():
        state = read_json(run / "fit.json")
        if not state.get("best"):
            raise ConfigError(f"The search in {str(run)!r} has not finished; finish it (`cotune fit --out {run} "
                              "--resume`) before a scaling study.")
        return from_dict(state["config"]).replace(**state["best"]["params"])
    if (run / "config.json").is_file() and (run / "metrics.json").is_file():
        return from_dict(read_json(run / "config.json"))
    raise ConfigError(f"{str(run)!r} holds neither a finished search (fit.json) nor a finished run (config.json + "
                      "metrics.json); pass the directory `cotune fit` or `cotune train` wrote.")


def study_config(base: RunConfig, overrides=()) -> RunConfig:
    """The base configuration as every grid run trains it: early stopping on validation loss, no search."""
    cfg = from_dict(base.to_dict(), ["train.monitor=loss", "search.pruner=none", "search.mlflow=none",
                                     "search.fidelity=epochs", "search.budget=null", *overrides])
    if cfg.data.split.val <= 0:
        raise ConfigError("A scaling study fits validation loss: set data.split.val > 0 (e.g. 0.15).")
    if cfg.model.init_from is not None:  # its weights fit one width only, and a law of pretrained sizes is another study
        raise ConfigError(f"A scaling study trains models of other widths, which model.init_from "
                          f"({cfg.model.init_from!r}) cannot start; study the configuration from scratch with "
                          "--set model.init_from=null.")
    if cfg.scale.extrapolate and cfg.data.source != "mnist1d":
        raise ConfigError(f"scale.extrapolate needs a source that generates its data (mnist1d); {cfg.data.source!r} "
                          "has only its own rows. Drop scale.extrapolate, or lower scale.max_fraction to keep rows back.")
    return cfg


def _same_study(old: dict, new: dict) -> None:
    a, b = from_dict(old).flat(), from_dict(new).flat()
    diff = [k for k in a if a[k] != b.get(k) and not k.startswith(FREE)]
    if diff:
        raise ConfigError(f"The scale directory holds a study of another configuration ({', '.join(diff[:4])} differ); "
                          "choose another --out, or drop the --set that changed them.")


def scale(run, overrides=(), *, out=None, workers: int | None = None, live: bool = True, console=None) -> ScaleResult:
    """Run the missing grid points, then fit and advise. Returns the rows and scale.json's content."""
    from cotune.pipeline import load_data, model_inputs
    from cotune.scale.advice import summarize
    from cotune.scale.law import check_points
    run = Path(run)
    cfg = study_config(base_config(run), overrides)
    workers = workers or cfg.search.workers
    out = Path(out) if out is not None else run / "scale"
    if (out / "config.json").is_file():
        _same_study(read_json(out / "config.json"), cfg.to_dict())
    widths = widths_for(cfg, model_inputs(cfg))
    points = grid(cfg, widths, cfg.scale.extrapolate)
    params = {w: p for w, p, _ in widths}
    fitted = [p for p in points if not (p.extrapolated or p.longer)]  # too few to fit: say so before training anything
    check_points([params[p.width] for p in fitted], [p.fraction for p in fitted], [1.0] * len(fitted))
    csv_path = out / "scale.csv"
    rows = read_rows(csv_path)
    have = {row_key(r) for r in rows}
    todo = [p for p in points if p.key not in have]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    write_json(out / "grid.json", {"widths": [{"width": w, "params": p, "forward_flops": f} for w, p, f in widths],
                                   "points": len(points), "todo": len(todo)})
    flops = {w: f for w, _, f in widths}
    if todo:
        attempt = 1 + sum(1 for _ in out.glob("runs/attempt-*"))
        name = f"attempt-{attempt}"
        sets = [p.params() for p in todo]  # each enqueued trial's knobs, inside the space
        space = {k: (min(v[k] for v in sets), max(v[k] for v in sets)) for k in sets[0]}
        work_dir = out / "runs" / name
        work_dir.mkdir(parents=True)
        url = storage_url(out, f"sqlite:///{(out / SCALE_DB).resolve()}")
        study, _, _ = open_study(url, name, cfg.replace(**{"search.trials": len(todo), "search.population": "1"}), space,
                                 primary_metric(load_data(cfg).task))
        study.set_user_attr("out", str(work_dir.resolve()))
        study.set_user_attr("stop", False)
        study.set_user_attr("deadline", None)
        for p in todo:
            study.enqueue_trial(p.params(), user_attrs={"point": list(p.key), "size": p.size,
                                                        "extrapolated": p.extrapolated, "longer": p.longer})
        _watch(study, url, workers, work_dir, cfg.runtime.threads, rows, have, csv_path, flops, len(points), live, console,
               rescore=study_rows(cfg))
        failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
        if failed:
            reasons = sorted({t.user_attrs.get("fail_reason", "unknown") for t in failed})
            write_json(out / "failures.json", [{"point": t.user_attrs.get("point"), "reason": t.user_attrs.get("fail_reason")}
                                               for t in failed])
            if len(failed) == len(todo):
                raise CotuneError(f"Every run of the scaling study failed ({reasons[0][:200]}); see {out / 'failures.json'}.")
    summary = summarize(rows, cfg, widths)
    write_json(out / "scale.json", summary)
    return ScaleResult(path=out, rows=rows, summary=summary, ran=len(todo))


def _number(v) -> float:
    return float("nan") if v is None else float(v)


def study_rows(cfg: RunConfig):
    """Returns score(run_dir) -> metrics of a run's saved model on the study's own validation rows.

    A run on more generated rows (scale.extrapolate) has validation rows of its own. Scored on the grid's
    instead, its comparison with the fit is paired: at a small loss a few rows carry much of it, so other
    rows would be another measurement. The rows are loaded on the first call."""
    held: dict = {}

    def score(run_dir) -> dict:
        from cotune.bundle import load
        from cotune.data.split import split_indices
        from cotune.evaluate import evaluate
        from cotune.pipeline import load_data
        if not held:
            ds = load_data(cfg)
            _, val, _ = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
            held.update(X=ds.X[val], y=ds.y[val])
        bundle = load(run_dir)
        return evaluate(held["y"], bundle.predict_output(held["X"]), bundle.task)

    return score


def _row(t, flops: dict, rescore=None) -> dict:
    """scale.csv's row for a finished trial, read from its run directory (an extrapolated run's loss and
    metric scored by `rescore` on the study's own validation rows, when given)."""
    run = Path(t.user_attrs["run_dir"])
    metrics, env = read_json(run / "metrics.json"), read_json(run / "env.json")
    val, p = metrics["val"], t.params
    if t.user_attrs["extrapolated"] and rescore is not None:
        val = rescore(run)
    metric = t.user_attrs["metric"]  # the study's primary metric (evaluate.primary_metric)
    loss, loss_se = part_loss(val)
    samples, epochs = env["rows"]["train_used"], metrics["train"]["epochs_run"]
    return {"size": t.user_attrs["size"], "width": p["model.width"], "fraction": p["data.fraction"],
            "n_samples": p["data.n_samples"], "seed": p["runtime.seed"], "params": metrics["train"]["n_params"],
            "samples": samples, "epochs": epochs, "flops": 3.0 * flops[p["model.width"]] * samples * epochs,
            "val_loss": loss, "val_loss_se": _number(loss_se), "val_metric": val[metric], "metric": metric,
            "seconds": t.user_attrs.get("seconds", 0.0), "extrapolated": t.user_attrs["extrapolated"],
            "longer": t.user_attrs.get("longer", False), "run_dir": str(run)}


def _watch(study, url: str, workers: int, work_dir: Path, threads: int, rows, have, csv_path: Path, flops: dict,
           total: int, live: bool, console, rescore=None) -> None:
    """Run the workers; append each finished run to scale.csv as it lands and show progress until they exit."""
    done: set[int] = set()

    def line():
        n = {s: sum(t.state.name == s for t in study.get_trials(deepcopy=False)) for s in ("RUNNING", "FAIL")}
        return f"scale: {len(rows)}/{total} runs in scale.csv, {n['RUNNING']} running, {n['FAIL']} failed"

    with live_view(live, console, refresh=1, transient=True) as view:
        def tick():
            sweep(study, done, rows, have, csv_path, flops, rescore)
            if live:
                view.update(line())
        run_workers(study, url, workers, work_dir, threads, tick=tick)
        sweep(study, done, rows, have, csv_path, flops, rescore)


def sweep(study, done: set, rows: list, have: set, csv_path: Path, flops: dict, rescore=None) -> None:
    """Append to scale.csv the row of each finished grid-point trial not seen yet (`done`: trial numbers seen)."""
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE" and t.number not in done and "point" in t.user_attrs:  # grid points only
            row = _row(t, flops, rescore)
            done.add(t.number)
            if row_key(row) not in have:
                have.add(row_key(row))
                append_row(csv_path, rows, row)
