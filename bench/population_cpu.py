"""Population engine on CPU: K = 16 members trained as one batched model versus 16 solo `train()` calls with the
same settings, one thread, interleaved.

    .venv/bin/python bench/population_cpu.py                    # MLP 100-100 and the paper CNN, K = 16
    .venv/bin/python bench/population_cpu.py --rounds 5 --epochs 2

Data: MNIST-1D (4,000 training rows, generated). Models: the zoo's mlp (width 100, depth 2) and the paper CNN
(cnn1d width 25, depth 3, kernel 5, flatten: bench/loop_overhead.py's). Member k has its own lr (log-spaced 1e-3
to 1e-2), weight decay and seed; AdamW, cosine schedule, batch 32, no validation. Each round times the population
and then the 16 solo runs (model building excluded on both sides); samples/s counts every member's samples.
The median over rounds and the spread (min-max) of the ratio are printed.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from cotune.config import TrainConfig
from cotune.data.batches import TensorData
from cotune.data.sources import load
from cotune.models import create_model
from cotune.runtime import Runtime
from cotune.search.population.loop import Member, train_population
from cotune.train import train

MODELS = {"cnn": ("cnn1d", dict(width=25, depth=3, kernel_size=5, pool="flatten", dropout=0.0)),
          "mlp": ("mlp", dict(width=100, depth=2, dropout=0.0))}


def configs(k: int, epochs: int, bs: int) -> list:
    return [TrainConfig(optimizer="adamw", lr=1e-3 * 10 ** (i / max(1, k - 1)), weight_decay=1e-4 * (1 + i),
                        schedule="cosine", epochs=epochs, batch_size=bs, patience=0, loss="cross_entropy") for i in range(k)]


def run_population(models, data, cfgs, rt) -> float:
    t0 = time.perf_counter()
    train_population(models, data, [Member(c, seed=i) for i, c in enumerate(cfgs)], rt, task="multiclass")
    return time.perf_counter() - t0


def run_solo(models, data, cfgs, rt) -> float:
    t0 = time.perf_counter()
    for i, (m, c) in enumerate(zip(models, cfgs)):
        train(m, data, None, c, rt, task="multiclass", seed=i)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rt = Runtime.resolve("cpu", "fp32", 1)
    ds = load("mnist1d")
    tr = ds.split == "train"
    data = TensorData(torch.as_tensor(ds.X[tr]), torch.as_tensor(ds.y[tr]))  # (4000, 1, 40)
    cfgs = configs(args.k, args.epochs, args.batch)
    samples = args.k * args.epochs * len(data)
    print(f"torch={torch.__version__} threads=1 K={args.k} rows={len(data)} epochs={args.epochs} batch={args.batch} rounds={args.rounds}")
    out = []
    for name in args.models.split(","):
        family, kw = MODELS[name]
        torch.manual_seed(0)
        base = [create_model(family, (1, 40), 10, **kw) for _ in range(args.k)]
        run_population([copy.deepcopy(m) for m in base], data, configs(args.k, 1, args.batch), rt)  # warm-up
        run_solo([copy.deepcopy(m) for m in base[:2]], data, configs(2, 1, args.batch), rt)
        pop_s, solo_s = [], []
        for _ in range(args.rounds):
            pop_s.append(samples / run_population([copy.deepcopy(m) for m in base], data, cfgs, rt))
            solo_s.append(samples / run_solo([copy.deepcopy(m) for m in base], data, cfgs, rt))
        ratios = [p / s for p, s in zip(pop_s, solo_s)]
        row = {"model": name, "population_samples_s": statistics.median(pop_s), "solo_samples_s": statistics.median(solo_s),
               "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios), "n": args.rounds}
        out.append(row)
        print(f"{name:4s} population {row['population_samples_s']:9.0f} samples/s   solo {row['solo_samples_s']:9.0f} samples/s   "
              f"ratio {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}, max {row['ratio_max']:.2f}, n={args.rounds})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
