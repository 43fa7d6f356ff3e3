"""How much of a scaling study's held-out miss the validation rows alone could make.

    .venv/bin/python bench/scale_valrows.py DIR/scale            # a finished `cotune scale` directory
    .venv/bin/python bench/scale_valrows.py DIR/scale --boot 300 --json .bench-out/valrows.json
    .venv/bin/python bench/scale_valrows.py DIR/scale --rows test     # the test split instead

Every run of the study is scored on the same validation rows. This scores each run's saved model on
them again, row by row (checking that the mean is the val_loss in scale.csv), and reports:
- the corner's standard error over those rows, and the share of its loss that its 10 worst rows carry;
- what each grid point's runs lose on the corner's 3 worst rows (do those rows get easier with scale?);
- a paired bootstrap over the rows: draw the validation rows again with replacement (the same draw for
  every run), refit the study's law without the corner, predict it, and collect the relative error.
  Its spread is what another validation set of the same size could have shown for the same models.
--rows test scores the same models on the test split (rows no run used, not even to stop), and --rows
both on the validation and test rows together: the corner and its miss on other rows of the same
distribution, and on more of them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import cotune
from cotune.config import from_dict
from cotune.data.split import split_indices
from cotune.pipeline import load_data
from cotune.scale.advice import law_rows
from cotune.scale.grid import read_rows
from cotune.scale.law import fit_joint
from cotune.track import write_json

PARTS = {"val": (1,), "test": (2,), "both": (1, 2)}  # which of split_indices' (train, val, test) to score on


def validation_rows(run_dir, rows: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of a run's validation rows (or its test rows, or both: `rows`), raw as the source gives
    them. The split comes before the share, so every run of a study has these rows."""
    cfg = from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    ds = load_data(cfg)
    parts = split_indices(ds, val=cfg.data.split.val, test=cfg.data.split.test, seed=cfg.data.split.seed)
    idx = np.concatenate([parts[i] for i in PARTS[rows]])
    return ds.X[idx], np.asarray(ds.y[idx]).astype(int)


def row_loss(run_dir, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's log loss under a run's saved model (its own preprocessing applied)."""
    p = np.asarray(cotune.load(run_dir).predict_proba(X), dtype=np.float64)
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))


def row_losses(rows: list[dict], part: str = "val") -> np.ndarray:
    """(runs, rows) log losses on the study's validation rows (or `part`), from each run's saved model."""
    X, y = validation_rows(rows[0]["run_dir"], part)
    out = []
    for r in rows:
        loss = row_loss(r["run_dir"], X, y)
        if part == "val" and not np.isclose(loss.mean(), r["val_loss"], rtol=1e-4):
            raise SystemExit(f"{r['run_dir']}: rescored {loss.mean():.6g}, scale.csv says {r['val_loss']:.6g}")
        out.append(loss)
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", help="a `cotune scale` output directory (holds scale.csv and scale.json)")
    ap.add_argument("--boot", type=int, default=300, help="bootstrap draws of the validation rows")
    ap.add_argument("--rows", choices=sorted(PARTS), default="val",
                    help="score on the validation rows (as the study did), the test split, or both together")
    ap.add_argument("--form", choices=["study", "additive", "interaction"], default="study",
                    help="the joint law's form: as the study's scale.json has it, or this one")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    study = Path(args.study)
    rows = [r for r in read_rows(study / "scale.csv") if not (r["extrapolated"] or r["longer"])]
    form = json.loads((study / "scale.json").read_text())["form"]["form"] if args.form == "study" else args.form
    L = row_losses(rows, args.rows)
    N, D = np.array([r["params"] for r in rows], float), np.array([r["samples"] for r in rows], float)
    ns, ds = np.unique(N), np.unique(D)
    at = (N == ns[-1]) & (D == ds[-1])

    def miss(means: np.ndarray) -> float:  # as the study fits: without the corner, and without runs past the turn
        kept, _ = law_rows([{"params": n, "samples": d, "val_loss": v} for n, d, v in zip(N[~at], D[~at], means[~at])])
        law = fit_joint(*(np.array([r[k] for r in kept]) for k in ("params", "samples", "val_loss")), n_boot=0, form=form)
        actual = means[at].mean()
        return (float(law.predict(ns[-1], ds[-1])) - actual) / actual

    corner = L[at].mean(axis=0)
    worst = np.argsort(corner)[::-1]
    n = L.shape[1]
    res = {"rows": args.rows, "validation_rows": n, "form": form, "corner": float(corner.mean()),
           "miss": miss(L.mean(axis=1)),
           "corner_rel_se": float(corner.std(ddof=1) / np.sqrt(n) / corner.mean()),
           "worst10_share": float(corner[worst[:10]].sum() / corner.sum()),
           "worst3_by_point": {f"{int(a)}x{int(b)}": float(L[(N == a) & (D == b)][:, worst[:3]].mean())
                               for a in ns for b in ds}}
    rng = np.random.default_rng(0)
    draws = np.array([miss(L[:, rng.integers(0, n, n)].mean(axis=1)) for _ in range(args.boot)])
    res["bootstrap"] = {"draws": len(draws), "median": float(np.median(draws)), "p5": float(np.percentile(draws, 5)),
                        "p95": float(np.percentile(draws, 95)), "within_10pct": float(np.mean(np.abs(draws) < 0.1))}
    what = "validation" if args.rows == "val" else args.rows
    print(f"{n:,} {what} rows; law {form}; corner {res['corner']:.4f}, predicted {100 * res['miss']:+.1f}% off")
    print(f"corner standard error over the rows: {100 * res['corner_rel_se']:.1f}%; its 10 worst rows carry "
          f"{100 * res['worst10_share']:.0f}% of its loss")
    print("mean loss on the corner's 3 worst rows (params x rows):")
    for a in ns:
        print(f"  {int(a):>7,}  " + "  ".join(f"{res['worst3_by_point'][f'{int(a)}x{int(b)}']:6.2f}" for b in ds))
    b = res["bootstrap"]
    print(f"paired bootstrap over the rows ({b['draws']}): miss median {100 * b['median']:+.1f}%, 90% of draws in "
          f"[{100 * b['p5']:+.1f}%, {100 * b['p95']:+.1f}%], within 10% in {100 * b['within_10pct']:.0f}%")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, res)


if __name__ == "__main__":
    main()
