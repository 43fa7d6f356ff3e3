"""Joint search (data + model + training knobs) versus a search over model and training knobs alone, on noisy labels.

    .venv/bin/python bench/search_joint_vs_model.py --budget 3m --seeds 0 1 2

sklearn digits (64 pixel features as a table), stratified 70/15/15 split (seed 0), 20% of the TRAINING
labels flipped uniformly to another class (noise seed = the run's seed); validation and test untouched.
Both sides: `cotune.fit` with the same budget, workers, sampler seed and base config; the final model
is refitted and scored once on the clean test part.
joint       every searchable knob (cleaning, balancing, augmentation, model, training).
model-only  the data knobs fixed at their defaults (keep every row and label, no balancing, no
            augmentation), so only model and training knobs are searched.
The two run one after the other, per seed, each with the whole machine.
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

DATA_DEFAULTS = [f"{k.name}={k.default}" for k in searchable("data") if not k.when]  # fixed -> not searched


def noisy_digits(path: Path, seed: int) -> Path:
    X, y = load_digits(return_X_y=True)
    split = split_array(y, seed=0)
    y_noisy, _ = flip_labels(y, np.flatnonzero(split == "train"), 0.20, 10, seed)
    np.savez(path, X=X.astype(np.float32), y=y_noisy, split=split)
    return path


def search(data: Path, budget: str, seed: int, workers: int, model_only: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        res = cotune.fit(str(data), budget=budget, workers=workers, out=Path(d) / "s",
                         overrides=[f"search.seed={seed}", *(DATA_DEFAULTS if model_only else [])])
        return {"test_acc": res.test["accuracy"], "trials": sum(res.counts.values()), "counts": res.counts,
                "wall_s": time.time() - t0, "best": res.best["params"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = {"joint": [], "model_only": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            data = noisy_digits(Path(tmp) / f"digits_noise{seed}.npz", seed)
            for side in rows:
                rows[side].append(search(data, args.budget, seed, args.workers, side == "model_only"))
                print(side, seed, json.dumps(rows[side][-1]), flush=True)
    for side, rs in rows.items():
        accs = [100 * r["test_acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{side}: test acc {statistics.mean(accs):.2f} +/- {sd:.2f} % (n={len(accs)}; "
              f"{', '.join(f'{a:.1f}' for a in accs)}), trials {[r['trials'] for r in rs]}, "
              f"wall s {[round(r['wall_s']) for r in rs]}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
