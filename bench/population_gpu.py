"""The population engine and a population search on one GPU, against solo trainings and a solo search.

    .venv/bin/python bench/population_gpu.py --json .bench-out/pop_gpu.json            # on the device machine
    OMP_NUM_THREADS=1 .venv/bin/python bench/population_gpu.py --device cpu --quick    # a dry run of every part

Part 1, engine: MNIST-1D (4,000 training rows, on the device), the zoo's mlp (width 100, depth 2) and the paper CNN
(cnn1d width 25, depth 3, kernel 5, flatten); member k has its own lr, weight decay and seed (AdamW, cosine, batch 32,
no validation). Samples/s of K members as one population (K = 8, 64, 256) against solo train() runs with the same
settings (--solo of them, one after the other: a solo run's samples/s does not depend on how many follow it).
Targets: K = 256, mlp >= 100x, cnn1d >= 30x.

Part 2, search: `cotune.fit("mnist1d", trials=N, workers=1)` with search.population=auto against search.population=1,
each with the final model's test accuracy, trials finished and wall seconds, so trials per device-hour compare
(target >= 50x with the best test accuracy within one standard error over --seeds). --search-trials sets N for the
population side; the solo side runs --solo-trials (one process per trial in turn) and its trials per hour are
extrapolated from them.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODELS = {"mlp": ("mlp", dict(width=100, depth=2, dropout=0.0)),
          "cnn1d": ("cnn1d", dict(width=25, depth=3, kernel_size=5, pool="flatten", dropout=0.0))}


def engine(device: str, ks: list[int], solo_runs: int, epochs: int) -> list[dict]:
    from cotune.config import TrainConfig
    from cotune.data.batches import TensorData
    from cotune.data.sources import load
    from cotune.models import create_model
    from cotune.runtime import Runtime
    from cotune.search.population.loop import Member, train_population
    from cotune.train import train
    rt = Runtime.resolve(device, "fp32", 1)
    ds = load("mnist1d")
    tr = ds.split == "train"
    data = TensorData.from_numpy(ds.X[tr], ds.y[tr], device=device)

    def cfgs(k):
        return [TrainConfig(optimizer="adamw", lr=1e-3 * 10 ** (i / max(1, k - 1)), weight_decay=1e-4 * (1 + i % 7),
                            schedule="cosine", epochs=epochs, batch_size=32, patience=0, loss="cross_entropy") for i in range(k)]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    rows = []
    for name, (family, kw) in MODELS.items():
        torch.manual_seed(0)
        solo_models = [create_model(family, (1, 40), 10, **kw) for _ in range(solo_runs)]
        train(copy.deepcopy(solo_models[0]), data, None, cfgs(1)[0].model_copy(update={"epochs": 1}), rt, task="multiclass")
        sync()
        t = time.perf_counter()
        for i, (m, c) in enumerate(zip(solo_models, cfgs(solo_runs))):
            train(m, data, None, c, rt, task="multiclass", seed=i)
        sync()
        solo = solo_runs * epochs * len(data) / (time.perf_counter() - t)
        for k in ks:
            models = [create_model(family, (1, 40), 10, **kw) for _ in range(k)]
            train_population([copy.deepcopy(m) for m in models[:2]], data, [Member(c) for c in cfgs(2)], rt, task="multiclass")
            sync()
            t = time.perf_counter()
            train_population(models, data, [Member(c, seed=i) for i, c in enumerate(cfgs(k))], rt, task="multiclass")
            sync()
            pop = k * epochs * len(data) / (time.perf_counter() - t)
            rows.append({"model": name, "k": k, "population_samples_s": pop, "solo_samples_s": solo, "ratio": pop / solo})
            print(f"{name:5s} K={k:3d} population {pop:10.0f} samples/s   solo {solo:9.0f}   ratio {pop / solo:6.1f}x", flush=True)
    return rows


def search(device: str, trials: int, solo_trials: int, seeds: list[int], epochs: int | None) -> list[dict]:
    import cotune
    rows = []
    for seed in seeds:
        for name, pop, n in (("population", "auto", trials), ("solo", "1", solo_trials)):
            extra = [f"runtime.device={device}", f"search.seed={seed}", f"search.population={pop}", "search.mlflow=none"]
            extra += [f"train.epochs={epochs}"] if epochs else []
            with tempfile.TemporaryDirectory() as d:
                t = time.time()
                res = cotune.fit("mnist1d", trials=n, workers=1, out=Path(d) / "s", report=False, overrides=extra)
                wall = time.time() - t
            done = sum(v for k, v in res.counts.items() if k != "RUNNING")
            rows.append({"side": name, "seed": seed, "test_acc": res.test["accuracy"], "trials": done, "wall_s": wall,
                         "trials_per_hour": 3600 * done / wall})
            print(f"seed {seed} {name:10s} test {100 * res.test['accuracy']:.1f}%  trials {done}  wall {wall:.0f}s  "
                  f"{3600 * done / wall:.0f} trials/h", flush=True)
    for side in ("population", "solo"):
        acc = [100 * r["test_acc"] for r in rows if r["side"] == side]
        tph = [r["trials_per_hour"] for r in rows if r["side"] == side]
        se = statistics.stdev(acc) / len(acc) ** 0.5 if len(acc) > 1 else float("nan")
        print(f"{side:10s} test acc {statistics.mean(acc):.2f}% (se {se:.2f}, n={len(acc)})  {statistics.mean(tph):.0f} trials/h")
    p = statistics.mean(r["trials_per_hour"] for r in rows if r["side"] == "population")
    s = statistics.mean(r["trials_per_hour"] for r in rows if r["side"] == "solo")
    print(f"trials per device-hour, population / solo: {p / s:.1f}x (target >= 50x)")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ks", default="8,64,256")
    ap.add_argument("--solo", type=int, default=4, help="solo runs timed in part 1")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--search-trials", type=int, default=256)
    ap.add_argument("--solo-trials", type=int, default=12)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--skip", choices=["engine", "search"], default=None)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ks = [int(k) for k in args.ks.split(",")]
    trials, solo_trials, seeds, epochs = args.search_trials, args.solo_trials, [int(s) for s in args.seeds.split(",")], None
    if args.quick:
        ks, args.solo, args.epochs, trials, solo_trials, seeds, epochs = [4], 2, 1, 4, 2, [0], 2
    out = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    if args.skip != "engine":
        out["engine"] = engine(args.device, ks, args.solo, args.epochs)
    if args.skip != "search":
        out["search"] = search(args.device, trials, solo_trials, seeds, epochs)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
