"""Transfer learning on digits: a model trained on classes 0-4, fine-tuned on 10% of the 5-9 rows, against the
same model trained from scratch on the same rows.

    OMP_NUM_THREADS=1 .venv/bin/python bench/transfer.py --json .bench-out/transfer.json

Data: sklearn's digits as a table (64 pixel columns + label). Source: every row of classes 0-4 (stratified
85/15 train/validation, early stopping on validation; split seed = the run's seed). Target: the rows of
classes 5-9, a fixed stratified 30% test part (seed 0, the same for every seed and arm); per seed, a seeded
stratified 10% of the remaining rows is the whole training set (no validation part: every label trains).
The model and recipe are active_learning.py's digits ones, not tuned here: mlp 128 x 2, dropout 0.1, AdamW
3e-3, cosine, 60 epochs, batch 32. Arms, on the same rows with the same seed (so the same fresh output layer)
and epochs:
  scratch                      no model.init_from (and no freezing: a random backbone is nothing to keep)
  init                         model.init_from = the seed's source run: its preprocessing and hidden layers,
                               a fresh output layer (new classes), every layer trained at the full rate
  init + freeze                and train.freeze_epochs=10: the new output layer alone for the first 10 epochs
  init + freeze + backbone_lr  and train.backbone_lr=0.1 for the copied layers (fastai / Lightning style)
  head only                    init, frozen for all 60 epochs (a linear probe): how far the source's features go
Prints a Markdown table: test accuracy per arm (mean +- sd over seeds, and per seed) and the per-seed
difference of each transfer arm to scratch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cotune  # noqa: E402
from cotune.track import atomic_write_bytes  # noqa: E402

SOURCE, TARGET = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
SHARE, TEST = 0.10, 0.30
RECIPE = {"model": {"family": "mlp", "width": 128, "depth": 2, "dropout": 0.1},
          "train": {"optimizer": "adamw", "lr": 3e-3, "schedule": "cosine", "epochs": 60, "batch_size": 32},
          "runtime": {"progress": False}}
ARMS = {"scratch": {}, "init": {"init": True}, "init + freeze": {"init": True, "train": {"freeze_epochs": 10}},
        "init + freeze + backbone_lr": {"init": True, "train": {"freeze_epochs": 10, "backbone_lr": 0.1}},
        "head only": {"init": True, "train": {"freeze_epochs": 60}}}


def frame(classes) -> pd.DataFrame:
    d = load_digits()
    keep = np.isin(d.target, classes)
    return pd.DataFrame(d.data[keep], columns=[f"px{i}" for i in range(64)]).assign(label=d.target[keep])


def merged(*dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = merged(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def run_seed(seed: int, tmp: Path, source_csv: Path, target: pd.DataFrame, test_rows: np.ndarray) -> dict:
    src = cotune.train(merged(RECIPE, {"data": {"source": str(source_csv), "target": "label",
                                                "split": {"val": 0.15, "test": 0.0, "seed": seed}},
                                       "train": {"patience": 10}, "runtime": {"seed": seed}}), out=tmp / f"source-{seed}")
    pool = np.setdiff1d(np.arange(len(target)), test_rows)
    train_rows, _ = train_test_split(pool, train_size=SHARE, stratify=target["label"].to_numpy()[pool], random_state=seed)
    split = np.full(len(target), "unused", dtype=object)
    split[test_rows], split[train_rows] = "test", "train"
    csv = tmp / f"target-{seed}.csv"
    target.assign(split=split)[split != "unused"].to_csv(csv, index=False)
    row = {"seed": seed, "source_val_accuracy": src.metrics["val"]["accuracy"], "train_rows": int(len(train_rows)),
           "test_rows": int(len(test_rows))}
    for arm, how in ARMS.items():
        cfg = merged(RECIPE, {"data": {"source": str(csv), "target": "label", "split": {"column": "split", "val": 0.0}},
                              "train": {"patience": 0}, "runtime": {"seed": seed}}, {"train": how.get("train", {})},
                     {"model": {"init_from": str(src.path)}} if how.get("init") else {})
        t0 = time.perf_counter()
        res = cotune.train(cfg, out=tmp / f"{arm}-{seed}")
        row[arm] = res.test["accuracy"]
        row[f"{arm}_s"] = round(time.perf_counter() - t0, 2)
    return row


def mean_sd(values) -> str:
    return f"{100 * statistics.mean(values):.1f} +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{100 * values[0]:.1f}"


def summary(rows: list[dict], command: str) -> str:
    lines = [f"`{command}`", "", "| arm | test accuracy % (mean +- sd) | " + " | ".join(f"seed {r['seed']}" for r in rows) + " |",
             "| --- | --- | " + " | ".join("---" for _ in rows) + " |"]
    for arm in ARMS:
        lines.append(f"| {arm} | {mean_sd([r[arm] for r in rows])} | " + " | ".join(f"{100 * r[arm]:.1f}" for r in rows) + " |")
    for arm in list(ARMS)[1:]:
        diff = [r[arm] - r["scratch"] for r in rows]
        lines.append(f"| {arm} - scratch (points) | {mean_sd(diff)} | " + " | ".join(f"{100 * d:+.1f}" for d in diff) + " |")
    sources = ", ".join(f"{100 * r['source_val_accuracy']:.1f}" for r in rows)
    lines += ["", f"training rows per seed: {', '.join(str(r['train_rows']) for r in rows)} of classes 5-9; test rows: "
              f"{rows[0]['test_rows']}; source validation accuracy % (classes 0-4): {sources}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", default=".bench-out/transfer.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    target = frame(TARGET)
    test_rows, _ = train_test_split(np.arange(len(target)), train_size=TEST, stratify=target["label"], random_state=0)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source_csv = Path(tmp) / "source.csv"
        frame(SOURCE).to_csv(source_csv, index=False)
        for seed in seeds:
            rows.append(run_seed(seed, Path(tmp), source_csv, target, np.sort(test_rows)))
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/transfer.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = summary(rows, command)
    print(text)
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    atomic_write_bytes(args.json, json.dumps({"recipe": RECIPE, "arms": ARMS, "rows": rows}, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
