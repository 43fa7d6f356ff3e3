"""Simulated active learning through `cotune.label_next`: how many labels does the default strategy need to reach
a target test accuracy, against labeling random rows?

    .venv/bin/python bench/active_learning.py                                   # digits and mnist1d, 3 seeds
    .venv/bin/python bench/active_learning.py --datasets digits --seeds 0 --max-rounds 3   # a quick look

Each run starts from 100 labeled rows (a seeded random draw from the pool), then per round: `label_next` trains
the dataset's FIXED model on the labeled rows (the same for every strategy; runtime.seed = the run's seed),
the model is scored on the held-out test rows, and the n = 50 rows it proposes get their true labels. A run
stops once test accuracy reaches the target, or at the dataset's label cap.

digits   sklearn digits as a table (64 pixel columns + label), a fixed stratified 30% test part (seed 0), the
         rest is the pool; mlp 128 x 2, dropout 0.1, AdamW 3e-3, cosine, 60 epochs, batch 32, no validation
         part (every label trains); target 95%, cap 1000 labels.
mnist1d  cotune's generated MNIST-1D (5000 rows: its 4000 train rows are the pool, its 1000 test rows the
         test part) as .npz arrays (y = -1 for unlabeled rows); the search's warm-start sequence model
         (cnn1d width 64, depth 4, kernel 7, batch norm, augmentation 'auto', search/space.py START) with
         batches of 50 (START's 64 leaves ragged last batches, see DATASETS), 30 epochs, no validation part;
         target 90%, cap 4000 labels. `--set mnist1d.train.batch_size=64` runs START's batch.

Results go to --json (default .bench-out/active_learning.json) after every finished run; rerunning skips the
runs already there with the same model config, so --datasets / --seeds / --strategies add to one file. The summary prints as Markdown:
labels to the target per strategy (mean +- sd over seeds, and per seed), the saving (random - mix) / random,
and the label-efficiency table (labels -> mean test accuracy over the seeds that trained at that count).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

import cotune
from cotune.track import atomic_write_bytes

START, STEP = 100, 50
DATASETS = {
    "digits": {"target": 0.95, "cap": 1000,
               "config": {"model": {"family": "mlp", "width": 128, "depth": 2, "dropout": 0.1},
                          "train": {"optimizer": "adamw", "lr": 3e-3, "schedule": "cosine", "epochs": 60,
                                    "batch_size": 32, "patience": 0}}},
    # the START model but for its batch of 64: 50 divides every label count of a run (100 + 50 k), so no epoch ends
    # in a batch of 2-10 rows, which batch norm turns into dips of several points (450 labels: 100 + 5 x 64 + 2)
    "mnist1d": {"target": 0.90, "cap": 4000,
                "config": {"model": {"family": "cnn1d", "width": 64, "depth": 4, "kernel_size": 7, "norm": "batch"},
                           "data": {"augment": {"policy": "auto"}},
                           "train": {"batch_size": 50, "epochs": 30, "patience": 0}}},
}


def load(name: str):
    """(pool X, pool y, test X, test y, write(path, X, y_or_nan) -> source path)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        d = load_digits()
        pool, test = train_test_split(np.arange(len(d.target)), test_size=0.3, stratify=d.target, random_state=0)
        cols = [f"p{i}" for i in range(d.data.shape[1])]

        def write(path, X, y):
            df = pd.DataFrame(X, columns=cols)
            df["label"] = y
            df.to_parquet(path := Path(path).with_suffix(".parquet"), index=False)
            return path
        return d.data[pool], d.target[pool], pd.DataFrame(d.data[test], columns=cols), d.target[test], write
    from cotune.data import sources
    ds = sources.load("mnist1d")
    tr, te = ds.split == "train", ds.split == "test"

    def write(path, X, y):
        np.savez(path := Path(path).with_suffix(".npz"), X=X, y=np.where(np.isnan(y), -1, y).astype(np.int64))
        return path
    return ds.X[tr], ds.y[tr], ds.X[te], ds.y[te], write


def run_config(name: str) -> dict:
    """The dataset's fixed config as label_next takes it (every label trains: no validation or test part)."""
    base = copy.deepcopy(DATASETS[name]["config"])
    cfg = {**base, "data": {**base.get("data", {}), "split": {"val": 0.0, "test": 0.0}},
           "runtime": {"threads": 1, "progress": False}}
    if name == "digits":
        cfg["data"]["target"] = "label"
    return cfg


