"""The variants that train: a pruned model fine-tuned from its kept weights, and an ensemble's distilled student.
Both train through the pipeline, so each is an ordinary run directory (config, metrics, bundle)."""
from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from cotune.track import read_json

FINETUNE_SHARE = 0.5   # fine-tuning epochs: this share of the model's own (at least MIN_FINETUNE)
MIN_FINETUNE = 3
FINETUNE_LR = 1.0      # fine-tuning learning rate: this factor on the model's (its schedule and warm-up restart)
TEACHER_WEIGHT = 0.5   # the student's targets: this x the ensemble's probabilities + the rest x the labels


def soft_targets(ds, data, teacher, weight: float) -> np.ndarray:
    """(N, K) training targets for distillation: `weight` x the teacher's probabilities on each training row's
    raw features + (1 - weight) x its one-hot label. A synthetic (SMOTE) row, which has no raw features, keeps
    its one-hot label."""
    y = data.train_y.astype(np.int64)
    target = np.eye(ds.n_classes, dtype=np.float32)[y]
    real = np.flatnonzero(data.train_rows >= 0)
    rows = data.train_rows[real]
    if len(real):
        probs = np.asarray(teacher(ds.X.iloc[rows] if ds.modality == "tabular" else ds.X[rows]), dtype=np.float32)
        target[real] = weight * probs + (1 - weight) * target[real]
    return target


def trained_on_val(model_dir: Path, members) -> bool:
    """Whether the model's training rows included the validation rows (a search's refit on train + val)."""
    for m in members:
        env = m.path / "env.json"
        if env.is_file() and (read_json(env).get("rows") or {}).get("val", 1) == 0:
            return True
    return False


def _cfg(cfg_dir: Path, out: Path, updates: dict):
    """The run config of a model's directory, retargeted at `out` with `updates`."""
    from cotune.config import from_dict
    cfg = from_dict(read_json(cfg_dir / "config.json"))
    cfg = cfg.replace(**{"out": str(out), "runtime.progress": False, **updates})
    return cfg


def _pruned_init(base, keep: float, init: Path) -> tuple[dict, int]:
    """Save `base` pruned to `keep` of its width as a bundle in `init` (for model.init_from); returns the narrow
    model's knobs and parameter count."""
    from cotune import bundle
    from cotune.models.prune import prune
    spec = base.spec
    narrow, kwargs = prune(base.model, spec.family, spec.kwargs, spec.in_shape, spec.out_dim, keep)
    init.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in narrow.parameters())
    bundle.save(init, narrow, replace(spec, kwargs=kwargs, n_params=n_params), base.pre)
    shutil.copy2(base.path / "config.json", init / "config.json")
    return kwargs, n_params


def _epochs(model_dir: Path) -> int | None:
    return int(read_json(model_dir / "metrics.json").get("train", {}).get("epochs_run") or 0) or None


def prune_finetune(cfg, base, keep: float, out: Path, say) -> Path:
    """The base model pruned to `keep` of its width, then fine-tuned from the kept weights into `out`."""
    from cotune.pipeline import run
    init = out.with_name(f".{out.name}-init")
    kwargs, n_params = _pruned_init(base, keep, init)
    epochs = max(MIN_FINETUNE, math.ceil(FINETUNE_SHARE * (_epochs(base.path) or 10)))
    base_cfg = _cfg(base.path, out, {})
    cfg2 = base_cfg.replace(**{"model.width": int(kwargs["width"]), "model.init_from": str(init),
                               "train.lr": base_cfg.train.lr * FINETUNE_LR, "train.epochs": epochs})
    merged = trained_on_val(base.path, [base])
    say(f"  pruning to {keep:.0%} of the width ({base.spec.n_params} -> {n_params} parameters), fine-tuning {epochs} epochs")
    try:
        run(cfg2, refit_epochs=epochs if merged else None, checkpoint=False, progress=False)
    finally:
        shutil.rmtree(init, ignore_errors=True)
    if (base.path / "decision.json").is_file():  # the same model, narrower: its decision threshold still applies
        shutil.copy2(base.path / "decision.json", out / "decision.json")
    return out


def student_width(spec, budget: float) -> int:
    """The largest width (at most the spec's) at which the spec's model has at most `budget` parameters (1 if none)."""
    from cotune.models import create_model
    lo, hi = 1, int(spec.kwargs["width"])

    def params(w: int) -> int:
        return sum(p.numel() for p in create_model(spec.family, spec.in_shape, spec.out_dim,
                                                   **{**spec.kwargs, "width": w}).parameters())
    while lo < hi:  # parameters grow with the width
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if params(mid) <= budget else (lo, mid - 1)
    return lo


def distill(cfg, ens, out: Path, say) -> Path:
    """One student with the best member's knobs trained on the ensemble's probabilities into `out`.

    The student replaces k models at 1/k of their cost: when the best member alone has more than 1/k of the
    ensemble's parameters, its width is cut to fit (the member pruned to that width is the starting point, for a
    family that prunes; otherwise it starts fresh)."""
    from cotune.models.prune import prunable
    from cotune.pipeline import run
    best, k = ens.members[0], len(ens.members)
    budget = sum(m.spec.n_params for m in ens.members) / k
    updates, init = {}, None
    width = best.spec.kwargs.get("width")
    if best.spec.n_params > budget and isinstance(width, int):
        narrow = student_width(best.spec, budget)
        if narrow < width:
            updates["model.width"] = narrow
            if prunable(best.spec.family):
                init = out.with_name(f".{out.name}-init")
                _pruned_init(best, narrow / width, init)
                updates["model.init_from"] = str(init)
    merged = trained_on_val(best.path, [best])
    scfg = _cfg(best.path, out, updates)
    say(f"  distilling the {k}-model ensemble into one {best.spec.family} of width {updates.get('model.width', width)} "
        f"({'train + validation' if merged else 'train'} rows)")
    try:
        run(scfg, refit_epochs=_epochs(best.path) if merged else None, checkpoint=False, progress=False,
            teacher=lambda ds, data: soft_targets(ds, data, ens.predict_output, TEACHER_WEIGHT))
    finally:
        if init is not None:
            shutil.rmtree(init, ignore_errors=True)
    return out
