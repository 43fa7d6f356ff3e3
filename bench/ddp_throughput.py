"""Training throughput of `cotune train --nproc 2` (2 processes, 1 thread each) against one process with 1 thread
and with 2 threads, on one fixed config, interleaved.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ddp_throughput.py --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python bench/ddp_throughput.py --fit   # a 1-trial `cotune fit`, search.final_nproc 1 vs 2

rows/s is the run's samples_per_s: training steps only (evaluation, start-up and torchrun's launch excluded), the
global batch's rows per second of rank 0. "call s" is the wall time of the whole cotune.train call, imports and
torchrun's start included. Each repeat runs the three setups in a rotated order; medians and min-max over repeats.
Same seed and global batch in all three, so their validation accuracies differ only by what is drawn per rank
(dropout) and float summation order.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cotune

SETUPS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes, 1 thread each", 2, 1))


def config(epochs: int, batch: int) -> list[str]:
    return ["data.source=mnist1d", "model.family=cnn1d", "model.width=32", "model.depth=3", "model.dropout=0",
            f"train.epochs={epochs}", f"train.batch_size={batch}", "train.patience=0", "runtime.progress=false"]


def throughput(repeats: int, epochs: int, batch: int, work: Path) -> dict:
    rows: dict[str, list[dict]] = {name: [] for name, _, _ in SETUPS}
    for r in range(repeats):
        for name, nproc, threads in SETUPS[r % 3:] + SETUPS[:r % 3]:  # rotated, so drift hits each setup alike
            t0 = time.perf_counter()
            res = cotune.train(overrides=[*config(epochs, batch), f"runtime.threads={threads}"],
                               out=work / f"{r}-{nproc}-{threads}", nproc=nproc)
            rows[name].append({"rows_s": res.train.samples_per_s, "call_s": time.perf_counter() - t0,
                               "val_accuracy": res.metrics["val"]["accuracy"]})
            print(f"repeat {r}: {name}: {res.train.samples_per_s:,.0f} rows/s", flush=True)
    return rows


def summary(rows: dict) -> str:
    base = statistics.median(x["rows_s"] for x in rows[SETUPS[0][0]])
    lines = ["| setup | rows/s, median (min-max) | vs 1 process, 1 thread | call s, median | val accuracy |",
             "| --- | --- | --- | --- | --- |"]
    for name, xs in rows.items():
        v = [x["rows_s"] for x in xs]
        acc = sorted({round(x["val_accuracy"], 4) for x in xs})
        lines.append(f"| {name} | {statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f}) | "
                     f"{statistics.median(v) / base:.2f}x | {statistics.median(x['call_s'] for x in xs):.1f} | "
                     f"{', '.join(f'{a:.4f}' for a in acc)} |")
    return "\n".join(lines)


def fit_check(work: Path) -> str:
    """A 1-trial search on digits whose final model trains in 1 and in 2 processes: same knobs, same epochs."""
    fixed = ["model.family=mlp", "train.epochs=8", "search.reeval=0", "search.top_k=1", "runtime.progress=false"]
    lines = ["| search.final_nproc | final test accuracy | final/env.json processes | fit s |", "| --- | --- | --- | --- |"]
    for n in (1, 2):
        t0 = time.perf_counter()
        res = cotune.fit("sklearn:digits", trials=1, mlflow="none", overrides=[*fixed, f"search.final_nproc={n}"],
                         out=work / f"fit-{n}", report=False)
        env = json.loads((res.final.path / "env.json").read_text())
        lines.append(f"| {n} | {res.test['accuracy']:.4f} | {env['processes']} | {time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--fit", action="store_true", help="instead: a 1-trial fit with search.final_nproc 1 and 2")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        if a.fit:
            print(fit_check(Path(tmp)))
            return
        rows = throughput(a.repeats, a.epochs, a.batch, Path(tmp))
    print(summary(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
