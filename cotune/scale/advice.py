"""From scale.csv to scale.json: the fitted laws, the held-out check, and what to do next.

- Per-axis laws: loss against parameters at the largest training set, and against training rows at the
  largest model. The joint law (law.py) in its interaction form, E + ((A / N^alpha)^(1/q) + (B /
  D^beta)^(1/q))^q, which with q = 1 is the additive E + A / N^alpha + B / D^beta (scale.law; auto takes
  the form that better predicts the largest corner of the grid without its largest size, and of the
  grid without its largest share, each fitted without that corner, and only from runs other than the
  study's own corner, so the held-out check stays a fair test). Every form falls with N at every D, so
  the runs at points past the overfitting turn (a smaller model did better on the same rows) are left
  out of the fits.
- Held-out check: the largest (N, D) corner (the configuration as it is) is left out of a second fit
  and predicted; its relative error says how far to trust the advice.
- Advice at the current point: the predicted gain from 2x rows, 2x parameters (the joint law) and 2x
  epochs (measured, when the study trained the current point again at twice the epochs: scale.epochs_check;
  else a law over the epochs of its own learning curves, only when the learning-rate schedule does not
  depend on the run's length; none when validation loss had already stopped improving), in loss and in
  the metric; which limit dominates (data or capacity); the cost of each in training FLOPs; the
  compute-optimal N and D for scale.compute.
No torch here: the report reads scale.json, and this module only needs numpy and the law fit.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from cotune.config import RunConfig
from cotune.errors import ConfigError, one_line
from cotune.evaluate import metric as metric_named
from cotune.scale.grid import stretches_with_length
from cotune.scale.law import FORMS, check_points, compute_optimal, fit_axis, fit_joint


def _mean_by(rows: list[dict], *keys) -> dict:
    """{(key values): mean val_loss} over seeds."""
    acc: dict = {}
    for r in rows:
        acc.setdefault(tuple(r[k] for k in keys), []).append(r["val_loss"])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _arrays(rows):
    """N (params), D (mean samples of the share), L (val loss) of each run."""
    return (np.array([r["params"] for r in rows], float), np.array([r["samples"] for r in rows], float),
            np.array([r["val_loss"] for r in rows], float))


def _metric_of_loss(rows):
    """metric ~ a + b log(loss) across the runs: turns a predicted loss into a predicted metric."""
    L = np.log([r["val_loss"] for r in rows])
    m = np.array([r["val_metric"] for r in rows], float)
    if len(set(L)) < 2:
        return None
    b, a = np.polyfit(L, m, 1)
    return lambda loss: float(a + b * np.log(loss))


def _measured_epochs(corner: list[dict], longer: list[dict]) -> dict | None:
    """2x epochs as measured: the current point's runs against the same seeds trained with twice the epochs."""
    seeds = {r["seed"] for r in longer}
    here = [r for r in corner if r["seed"] in seeds]
    if not here:
        return None
    a, b = float(np.mean([r["val_loss"] for r in here])), float(np.mean([r["val_loss"] for r in longer]))
    ran = lambda rs: "/".join(str(r["epochs"]) for r in sorted(rs, key=lambda r: r["seed"]))  # noqa: E731
    return {"ratio": b / a, "measured": True,
            "note": f"measured: the current point trained again with twice the epochs on {len(longer)} seed(s), "
                    f"validation loss {a:.4g} -> {b:.4g} (its runs trained {ran(here)} epochs, the longer ones {ran(longer)})"}


