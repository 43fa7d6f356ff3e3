"""The Python API: each CLI verb is one function here.

    import cotune
    result = cotune.train("run.yaml", overrides=["train.lr=1e-3"], out="runs/a")
    result.test["accuracy"]
    cotune.load(result.path).predict(new_rows)
    cotune.load("runs/x", engine="onnx").predict(new_rows)   # a search's final model, through ONNX Runtime
    cotune.label_next("data.csv", target="label", n=50, out="next.csv").picks   # which rows to label next
    cotune.explain("runs/x").importances[:3]      # the columns the model relies on most (on its test rows)
"""
from __future__ import annotations

from pathlib import Path

from cotune.config import RunConfig, from_dict, load_config


def resolve_config(config=None, overrides=(), out=None) -> RunConfig:
    """A RunConfig from a path, a dict, a RunConfig or None (defaults), plus dotted overrides."""
    overrides = list(overrides)
    if out is not None:
        overrides.append(f"out={Path(out)}")
    if isinstance(config, RunConfig):
        return from_dict(config.to_dict(), overrides)
    if isinstance(config, dict):
        return from_dict(config, overrides)
    return load_config(config, overrides)


def train(config=None, *, overrides=(), out=None, resume: bool = False, progress: bool | None = None, on_eval=None,
          checkpoint: bool = True, nproc: int = 1, mlflow: str | None = None):
    """Train one model with fixed knobs; returns a RunResult (metrics, path, history).
    checkpoint: save the state after each validated epoch, for resume=True (False: a run that is never resumed).
    nproc: training processes (torchrun + DistributedDataParallel, gloo on CPU, nccl on CUDA; train.batch_size is
    the global batch, each process takes its share of every batch); 1 trains in this process (cotune.launch).
    mlflow: an MLflow tracking URI (default None: no tracking): the run's params, metrics and its model, as a pyfunc
    model that `mlflow.pyfunc.load_model(result.mlflow['model_uri'])` loads (cotune.mlflow_model). A resumed run
    is logged as a new MLflow run, from the epoch it resumes at."""
    from cotune.launch import run
    from cotune.track import default_out
    if resume:
        if out is None:
            from cotune.errors import ConfigError
            raise ConfigError("resume needs the run directory: pass out=... (CLI: --out DIR --resume).")
        cfg = RunConfig(out=str(out))
    else:
        cfg = resolve_config(config, overrides, out)
    if mlflow is None or mlflow.strip().lower() in ("", "none"):
        return run(cfg, nproc=nproc, resume=resume, progress=progress, on_eval=on_eval, checkpoint=checkpoint)
    from cotune.errors import CotuneError
    from cotune.mlflow_model import open_run, track_model
    cfg = cfg if cfg.out else resolve_config(cfg, out=default_out(cfg))
    tracker = open_run(mlflow, cfg.out)  # a store that cannot be opened is a ConfigError before anything is trained
    try:
        res = run(cfg, nproc=nproc, resume=resume, progress=progress, on_eval=on_eval, checkpoint=checkpoint, tracker=tracker)
    except CotuneError:
        tracker.discard()  # bad input leaves nothing behind, in MLflow as on disk
        raise
    except BaseException as err:
        tracker.close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    res.mlflow = track_model(tracker, res.path, _example_rows(res.config))
    if res.mlflow is not None:
        from cotune.track import write_json
        write_json(res.path / "mlflow.json", res.mlflow)
    return res


def _example_rows(cfg):
    """The raw input rows of a run's data (loaded once per process already), for its MLflow model's example."""
    from cotune.pipeline import load_data
    return load_data(cfg).X


def audit(data=None, *, target=None, config=None, overrides=(), checks=None, out=None):
    """Audit a dataset (data-quality findings; changes nothing). Returns an AuditReport; writes
    audit.json, audit.csv and config.json to `out` when given."""
    from cotune.pipeline import audit_data
    from cotune.track import write_json
    extra = [f"data.source={data}"] if data is not None else []
    extra += [f"data.target={target}"] if target is not None else []
    cfg = resolve_config(config, [*extra, *overrides])
    report = audit_data(cfg, checks=list(checks) if checks else None)
    if out is not None:
        report.save(out)
        write_json(Path(out) / "config.json", cfg.to_dict())
    return report


