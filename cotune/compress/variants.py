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


def prune_finetune(cfg, base, keep: float, out: Path, say) -> Path:
    """The base model pruned to `keep` of its width, then fine-tuned from the kept weights into `out`."""
    from cotune import bundle
    from cotune.models.prune import prune
    from cotune.pipeline import run
    spec = base.spec
    narrow, kwargs = prune(base.model, spec.family, spec.kwargs, spec.in_shape, spec.out_dim, keep)
    init = out.with_name(f".{out.name}-init")
    init.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in narrow.parameters())
    bundle.save(init, narrow, replace(spec, kwargs=kwargs, n_params=n_params), base.pre)
    shutil.copy2(base.path / "config.json", init / "config.json")
    epochs_own = int(read_json(base.path / "metrics.json").get("train", {}).get("epochs_run") or 0) or 10
    epochs = max(MIN_FINETUNE, math.ceil(FINETUNE_SHARE * epochs_own))
    base_cfg = _cfg(base.path, out, {})
    cfg2 = base_cfg.replace(**{"model.width": int(kwargs["width"]), "model.init_from": str(init),
                               "train.lr": base_cfg.train.lr * FINETUNE_LR, "train.epochs": epochs})
    merged = trained_on_val(base.path, [base])
    say(f"  pruning to {keep:.0%} of the width ({spec.n_params} -> {n_params} parameters), fine-tuning {epochs} epochs")
    try:
        run(cfg2, refit_epochs=epochs if merged else None, checkpoint=False, progress=False)
    finally:
        shutil.rmtree(init, ignore_errors=True)
    if (base.path / "decision.json").is_file():  # the same model, narrower: its decision threshold still applies
        shutil.copy2(base.path / "decision.json", out / "decision.json")
    return out


def distill(cfg, ens, out: Path, say) -> Path:
    """One student with the best member's knobs trained on the ensemble's probabilities into `out`."""
    from cotune.pipeline import run
    best = ens.members[0]
    epochs_own = int(read_json(best.path / "metrics.json").get("train", {}).get("epochs_run") or 0) or None
    merged = trained_on_val(best.path, [best])
    scfg = _cfg(best.path, out, {})
    say(f"  distilling the {len(ens.members)}-model ensemble into one {best.spec.family} "
        f"({'train + validation' if merged else 'train'} rows)")
    run(scfg, refit_epochs=epochs_own if merged else None, checkpoint=False, progress=False,
        teacher=lambda ds, data: soft_targets(ds, data, ens.predict_output, TEACHER_WEIGHT))
    return out
