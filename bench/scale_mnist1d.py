"""`cotune scale` checked against reality: wall time of the default grid, the held-out corner, and the advice.

    .venv/bin/python bench/scale_mnist1d.py --parts default check digits table heldout

default  MNIST-1D, default split (4,000 train / 1,000 test; 15% of train for validation), the configuration
         a search starts from on sequences (cnn1d depth 4, batch norm, kernel 7, batch 64, augmentation
         auto, 30 epochs), trained once; then `cotune scale` with the default grid (4 sizes spanning 16x
         parameters x 4 shares spanning 8x x 2 seeds, plus the current point at twice the epochs on
         each seed, as the cosine schedule makes it; 2 workers): wall time (target < 20 min).
check    The advice against reality at the study's largest point, MNIST-1D: the same study with
         --extrapolate (the largest model on 2x and 4x generated rows), plus the largest share trained at 2x
         the parameters, both seeds, same recipe as the grid's runs. Passes when the option the advice
         ranked first really lowered validation loss more.
digits   The same on sklearn digits: an MLP study with scale.max_fraction=0.5 (half the training part held
         back), then the largest point retrained as it is, on 2x the rows (all of them) and at 2x the
         parameters, each over --check-seeds seeds (the validation part has only 270 rows).
table    The same on a generated table (sklearn make_classification: 24,000 rows, 20 features, 4 classes
         of 3 clusters; 70/15/15 split): 1,050 to 8,400 training rows in the study, 16,800 for 2x data.
heldout  MNIST-1D generated at 80,000 samples (64,000 train; with 5% for validation, 60,800 training rows),
         4 sizes x 4 shares spanning 16x (3,800 to 60,800 rows) x 2 seeds; the same model without augmentation
         (so small shares overfit and stop early instead of training to the cap), batch 128, 10 epochs and
         patience 5 as the base (x3 cap by the default scale.epoch_factor, x16 on the smallest share): the
         largest corner held out of the fit and predicted (target: within 10%).
heldout_wide   The same grid on models of 6x the parameters (width 96 as the largest: 5.6k to 87k parameters),
         to see whether the law carries better away from the smallest, saturating models.
heldout_check  The advice at that corner against reality: the largest model on 2x the generated rows
         (160,000 samples, 121,600 training rows), 2x the parameters and 2x the epochs (the cap doubled;
         the study's own such runs when it trained them, scale.epochs_check) at 60,800 rows, every seed; and 2x rows at half the epochs (the grid's steps: every share trains
         up to the same number of steps, so that is what the law's rows axis means). The
         2x-rows models are scored on the study's own validation rows (their generation shares no row with
         the study's), so every option is measured on the rows the corner was.
heldout_wide_check  The same at the corner of heldout_wide.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cotune
from cotune.config import from_dict
from cotune.pipeline import model_inputs, run
from cotune.scale.grid import fractions_for, model_cost, schedule
from cotune.scale.study import base_config, study_config
from scale_valrows import row_loss, validation_rows

SEQ = ["data.source=mnist1d", "model.family=cnn1d", "model.depth=4", "model.norm=batch", "model.kernel_size=7",
       "train.batch_size=64", "data.augment.policy=auto", "runtime.threads=1", "runtime.progress=false"]


def width_for(cfg, factor: float) -> int:
    """The width whose parameter count is nearest `factor` x the configuration's."""
    shapes = model_inputs(cfg)[:2]
    target = factor * model_cost(cfg, cfg.model.width, shapes)[0]
    w = cfg.model.width
    while model_cost(cfg, w, shapes)[0] < target:
        w += 1
    return min((w - 1, w), key=lambda v: abs(math.log(model_cost(cfg, v, shapes)[0] / target)))


def train_point(cfg, width: int, fraction: float, seed: int, out: Path, n_samples: int | None = None) -> float:
    """One run trained exactly as the grid trains its points; returns validation loss."""
    epochs, patience, every = schedule(cfg, fraction)
    over = {"model.width": width, "data.fraction": fraction, "runtime.seed": seed, "out": str(out),
            "train.epochs": epochs, "train.patience": patience, "train.val_every": every}
    if n_samples:
        over["data.n_samples"] = n_samples
    return run(cfg.replace(**over)).metrics["val"]["log_loss"]


