"""The Python API: each CLI verb is one function here.

    import cotune
    result = cotune.train("run.yaml", overrides=["train.lr=1e-3"], out="runs/a")
    result.test["accuracy"]
    cotune.load(result.path).predict(new_rows)
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


def train(config=None, *, overrides=(), out=None, resume: bool = False, progress: bool | None = None, on_eval=None):
    """Train one model with fixed knobs; returns a RunResult (metrics, path, history)."""
    from cotune.pipeline import run
    if resume:
        if out is None:
            from cotune.errors import ConfigError
            raise ConfigError("resume needs the run directory: pass out=... (CLI: --out DIR --resume).")
        return run(RunConfig(out=str(out)), resume=True, progress=progress, on_eval=on_eval)
    return run(resolve_config(config, overrides, out), progress=progress, on_eval=on_eval)


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
        objective=None, storage=None, study=None, out=None, resume: bool = False, live: bool = False, console=None):
    """Search data and model knobs together, refit the best on train+val, test it once. Returns a FitResult.

    Knobs you set (in `config`, `overrides` or these arguments) are fixed; every other searchable knob is searched."""
    from cotune.config import explicit
    from cotune.study import fit as _fit
    extra = [f"data.source={data}"] if data is not None else []
    extra += [f"data.target={target}"] if target is not None else []
    for key, value in (("budget", budget), ("trials", trials), ("workers", workers), ("sampler", sampler),
                       ("objective", objective)):
        if value is not None:
            extra.append(f"search.{key}={value}")
    if resume:
        if out is None:
            from cotune.errors import ConfigError
            raise ConfigError("resume needs the run directory: pass out=... (CLI: --out DIR --resume).")
        return _fit(RunConfig(out=str(out)), resume=True, live=live, console=console)
    cfg = resolve_config(config, [*extra, *overrides], out)
    return _fit(cfg, explicit(cfg), storage=storage, study_name=study, live=live, console=console)


def load(path):
    """Load a finished run directory as a Bundle with predict / predict_proba / predict_frame."""
    from cotune.bundle import load as _load
    return _load(path)


def predict(run_dir, data, out=None):
    """Predictions for `data` (path, built-in name, DataFrame or array) as a DataFrame; written to `out` as CSV if given."""
    from cotune.track import atomic_write_bytes
    frame = load(run_dir).predict_frame(data)
    if out is not None:
        atomic_write_bytes(out, frame.to_csv(index=False).encode())
    return frame


DEMO_CONFIG = {
    "data": {"source": "sklearn:digits"},
    "model": {"family": "cnn2d", "width": 32, "depth": 2, "dropout": 0.1, "norm": "batch"},
    "train": {"optimizer": "adamw", "lr": 3e-3, "epochs": 30, "batch_size": 64, "schedule": "onecycle", "patience": 10},
}


def demo(out=None, progress: bool | None = None):
    """Train a small CNN on sklearn's digits (built in, no download) and return the RunResult."""
    return train(DEMO_CONFIG, out=out, progress=progress)
