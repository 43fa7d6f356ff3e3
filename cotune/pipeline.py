"""run(cfg): the only place that knows the order of the stages.

    load -> split -> balance (train part) -> preprocess (fit on train) -> model -> train
         -> evaluate (val, test) -> bundle

Everything that can reject the input (config, data, model spec) runs before the run directory
is created, so bad input leaves nothing behind. A run interrupted during training keeps its
checkpoint and continues with resume=True.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cotune import bundle, evaluate
from cotune.config import RunConfig
from cotune.data import sources
from cotune.data.batches import TensorData
from cotune.data.preprocess import Preprocessor
from cotune.data.split import split_indices
from cotune.errors import ConfigError, CotuneError
from cotune.models import create_model
from cotune.runtime import Runtime, seed_everything, versions
from cotune.track import FileTracker, NullTracker, read_json, write_csv, write_json
from cotune.train import CHECKPOINT, CHECKPOINT_STATE, TrainResult, check_config, infer, train


@dataclass
class RunResult:
    path: Path
    metrics: dict          # {'val': {...}, 'test': {...}} from cotune.evaluate
    train: TrainResult
    config: RunConfig
    n_params: int

    @property
    def test(self) -> dict:
        return self.metrics.get("test") or {}


def default_out(cfg: RunConfig) -> Path:
    name = cfg.data.source.replace("sklearn:", "").rstrip("/").split("/")[-1].split(".")[0] or "data"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_out(out: Path, resume: bool) -> None:
    """Refuse to overwrite a run; on resume, require a checkpoint to continue from."""
    if resume:
        if not (out / CHECKPOINT_STATE).is_file():
            raise ConfigError(f"Nothing to resume in {str(out)!r} (no checkpoint); drop --resume to start a new run there.")
        return
    if out.exists() and any(out.iterdir()):
        what = "a finished run" if (out / "metrics.json").exists() else "an unfinished run (continue it with --resume)"
        raise ConfigError(f"Run directory {str(out)!r} already holds {what}; choose another --out.")


def load_data(cfg: RunConfig):
    d = cfg.data
    return sources.load(d.source, target=d.target, task=d.task, modality=d.modality, categorical=d.categorical,
                        split_column=d.split.column, drop=tuple(d.drop), image_size=d.image_size, image_mode=d.image_mode,
                        n_samples=d.n_samples, generator_seed=d.generator_seed)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse class frequency, normalized so the average sample weight is 1."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def run(cfg: RunConfig, *, resume: bool = False, on_eval: Callable | None = None, progress: bool | None = None,
        tracker=None) -> RunResult:
    """Train one model with fixed knobs and write its run directory. Returns metrics and the path."""
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if resume:
        prepare_out(out, resume=True)
        cfg = RunConfig.model_validate(read_json(out / "config.json"))
    else:
        prepare_out(out, resume=False)
    rt = Runtime.resolve(cfg.runtime.device, cfg.runtime.precision, cfg.runtime.threads, cfg.runtime.compile)
    seed_everything(cfg.runtime.seed)

    # ---- data: load, split first, then fit everything on the training part only
    ds = load_data(cfg)
    tr, va, te = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
    pre = Preprocessor().fit(ds, tr)
    X = pre.transform(ds.X)  # (N, *in_shape) float32
    regression = ds.task == "regression"
    y_mean = float(ds.y[tr].mean()) if regression else 0.0
    y_std = float(ds.y[tr].std() or 1.0) if regression else 1.0
    y = ((ds.y - y_mean) / y_std).astype(np.float32) if regression else ds.y
    w = None
    if cfg.data.balance == "class_weights" and not regression:
        w = class_weights(ds.y[tr], ds.n_classes)[ds.y[tr]]

    # ---- model
    out_dim = 1 if regression else ds.n_classes
    kwargs = cfg.model.model_dump(exclude={"family"})
    model = create_model(cfg.model.family, pre.in_shape_, out_dim, **kwargs)
    check_config(cfg.train, ds.task)

    # ---- everything is valid: only now does the run directory appear
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_json(out / "config.json", cfg.to_dict())
    write_json(out / "env.json", {"runtime": rt.info(), "versions": versions(), "seed": cfg.runtime.seed,
                                  "split_seed": cfg.data.split.seed, "rows": {"train": len(tr), "val": len(va), "test": len(te)},
                                  "dataset": sources.describe(ds)})
    tracker = tracker or FileTracker(out)
    tracker.log_params(cfg.flat())

    def log_and_forward(epoch: int, row: dict):
        tracker.log_metrics(row, step=epoch)
        return on_eval(epoch, row) if on_eval is not None else None

    dev = rt.device
    train_data = TensorData.from_numpy(X[tr], y[tr], w, device=dev)
    val_data = TensorData.from_numpy(X[va], y[va], device=dev) if len(va) else None
    show = cfg.runtime.progress if progress is None else progress
    try:
        result = train(model, train_data, val_data, cfg.train, rt, task=ds.task, seed=cfg.runtime.seed, y_scale=y_std,
                       on_eval=log_and_forward, checkpoint_dir=out, resume=resume, progress=show)
    except CotuneError:
        if not resume:
            shutil.rmtree(out, ignore_errors=True)  # a run that cannot train leaves nothing behind
        raise

    # ---- evaluate once on val and on the untouched test part
    metrics = {}
    for part, idx in (("val", va), ("test", te)):
        if len(idx) == 0:
            continue
        outp = infer(model, torch.as_tensor(X[idx]), rt).cpu()
        if regression:
            pred = outp.squeeze(-1).numpy() * y_std + y_mean
            metrics[part] = evaluate.evaluate(ds.y[idx], pred, ds.task)
        else:
            metrics[part] = evaluate.evaluate(ds.y[idx], torch.softmax(outp, -1).numpy(), ds.task, classes=list(ds.classes))
    n_params = sum(p.numel() for p in model.parameters())
    spec = {"family": cfg.model.family, "in_shape": list(pre.in_shape_), "out_dim": out_dim, "kwargs": kwargs,
            "task": ds.task, "classes": list(ds.classes), "target": ds.target, "modality": ds.modality,
            "columns": list(ds.X.columns) if ds.modality == "tabular" else None, "raw_shape": list(ds.feature_shape),
            "y_mean": y_mean, "y_std": y_std, "meta": ds.meta, "n_params": n_params}
    bundle.save(out, model, spec, pre)
    write_csv(out / "history.csv", result.history)
    write_json(out / "metrics.json", {**metrics, "train": {
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "train_time_s": result.train_time_s, "samples_per_s": result.samples_per_s, "n_params": n_params}})
    for f in (CHECKPOINT, CHECKPOINT_STATE):  # finished: the bundle supersedes the checkpoint
        (out / f).unlink(missing_ok=True)
    tracker.close()
    return RunResult(path=out, metrics=metrics, train=result, config=cfg, n_params=n_params)