def train_point_job(cfg: dict, *args) -> float:
    """train_point in a process pool (configs travel as dicts)."""
    return train_point(from_dict(cfg), *args)


def check(res, extra: dict, here: list | None = None) -> dict:
    """Actual gains of the study's top-ranked option and the runner-up, measured at its largest point
    (against `here`, the point retrained on the options' seeds, when given; else the study's own runs)."""
    s = res.summary
    cur = statistics.mean(here) if here else s["current"]["loss_measured"]
    actual = {k: cur - statistics.mean(v) for k, v in extra.items()}
    ranked = [a["option"] for a in s["advice"] if a["option"] in actual]
    return {"predicted": {a["option"]: a["loss_gain"] for a in s["advice"]}, "actual_gain": actual,
            "loss_at_point": cur, "ranked_first": ranked[0], "really_best": max(actual, key=actual.get),
            "pass": ranked[0] == max(actual, key=actual.get), "text": s["text"]}


def synthetic_table(tmp: Path) -> Path:
    """24,000 rows x 20 features, 4 classes of 3 clusters each (sklearn make_classification), as a CSV."""
    import pandas as pd
    from sklearn.datasets import make_classification
    path = tmp / "table.csv"
    if not path.is_file():
        X, y = make_classification(n_samples=24000, n_features=20, n_informative=10, n_redundant=4, n_classes=4,
                                   n_clusters_per_class=3, random_state=0)
        tmp.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(X, columns=[f"x{i}" for i in range(20)]).assign(y=y).to_csv(path, index=False)
    return path


