"""`cotune scale` checked against reality: wall time of the default grid, the held-out corner, and the advice.

    .venv/bin/python bench/scale_mnist1d.py --parts default check heldout

default  MNIST-1D, default split (4,000 train / 1,000 test; 15% of train for validation), the configuration
         a search starts from on sequences (cnn1d depth 4, batch norm, kernel 7, batch 64, augmentation
         auto, 30 epochs), trained once; then `cotune scale` with the default grid (4 sizes spanning 16x
         parameters x 4 shares spanning 8x x 2 seeds, 2 workers): wall time (target < 20 min).
check    The advice against reality at the study's largest point, on two datasets:
         MNIST-1D: the same study with --extrapolate (the largest model on 2x and 4x generated rows), plus
         the largest share trained at 2x the parameters; sklearn digits: an MLP study with
         scale.max_fraction=0.5 (half the training part held back), then the largest point trained on 2x
         the rows (all of them) and at 2x the parameters. Both seeds, same recipe as the grid's runs.
         Passes when the option the advice ranked first really lowered validation loss more.
heldout  MNIST-1D generated at 80,000 samples (64,000 train; with 5% for validation, 60,800 training rows),
         4 sizes x 4 shares spanning 16x (3,800 to 60,800 rows) x 2 seeds, at most 10 epochs at the largest
         share (scale.epoch_factor=1, to fit the CPU): the largest corner held out of the fit and predicted
         (target: within 10%).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import cotune
from cotune.pipeline import model_shapes, run
from cotune.scale.grid import fractions_for, model_cost, schedule
from cotune.scale.study import base_config, study_config

SEQ = ["data.source=mnist1d", "model.family=cnn1d", "model.depth=4", "model.norm=batch", "model.kernel_size=7",
       "train.batch_size=64", "data.augment.policy=auto", "runtime.threads=1", "runtime.progress=false"]


def width_for(cfg, factor: float) -> int:
    """The width whose parameter count is nearest `factor` x the configuration's."""
    shapes = model_shapes(cfg)
    target = factor * model_cost(cfg, cfg.model.width, shapes)[0]
    w = cfg.model.width
    while model_cost(cfg, w, shapes)[0] < target:
        w += 1
    return min((w - 1, w), key=lambda v: abs(math.log(model_cost(cfg, v, shapes)[0] / target)))


def train_point(cfg, width: int, fraction: float, seed: int, out: Path, n_samples: int | None = None) -> float:
    """One run trained exactly as the grid trains its points; returns validation loss."""
    epochs, patience = schedule(cfg, fraction)
    over = {"model.width": width, "data.fraction": fraction, "runtime.seed": seed, "out": str(out),
            "train.epochs": epochs, "train.patience": patience}
    if n_samples:
        over["data.n_samples"] = n_samples
    return run(cfg.replace(**over)).metrics["val"]["log_loss"]


def check(res, extra: dict) -> dict:
    """Actual gains of the study's top-ranked option and the runner-up, measured at its largest point."""
    s = res.summary
    cur = s["current"]["loss_measured"]
    actual = {k: cur - statistics.mean(v) for k, v in extra.items()}
    ranked = [a["option"] for a in s["advice"] if a["option"] in actual]
    return {"predicted": {a["option"]: a["loss_gain"] for a in s["advice"]}, "actual_gain": actual,
            "loss_at_point": cur, "ranked_first": ranked[0], "really_best": max(actual, key=actual.get),
            "pass": ranked[0] == max(actual, key=actual.get), "text": s["text"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["default", "check", "heldout"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=".bench-out/scale_mnist1d.json")
    args = ap.parse_args()
    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    if {"default", "check"} & set(args.parts):
        base = tmp / "mnist1d-run"
        cotune.train(overrides=SEQ, out=base)
        t0 = time.time()
        res = cotune.scale(base, workers=args.workers)
        out["default"] = {"wall_s": time.time() - t0, "runs": res.ran, "holdout": res.summary["holdout"],
                          "law": res.summary["law"], "text": res.summary["text"]}
        print("default", json.dumps(out["default"]), flush=True)
        if "check" in args.parts:
            res = cotune.scale(base, extrapolate=True, workers=args.workers)  # + the largest model on 2x, 4x rows
            cfg = study_config(base_config(base))
            top, w2 = fractions_for(cfg)[-1], width_for(cfg, 2.0)
            seeds = [cfg.runtime.seed + i for i in range(cfg.scale.seeds)]
            two_data = [e["actual"] for e in res.summary["extrapolation"] if e["n_samples"] == 2 * cfg.data.n_samples]
            two_params = [train_point(cfg, w2, top, s, tmp / f"m-2p-{s}") for s in seeds]
            out["check_mnist1d"] = {**check(res, {"2x data": two_data, "2x params": two_params}),
                                    "width_2x": w2, "extrapolation": res.summary["extrapolation"]}
            print("check_mnist1d", json.dumps(out["check_mnist1d"]), flush=True)

            base = tmp / "digits-run"
            cotune.train(overrides=["data.source=sklearn:digits", "model.width=64", "runtime.threads=1",
                                    "runtime.progress=false"], out=base)
            res = cotune.scale(base, overrides=["scale.max_fraction=0.5"], workers=args.workers)
            cfg = study_config(base_config(base), ["scale.max_fraction=0.5"])
            top, w2 = fractions_for(cfg)[-1], width_for(cfg, 2.0)
            seeds = [cfg.runtime.seed + i for i in range(cfg.scale.seeds)]
            extra = {"2x data": [train_point(cfg, cfg.model.width, 2 * top, s, tmp / f"d-2d-{s}") for s in seeds],
                     "2x params": [train_point(cfg, w2, top, s, tmp / f"d-2p-{s}") for s in seeds]}
            out["check_digits"] = {**check(res, extra), "width_2x": w2}
            print("check_digits", json.dumps(out["check_digits"]), flush=True)
    if "heldout" in args.parts:
        base = tmp / "mnist1d-64k-run"
        over = [*SEQ, "data.n_samples=80000", "data.split.val=0.05", "train.epochs=10", "train.batch_size=128"]
        cotune.train(overrides=[*over, "data.fraction=0.0625"], out=base)  # a quick run: only its config is used
        t0 = time.time()
        res = cotune.scale(base, overrides=["data.fraction=1.0", "scale.fraction_span=16", "scale.epoch_factor=1"],
                           workers=args.workers)
        out["heldout"] = {"wall_s": time.time() - t0, "runs": res.ran, "holdout": res.summary["holdout"],
                          "law": res.summary["law"], "samples": sorted({r["samples"] for r in res.rows}),
                          "params": sorted({r["params"] for r in res.rows}), "text": res.summary["text"]}
        print("heldout", json.dumps(out["heldout"]), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    for k, v in out.items():
        h = v.get("holdout", {})
        extra = f", held-out corner {100 * h['rel_error']:.1f}% off" if "rel_error" in h else ""
        extra += f", advice first: {v['ranked_first']}, really best: {v['really_best']}" if "ranked_first" in v else ""
        print(f"{k}: wall {v.get('wall_s', 0):.0f} s{extra}")


if __name__ == "__main__":
    main()
