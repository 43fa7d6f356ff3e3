"""How far other ways of fitting the joint law would have predicted a scaling study's held-out corner.

    .venv/bin/python bench/scale_forms.py                       # the 64k MNIST-1D study's means (BENCHMARKS.md)
    .venv/bin/python bench/scale_forms.py --csv DIR/scale.csv   # any study's rows (mean over seeds per point)

Each variant is fitted to every grid point but the largest (size, share) corner, then predicts it:
the law's two forms (additive; interaction with q) on the points as measured; on their lower envelope
over sizes (a larger model credited with a smaller one's loss where it did worse: early stopping could
have matched it); without the smallest share; without the smallest size; and a bias-variance form
L = E + A/N^alpha + B N^c / D^beta (c >= 0: larger models need more data, so they may lose at small D),
which is not one of the study's forms and is fitted here only to see whether it would do better.
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict

import numpy as np
from scipy.optimize import least_squares

from cotune.scale.law import fit_joint

# bench/scale_mnist1d.py --parts heldout: mean validation loss over 2 seeds (rows: params, columns: rows)
SIZES = [2470, 5890, 15570, 38730]
SHARES = [3800, 9575, 24128, 60800]
MEANS = [[0.1997, 0.1618, 0.1465, 0.1470], [0.1013, 0.0698, 0.0594, 0.0557],
         [0.0656, 0.0486, 0.0357, 0.0296], [0.0725, 0.0492, 0.0328, 0.0212]]


def from_csv(path: str):
    acc = defaultdict(list)
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if "True" not in (r.get("extrapolated"), r.get("longer")):
                acc[int(r["params"]), int(r["samples"])].append(float(r["val_loss"]))
    ns, ds = sorted({n for n, _ in acc}), sorted({d for _, d in acc})
    return ns, ds, [[float(np.mean(acc[n, d])) if (n, d) in acc else np.nan for d in ds] for n in ns]


def bias_variance(N, D, L):
    def model(p, N, D):
        lE, lA, a, lB, b, c = p
        return np.exp(lE) + np.exp(lA - a * np.log(N)) + np.exp(lB + c * np.log(N) - b * np.log(D))
    best = None
    for lE in (-6, -4):
        for a in (0.5, 1.5):
            for b in (0.3, 0.8):
                for c in (0.0, 0.3):
                    p0 = [lE, np.log(0.05) + a * np.log(np.median(N)), a, np.log(0.05) + b * np.log(np.median(D)), b, c]
                    r = least_squares(lambda p: np.log(model(p, N, D)) - np.log(L), p0, loss="huber", f_scale=0.05,
                                      bounds=([-12, -30, 0.01, -30, 0.01, 0], [0, 40, 4, 40, 4, 2]))
                    best = r if best is None or r.cost < best.cost else best
    return lambda n, d: float(model(best.x, n, d))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", help="a study's scale.csv (default: the 64k MNIST-1D means recorded in BENCHMARKS.md)")
    args = ap.parse_args()
    ns, ds, table = from_csv(args.csv) if args.csv else (SIZES, SHARES, MEANS)
    T = np.array(table, dtype=float)
    ci, cj = len(ns) - 1, len(ds) - 1
    actual = T[ci, cj]
    envelope = np.fmin.accumulate(T, axis=0)

    def points(M, keep):
        idx = [(i, j) for i in range(len(ns)) for j in range(len(ds))
               if (i, j) != (ci, cj) and keep(i, j) and np.isfinite(M[i, j])]
        return (np.array([ns[i] for i, _ in idx], float), np.array([ds[j] for _, j in idx], float),
                np.array([M[i, j] for i, j in idx]))

    variants = [("as measured", T, lambda i, j: True), ("lower envelope over sizes", envelope, lambda i, j: True),
                ("without the smallest share", T, lambda i, j: j > 0), ("without the smallest size", T, lambda i, j: i > 0)]
    print(f"corner: {ns[ci]:,} params x {ds[cj]:,} rows, measured {actual:.4f}")
    for name, M, keep in variants:
        for form in ("additive", "interaction"):
            law = fit_joint(*points(M, keep), n_boot=0, form=form)
            p = float(law.predict(ns[ci], ds[cj]))
            print(f"{name:28s} {form:12s} predicted {p:.4f}  {abs(p - actual) / actual:6.1%} off")
    p = bias_variance(*points(T, lambda i, j: True))(ns[ci], ds[cj])
    print(f"{'as measured':28s} {'bias-variance':12s} predicted {p:.4f}  {abs(p - actual) / actual:6.1%} off")


if __name__ == "__main__":
    main()