def one_run(name: str, strategy: str, seed: int, max_rounds: int | None) -> dict:
    spec = DATASETS[name]
    X, y, X_test, y_test, write = load(name)
    g = np.random.default_rng(seed)
    labeled = np.zeros(len(y), dtype=bool)
    labeled[g.choice(len(y), START, replace=False)] = True
    cfg = run_config(name)
    curve, t0, rounds = [], time.time(), 0
    with tempfile.TemporaryDirectory() as d:
        while True:
            src = write(Path(d) / "pool", X, np.where(labeled, y, np.nan))
            t = time.time()
            res = cotune.label_next(src, n=min(STEP, int((~labeled).sum())), strategy=strategy, config=cfg, seed=seed,
                                    progress=False)
            acc = float((np.asarray(res.model.predict(X_test)).astype(np.int64) == y_test).mean())
            curve.append({"labels": int(labeled.sum()), "accuracy": acc, "seconds": round(time.time() - t, 2)})
            print(f"  {name} {strategy} seed {seed}: {labeled.sum()} labels -> test accuracy {acc:.4f} "
                  f"({curve[-1]['seconds']:.1f}s)", flush=True)
            rounds += 1
            if acc >= spec["target"] or labeled.sum() >= spec["cap"] or (max_rounds and rounds >= max_rounds):
                break
            picks = res.picks["row"].to_numpy(np.int64)
            assert not labeled[picks].any(), "label_next proposed a labeled row"
            labeled[picks] = True
    reached = curve[-1]["labels"] if curve[-1]["accuracy"] >= spec["target"] else None
    return {"config": cfg, "curve": curve, "reached": reached, "seconds": round(time.time() - t0, 1),
            "complete": not max_rounds or reached is not None or curve[-1]["labels"] >= spec["cap"]}


def mean_sd(values) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.0f} ± {statistics.stdev(values):.0f}" if len(values) > 1 else f"{values[0]:.0f}"


def summarize(results: dict, strategies) -> tuple[dict, str]:
    summary, md = {}, []
    for name, spec in DATASETS.items():
        runs = {k: v for k, v in results.items() if k.startswith(f"{name}/")}
        if not runs:
            continue
        md += [f"### {name}: labels to {spec['target']:.0%} test accuracy (cap {spec['cap']})", "",
               "| strategy | labels (mean ± sd) | per seed | wall time per run |", "| --- | --- | --- | --- |"]
        need = {}
        for s in strategies:
            mine = {k.rsplit("/", 1)[1]: v for k, v in runs.items() if k.split("/")[1] == s}
            if not mine:
                continue
            # a finished run that never reached the target counts as its cap (a lower bound on what it needs); a
            # run cut short (--max-rounds) counts for nothing
            need[s] = [v["reached"] if v["reached"] is not None else spec["cap"] for v in mine.values() if v["complete"]]
            seeds = ", ".join(f"{seed}: " + (str(v["reached"]) if v["reached"] is not None else
                                             f">{spec['cap']}" if v["complete"] else f"cut at {v['curve'][-1]['labels']}")
                              for seed, v in sorted(mine.items()))
            secs = statistics.mean(v["seconds"] for v in mine.values())
            md.append(f"| {s} | {mean_sd(need[s])} | {seeds} | {secs:.0f}s |")
        summary[name] = {"target": spec["target"], "labels": need}
        if need.get("mix") and need.get("random"):
            saving = (statistics.mean(need["random"]) - statistics.mean(need["mix"])) / statistics.mean(need["random"])
            summary[name]["saving"] = saving
            md += ["", f"saving of mix against random: {saving:.0%} fewer labels"]
        counts = sorted({p["labels"] for v in runs.values() for p in v["curve"]})
        md += ["", "| labels | " + " | ".join(need) + " |", "| --- |" + " --- |" * len(need)]
        for c in counts:
            cells = []
            for s in need:
                accs = [p["accuracy"] for k, v in runs.items() if k.split("/")[1] == s for p in v["curve"] if p["labels"] == c]
                cells.append(f"{statistics.mean(accs):.3f} (n={len(accs)})" if accs else "")
            md.append(f"| {c} | " + " | ".join(cells) + " |")
        md.append("")
    return summary, "\n".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="digits,mnist1d")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default="mix,random")
    ap.add_argument("--max-rounds", type=int, default=None, help="stop every run after this many rounds (a quick look)")
    ap.add_argument("--set", action="append", default=[], metavar="DATASET.SECTION.KEY=VALUE",
                    help="change a dataset's fixed config, e.g. mnist1d.train.batch_size=64 (repeatable)")
    ap.add_argument("--json", default=".bench-out/active_learning.json")
    args = ap.parse_args(argv)
    for item in args.set:
        key, value = item.split("=", 1)
        name, section, knob = key.split(".", 2)
        node = DATASETS[name]["config"].setdefault(section, {})
        for part in knob.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[knob.split(".")[-1]] = yaml.safe_load(value)
    torch.set_num_threads(1)
    path = Path(args.json)
    state = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    strategies = args.strategies.split(",")
    for name in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            for s in strategies:
                key = f"{name}/{s}/{seed}"
                done = state["runs"].get(key, {})
                if done.get("complete") and done.get("config") == run_config(name):
                    continue
                state["runs"][key] = one_run(name, s, seed, args.max_rounds)
                state["summary"], _ = summarize(state["runs"], strategies)
                atomic_write_bytes(path, json.dumps(state, indent=1).encode())
    present = {k.split("/")[1] for k in state["runs"]}
    strategies = [s for s in ("mix", "random") if s in present] + sorted(present - {"mix", "random"})
    state["summary"], md = summarize(state["runs"], strategies)
    atomic_write_bytes(path, json.dumps(state, indent=1).encode())
    print(md)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
