"""run(cfg): the only place that knows the order of the stages.

    load -> split -> fraction -> audit + clean (train part) -> preprocess (fit on train; model.init_from:
         the source's) -> balance (train part) -> augment (in the loop) -> model (+ model.init_from's weights)
         -> train -> evaluate (val, test) -> bundle

Everything that can reject the input (config, data, model spec, the run to start from) runs before
the run directory is created, so bad input leaves nothing behind. A run interrupted during training
keeps its checkpoint and continues with resume=True. run_many(cfgs, trainer) runs several at once (a population);
cross_validate(cfg, folds, epochs, seed) scores k-fold parts of train + validation (a search's re-evaluation).
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cotune import bundle, evaluate, robust
from cotune import models as model_registry
from cotune.config import RunConfig, from_dict
from cotune.knobs import CLASSIFICATION, FROM_SOURCE, FROM_SOURCE_TEXT
from cotune.data import sources
from cotune.data.batches import TensorData
from cotune.data.preprocess import Preprocessor, TargetTransform
from cotune.data.audit import audit, list_checks
from cotune.data.augment import make_augment
from cotune.data.balance import balance_train
from cotune.data.clean import clean_train, clean_val, needed_checks
from cotune.data.split import kfold, split_indices, subsample
from cotune.data.text import whole_mask
from cotune.data.trainingset import TrainingSet
from cotune.distributed import is_main, world
from cotune.errors import ConfigError, CotuneError
from cotune.models import create_model
from cotune.runtime import Runtime, seed_everything, versions
from cotune.track import FileTracker, NullTracker, Tee, default_out, read_json, write_csv, write_json
from cotune.train import CHECKPOINT, CHECKPOINT_STATE, TrainResult, check_config, infer, train
from cotune.transfer import init_from, load_source


@dataclass
class RunResult:
    path: Path
    metrics: dict          # {'val': {...}, 'test': {...}} from cotune.evaluate
    train: TrainResult
    config: RunConfig
    n_params: int
    mlflow: dict | None = None  # api.train(mlflow=...): the MLflow run and its model (mlflow_model.log_model's dict)

    @property
    def test(self) -> dict:
        return self.metrics.get("test") or {}


def prepare_out(out: Path, resume: bool) -> None:
    """Refuse to overwrite a run; on resume, require a checkpoint to continue from."""
    if resume:
        if not (out / CHECKPOINT_STATE).is_file():
            raise ConfigError(f"Nothing to resume in {str(out)!r} (no checkpoint); drop --resume to start a new run there.")
        return
    if out.exists() and any(out.iterdir()):
        what = "a finished run" if (out / "metrics.json").exists() else "an unfinished run (continue it with --resume)"
        raise ConfigError(f"Run directory {str(out)!r} already holds {what}; choose another --out.")


def load_data(cfg: RunConfig):  # the source, loaded once per process: trials share the immutable Dataset
    return sources.load_cached(cfg.data)


def make_preprocessor(cfg: RunConfig) -> Preprocessor:
    """The (unfitted) Preprocessor of a run's data and model knobs."""
    opts = {k: getattr(cfg.data, k) for k in ("numeric", "embed_above", "tokenizer", "vocab_size", "max_tokens")}
    return Preprocessor(**opts, embed=model_registry.takes_layout(cfg.model.family))


