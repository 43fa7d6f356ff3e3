"""Data audit at scale: time, peak memory and recall of planted defects on a synthetic table.

    .venv/bin/python bench/audit_scale.py --rows 100000            # try small first
    .venv/bin/python bench/audit_scale.py --json .bench-out/audit.json   # 1,000,000 rows (target: < 3 min, < 8 GiB)

Data: `--rows` rows x 20 columns (14 numeric with assorted means / scales, 6 string categorical
with 3..10 levels); a 3-class target = argmax of a linear function of the numeric columns plus
per-category effects. Planted defects: 1% exact duplicate rows (copies of other rows, label
included), 0.5% outlier rows (1-3 numeric cells set ~10 sigma off), 5% label noise (uniform
flips to another class). Split 70/15/15 (seeded, stratified), then `audit()` runs every check
once, from scratch (cache=False). Reported:

* dup recall: copied pairs caught by 'duplicates' (both rows in train) or 'leakage' (one row
  held out); pairs with both rows held out are out of scope (no check looks inside val/test);
* outlier recall: planted rows with outlier score >= 0.6 (all parts, scores cover every row);
* label recall / precision: flipped training labels flagged by 'label_issues'.

Peak memory is the process's ru_maxrss (data generation included). The CPU may be shared with
other jobs; timings are then noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cotune.data.audit import OUTLIER, audit  # noqa: E402
from cotune.data.dataset import make_dataset  # noqa: E402
from cotune.data.split import split_indices  # noqa: E402

LEVELS = (3, 4, 5, 6, 8, 10)


def build(n: int, seed: int = 0):
    """(DataFrame, y, planted) where planted holds the duplicate pairs, outlier rows and flipped rows."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 14))
    cats = np.stack([rng.integers(0, k, n) for k in LEVELS], axis=1)
    logits = Z @ rng.standard_normal((14, 3))
    for j, k in enumerate(LEVELS):
        logits += 0.5 * rng.standard_normal((k, 3))[cats[:, j]]
    y = logits.argmax(axis=1)
    perm = rng.permutation(n)
    n_dup, n_out = n // 100, n // 200
    copies, sources = perm[:n_dup], perm[n_dup:2 * n_dup]
    out_rows = perm[2 * n_dup:2 * n_dup + n_out]
    Z[copies], cats[copies], y[copies] = Z[sources], cats[sources], y[sources]
    for r in out_rows:  # 1-3 numeric cells about 10 sigma off
        cols = rng.choice(14, rng.integers(1, 4), replace=False)
        Z[r, cols] = rng.choice([-1.0, 1.0], len(cols)) * rng.uniform(9.5, 10.5, len(cols))
    flipped = np.flatnonzero(rng.random(n) < 0.05)
    y[flipped] = (y[flipped] + rng.integers(1, 3, len(flipped))) % 3
    scale, loc = rng.uniform(0.5, 100, 14), rng.uniform(-50, 50, 14)
    df = pd.DataFrame({f"num{j}": (Z[:, j] * scale[j] + loc[j]).astype(np.float32) for j in range(14)})
    for j, k in enumerate(LEVELS):
        pool = np.array([f"c{j}_{v}" for v in range(k)], dtype=object)
        df[f"cat{j}"] = pool[cats[:, j]]
    return df, y, {"copies": copies, "sources": sources, "outliers": out_rows, "flipped": flipped}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass

    t0 = time.perf_counter()
    df, y, planted = build(args.rows, args.seed)
    ds = make_dataset(df, y, name=f"synthetic{args.rows}")
    tr, va, te = split_indices(ds, val=0.15, test=0.15, seed=args.seed)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = audit(ds, tr, va, te, seed=args.seed, cache=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB

    part = report.part
    a, b = planted["copies"], planted["sources"]
    both_train = (part[a] == "train") & (part[b] == "train")
    one_held = (part[a] == "train") != (part[b] == "train")
    dup_mask, leak_mask = report["duplicates"].mask, report["leakage"].mask
    dup_hit = dup_mask[a] | dup_mask[b]
    held = np.where(part[a] == "train", b, a)
    leak_hit = leak_mask[held]
    in_scope = both_train | one_held
    scores = report["outliers"].score
    flipped_tr = planted["flipped"][part[planted["flipped"]] == "train"]
    lab = report["label_issues"].mask
    out = {
        "rows": args.rows, "seconds": round(seconds, 1), "peak_gib": round(peak, 2), "data_seconds": round(t_data, 1),
        "dup_recall": round(float((dup_hit & both_train | leak_hit & one_held).sum() / max(in_scope.sum(), 1)), 4),
        "dup_recall_train": round(float(dup_hit[both_train].mean()), 4),
        "leak_recall": round(float(leak_hit[one_held].mean()), 4),
        "dup_pairs_out_of_scope": int((~in_scope).sum()),
        "outlier_recall": round(float((scores[planted["outliers"]] >= OUTLIER["threshold"]).mean()), 4),
        "outlier_flags_train": int(report["outliers"].mask.sum()),
        "outlier_precision_train": round(float(report["outliers"].mask[planted["outliers"]].sum()
                                               / max(report["outliers"].mask.sum(), 1)), 4),
        "label_recall": round(float(lab[flipped_tr].mean()), 4),
        "label_precision": round(float(lab[flipped_tr].sum() / max(lab.sum(), 1)), 4),
        "proxy_accuracy": report["label_issues"].summary["proxy_accuracy"],
        "severity": {k: v["severity"] for k, v in report.summary()["checks"].items()},
        "cpus": os.cpu_count(),
    }
    print("| rows | audit s | peak GiB | dup recall | outlier recall | label recall | label precision |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rows:,} | {out['seconds']} | {out['peak_gib']} | {out['dup_recall']} | {out['outlier_recall']} "
          f"| {out['label_recall']} | {out['label_precision']} |")
    print(json.dumps({k: v for k, v in out.items() if k != "severity"}))
    if args.json:
        from cotune.track import write_json
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
