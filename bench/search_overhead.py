"""Per-trial overhead of `cotune fit` and the parent's memory over many trials.

    .venv/bin/python bench/search_overhead.py                  # 200 tiny trials, 1 worker

A tiny model (mlp, width 8, 2 epochs) on sklearn:iris, so nearly all of a trial's time is
cotune's own: worker start (once per worker), storage, the run directory, tracking. Reports
  overhead per trial = (search wall time - summed training time of all trials) / trials,
  over the first 50 trials and over all of them; and the parent's resident memory (VmRSS)
  when 20 trials have finished and when all have, before the final refit (target: within 10%).
The fit runs in this process (the parent); its trials run in worker processes as always.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import cotune


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    marks: dict = {}
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "search"
        done = threading.Event()

        def watch():  # sample the parent's RSS as trials finish
            import optuna
            study = None
            while not done.is_set():
                time.sleep(0.5)
                try:
                    study = study or optuna.load_study(study_name="search", storage=f"sqlite:///{out}/study.db")
                    n = sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in study.get_trials(deepcopy=False))
                except Exception:
                    continue
                if n >= 20 and "rss_at_20" not in marks:
                    marks["rss_at_20"] = rss_mib()
                    marks["t_at_20"] = time.time()
                if n >= 50 and "t_at_50" not in marks:
                    marks["t_at_50"] = time.time()
                if n >= args.trials and "rss_at_all" not in marks:
                    marks["rss_at_all"] = rss_mib()  # before the final refit, which trains in the parent

        threading.Thread(target=watch, daemon=True).start()
        t0 = time.time()
        res = cotune.fit("sklearn:iris", trials=args.trials, workers=args.workers, out=out,
                         overrides=["model.family=mlp", "model.width=8", "train.epochs=2", "search.pruner=none"],
                         report=False)  # report.html is no part of a trial's overhead
        wall = time.time() - t0
        done.set()
        marks["rss_at_end"] = rss_mib()
        import csv
        rows = list(csv.DictReader(open(out / "trials.csv")))
        train_s = []
        for r in rows:
            m = out / "trials" / f"{int(r['number']):05d}" / "metrics.json"
            train_s.append(json.loads(m.read_text())["train"]["train_time_s"] if m.exists() else 0.0)
        final_s = json.loads((out / "final" / "metrics.json").read_text())["train"]["train_time_s"]
    search_wall = wall  # includes worker start, the final refit and report files
    n = len(rows)
    result = {
        "trials": n, "workers": args.workers, "wall_s": round(search_wall, 1),
        "train_s_total": round(sum(train_s) + final_s, 2),
        "overhead_per_trial_s": round((search_wall - sum(train_s) - final_s) / n, 3),
        "overhead_per_trial_first50_s": round((marks.get("t_at_50", t0) - t0 - sum(train_s[:50])) / 50, 3) if n >= 50 else None,
        "parent_rss_mib_at_20": round(marks.get("rss_at_20", float("nan")), 1),
        "parent_rss_mib_at_all": round(marks.get("rss_at_all", float("nan")), 1),
        "parent_rss_mib_after_final": round(marks["rss_at_end"], 1),
        "counts": res.counts,
    }
    result["rss_growth_20_to_all"] = round(result["parent_rss_mib_at_all"] / result["parent_rss_mib_at_20"] - 1, 3)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
