"""Data co-optimization checks: label noise, class imbalance and leakage, end to end through cotune.

    .venv/bin/python bench/data_centric.py                      # all three, 3 seeds
    .venv/bin/python bench/data_centric.py --parts noise --seeds 0

label noise  sklearn digits (64 pixel features as a table), stratified 70/15/15 split (seed 0);
             20% of TRAINING labels flipped uniformly to another class (noise seed 0); val and test
             untouched. Detection precision / recall of the flipped rows by the audit's label_issues
             check; then the same model and budget trained on clean labels, on noisy labels, and on
             noisy labels with data.clean.label_issues=drop / relabel: test accuracy, mean of n seeds,
             and the share of the clean-vs-noisy gap that cleaning recovers.
imbalance    sklearn breast_cancer with the minority class cut to 5% of the training part; test
             macro-F1 of every balancing knob beside none.
leakage      sklearn digits with 5% of the test rows copied into the training part; share of those
             test rows the audit's leakage check flags.
The datasets are written as .npz files with a split array, so cotune sees exactly these splits.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

import cotune

MODEL = {"family": "mlp", "width": 128, "depth": 2, "dropout": 0.1}
TRAIN = {"optimizer": "adamw", "lr": 3e-3, "epochs": 60, "batch_size": 64, "patience": 15, "schedule": "cosine"}


def split_array(y, seed=0):
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.30, stratify=y, random_state=seed)
    va, te = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    split = np.empty(len(y), dtype="<U5")
    split[tr], split[va], split[te] = "train", "val", "test"
    return split


def flip_labels(y, rows, share, k, seed):
    g = np.random.default_rng(seed)
    flipped = g.choice(rows, size=int(round(share * len(rows))), replace=False)
    y = y.copy()
    y[flipped] = (y[flipped] + g.integers(1, k, len(flipped))) % k  # uniformly to another class
    return y, np.sort(flipped)


def fit(path, seeds, **data):
    accs, f1s = [], []
    for seed in seeds:
        cfg = {"data": {"source": str(path), **data}, "model": MODEL, "train": TRAIN,
               "runtime": {"seed": seed, "threads": 1, "progress": False}}
        with tempfile.TemporaryDirectory() as d:
            r = cotune.train(cfg, out=f"{d}/run")
        accs.append(r.test["accuracy"])
        f1s.append(r.test["f1_macro"])
    return statistics.mean(accs), statistics.mean(f1s), accs


def label_noise(tmp: Path, seeds):
    bunch = load_digits()
    X, y = bunch.data.astype(np.float32), bunch.target
    split = split_array(y)
    y_noisy, flipped = flip_labels(y, np.flatnonzero(split == "train"), 0.20, 10, seed=0)
    np.savez(tmp / "clean.npz", X=X, y=y, split=split)
    np.savez(tmp / "noisy.npz", X=X, y=y_noisy, split=split)
    rep = cotune.audit(str(tmp / "noisy.npz"), checks=["label_issues"])
    found = np.flatnonzero(rep.issues["label_issues"].mask)
    tp = len(np.intersect1d(found, flipped))
    out = {"flipped": len(flipped), "flagged": len(found), "precision": tp / max(1, len(found)), "recall": tp / len(flipped)}
    print(f"label noise detection: {out}", flush=True)
    res = {"clean": fit(tmp / "clean.npz", seeds), "noisy": fit(tmp / "noisy.npz", seeds),
           "noisy + drop": fit(tmp / "noisy.npz", seeds, clean={"label_issues": "drop"}),
           "noisy + relabel": fit(tmp / "noisy.npz", seeds, clean={"label_issues": "relabel"})}
    gap = res["clean"][0] - res["noisy"][0]
    for name, (acc, _, accs) in res.items():
        rec = (acc - res["noisy"][0]) / gap if gap > 0 and name.startswith("noisy +") else None
        out[name] = {"test_acc_mean": round(acc, 4), "accs": [round(a, 4) for a in accs],
                     "gap_recovered": None if rec is None else round(rec, 3)}
        print(f"  {name:16s} test acc {acc:.4f} {accs}" + ("" if rec is None else f"  gap recovered {rec:.0%}"), flush=True)
    return out


def imbalance(tmp: Path, seeds):
    bunch = load_breast_cancer()
    X, y = bunch.data.astype(np.float32), bunch.target
    split = split_array(y)
    tr = np.flatnonzero(split == "train")
    minority = np.bincount(y[tr]).argmin()
    keep_min = int(round(0.05 / 0.95 * (y[tr] != minority).sum()))  # minority = 5% of the training part
    g = np.random.default_rng(0)
    drop = g.permutation(tr[y[tr] == minority])[keep_min:]
    mask = np.ones(len(y), dtype=bool)
    mask[drop] = False
    np.savez(tmp / "imb.npz", X=X[mask], y=y[mask], split=split[mask])
    out = {"minority_share_train": keep_min / (keep_min + (y[tr] != minority).sum())}
    for method in ("none", "class_weights", "oversample", "undersample", "smote", "balanced_batches", "focal"):
        acc, f1, _ = fit(tmp / "imb.npz", seeds, balance=method)
        out[method] = {"test_f1_macro": round(f1, 4), "test_acc": round(acc, 4)}
        print(f"  imbalance {method:16s} macro-F1 {f1:.4f}  acc {acc:.4f}", flush=True)
    best = max((m for m in out if m not in ("none", "minority_share_train")), key=lambda m: out[m]["test_f1_macro"])
    out["best"] = best
    out["best_beats_none"] = out[best]["test_f1_macro"] > out["none"]["test_f1_macro"]
    return out


def leakage(tmp: Path):
    bunch = load_digits()
    X, y = bunch.data.astype(np.float32), bunch.target
    split = split_array(y)
    te = np.flatnonzero(split == "test")
    g = np.random.default_rng(0)
    copied = np.sort(g.choice(te, size=int(round(0.05 * len(te))), replace=False))
    X2 = np.concatenate([X, X[copied]])
    y2 = np.concatenate([y, y[copied]])
    split2 = np.concatenate([split, np.full(len(copied), "train")])
    np.savez(tmp / "leak.npz", X=X2, y=y2, split=split2)
    rep = cotune.audit(str(tmp / "leak.npz"), checks=["leakage"])
    flagged = np.flatnonzero(rep.issues["leakage"].mask)
    found = len(np.intersect1d(flagged, copied))
    out = {"copied_test_rows": len(copied), "found": found, "recall": found / len(copied),
           "train_rows_to_drop": len(rep.issues["leakage"].extra.get("train_rows", ()))}
    print(f"leakage: {out}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["noise", "imbalance", "leakage"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "noise" in args.parts:
            results["label_noise"] = label_noise(tmp, args.seeds)
        if "imbalance" in args.parts:
            results["imbalance"] = imbalance(tmp, args.seeds)
        if "leakage" in args.parts:
            results["leakage"] = leakage(tmp)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
