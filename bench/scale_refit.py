"""Scaling studies already on disk, refitted two ways: how far each predicts the held-out corners.

    .venv/bin/python bench/scale_refit.py DIR/scale [DIR/scale ...]

For each study (its scale.csv; no training), every corner (n_i, d_j) of a sub-grid with at least 3 sizes
and 3 shares (the study's own corner is the last) is predicted from the runs of that sub-grid without it:
- "auto, every run": scale.law=auto (the form that better predicts the sub-grid's two inner corners),
  fitted to every run, as the study did before runs past the overfitting turn were left out;
- "interaction, turned out": the interaction form (q fitted; q = 1 is additive), fitted without the
  points where a smaller model did better on the same rows (advice.law_rows): what the study does now.
Prints the signed errors (predicted / measured - 1, measured = the corner's mean over seeds) and, over
all studies given, the mean absolute error and how many corners each way puts within 10%.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cotune.errors import ConfigError
from cotune.scale.advice import choose_form, law_rows
from cotune.scale.grid import read_rows
from cotune.scale.law import fit_joint
from cotune.track import write_json

WAYS = ("auto, every run", "interaction, turned out")


def _arrays(rows):
    return tuple(np.array([r[k] for r in rows], float) for k in ("params", "samples", "val_loss"))


def predict(rows: list[dict], n_top: float, d_top: float, way: str) -> float:
    """The relative error of the prediction of (n_top, d_top) from the rows of its sub-grid without it."""
    at = [r for r in rows if r["params"] == n_top and r["samples"] == d_top]
    sub = [r for r in rows if r["params"] <= n_top and r["samples"] <= d_top and r not in at]
    if way == WAYS[1]:
        sub, form = law_rows(sub)[0], "interaction"
    else:
        form = choose_form(*_arrays(sub), "auto", 0)["form"]
    law = fit_joint(*_arrays(sub), n_boot=0, form=form)
    return float(law.predict(n_top, d_top)) / float(np.mean([r["val_loss"] for r in at])) - 1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("studies", nargs="+", help="`cotune scale` output directories (each holds scale.csv)")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    out, errs = {}, {w: [] for w in WAYS}
    for study in args.studies:
        rows = [r for r in read_rows(Path(study) / "scale.csv") if not (r["extrapolated"] or r["longer"])]
        ns, ds = sorted({r["params"] for r in rows}), sorted({r["samples"] for r in rows})
        res = {}
        for i in range(2, len(ns)):
            for j in range(2, len(ds)):
                cell = {}
                for w in WAYS:
                    try:
                        cell[w] = predict(rows, ns[i], ds[j], w)
                    except ConfigError:
                        cell[w] = float("nan")
                    errs[w].append(cell[w])
                res[f"{ns[i]:.0f}x{ds[j]:.0f}"] = cell
        out[study] = res
        print(study)
        for k, cell in res.items():
            print(f"  {k:>14}  " + "  ".join(f"{w}: {100 * v:+6.1f}%" for w, v in cell.items()))
    for w in WAYS:
        e = np.abs(np.array(errs[w]))
        print(f"{w}: mean |error| {100 * np.nanmean(e):.1f}% over {np.isfinite(e).sum()} corners, "
              f"within 10% at {int(np.sum(e < 0.1))}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, out)


if __name__ == "__main__":
    main()