def fit(data=None, *, target=None, config=None, overrides=(), budget=None, trials=None, workers=None, sampler=None,
        objective=None, metric=None, storage=None, study=None, mlflow=None, out=None, resume: bool = False, live: bool = False,
        console=None, started_at: float | None = None, report: bool = True):
    """Search data and model knobs together, refit the best on train+val, test it once. Returns a FitResult.

    Knobs you set (in `config`, `overrides` or these arguments) are fixed; every other searchable knob is searched.
    metric: search.metric, what ranks the trials and stops them early (accuracy, f1_macro, log_loss, r2, ...).
    started_at: the Unix time the budget counts from (default: now; the CLI passes its process's start).
    mlflow: tracking URI (default: SQLite in the search directory; 'none': no tracking).
    report: then write <out>/report.html (FitResult.report). One that cannot be built leaves the search standing:
    FitResult.report_note says why, and `report(out)` rebuilds it."""
    from cotune.config import explicit
    from cotune.search.parent import fit as _fit
    extra = [f"data.source={data}"] if data is not None else []
    extra += [f"data.target={target}"] if target is not None else []
    for key, value in (("budget", budget), ("trials", trials), ("workers", workers), ("sampler", sampler),
                       ("objective", objective), ("metric", metric), ("mlflow", mlflow)):
        if value is not None:
            extra.append(f"search.{key}={value}")
    if resume:
        if out is None:
            from cotune.errors import ConfigError
            raise ConfigError("resume needs the run directory: pass out=... (CLI: --out DIR --resume).")
        res = _fit(RunConfig(out=str(out)), resume=True, live=live, console=console, started_at=started_at)
    else:
        cfg = resolve_config(config, [*extra, *overrides], out)
        res = _fit(cfg, explicit(cfg), storage=storage, study_name=study, live=live, console=console,
                   started_at=started_at)
    if report:
        _add_report(res)
    return res


def _add_report(res) -> None:
    """Build a finished search's report.html into res.report; a failure becomes res.report_note, not the search's."""
    try:
        from cotune.report import build_report
        res.report = build_report(res.path)
    except Exception as err:  # the search's files are all written by now: a report problem must not cost them
        from cotune.errors import one_line
        res.report_note = (f"report.html could not be built ({type(err).__name__}: {one_line(err)[:200]}); "
                           f"rebuild it with: cotune report {res.path}")


def scale(run, *, overrides=(), sizes=None, fractions=None, seeds=None, workers=None, compute=None,
          extrapolate=None, out=None, live: bool = False, console=None):
    """Train the best configuration of a search (or a run's) over model sizes x training-set sizes, fit
    L(N, D) = E + ((A/N^alpha)^(1/q) + (B/D^beta)^(1/q))^q (q = 1: the additive law; scale.law), and advise: more data,
    a bigger model or longer training. Returns a ScaleResult; files go to `out` (default <run>/scale): scale.csv (one row per run), scale.json (fits, advice)."""
    from cotune.scale.study import scale as _scale
    extra = [f"scale.{k}={v}" for k, v in (("sizes", sizes), ("fractions", fractions), ("seeds", seeds),
                                            ("compute", compute), ("extrapolate", extrapolate)) if v is not None]
    return _scale(run, [*extra, *overrides], out=out, workers=workers, live=live, console=console)


def label_next(data=None, *, target=None, n: int = 50, strategy: str = "mix", config=None, overrides=(), budget=None,
               trials=None, workers=None, seed: int = 0, out=None, run_dir=None, candidates: int = 10,
               progress: bool | None = None, live: bool = False, console=None, started_at: float | None = None):
    """Active learning: train on the labeled rows of `data`, rank its unlabeled rows, return (and write to `out`
    as CSV) the n to label next. Returns a NextBatch: .picks (DataFrame), .model (the Bundle), .summary().

    Unlabeled rows: an empty `target` cell (tables), y = -1 or NaN (.npz), the images in unlabeled/ (folders).
    strategy: mix (default: k-center greedy among the n x `candidates` smallest-margin rows), margin, entropy,
    kcenter or random. Trains with the config's fixed knobs, or searches when `budget` / `trials` is given.
    run_dir: keep the model's directory there (default: a temporary one). See cotune.active."""
    from cotune.active import check_request, label_next as _label_next
    from cotune.config import explicit
    check_request(n, strategy, candidates)
    extra = [f"data.source={data}"] if data is not None else []
    extra += [f"data.target={target}"] if target is not None else []
    extra += [f"search.{k}={v}" for k, v in (("budget", budget), ("trials", trials), ("workers", workers)) if v is not None]
    cfg = resolve_config(config, [*extra, *overrides])
    return _label_next(cfg, explicit(cfg), n=n, strategy=strategy, seed=seed, out=out, run_dir=run_dir,
                       candidates=candidates, progress=progress, live=live, console=console, started_at=started_at)


