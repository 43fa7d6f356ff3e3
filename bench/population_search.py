"""A search with populations (search.population=auto) against today's one-trial-per-process search, MNIST-1D.

    OMP_NUM_THREADS=1 .venv/bin/python bench/population_search.py --budget 10m --seeds 0 1 2 --json .bench-out/popsearch.json

Both arms: `cotune.fit("mnist1d", budget=..., workers=2)` over the whole joint space with the default split (4,000
train / 1,000 test, 15% of train for validation), search.seed = the seed; the only difference is search.population
(1 vs auto). Per seed the two arms run one after the other (order alternating with the seed), each with the whole
machine. Reported per arm: test accuracy of the final model, trials finished (complete + pruned + failed), trials
complete, how many trials ran in populations and their sizes, wall seconds.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import cotune


def one(budget: str, seed: int, population: str, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        res = cotune.fit("mnist1d", budget=budget, workers=workers, out=Path(d) / "s", report=False,
                         overrides=[f"search.seed={seed}", f"search.population={population}", "search.mlflow=none"])
        wall = time.time() - t0
        rows = list(csv.DictReader((Path(d) / "s" / "trials.csv").open()))
    pops = Counter(r["population"] for r in rows if r.get("population"))
    return {"test_acc": res.test["accuracy"], "finished": sum(v for k, v in res.counts.items() if k != "RUNNING"), "counts": res.counts,
            "in_populations": sum(pops.values()), "population_sizes": sorted(pops.values(), reverse=True),
            "wall_s": wall, "best": res.best["params"]}


def summary(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.4g}"
    return f"{statistics.mean(xs):.4g} +/- {statistics.stdev(xs):.2g} (se {statistics.stdev(xs) / len(xs) ** 0.5:.2g})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    arms = {"solo": "1", "population": "auto"}
    out: dict = {name: [] for name in arms}
    for seed in args.seeds:
        order = list(arms) if seed % 2 == 0 else list(arms)[::-1]
        for name in order:
            r = one(args.budget, seed, arms[name], args.workers)
            out[name].append(r)
            print(f"seed {seed} {name:10s} test {100 * r['test_acc']:.1f}%  finished {r['finished']}  {r['counts']}  "
                  f"in populations {r['in_populations']} {r['population_sizes']}  wall {r['wall_s']:.0f}s", flush=True)
    print("\n| arm | test acc % | trials finished | trials complete | in populations | wall s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in out.items():
        print(f"| {name} | {summary([100 * r['test_acc'] for r in rs])} | {summary([r['finished'] for r in rs])} | "
              f"{summary([r['counts'].get('COMPLETE', 0) for r in rs])} | {summary([r['in_populations'] for r in rs])} | "
              f"{summary([r['wall_s'] for r in rs])} |")
    ratio = [p["finished"] / s["finished"] for p, s in zip(out["population"], out["solo"])]
    print(f"\nfinished-trials ratio population / solo per seed: {[round(x, 2) for x in ratio]}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