def _epochs_gain(corner: list[dict], train, longer: list[dict] = ()) -> dict:
    """What 2x epochs would do at the current point: measured when the study trained it so (scale.epochs_check),
    else read off the learning curves of its runs."""
    if longer and (got := _measured_epochs(corner, list(longer))) is not None:
        return got
    stopped, curves, at = [], [], []
    for r in corner:
        path = Path(r["run_dir"]) / "history.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            hist = [row for row in csv.DictReader(f) if row.get("val_loss")]
        losses = [float(h["val_loss"]) for h in hist]
        curves.append(np.minimum.accumulate(losses))  # best so far: what early stopping keeps
        at.append([int(h["epoch"]) for h in hist])  # the validated epochs: every one, or every train.val_every
        best = at[-1][int(np.argmin(losses))]
        done = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["train"].get("stopped_early", False)
        stopped.append(bool(done) or best < 0.8 * at[-1][-1])  # the loss had turned up well before the end
    if not curves:
        return {"ratio": None, "note": "no learning curves in the runs' directories"}
    n = min(len(c) for c in curves)
    curve, t = np.mean([c[:n] for c in curves], axis=0), np.array(at[0][:n], float)
    if all(stopped):
        return {"ratio": 1.0, "note": f"validation loss stopped improving before the last of {t[-1]:.0f} epochs: "
                                      "more epochs do not help at this size"}
    if stretches_with_length(train):
        what = f"warmup {train.warmup:g} of the run" if train.schedule in ("constant", "step") else train.schedule
        return {"ratio": None, "note": f"not predicted: the learning-rate schedule follows the run's length ({what}), "
                                       "so a run twice as long is not these runs continued (an annealing rate makes "
                                       "their loss fall at the end, and a longer run anneals later); to measure it, "
                                       "rerun with scale.epochs_check=on"}
    keep = t >= max(2, t[-1] // 4)
    try:
        law = fit_axis(t[keep], curve[keep], n_boot=0)
    except ConfigError as err:
        return {"ratio": None, "note": one_line(err)}
    ratio = float(law(2 * t[-1]) / law(t[-1]))
    return {"ratio": min(ratio, 1.0), "note": f"from the learning curve over {t[-1]:.0f} epochs", "law": law.to_dict()}


def choose_form(N, D, L, setting: str, seed: int) -> dict:
    """{"form", "errors", "note"}: the joint law's form for these runs (scale.law; auto decides by the
    log error of each form's prediction of two inner corners, each left out of its fit)."""
    if setting != "auto":
        what = " (q is fitted; q = 1 is the additive law)" if setting == "interaction" else ""
        return {"form": setting, "errors": {}, "note": f"{setting}{what}, as scale.law sets"}
    ns, ds = np.unique(N), np.unique(D)
    errors: dict = {f: [] for f in FORMS}
    for n_top, d_top in ((ns[-2], ds[-1]), (ns[-1], ds[-2])) if len(ns) > 1 and len(ds) > 1 else ():
        at = (N == n_top) & (D == d_top)
        inner = (N <= n_top) & (D <= d_top) & ~at
        if not at.any():
            continue
        for form in FORMS:
            try:
                law = fit_joint(N[inner], D[inner], L[inner], n_boot=0, seed=seed, form=form)
            except ConfigError:
                break
            errors[form].append(abs(float(np.log(law.predict(n_top, d_top) / L[at].mean()))))
    if not errors["additive"] or len(errors["interaction"]) != len(errors["additive"]):
        return {"form": "additive", "errors": {}, "note": "too few sizes and shares to compare the forms: additive"}
    mean = {f: float(np.mean(e)) for f, e in errors.items()}
    form, other = ("interaction", "additive") if mean["interaction"] < mean["additive"] else ("additive", "interaction")
    return {"form": form, "errors": mean, "note": f"{form}: inner corners predicted {100 * mean[form]:.1f}% off on "
                                                   f"average, against {100 * mean[other]:.1f}% for the {other} form"}


def past_the_turn(rows: list[dict]) -> set[tuple]:
    """The (params, samples) points whose mean loss is above a smaller model's on the same rows: past the
    overfitting turn, where early stopping cannot keep a bigger model from doing worse on few rows."""
    means = _mean_by(rows, "params", "samples")
    return {(n, d) for (n, d), loss in means.items() if any(m < loss for (n2, d2), m in means.items() if d2 == d and n2 < n)}


def law_rows(rows: list[dict]) -> tuple[list[dict], set[tuple]]:
    """(the runs the joint law is fitted to, the points left out): every law here falls with N at every D,
    so runs past the turn would only flatten its model term; all runs when too few would be left to fit."""
    turned = past_the_turn(rows)
    kept = [r for r in rows if (r["params"], r["samples"]) not in turned]
    try:
        check_points(*_arrays(kept))
    except ConfigError:
        return rows, set()
    return kept, turned


def summarize(rows: list[dict], cfg: RunConfig, widths: list[tuple]) -> dict:
    """Fits, the held-out check and the advice, as scale.json holds them."""
    fitted = [r for r in rows if not (r["extrapolated"] or r["longer"])]
    N, D, L = _arrays(fitted)
    check_points(N, D, L)
    n_max, d_max = N.max(), D.max()
    corner = [r for r in fitted if r["params"] == n_max and r["samples"] == d_max]
    rest = [r for r in fitted if not (r["params"] == n_max and r["samples"] == d_max)]
    (on_law, turned), (rest_law, _) = law_rows(fitted), law_rows(rest)
    choice = choose_form(*_arrays(rest_law), cfg.scale.law, cfg.runtime.seed)
    law = fit_joint(*_arrays(on_law), seed=cfg.runtime.seed, form=choice["form"])
    out: dict = {"metric": fitted[0]["metric"], "law": law.to_dict(), "points": len(on_law), "form": choice,
                 "past_the_turn": [{"params": n, "samples": d} for n, d in sorted(turned)]}

    by_n, by_d = _mean_by([r for r in fitted if r["samples"] == d_max], "params"), \
        _mean_by([r for r in fitted if r["params"] == n_max], "samples")
    out["axes"] = {}
    for axis, pts in (("params", by_n), ("samples", by_d)):
        try:
            out["axes"][axis] = fit_axis([k[0] for k in pts], list(pts.values()), seed=cfg.runtime.seed).to_dict()
        except ConfigError as err:
            out["axes"][axis] = {"error": one_line(err)}

    actual = float(np.mean([r["val_loss"] for r in corner]))
    # The corner's runs are scored on the same validation rows, so their errors from those rows are
    # shared: the mean's standard error is the runs' mean, not that over sqrt(seeds).
    ses = [r["val_loss_se"] for r in corner]
    measured = {"actual_se": float(np.mean(ses))} if np.all(np.isfinite(ses)) else {}
    try:
        held = fit_joint(*_arrays(rest_law), seed=cfg.runtime.seed, form=choice["form"])
        pred = float(held.predict(n_max, d_max))
        out["holdout"] = {"params": n_max, "samples": d_max, "actual": actual, "predicted": pred,
                          "rel_error": abs(pred - actual) / actual, "law": held.to_dict(), **measured}
        band = held.interval(n_max, d_max)  # the fit's own uncertainty there: is the miss more than that?
        if band is not None:
            out["holdout"].update(interval=list(band), inside=band[0] <= actual <= band[1])
    except ConfigError as err:
        out["holdout"] = {"params": n_max, "samples": d_max, "actual": actual, "error": one_line(err), **measured}

    # ---- advice at the current point
    to_metric = _metric_of_loss(fitted)
    here = float(law.predict(n_max, d_max))
    flops_here = float(np.mean([r["flops"] for r in corner]))
    epochs = _epochs_gain(corner, cfg.train, [r for r in rows if r["longer"]])
    options = {"2x data": float(law.predict(n_max, 2 * d_max)), "2x params": float(law.predict(2 * n_max, d_max))}
    if epochs["ratio"] is not None:
        options["2x epochs"] = here * epochs["ratio"]
    higher_better = metric_named(out["metric"]).maximize
    advice = []
    for name, loss in options.items():
        gain = None if to_metric is None else (to_metric(loss) - to_metric(here)) * (1 if higher_better else -1)
        advice.append({"option": name, "loss": loss, "loss_gain": here - loss, "metric_gain": gain,
                       "extra_flops": flops_here,  # each option doubles the training compute of the current point
                       "flops_per_point": None if not gain or gain <= 0 else flops_here / (100 * gain if higher_better else gain)})
    advice.sort(key=lambda a: -a["loss_gain"])
    model_term, data_term = (float(t) for t in law.terms(n_max, d_max))
    out["current"] = {"params": n_max, "samples": d_max, "loss_measured": actual, "loss_fit": here,
                      "width": int(widths[-1][0]), "flops": flops_here, "E": law.E, "model_term": model_term,
                      "data_term": data_term,  # more rows help more than more parameters: data-limited
                      "limited_by": "data" if options["2x data"] < options["2x params"] else "capacity"}
    out["advice"], out["epochs"] = advice, {k: v for k, v in epochs.items() if k != "law"}

    k = float(np.median([r["flops"] / (r["params"] * r["samples"]) for r in fitted]))
    compute = cfg.scale.compute or 10 * flops_here
    try:
        opt = compute_optimal(law, compute, k)
        w = np.log([w for w, _, _ in widths]), np.log([p for _, p, _ in widths])
        slope, icpt = np.polyfit(w[1], w[0], 1)  # log width ~ log params, to name a width for N_opt
        opt.update(compute=compute, flops_per_param_sample=k, width=float(np.exp(icpt + slope * np.log(opt["N"]))),
                   data_ratio=opt["D"] / d_max)
    except ConfigError as err:
        opt = {"compute": compute, "error": one_line(err)}
    out["compute_optimal"] = opt

    extra = [r for r in rows if r["extrapolated"]]
    out["extrapolation"] = [{"params": r["params"], "samples": r["samples"], "n_samples": r["n_samples"], "seed": r["seed"],
                             "actual": r["val_loss"], "predicted": float(law.predict(r["params"], r["samples"])),
                             "rel_error": abs(float(law.predict(r["params"], r["samples"])) - r["val_loss"]) / r["val_loss"]}
                            for r in extra]
    out["text"] = advice_text(out)
    return out


def advice_text(s: dict) -> list[str]:
    """The advice in plain sentences, best option first."""
    cur, lines = s["current"], []
    metric = s["metric"]
    for a in s["advice"]:
        g = "" if a["metric_gain"] is None else (f", about {100 * a['metric_gain']:+.2f} points of {metric}" if metric != "rmse"
                                                 else f", {metric} {-a['metric_gain']:+.4g}")
        lines.append(f"{a['option']}: validation loss {cur['loss_fit']:.4g} -> {a['loss']:.4g}{g}.")
    best = s["advice"][0]
    other = "2x params" if cur["limited_by"] == "data" else "2x data"
    lines.insert(0, f"Most promising: {best['option']}. The model is {cur['limited_by']}-limited: "
                    f"{'2x data' if other == '2x params' else '2x params'} gains more than {other} (the fit's terms here: "
                    f"data {cur['data_term']:.3g}, model {cur['model_term']:.3g}, floor {cur['E']:.3g}).")
    h = s.get("holdout", {})
    if "rel_error" in h:
        line = (f"Trust: fitted without it, the largest run's loss was predicted at {h['predicted']:.4g} against "
                f"{h['actual']:.4g} measured ({100 * h['rel_error']:.1f}% off)")
        if "interval" in h:
            lo, hi = h["interval"]
            line += (f"; the fit's 90% interval there, [{lo:.4g}, {hi:.4g}], holds it" if h["inside"] else
                     f", outside the fit's 90% interval [{lo:.4g}, {hi:.4g}]: the law does not carry to the corner, "
                     "so read the advice as a ranking, not as amounts")
        lines.append(line + ".")
    if h.get("actual_se") is not None and "rel_error" in h:
        rel = h["actual_se"] / h["actual"]
        line = (f"Measured: the largest run's loss is uncertain by +/-{100 * rel:.1f}% (its standard error over the "
                "validation rows, which every run shares)")
        if rel > 0.05:  # then a miss of 10% cannot be told from a lucky or unlucky draw of rows
            line += ("; a few rows carry much of a loss this small, so a check this coarse needs more validation rows "
                     "(data.split.val)")
        lines.append(line + ".")
    if s.get("form", {}).get("note"):
        lines.append(f"Law: {s['form']['note']}.")
    if s.get("past_the_turn"):
        pts = ", ".join(f"{p['params']:,.0f} params on {p['samples']:,.0f} rows" for p in s["past_the_turn"])
        lines.append(f"Left out of the fits: {pts}, where a smaller model did better on the same rows (past the "
                     "overfitting turn, which a law falling with model size cannot follow).")
    if s["epochs"].get("note"):
        lines.append(f"Epochs: {s['epochs']['note']}.")
    opt = s["compute_optimal"]
    if "N" in opt:
        lines.append(f"For {opt['compute']:.3g} training FLOPs the fit's best split is {opt['N']:,.0f} parameters "
                     f"(width about {opt['width']:.0f}) on {opt['D']:,.0f} rows ({opt['data_ratio']:.2g}x the rows used "
                     f"now), predicted loss {opt['loss']:.4g}.")
    return lines