def prepare(cfg: RunConfig, ds, merge_val: bool = False, parts: tuple | None = None) -> TrainingSet:
    """split -> fraction -> audit (only the checks cleaning needs) -> clean -> preprocess -> balance. With
    model.init_from the source run is checked first and its fitted preprocessing is this run's (cotune.transfer).

    merge_val: the validation rows join the training part (the final refit of a search).
    parts: (train, val, test) dataset rows instead of the configured split (a cross-validation fold: its
    held-out rows are the validation part, which the data knobs never touch, like validation rows)."""
    d = cfg.data
    source = None if cfg.model.init_from is None else load_source(
        cfg.model.init_from, ds, cfg.model.family, {k: v for k, v in cfg.flat().items() if k in FROM_SOURCE + FROM_SOURCE_TEXT})
    tr, va, te = parts if parts is not None else split_indices(ds, val=d.split.val, test=d.split.test, seed=d.split.seed)
    if merge_val:
        tr, va = np.sort(np.concatenate([tr, va])), va[:0]
    n_split = len(tr)
    if d.fraction < 1.0:
        tr = subsample(tr, d.fraction, seed=d.split.seed, y=ds.y)
    opts = d.clean.model_dump()
    need = needed_checks(**opts) & set(list_checks(ds))  # e.g. no conflicting-label check for regression
    report = audit(ds, tr, va, te, checks=sorted(need), seed=d.split.seed, proxy=d.clean.proxy) if need else None
    cleaned = clean_train(tr, ds.y, report, **opts)
    va, y_val, val_clean = clean_val(va, ds.y, report, **opts)  # data.clean.val: what ranks and stops the runs
    pre = make_preprocessor(cfg).fit(ds, cleaned.idx) if source is None else source.pre
    X = pre.transform(ds.X)  # (N, *in_shape) float32
    target = TargetTransform(d.target_transform).fit(cleaned.y_train) if ds.task == "regression" else None
    y_mean, y_std = (target.mean, target.std) if target is not None else (0.0, 1.0)
    scale = target.transform if target is not None else (lambda v: v)  # noqa: E731
    bal = balance_train(cleaned.idx, cleaned.y_train, d.balance, n_classes=ds.n_classes, seed=d.split.seed, X_train=X[cleaned.idx],
                        is_tabular=ds.modality == "tabular", whole=whole_mask(pre) if ds.modality == "tabular" else None)
    train_X, train_y = X[cleaned.idx][bal.pos], bal.y
    train_rows = cleaned.idx[bal.pos]
    if bal.X_extra is not None and len(bal.X_extra):
        extra = bal.X_extra.astype(np.float32)
        train_X = np.concatenate([train_X, extra])
        train_y = np.concatenate([train_y, bal.y_extra.astype(train_y.dtype)])
        train_rows = np.concatenate([train_rows, np.full(len(extra), -1, dtype=train_rows.dtype)])
    summary = {"rows": {"train_split": n_split, "train_fraction": len(tr), "train_clean": len(cleaned.idx),
                        "train_used": len(train_y), "val": len(va), "test": len(te)},
               "fraction": d.fraction, "clean": cleaned.to_dict(), "balance": {"method": d.balance, **bal.to_dict()}}
    y_all = ds.y
    if d.clean.val != "keep":
        summary["clean"]["val"] = {"option": d.clean.val, **val_clean}
        if val_clean["relabelled"]:
            y_all = ds.y.copy()
            y_all[va] = y_val
    return TrainingSet(X=X, y=scale(y_all), train_X=train_X, train_y=scale(train_y), weights=bal.weights,
                       sampling=bal.sampling_weights, val=va, test=te, pre=pre, y_mean=y_mean, y_std=y_std,
                       loss=bal.loss, report=report, summary=summary, target=target, train_idx=cleaned.idx,
                       train_labels=cleaned.y_train, val_labels=y_val, train_rows=train_rows, source=source)


@dataclass
class Setup:
    """What a run trains, from its config and prepared data: run() and cross_validate() build it the same way."""
    model: torch.nn.Module
    kwargs: dict                 # the model's keyword arguments (model.json's, table layout included)
    out_dim: int
    train_cfg: object            # the TrainConfig as trained: balance=focal's loss, a refit's epoch count
    augment: Callable | None
    ranking: evaluate.Metric     # search.metric: what ranks the run
    monitor: evaluate.Metric     # what early stopping follows
    transfer: dict | None = None  # model.init_from: where the weights came from and what was copied


