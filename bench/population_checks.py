"""Two checks of populations in a search: memory over many populations, and dropout against solo runs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/population_checks.py memory --populations 50 --k 8
    OMP_NUM_THREADS=1 .venv/bin/python bench/population_checks.py dropout --members 16

memory: one worker process (cotune.search.worker.work, in this process) runs a study of populations * k trials with
search.population=k on MNIST-1D (a small mlp, 3 epochs, mlflow off); its RSS is read after each population. Target:
RSS flat within 10% from the 5th population (the first ones pay the imports and allocator warm-up) to the last.

dropout: the same config with dropout on (mlp width 100 depth 2 dropout 0.3; cnn1d width 25 depth 3 dropout 0.3),
--members seeds as one population (pipeline.run_many) and as solo runs (pipeline.run). The population draws one
dropout stream for all members, so members are not their solo runs; their outcomes must agree in distribution:
the difference of the mean validation accuracies within 2 standard errors (of that difference).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(populations: int, k: int) -> dict:
    import gc

    import optuna

    from cotune.config import from_dict
    from cotune.pipeline import load_data
    from cotune.search import worker
    from cotune.search.population import search as population
    from cotune.search.space import search_space
    from cotune.search.storage import open_study, storage_url
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = from_dict({"data": {"source": "mnist1d"}, "model": {"family": "mlp", "ensemble": 1},
                     "train": {"epochs": 3}, "runtime": {"threads": 1, "progress": False},
                     "search": {"trials": populations * k, "mlflow": "none", "population": str(k)}})
    ds = load_data(cfg)
    space = search_space(cfg, {"model.family", "model.ensemble"}, ds.modality, ds.task)
    seen = []
    inner = population.run_population

    def counted(*a, **kw):
        n = inner(*a, **kw)
        gc.collect()
        seen.append(rss_mb())
        print(f"population {len(seen):3d}: {n} trials, RSS {seen[-1]:.0f} MB", flush=True)
        return n

    population.run_population = counted
    with tempfile.TemporaryDirectory() as d:
        url = storage_url(Path(d), None)
        open_study(url, "m", cfg, space)
        worker.work(url, "m", out=d)
    population.run_population = inner
    base = seen[min(4, len(seen) - 1)]
    growth = max(seen[4:] or seen) / base - 1
    print(f"RSS after population 5: {base:.0f} MB, last: {seen[-1]:.0f} MB, max growth {100 * growth:.1f}% (target <= 10%)")
    return {"rss_mb": seen, "growth_after_5": growth}


def dropout(members: int) -> list[dict]:
    from cotune.config import from_dict
    from cotune.pipeline import run, run_many
    from cotune.search.population.search import trainer
    rows = []
    for family, model in (("mlp", {"width": 100, "depth": 2}), ("cnn1d", {"width": 25, "depth": 3, "kernel_size": 5})):
        base = {"data": {"source": "mnist1d"}, "model": {"family": family, "dropout": 0.3, **model},
                "train": {"epochs": 15, "batch_size": 64, "patience": 0}, "runtime": {"threads": 1, "progress": False}}
        with tempfile.TemporaryDirectory() as d:
            cfgs = [from_dict(base).replace(**{"runtime.seed": s, "out": f"{d}/p{s}"}) for s in range(members)]
            pop = [r.metrics["val"]["accuracy"] for r in run_many(cfgs, trainer())]
            solo = [run(c.replace(out=f"{d}/s{i}"), checkpoint=False).metrics["val"]["accuracy"] for i, c in enumerate(cfgs)]
        diff = statistics.mean(pop) - statistics.mean(solo)
        se = (statistics.variance(pop) / len(pop) + statistics.variance(solo) / len(solo)) ** 0.5
        row = {"family": family, "population_mean": statistics.mean(pop), "solo_mean": statistics.mean(solo),
               "population_sd": statistics.stdev(pop), "solo_sd": statistics.stdev(solo), "diff": diff, "se": se,
               "within_2se": abs(diff) <= 2 * se, "n": members}
        rows.append(row)
        print(f"{family:5s} val acc population {100 * row['population_mean']:.2f} +/- {100 * row['population_sd']:.2f}  "
              f"solo {100 * row['solo_mean']:.2f} +/- {100 * row['solo_sd']:.2f}  diff {100 * diff:+.2f} "
              f"(2 se = {200 * se:.2f}) {'within' if row['within_2se'] else 'OUTSIDE'} (n={members})", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("check", choices=["memory", "dropout"])
    ap.add_argument("--populations", type=int, default=50)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    out = memory(args.populations, args.k) if args.check == "memory" else dropout(args.members)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
