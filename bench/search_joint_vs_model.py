"""Joint search (data + model + training knobs) versus a search over model and training knobs alone, on noisy labels.

    .venv/bin/python bench/search_joint_vs_model.py --budget 3m --seeds 0 1 2 [--datasets digits mnist1d]

sklearn digits (64 pixel features as a table) or MNIST-1D (5,000 generated sequences), stratified 70/15/15
split (seed 0), 20% of the TRAINING labels flipped uniformly to another class (noise seed = the run's
seed); validation and test untouched.
Both sides: `cotune.fit` with the same budget, workers, sampler seed and base config; the final model
is refitted and scored once on the clean test part.
joint       every searchable knob (cleaning, balancing, augmentation, model, training).
model-only  the data knobs fixed at their defaults (keep every row and label, no balancing, no
            augmentation), so only model and training knobs are searched.
clean       the joint search on the clean labels (what the noise costs once the data knobs have acted).
The sides run one after the other, per seed, each with the whole machine. Per search: the best trial's data
knobs, the data knobs' fANOVA importances (importances.json) and the CV re-evaluation's choice.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

import cotune
from cotune.knobs import searchable
from data_centric import flip_labels, split_array

from cotune.data.sources import load

DATA_DEFAULTS = [f"{k.name}={k.default}" for k in searchable("data") if not k.when]  # fixed -> not searched


def noisy(name: str, path: Path, seed: int, share: float = 0.20) -> Path:
    if name == "digits":
        X, y = load_digits(return_X_y=True)
    else:
        ds = load("mnist1d", n_samples=5000)
        X, y = np.asarray(ds.X), np.asarray(ds.y)
    split = split_array(y, seed=0)
    y_noisy, _ = flip_labels(y, np.flatnonzero(split == "train"), share, int(y.max()) + 1, seed)
    np.savez(path, X=X.astype(np.float32), y=y_noisy, split=split)
    return path


def search(data: Path, budget: str, seed: int, workers: int, model_only: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        res = cotune.fit(str(data), budget=budget, workers=workers, out=Path(d) / "s",
                         overrides=[f"search.seed={seed}", *(DATA_DEFAULTS if model_only else [])])
        fit = json.loads((res.path / "fit.json").read_text())
        imp = json.loads((res.path / "importances.json").read_text()) if (res.path / "importances.json").exists() else {}
        data_imp = {r["knob"]: r.get("importance") for r in imp.get("importances", []) if str(r.get("knob", "")).startswith("data.")}
        return {"test_acc": res.test["accuracy"], "trials": sum(res.counts.values()), "counts": res.counts,
                "wall_s": time.time() - t0, "best": res.best["params"], "data_importances": data_imp,
                "reeval": {k: fit.get("reeval", {}).get(k) for k in ("chosen", "best_val_trial", "skipped")},
                "labels": {k: fit.get("labels", {}).get(k) for k in ("count", "trust", "proxy")}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--datasets", nargs="+", default=["digits"])
    ap.add_argument("--sides", nargs="+", default=["joint", "model_only", "clean"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            rows = out.setdefault(name, {side: [] for side in args.sides})
            for seed in args.seeds:
                data = noisy(name, Path(tmp) / f"{name}_noise{seed}.npz", seed)
                clean = noisy(name, Path(tmp) / f"{name}_clean.npz", seed, share=0.0)
                for side in args.sides:
                    rows[side].append(search(clean if side == "clean" else data, args.budget, seed, args.workers,
                                             side == "model_only"))
                    print(name, side, seed, json.dumps(rows[side][-1]), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(out, indent=2))
            for side, rs in rows.items():
                accs = [100 * r["test_acc"] for r in rs]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                print(f"{name} {side}: test acc {statistics.mean(accs):.2f} +/- {sd:.2f} % (n={len(accs)}; "
                      f"{', '.join(f'{a:.1f}' for a in accs)}), trials {[r['trials'] for r in rs]}, "
                      f"wall s {[round(r['wall_s']) for r in rs]}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