def check_table(base: Path, source: list, args) -> dict:
    """An MLP study with scale.max_fraction=0.5 (half the training part held back), then its largest point
    retrained as it is, on 2x the rows (all of them) and at 2x the parameters, over --check-seeds seeds."""
    if not (base / "metrics.json").is_file():
        cotune.train(overrides=[*source, "model.width=64", "runtime.threads=1", "runtime.progress=false"], out=base)
    res = cotune.scale(base, overrides=["scale.max_fraction=0.5"], workers=args.workers)
    cfg = study_config(base_config(base), ["scale.max_fraction=0.5"])
    top, w2 = fractions_for(cfg)[-1], width_for(cfg, 2.0)
    seeds = [cfg.runtime.seed + i for i in range(args.check_seeds)]  # more seeds than the grid: val parts are small
    here = [train_point(cfg, cfg.model.width, top, s, base.parent / f"{base.name}-1x-{s}") for s in seeds]
    extra = {"2x data": [train_point(cfg, cfg.model.width, 2 * top, s, base.parent / f"{base.name}-2d-{s}") for s in seeds],
             "2x params": [train_point(cfg, w2, top, s, base.parent / f"{base.name}-2p-{s}") for s in seeds]}
    res_out = {**check(res, extra, here), "width_2x": w2, "seeds": seeds, "holdout": res.summary["holdout"]}
    print(base.name, json.dumps(res_out), flush=True)
    return res_out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["default", "check", "digits", "table", "heldout"])
    ap.add_argument("--check-seeds", type=int, default=5, help="seeds of each option's runs in the digits check")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=".bench-out/scale_mnist1d.json")
    ap.add_argument("--set", nargs="*", default=[], help="extra knobs for the heldout studies and checks, e.g. scale.seeds=3")
    ap.add_argument("--dir", help="where the runs go (kept; rerunning with the same --dir resumes the studies)")
    args = ap.parse_args()
    out: dict = {}
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="scale-bench-"))
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
    if "digits" in args.parts:
        out["check_digits"] = check_table(tmp / "digits-run", ["data.source=sklearn:digits"], args)
    if "table" in args.parts:
        out["check_table"] = check_table(tmp / "table-run", [f"data.source={synthetic_table(tmp)}", "data.target=y"], args)
    for part, width in (("heldout", None), ("heldout_wide", 96)):
        if part not in args.parts:
            continue
        base = tmp / ("mnist1d-64k-run" if width is None else f"mnist1d-64k-w{width}-run")
        over = [*SEQ, "data.n_samples=80000", "data.split.val=0.05", "train.epochs=10", "train.batch_size=128",
                "train.patience=5", "data.augment.policy=none"] + ([] if width is None else [f"model.width={width}"])
        if not (base / "metrics.json").is_file():
            cotune.train(overrides=[*over, "data.fraction=0.0625"], out=base)  # a quick run: only its config is used
        t0 = time.time()
        res = cotune.scale(base, overrides=["data.fraction=1.0", "scale.fraction_span=16", *args.set], workers=args.workers)
        out[part] = {"wall_s": time.time() - t0, "runs": res.ran, "holdout": res.summary["holdout"],
                     "law": res.summary["law"], "form": res.summary["form"], "samples": sorted({r["samples"] for r in res.rows}),
                     "params": sorted({r["params"] for r in res.rows}), "text": res.summary["text"]}
        print(part, json.dumps(out[part]), flush=True)
    for part, width in (("heldout_check", None), ("heldout_wide_check", 96)):
        if part not in args.parts:  # the advice at the 64k corner against 2x rows and 2x parameters, trained
            continue
        base = tmp / ("mnist1d-64k-run" if width is None else f"mnist1d-64k-w{width}-run")
        over = ["data.fraction=1.0", "scale.fraction_span=16", *args.set]
        res = cotune.scale(base, overrides=over, workers=args.workers)
        cfg = study_config(base_config(base), over)
        top, w2, n = fractions_for(cfg)[-1], width_for(cfg, 2.0), cfg.data.n_samples
        seeds = [cfg.runtime.seed + i for i in range(cfg.scale.seeds)]
        tag = "m64k" if width is None else f"m64k-w{width}"
        longer = cfg.replace(**{"train.epochs": 2 * cfg.train.epochs}).to_dict()
        shorter = cfg.replace(**{"train.epochs": cfg.train.epochs // 2}).to_dict()  # 2x rows at the grid's steps
        # 2x epochs: the study's own runs at twice the epochs when it trained them (scale.epochs_check)
        measured = [r["val_loss"] for r in sorted(res.rows, key=lambda r: r["seed"]) if r["longer"]]
        jobs = [(cfg.to_dict(), cfg.model.width, top, s, tmp / f"{tag}-2d-{s}", 2 * n) for s in seeds] + \
               [(shorter, cfg.model.width, top, s, tmp / f"{tag}-2ds-{s}", 2 * n) for s in seeds] + \
               [(cfg.to_dict(), w2, top, s, tmp / f"{tag}-2p-{s}", None) for s in seeds] + \
               ([] if measured else [(longer, cfg.model.width, top, s, tmp / f"{tag}-2e-{s}", None) for s in seeds])
        with ProcessPoolExecutor(args.workers) as pool:
            losses = list(pool.map(train_point_job, *zip(*jobs)))
        k = len(seeds)
        # 2x rows are generated afresh, with validation rows of their own: score them on the study's rows,
        # as every grid run is (a loss this small rests on a few rows; other rows are another measurement)
        X, y = validation_rows(res.rows[0]["run_dir"])
        own = losses[:k]
        losses[:2 * k] = [float(row_loss(job[4], X, y).mean()) for job in jobs[:2 * k]]
        key = "check_mnist1d_64k" + ("" if width is None else f"_w{width}")
        out[key] = {**check(res, {"2x data": losses[:k], "2x params": losses[2 * k:3 * k], "2x epochs": measured or losses[3 * k:]}),
                    "width_2x": w2, "2x data on its own validation rows": own,
                    "2x data at the grid's steps (half the epochs)": losses[k:2 * k]}
        print(key, json.dumps(out[key]), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    for k, v in out.items():
        h = v.get("holdout", {})
        extra = f", held-out corner {100 * h['rel_error']:.1f}% off" if "rel_error" in h else ""
        extra += f", advice first: {v['ranked_first']}, really best: {v['really_best']}" if "ranked_first" in v else ""
        print(f"{k}: wall {v.get('wall_s', 0):.0f} s{extra}")


if __name__ == "__main__":
    main()