def setup(cfg: RunConfig, ds, data: TrainingSet, refit_epochs: int | None = None) -> Setup:
    """The augmentation, training config and model of a run on `data`; a knob combination that cannot
    train is a ConfigError here, before anything is written. refit_epochs: exactly that many epochs, no
    early stopping."""
    aug_cfg = cfg.data.augment.model_dump()
    augment = make_augment(ds.modality, policy=aug_cfg.pop("policy"), strength=aug_cfg.pop("strength"), ops=aug_cfg,
                           pre=data.pre)
    train_cfg = cfg.train.model_copy(update={"loss": data.loss} if data.loss else {})
    if refit_epochs is not None:
        train_cfg = train_cfg.model_copy(update={"epochs": int(refit_epochs), "patience": 0})
    out_dim = 1 if ds.task == "regression" else ds.n_classes
    kwargs = model_registry.factory_knobs(cfg.model.model_dump())
    if data.pre.layout_ is not None and model_registry.takes_layout(cfg.model.family):
        kwargs["layout"] = data.pre.layout_  # in model.json's kwargs too, so the bundle rebuilds the same model
    model = create_model(cfg.model.family, data.pre.in_shape_, out_dim, **kwargs)
    transfer = None
    if data.source is not None:
        transfer = init_from(cfg.model.init_from, data.source, model, ds, kwargs)
    fit_convex = getattr(model, "fit_convex", None)  # a linear path fitted before training: the mlp's model.text_linear
    if fit_convex is not None and data.source is None and (fitted := fit_convex(data.train_X, data.train_y, ds.task, data.weights)):
        data.summary["text_linear"] = fitted
    augment = robust.for_run(model, train_cfg, ds.task, augment, robust.input_mask(ds.modality, data.pre))  # train.adversarial
    data.summary["augment"] = augment.describe() if augment is not None else "none"
    check_config(train_cfg, ds.task)
    ranking = evaluate.primary_metric(ds.task, cfg.search.metric)  # a metric that does not fit the task: ConfigError
    monitor = evaluate.monitored_metric(ds.task, train_cfg.monitor, cfg.search.metric)
    return Setup(model, kwargs, out_dim, train_cfg, augment, ranking, monitor, transfer)


def model_inputs(cfg: RunConfig) -> tuple[tuple, int, dict | None]:
    """(in_shape, out_dim, layout) of run(cfg)'s model; layout: the table layout the family reads, or None."""
    ds = load_data(cfg)
    tr, _, _ = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
    pre = make_preprocessor(cfg).fit(ds, tr)
    layout = pre.layout_ if pre.layout_ is not None and model_registry.takes_layout(cfg.model.family) else None
    return tuple(pre.in_shape_), 1 if ds.task == "regression" else ds.n_classes, layout


def audit_data(cfg: RunConfig, checks=None):
    """load -> split -> audit: what is wrong with the data, changing nothing. Returns the AuditReport."""
    ds, d = load_data(cfg), cfg.data
    tr, va, te = split_indices(ds, val=d.split.val, test=d.split.test, seed=d.split.seed)
    return audit(ds, tr, va, te, checks=checks, seed=d.split.seed, proxy=d.clean.proxy)


@dataclass
class Prepared:
    """A run up to its training: what run() hands train(), run_many() its trainer."""
    cfg: RunConfig
    out: Path
    ds: object
    data: TrainingSet
    setup: Setup
    runtime: Runtime
    train_data: TensorData       # data.train_X (or a teacher's soft targets), on the device
    val_data: TensorData | None  # the validation rows (run_many: one object per distinct data config)
    sampling: torch.Tensor | None
    tracker: object
    on_eval: Callable  # logs each validated epoch, then calls the caller's on_eval


