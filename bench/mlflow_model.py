"""What MLflow models cost: a new SQLite store, logging a run's model, loading it in a fresh process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/mlflow_model.py --rounds 5

1. A new SQLite tracking store (MLflow makes its tables, ~50 migrations): MLflow creating the file itself
   ("plain") against the file put in WAL mode first, as cotune.track.mlflow_client does ("wal"). Each in a fresh
   process (timed from MlflowClient() to its first query, imports excluded), the two interleaved per round.
2. `cotune.train` of a small table model (a 2-epoch mlp, 150 rows) with mlflow= an existing store against
   without, interleaved in one process after a warm-up run of each (which pays the imports): what tracking the run
   and logging its model add. Also the import of mlflow.pyfunc (which log_model needs) in a fresh process that
   has mlflow.tracking already (what `cotune fit` pays once).
3. A fresh process that loads the model by runs:/<run_id>/model and predicts 150 rows: its imports (mlflow,
   torch) and the load + predict, timed apart.
Prints one JSON object; --json PATH writes it there too.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

STORE = r"""
import sys, time, sqlite3
path, mode = sys.argv[1], sys.argv[2]
from mlflow.tracking import MlflowClient
import logging; logging.getLogger("mlflow").setLevel(logging.WARNING); logging.getLogger("alembic").setLevel(logging.WARNING)
t0 = time.perf_counter()
if mode == "wal":
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA journal_mode=WAL")
MlflowClient(tracking_uri="sqlite:///" + path).search_experiments()
print(time.perf_counter() - t0)
"""

LOAD = r"""
import sys, time
t0 = time.perf_counter()
import mlflow.pyfunc, pandas, torch  # noqa: F401
t1 = time.perf_counter()
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
model.predict(pandas.read_csv(sys.argv[3]))
print(t1 - t0, time.perf_counter() - t1)
"""


def table(path: Path, n: int = 150) -> None:
    g = np.random.default_rng(0)
    x1, x2 = g.normal(size=n).round(3), g.normal(size=n).round(3)
    color = g.choice(["red", "green", "blue"], n)
    label = np.where(x1 + (color == "red") > 0.5, "high", np.where(x2 > 0, "mid", "low"))
    pd.DataFrame({"x1": x1, "x2": x2, "color": color, "size": g.integers(1, 5, n), "label": label}).to_csv(path, index=False)


def spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2), "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    result = {"load_average_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        store = {"plain": [], "wal": []}
        for r in range(args.rounds):
            for mode in (("plain", "wal") if r % 2 == 0 else ("wal", "plain")):
                out = subprocess.run([sys.executable, "-c", STORE, str(d / f"{mode}{r}.db"), mode], env=env,
                                     capture_output=True, text=True, check=True).stdout
                store[mode].append(float(out.split()[-1]))
        result["new_store_s"] = {k: spread(v) for k, v in store.items()}

        import cotune
        table(d / "t.csv")
        uri = f"sqlite:///{d / 'mlflow.db'}"
        base = [f"data.source={d / 't.csv'}", "data.target=label", "train.epochs=2", "model.width=8", "runtime.progress=false"]
        times = {"tracked": [], "untracked": []}
        for r in range(args.rounds + 1):
            for kind in (("tracked", "untracked") if r % 2 == 0 else ("untracked", "tracked")):
                t0 = time.perf_counter()
                run = cotune.train(overrides=base, out=d / f"{kind}{r}", mlflow=uri if kind == "tracked" else None)
                if r:  # round 0 is the warm-up
                    times[kind].append(time.perf_counter() - t0)
                if kind == "tracked":
                    model_uri = run.mlflow["model_uri"]
        result["train_s"] = {k: spread(v) for k, v in times.items()}
        imp = []
        for _ in range(args.rounds):
            out = subprocess.run([sys.executable, "-c", "import time, mlflow.tracking; t = time.perf_counter(); "
                                  "import mlflow.pyfunc; print(time.perf_counter() - t)"], env=env,
                                 capture_output=True, text=True, check=True).stdout
            imp.append(float(out.split()[-1]))
        result["import_mlflow_pyfunc_s"] = spread(imp)

        imports, loads = [], []
        for _ in range(args.rounds):
            out = subprocess.run([sys.executable, "-c", LOAD, uri, model_uri, str(d / "t.csv")], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            imports.append(float(out[-2]))
            loads.append(float(out[-1]))
        result["fresh_process_s"] = {"imports": spread(imports), "load_and_predict": spread(loads)}
    result["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