def compress(run, *, tolerance: float = 0.5, prefer: str = "size", batches=(1, 256), keeps=None, console=None):
    """ONNX export, int8 quantization, structured pruning and (for an ensemble) distillation of a finished run's
    model, each measured (bytes, latency, validation and test metric); the smallest or fastest variant within
    `tolerance` is chosen. keeps: the widths the pruned variants keep (default 0.75, 0.5, 0.25). Files go to
    <run>/compress/; the run's report.html, if it has one, is rebuilt with them. Returns a CompressResult."""
    from cotune.compress.core import KEEPS, compress as _compress
    res = _compress(run, tolerance=tolerance, prefer=prefer, batches=batches, keeps=KEEPS if keeps is None else keeps,
                    console=console)
    if (res.path.parent / "report.html").is_file():  # the run's report gains its compression section
        report(res.path.parent)
    return res


def explain(run, data=None, *, n_repeats: int = 5, n_steps: int = 32, baseline: str = "zero", max_rows: int = 2000,
            seed: int = 0, examples: int = 4):
    """Which inputs a finished run's (or search's final) model relies on, on its test rows or on `data`: permutation
    importance per original column for tables (n_repeats seeded shuffles, scored with the run's metric), integrated
    gradients of the predicted class for sequences and images (n_steps, a 'zero' or 'mean' baseline; captum). At most
    max_rows rows, a sample seeded by `seed`. Files go to <run>/explain/ (explain.json; explain.csv for tables); the
    run's report.html, if it has one, is rebuilt with them. Returns an ExplainResult; see cotune.explain.core."""
    from cotune.explain.core import explain as _explain
    res = _explain(run, data, n_repeats=n_repeats, n_steps=n_steps, baseline=baseline, max_rows=max_rows, seed=seed,
                   examples=examples)
    if (res.path.parent / "report.html").is_file():  # the run's report gains its explanation section
        res.report = report(res.path.parent)
    return res


ENGINES = ("torch", "onnx")


def load(path, engine: str = "torch"):
    """Load a finished run as a predictor with predict / predict_proba / predict_frame. path: a run directory, a
    search directory (its final/ model) or an ensemble. engine: 'torch' (the saved weights; a Bundle) or 'onnx'
    (the export `cotune compress` chose, through ONNX Runtime, without importing torch; cotune.onnx_engine)."""
    from cotune.predictor import resolve
    if engine not in ENGINES:
        from cotune.errors import ConfigError, fmt_choices, invalid
        raise ConfigError(invalid("'engine'", f"one of {fmt_choices(ENGINES)}", engine, "pass --engine torch or --engine onnx"))
    if engine == "onnx":
        from cotune.onnx_engine import load_run
        return load_run(path)
    from cotune.bundle import load as _load
    return _load(resolve(path)[0])


def predict(run_dir, data, out=None, engine: str = "torch", drift: bool = True, drift_report=None, warn=None):
    """Predictions for `data` (path, built-in name, DataFrame or array) as a DataFrame; written to `out` as CSV if
    given (atomically: a reader never sees half a file). engine: as for `load`.

    drift: compare the rows with the sample of training rows saved with the model (cotune.drift; the model's
    `.drift(data)` returns the report) and, when they moved, call `warn` with one line naming what moved (default:
    warnings.warn with a cotune.drift.DriftWarning). drift_report: write the details there as JSON. A model saved
    before drift checks predicts without them (its report says so)."""
    from cotune.predictor import read_features
    from cotune.track import atomic_write_bytes, check_writable
    if drift_report is not None and not drift:
        from cotune.errors import ConfigError
        raise ConfigError("A drift report needs the drift check; drop --no-drift (drift=False) or --drift-report.")
    for path, what in ((out, "The predictions file"), (drift_report, "The drift report")):
        if path is not None:
            check_writable(path, what)
    model = load(run_dir, engine=engine)
    if isinstance(data, (str, Path)):
        data = read_features(str(data), model.spec)  # read once, for the predictions and the drift check
    frame = model.predict_frame(data)
    report = model.drift(data) if drift else None
    if out is not None:
        atomic_write_bytes(out, frame.to_csv(index=False).encode())
    if drift_report is not None:
        report.save(drift_report)
    if report is not None and report.flagged:
        if warn is None:
            import warnings
            from cotune.drift import DriftWarning
            warnings.warn(report.summary(), DriftWarning, stacklevel=2)
        else:
            warn(report.summary())
    return frame


DEMO_BUDGET = "2m"  # the search, final model included; the whole demo stays under 5 minutes here


def demo(out=None, budget: str = DEMO_BUDGET, live: bool = False, console=None):
    """`fit` on sklearn's digits (built in, no download), its report included. Returns (FitResult, report path,
    or None when the report could not be built: FitResult.report_note says why)."""
    res = fit("sklearn:digits", budget=budget, workers=2, out=out, live=live, console=console)
    return res, res.report


def report(path):
    """Rebuild <path>/report.html from the files of a run or search directory (no torch import)."""
    from cotune.report import build_report
    return build_report(path)