def _prepare_run(cfg: RunConfig, out: Path, main: bool, resume: bool, on_eval, tracker, refit_epochs=None, teacher=None,
                 shared: dict | None = None) -> Prepared:
    """prepare -> setup -> the run directory (only now, rank 0 alone) -> the tracker and the device tensors.
    shared: TrainingSets and tensors by data config, reused by the runs of run_many."""
    rt = Runtime.resolve(cfg.runtime.device, cfg.runtime.precision, cfg.runtime.threads, cfg.runtime.compile)
    seed_everything(cfg.runtime.seed)
    ds = load_data(cfg)
    key = json.dumps([cfg.data.model_dump(mode="json"), model_registry.takes_layout(cfg.model.family), cfg.model.init_from])
    if shared is not None and key in shared:
        data, tensors = shared[key]
        data = replace(data, summary=copy.deepcopy(data.summary))  # setup() writes the run's augmentation there
    else:
        data, tensors = prepare(cfg, ds, merge_val=refit_epochs is not None), None
    s = setup(cfg, ds, data, refit_epochs)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_json(out / "config.json", cfg.to_dict())
        write_json(out / "env.json", {"runtime": rt.info(), "versions": versions(), "seed": cfg.runtime.seed,
                                      "split_seed": cfg.data.split.seed, "rows": data.summary["rows"],
                                      "processes": world()[1], "dataset": sources.describe(ds)})
        if data.report is not None:
            data.report.save(out)
    tracker = NullTracker() if not main else FileTracker(out) if tracker is None else Tee(FileTracker(out), tracker)
    tracker.log_params(cfg.flat())

    def log_and_forward(epoch: int, row: dict):
        tracker.log_metrics(row, step=epoch)
        return on_eval(epoch, row) if on_eval is not None else None

    if tensors is None:
        va = data.val
        targets = data.train_y if teacher is None else teacher(ds, data)
        tensors = (TensorData.from_numpy(data.train_X, targets, data.weights, device=rt.device),
                   TensorData.from_numpy(data.X[va], data.y[va], device=rt.device) if len(va) else None,
                   None if data.sampling is None else torch.as_tensor(data.sampling))
        if shared is not None:
            shared[key] = (data, tensors)
    return Prepared(cfg, out, ds, data, s, rt, *tensors, tracker=tracker, on_eval=log_and_forward)


def train_prepared(p: Prepared, *, resume: bool = False, checkpoint: bool = False, progress: bool = False) -> TrainResult:
    """train() on a prepared run, as run() calls it."""
    d, s = p.data, p.setup
    return train(s.model, p.train_data, p.val_data, s.train_cfg, p.runtime, task=p.ds.task, seed=p.cfg.runtime.seed,
                 y_scale=d.y_std, augment=s.augment, sampling_weights=p.sampling, on_eval=p.on_eval,
                 checkpoint_dir=p.out if checkpoint else None, resume=resume, progress=progress, monitor=s.monitor,
                 ranking=s.ranking, inverse=d.target.inverse if d.target is not None else None)


def _finish_run(p: Prepared, result: TrainResult) -> RunResult:
    """evaluate once on val and on the untouched test part, through the bundle's own predictions; the bundle;
    history.csv and metrics.json; the checkpoint removed (the bundle supersedes it)."""
    cfg, ds, data, s, out, model = p.cfg, p.ds, p.data, p.setup, p.out, p.setup.model
    spec = bundle.spec_of(cfg, ds, data, s)
    metrics = {}
    for part, idx, truth in (("val", data.val, data.val_labels), ("test", data.test, ds.y[data.test])):
        if len(idx):
            pred = bundle.predictions(infer(model, torch.as_tensor(data.X[idx]), p.runtime), spec)
            metrics[part] = evaluate.evaluate(truth, pred, ds.task, classes=list(ds.classes))
            metrics[part].update(robust.run_metrics(model, data.X[idx], truth, s.train_cfg, ds.task,
                                                    robust.input_mask(ds.modality, data.pre), p.runtime))
    bundle.save(out, model, spec, data.pre, train=(ds, data.train_idx))  # + reference.parquet: drift at predict
    write_csv(out / "history.csv", result.history)
    write_json(out / "metrics.json", {**metrics, "train": {
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "train_time_s": result.train_time_s, "samples_per_s": result.samples_per_s, "n_params": spec.n_params},
        "data": data.summary, **({"transfer": s.transfer} if s.transfer is not None else {})})
    for f in (CHECKPOINT, CHECKPOINT_STATE):
        (out / f).unlink(missing_ok=True)
    p.tracker.log_summary(metrics)
    p.tracker.close()
    return RunResult(path=out, metrics=metrics, train=result, config=cfg, n_params=spec.n_params)


