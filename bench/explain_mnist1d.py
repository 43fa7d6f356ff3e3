"""`cotune explain` on MNIST-1D CNNs: do the integrated gradients sit on the digit pattern or on the padding?

    OMP_NUM_THREADS=1 .venv/bin/python bench/explain_mnist1d.py --seeds 0 1 2 --models cnn mlp

Per model and seed: `cotune train` on mnist1d (5,000 generated rows, generator seed 42; the generator's 4,000 train
rows train, its 1,000 test rows are the test part) with bench/mnist1d_reference.py's paper architecture and recipe
(the CNN: 3 conv layers x 25 channels, flattened; the MLP: 100-100), then `cotune explain` on the run's test rows
(integrated gradients of the predicted class's logit, 32 steps, zero baseline).

Where the pattern lies: MNIST-1D pads a 12-point digit template with 36-60 zeros, stretches it to 72 points,
translates it (circularly) by up to 48, fills the zeros with correlated noise, adds i.i.d. noise and a shear, and
subsamples to 40 positions. Generating the same rows again with the noise and shear scales set to 0 draws the very
same random numbers (every draw is made whatever its scale), so the template lands at the same positions, and
every position that is not padding differs from the padding's constant value: those are the row's pattern
positions (about 7-10 of 40). The script checks that the labels and the pattern of the regenerated rows line up
with the dataset cotune trained on.

The measure, per test row: (share of the row's |attribution| on its pattern positions) / (share of its positions
that are pattern positions); 1 = no preference, 40 / (number of pattern positions) = all of it on the pattern. The
figure is the mean over the test rows. As a control, the same ratio for |preprocessed input| as the attribution
(the pattern has larger values than the noise in the padding, so magnitude alone concentrates there a little).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import cotune
from mnist1d_reference import MODELS, RECIPES  # the paper's architectures and recipe (bench/ is on sys.path)


def pattern_masks(meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 40) bool pattern positions, (N,) labels and (N, 40) noise-free rows of the mnist1d rows cotune generated
    with these args, in cotune's row order (the generator's train rows, then its test rows)."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView
    args = dict(meta["generator"], corr_noise_scale=0.0, iid_noise_scale=0.0, shear_scale=0.0)
    clean = make_dataset(ObjectView(args))
    x = np.concatenate([clean["x"], clean["x_test"]])
    y = np.concatenate([clean["y"], clean["y_test"]])
    values, counts = np.unique(np.round(x, 9), return_counts=True)
    padding = values[counts.argmax()]  # the standardized zero: the most common value by far
    return np.abs(x - padding) > 1e-6, y, x


def concentration(attr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row: share of |attr| on the pattern / share of positions on the pattern. attr (N, 40), mask (N, 40)."""
    a = np.abs(attr)
    mass = (a * mask).sum(1) / np.maximum(a.sum(1), 1e-30)
    return mass / mask.mean(1)


def one(model: str, seed: int, work: Path) -> dict:
    t0 = time.time()
    run = cotune.train({"data": {"source": "mnist1d", "split": {"val": 0.0}}, "model": MODELS[model],
                        "train": RECIPES["paper"], "runtime": {"seed": seed, "threads": 1, "progress": False}},
                       out=work / f"{model}-{seed}")
    t1 = time.time()
    res = cotune.explain(run.path, seed=seed)
    t2 = time.time()
    from cotune.pipeline import load_data
    ds = load_data(cotune.load_config(run.path / "config.json"))
    masks, labels, clean = pattern_masks(ds.meta)
    assert np.array_equal(labels, ds.y), "the regenerated rows do not line up with the dataset"
    rows = res.rows
    x = ds.X[rows, 0]
    # on the pattern positions the trained-on rows follow their noise-free twins (noise and shear aside)
    m = masks[rows]
    align = float(np.corrcoef(x[m], clean[rows][m])[0, 1])
    assert align > 0.5, f"the noise-free rows do not line up with the dataset (correlation {align:.2f})"
    attr = res.attributions[:, 0]  # (N, 40): one channel
    ratio = concentration(attr, masks[rows])
    feats = cotune.load(run.path).pre.transform(x[:, None])[:, 0]
    control = concentration(feats, masks[rows])
    return {"model": model, "seed": seed, "accuracy": run.test["accuracy"], "rows": len(rows), "align": align,
            "pattern_positions": float(masks[rows].sum(1).mean()), "ratio": float(ratio.mean()),
            "ratio_median": float(np.median(ratio)), "rows_above_1": float((ratio > 1).mean()),
            "control": float(control.mean()), "completeness": res.record["completeness"]["median_relative_gap"],
            "train_s": round(t1 - t0, 1), "explain_s": round(t2 - t1, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=["cnn"], choices=["cnn", "mlp", "gru"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="explain-bench-"))
    out = []
    for m in args.models:
        for s in args.seeds:
            out.append(one(m, s, work))
            print(out[-1], flush=True)
    print("| model | seed | test accuracy | rows | pattern positions / 40 | concentration (mean) | median | rows > 1 | "
          "|input| control | pattern correlation | IG completeness gap (median, relative) | train s | explain s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['model']} | {r['seed']} | {r['accuracy']:.3f} | {r['rows']} | {r['pattern_positions']:.2f} | {r['ratio']:.2f} | "
              f"{r['ratio_median']:.2f} | {r['rows_above_1']:.1%} | {r['control']:.2f} | {r['align']:.3f} | {r['completeness']:.4f} | "
              f"{r['train_s']} | {r['explain_s']} |")
    for m in args.models:
        ratios = [r["ratio"] for r in out if r["model"] == m]
        sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        print(f"{m}: concentration over {len(ratios)} seeds {statistics.mean(ratios):.2f} ± {sd:.2f} "
              f"(min {min(ratios):.2f}); |input| control {statistics.mean(r['control'] for r in out):.2f}")
    print(f"work directory {work}")


if __name__ == "__main__":
    main()
