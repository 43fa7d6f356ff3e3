"""Joint search with `cotune fit` versus a plain Optuna search at the same wall-clock budget, on MNIST-1D.

    .venv/bin/python bench/search_mnist1d.py --budget 10m --seeds 0 1 2
    .venv/bin/python bench/search_mnist1d.py --budget 3m --seeds 0 --only cotune

Both sides: the default MNIST-1D split (4,000 train / 1,000 test, generated locally), 15% of the
training part held out for validation during the search, the best configuration refitted on all
4,000 training samples, test accuracy reported once. They run one after the other, each with the
whole machine.
plain Optuna (what a user writes by hand, as in BENCH.md): TPE + MedianPruner over the paper
  CNN's learning rate, weight decay, width, dropout and batch size; Adam; a plain PyTorch loop;
  study.optimize(timeout=budget minus the refit).
cotune: `cotune.fit("mnist1d", budget=..., workers=2)` over its whole joint space.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import cotune
from cotune.data.sources import load
from cotune.search.space import parse_budget


class PaperCNN(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv1d(1, width, 5, 2, 1), nn.Conv1d(width, width, 3, 2, 1), nn.Conv1d(width, width, 3, 2, 1)
        self.drop, self.head = nn.Dropout(dropout), nn.Linear(width * 5, 10)

    def forward(self, x):  # (B, 1, 40)
        h = self.drop(self.c3(self.c2(self.c1(x).relu()).relu()).relu())
        return self.head(h.flatten(1))


def train_cnn(p, X, y, Xv, yv, epochs, seed, trial=None):
    torch.manual_seed(seed)
    m = PaperCNN(p["width"], p["dropout"])
    opt = torch.optim.Adam(m.parameters(), lr=p["lr"], weight_decay=p["wd"])
    acc = 0.0
    for ep in range(epochs):
        m.train()
        perm = torch.randperm(len(X))
        for i in range(0, len(X), p["bs"]):
            idx = perm[i:i + p["bs"]]
            loss = F.cross_entropy(m(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if Xv is not None:
            m.eval()
            with torch.no_grad():
                acc = (m(Xv).argmax(1) == yv).float().mean().item()
            if trial is not None:
                trial.report(acc, ep)
                if trial.should_prune():
                    import optuna
                    raise optuna.TrialPruned()
    return m, acc


def plain_optuna(budget_s, seed):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ds = load("mnist1d")
    tr, te = np.flatnonzero(ds.split == "train"), np.flatnonzero(ds.split == "test")
    g = np.random.default_rng(seed)
    perm = g.permutation(tr)
    va, fit_idx = perm[:600], perm[600:]
    T = lambda i: (torch.as_tensor(ds.X[i]), torch.as_tensor(ds.y[i]))  # noqa: E731
    (X, y), (Xv, yv), (Xa, ya), (Xt, yt) = T(fit_idx), T(va), T(tr), T(te)
    epochs = 60

    def objective(trial):
        p = {"lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True), "wd": trial.suggest_float("wd", 1e-6, 1e-2, log=True),
             "width": trial.suggest_int("width", 8, 128, log=True), "dropout": trial.suggest_float("dropout", 0.0, 0.5),
             "bs": trial.suggest_categorical("bs", [32, 64, 128, 256])}
        t = time.time()
        _, acc = train_cnn(p, X, y, Xv, yv, epochs, seed, trial)
        trial.set_user_attr("s", time.time() - t)
        return acc

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_warmup_steps=5))
    t0 = time.time()
    refit_s = 0.0
    while time.time() - t0 + refit_s < budget_s:
        study.optimize(objective, n_trials=1)
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        refit_s = 1.2 * max([t.user_attrs["s"] for t in done] or [0]) * len(Xa) / len(X)
    m, _ = train_cnn({**study.best_params}, Xa, ya, None, None, epochs, seed)
    m.eval()
    with torch.no_grad():
        acc = (m(Xt).argmax(1) == yt).float().mean().item()
    return {"test_acc": acc, "trials": len(study.trials), "wall_s": time.time() - t0, "best": study.best_params}


def cotune_fit(budget, seed, workers):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        res = cotune.fit("mnist1d", budget=budget, workers=workers, out=Path(d) / "s", overrides=[f"search.seed={seed}"])
        return {"test_acc": res.test["accuracy"], "trials": sum(res.counts.values()), "counts": res.counts,
                "wall_s": time.time() - t0, "best": res.best["params"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=["cotune", "optuna"], default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    budget_s = parse_budget(args.budget)
    rows = {"cotune": [], "optuna": []}
    for seed in args.seeds:
        if args.only != "optuna":
            rows["cotune"].append(cotune_fit(args.budget, seed, args.workers))
            print("cotune", seed, json.dumps(rows["cotune"][-1]), flush=True)
        if args.only != "cotune":
            rows["optuna"].append(plain_optuna(budget_s, seed))
            print("optuna", seed, json.dumps(rows["optuna"][-1]), flush=True)
    for name, rs in rows.items():
        if rs:
            accs = [100 * r["test_acc"] for r in rs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"{name}: test acc {statistics.mean(accs):.2f} +/- {sd:.2f} % (n={len(accs)}; {', '.join(f'{a:.1f}' for a in accs)}), "
                  f"trials {[r['trials'] for r in rs]}, wall s {[round(r['wall_s']) for r in rs]}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