def run(cfg: RunConfig, *, resume: bool = False, on_eval: Callable | None = None, progress: bool | None = None,
        tracker=None, refit_epochs: int | None = None, checkpoint: bool = True, teacher: Callable | None = None) -> RunResult:
    """Train one model with fixed knobs and write its run directory. Returns metrics and the path.

    refit_epochs: train on train+val for exactly this many epochs (no early stopping): the final
    model of a search, whose epoch count comes from the best trial's early-stopping point.
    checkpoint: save the state after each validated epoch, for --resume (search trials, never resumed, go without).
    teacher: distillation, `teacher(ds, data) -> (N, K)` soft targets for data.train_X's rows, which the model
    learns instead of the labels (cotune.compress.variants.soft_targets)."""
    out, main = Path(cfg.out) if cfg.out else default_out(cfg), is_main()  # main: rank 0 of a distributed run
    if resume or main:  # the other ranks find rank 0's directory there (cotune.launch checked it before starting them)
        prepare_out(out, resume=resume)
    if resume:
        cfg = from_dict(read_json(out / "config.json"))  # a hand-edited value is a ConfigError, not a traceback
    p = _prepare_run(cfg, out, main, resume, on_eval, tracker, refit_epochs, teacher)
    try:
        result = train_prepared(p, resume=resume, checkpoint=checkpoint,
                                progress=cfg.runtime.progress if progress is None else progress)
    except CotuneError:
        if not resume and main:
            shutil.rmtree(out, ignore_errors=True)  # a run that cannot train leaves nothing behind
        raise
    if not main:  # rank 0 evaluates and writes the rest
        return RunResult(path=out, metrics={}, train=result, config=cfg, n_params=sum(x.numel() for x in p.setup.model.parameters()))
    return _finish_run(p, result)


def run_many(cfgs: list[RunConfig], trainer: Callable[[list[Prepared]], list], *, on_eval: list | None = None,
             trackers: list | None = None) -> list:
    """Runs on one source trained together (a search's population): each config prepared as run() does (the same
    data settings share a TrainingSet and its tensors); `trainer(prepared)` returns per run its TrainResult or the
    exception that ended it; each is then written as run() writes it. Returns per config its RunResult or that
    exception (bad config: no directory; a CotuneError in training: its directory removed; on_eval's: kept)."""
    out, preps, shared = [None] * len(cfgs), [], {}
    hooks, trackers = on_eval or [None] * len(cfgs), trackers or [None] * len(cfgs)
    for i, cfg in enumerate(cfgs):
        try:
            prepare_out(Path(cfg.out), resume=False)
            preps.append((i, _prepare_run(cfg, Path(cfg.out), True, False, hooks[i], trackers[i], shared=shared)))
        except CotuneError as err:
            out[i] = err
    results = trainer([p for _, p in preps]) if preps else []
    for (i, p), res in zip(preps, results):
        if isinstance(res, CotuneError):
            shutil.rmtree(p.out, ignore_errors=True)
        out[i] = res if isinstance(res, BaseException) else _finish_run(p, res)
    return out


def evaluate_ensemble(cfg: RunConfig, member_dirs: list) -> dict:
    """Validation and test metrics of soft voting over trained run directories (same split as cfg)."""
    ds = load_data(cfg)
    va, y_va, te = held_out(cfg, ds)
    # the saved ensemble's own voting, before it is saved (its path: where the members are)
    ens = bundle.Ensemble(Path(member_dirs[0]).parent, [bundle.load(d) for d in member_dirs])
    out = {}
    for part, idx, truth in (("val", va, y_va), ("test", te, ds.y[te])):
        if len(idx):  # data.split.test=0: no test part, as in run()
            X = ds.X.iloc[idx] if ds.modality == "tabular" else ds.X[idx]
            out[part] = evaluate.evaluate(truth, ens.predict_output(X), ds.task, classes=list(ds.classes))
    return out


