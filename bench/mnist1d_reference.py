"""MNIST-1D reference models trained with cotune, against the paper's published accuracies.

    .venv/bin/python bench/mnist1d_reference.py            # all four models, 3 seeds
    .venv/bin/python bench/mnist1d_reference.py --models mlp --recipe cotune   # AdamW + cosine, same steps

Data: the default MNIST-1D split (4,000 train / 1,000 test, generator seed 42, length 40),
generated locally. Recipe of the paper: Adam, lr 1e-2, no weight decay, batch 100, 6,000 steps
(150 epochs), constant LR, final weights, no validation split. Architectures as the paper's:
logistic = mlp depth 0; MLP 100-100; CNN 3 conv x 25 channels (kernel 5 then 3, stride 2);
GRU 6 hidden, bidirectional, all timesteps flattened into the head.
Published test accuracy (Greydanus & Kobak 2024, Table 1): 32 +/- 1, 68 +/- 2, 94 +/- 2, 91 +/- 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import cotune

PAPER = {"logistic": (32, 1), "mlp": (68, 2), "cnn": (94, 2), "gru": (91, 2)}
MODELS = {
    "logistic": {"family": "mlp", "width": 1, "depth": 0, "dropout": 0.0},
    "mlp": {"family": "mlp", "width": 100, "depth": 2, "dropout": 0.0},
    "cnn": {"family": "cnn1d", "width": 25, "depth": 3, "kernel_size": 5, "pool": "flatten", "dropout": 0.0},
    "gru": {"family": "gru", "width": 6, "depth": 1, "bidirectional": True, "pool": "flatten", "dropout": 0.0},
}
RECIPES = {
    # the paper's: Adam, lr 1e-2, no weight decay, batch 100, 6,000 steps, constant LR
    "paper": {"optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 100, "epochs": 150,
              "schedule": "constant", "patience": 0, "loss": "cross_entropy", "monitor": "loss"},
    # same steps and batch, with cotune's defaults for the optimizer: AdamW (decoupled decay 0.05) + cosine
    "cotune": {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.05, "batch_size": 100, "epochs": 150,
               "schedule": "cosine", "patience": 0, "loss": "cross_entropy", "monitor": "loss"},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--recipe", default="paper", choices=list(RECIPES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for name in args.models:
        accs, times, params = [], [], 0
        for seed in args.seeds:
            cfg = {"data": {"source": "mnist1d", "split": {"val": 0.0}}, "model": MODELS[name], "train": RECIPES[args.recipe],
                   "runtime": {"seed": seed, "threads": 1, "progress": False}}
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                res = cotune.train(cfg, out=f"{d}/run")
                times.append(time.perf_counter() - t0)
            accs.append(100 * res.test["accuracy"])
            params = res.n_params
            print(f"{name} seed {seed}: test acc {accs[-1]:.1f}%  {times[-1]:.0f} s", flush=True)
        mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        p_mean, p_std = PAPER[name]
        rows.append({"model": name, "params": params, "acc_mean": round(mean, 2), "acc_std": round(std, 2),
                     "accs": [round(a, 1) for a in accs], "paper": f"{p_mean} +/- {p_std}",
                     "within_or_better": mean >= p_mean - p_std, "wall_s_mean": round(statistics.mean(times), 1)})
    print(f"\n| model | params | cotune test acc % (mean +/- std, n={len(args.seeds)}) | paper | within spread or better | wall s per run |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['acc_mean']:.1f} +/- {r['acc_std']:.1f} ({', '.join(map(str, r['accs']))}) | "
              f"{r['paper']} | {'yes' if r['within_or_better'] else 'NO'} | {r['wall_s_mean']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