def label_check(cfg: RunConfig, ds, out: Path | None = None) -> dict | None:
    """The labels of every part checked (the audit's label_issues, cached): its summary, and with `out` its
    audit.json / audit.csv written there. None for regression or without validation and test rows."""
    if ds.task not in CLASSIFICATION:
        return None
    d = cfg.data
    tr, va, te = split_indices(ds, val=d.split.val, test=d.split.test, seed=d.split.seed)
    report = audit(ds, tr, va, te, checks=["label_issues"], seed=d.split.seed, proxy=d.clean.proxy)
    if out is not None:
        report.save(out)
    keep = ("count", "share", "severity", "message", "proxy", "proxy_accuracy", "proxy_candidates",
            "unflagged_agreement", "trust", "by_part")
    return {k: report["label_issues"].summary[k] for k in keep}


def held_out(cfg: RunConfig, ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(validation rows, their labels after data.clean.val, test rows): what ranks, ensembles and calibrates
    a search's models, as `prepare` gives them to its runs."""
    d = cfg.data
    tr, va, te = split_indices(ds, val=d.split.val, test=d.split.test, seed=d.split.seed)
    if d.clean.val == "keep" or ds.task not in CLASSIFICATION or not len(va):
        return va, ds.y[va], te
    if d.fraction < 1.0:
        tr = subsample(tr, d.fraction, seed=d.split.seed, y=ds.y)
    report = audit(ds, tr, va, te, checks=["label_issues"], seed=d.split.seed, proxy=d.clean.proxy)
    va, y_va, _ = clean_val(va, ds.y, report, **d.clean.model_dump())
    return va, y_va, te


def cross_validate(cfg: RunConfig, folds: int, epochs: int, seed: int) -> list[float]:
    """cfg's knobs scored by k-fold cross-validation over train + validation (never the test rows). Per fold:
    prepare() on the other folds (as on a training part), exactly `epochs` epochs as the final refit (no early
    stopping), one score of the held-out fold by search.metric. Folds seeded by `seed`, stratified for
    classification. Returns the per-fold scores (nan where the metric is undefined on a fold)."""
    ds, d = load_data(cfg), cfg.data
    tr, va, te = split_indices(ds, val=d.split.val, test=d.split.test, seed=d.split.seed)
    pool = np.sort(np.concatenate([tr, va]))
    rt = Runtime.resolve(cfg.runtime.device, cfg.runtime.precision, cfg.runtime.threads, cfg.runtime.compile)
    scores = []
    for held in kfold(pool, folds, seed=seed, y=None if ds.task == "regression" else ds.y):
        seed_everything(cfg.runtime.seed)
        data = prepare(cfg, ds, parts=(np.setdiff1d(pool, held), held, te))
        s = setup(cfg, ds, data, refit_epochs=epochs)
        train_data = TensorData.from_numpy(data.train_X, data.train_y, data.weights, device=rt.device)
        sampling = None if data.sampling is None else torch.as_tensor(data.sampling)
        train(s.model, train_data, None, s.train_cfg, rt, task=ds.task, seed=cfg.runtime.seed, augment=s.augment,
              sampling_weights=sampling)
        pred = bundle.predictions(infer(s.model, torch.as_tensor(data.X[held]), rt), bundle.spec_of(cfg, ds, data, s))
        value = (robust.run_metrics(s.model, data.X[held], ds.y[held], s.train_cfg, ds.task, robust.input_mask(
            ds.modality, data.pre), rt)[s.ranking.name] if s.ranking.name in evaluate.MODEL_METRICS else
                 evaluate.score(s.ranking.name, ds.y[held], pred, ds.task))
        scores.append(float("nan") if value is None else float(value))
    return scores
