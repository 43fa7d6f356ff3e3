"""Plotly figure specs (plain dicts: {'data': [...], 'layout': {...}}) for the report.

Builders take numbers already read from the files and only arrange them; none recomputes a metric.
Chart data is rounded to 5 significant digits (`compact`) to keep the page small.
"""
from __future__ import annotations

import math

from cotune.report.files import compact, knob_value

STAGE_COLORS = {"data": "#1b9e77", "model": "#d95f02", "train": "#7570b3"}
BLUE, GREY, RED, DARK = "#1f77b4", "#b0b0b0", "#d62728", "#333333"


def _layout(title: str, height: int = 380, **kw) -> dict:
    base = {"title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
            "height": height, "margin": {"l": 70, "r": 30, "t": 50, "b": 55},
            "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif", "size": 12},
            "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff", "hovermode": "closest",
            "legend": {"orientation": "h", "y": -0.2}}
    base.update(kw)
    return base


def _axis(title: str, **kw) -> dict:
    return {"title": {"text": title}, "gridcolor": "#e6e6e6", "zerolinecolor": "#cccccc", **kw}


def _int_ticks(last) -> dict:
    """A tick per integer on short axes (epochs, trial numbers), never 1.5."""
    return {"dtick": 1} if isinstance(last, (int, float)) and last <= 20 else {"tickformat": "d"}


def figure(data: list, layout: dict) -> dict:
    return {"data": compact(data), "layout": layout}


def confusion(cm: list[list], labels: list[str]) -> dict:
    k = len(labels)
    trace = {"type": "heatmap", "z": cm, "x": labels, "y": labels, "colorscale": "Blues", "reversescale": True,
             "hovertemplate": "true %{y}, predicted %{x}: %{z}<extra></extra>", "colorbar": {"title": {"text": "rows"}}}
    if k <= 20:
        trace["texttemplate"] = "%{z}"
    size = min(700, max(320, 60 + 28 * k))
    return figure([trace], _layout("Confusion matrix (test): rows are the true class", size,
                                   xaxis=_axis("predicted class", type="category", side="bottom"),
                                   yaxis=_axis("true class", type="category", autorange="reversed")))


def per_class(labels: list[str], precision: list, recall: list) -> dict:
    bars = [{"type": "bar", "name": name, "x": labels, "y": ys, "marker": {"color": c},
             "hovertemplate": f"class %{{x}}: {name} %{{y:.4f}}<extra></extra>"}
            for name, ys, c in (("precision", precision, BLUE), ("recall", recall, "#ff7f0e"))]
    return figure(bars, _layout("Per-class precision and recall (test)", 360, barmode="group",
                                xaxis=_axis("class", type="category"), yaxis=_axis("", range=[0, 1.05])))


def reliability(cal: dict, ece: float | None) -> dict:
    lo, hi = cal.get("bin_lower") or [], cal.get("bin_upper") or []
    conf, acc, count = cal.get("confidence") or [], cal.get("accuracy") or [], cal.get("count") or []
    pts = [(c, a, n) for c, a, n in zip(conf, acc, count) if c is not None and a is not None]
    data = [{"type": "bar", "name": "rows per bin", "x": [(a + b) / 2 for a, b in zip(lo, hi)], "y": count,
             "width": [b - a for a, b in zip(lo, hi)], "yaxis": "y2", "marker": {"color": "#dbe6f2"},
             "hovertemplate": "confidence %{x:.2f}: %{y} rows<extra></extra>"},
            {"type": "scatter", "mode": "lines", "name": "perfect calibration", "x": [0, 1], "y": [0, 1],
             "line": {"dash": "dash", "color": GREY}, "hoverinfo": "skip"},
            {"type": "scatter", "mode": "lines+markers", "name": "model", "x": [p[0] for p in pts],
             "y": [p[1] for p in pts], "text": [p[2] for p in pts], "line": {"color": BLUE},
             "hovertemplate": "confidence %{x:.3f}, accuracy %{y:.3f} (%{text} rows)<extra></extra>"}]
    title = "Reliability diagram (test)" + ("" if ece is None else f": ECE {ece:.4f}")
    return figure(data, _layout(title, 380, xaxis=_axis("mean predicted confidence", range=[0, 1]),
                                yaxis=_axis("observed accuracy", range=[0, 1.02]),
                                yaxis2={"title": {"text": "rows"}, "overlaying": "y", "side": "right",
                                        "showgrid": False, "rangemode": "tozero"}))


def residuals(quantiles: dict) -> dict:
    keys = [k for k in ("p5", "p25", "p50", "p75", "p95") if k in quantiles]
    data = [{"type": "bar", "x": keys, "y": [quantiles[k] for k in keys], "marker": {"color": BLUE},
             "hovertemplate": "%{x}: %{y:.4f}<extra></extra>"}]
    return figure(data, _layout("Residual quantiles (test, true - predicted)", 320,
                                xaxis=_axis("quantile", type="category"), yaxis=_axis("residual")))


def class_counts(before: list, after: list) -> dict:
    labels = [str(i) for i in range(max(len(before), len(after)))]
    data = [{"type": "bar", "name": n, "x": labels, "y": ys, "marker": {"color": c}}
            for n, ys, c in (("before balancing", before, GREY), ("after balancing", after, BLUE))]
    return figure(data, _layout("Training rows per class", 320, barmode="group",
                                xaxis=_axis("class code", type="category"), yaxis=_axis("rows")))


def importances(rows: list[dict]) -> dict:
    """Horizontal bars, largest on top, one trace per stage so data / model / train knobs differ in colour."""
    rows = sorted(rows, key=lambda r: r["importance"])
    order = [r["knob"] for r in rows]
    data = []
    for stage, color in STAGE_COLORS.items():
        mine = [r for r in rows if r["stage"] == stage]
        if mine:
            data.append({"type": "bar", "orientation": "h", "name": f"{stage} knob", "marker": {"color": color},
                         "x": [r["importance"] for r in mine], "y": [r["knob"] for r in mine],
                         "hovertemplate": "%{y}: %{x:.4f}<extra></extra>"})
    other = [r for r in rows if r["stage"] not in STAGE_COLORS]
    if other:
        data.append({"type": "bar", "orientation": "h", "name": "other", "marker": {"color": GREY},
                     "x": [r["importance"] for r in other], "y": [r["knob"] for r in other]})
    height = min(900, 120 + 22 * len(rows))
    return figure(data, _layout("Parameter importances (fANOVA)", height, barmode="overlay",
                                margin={"l": 190, "r": 30, "t": 50, "b": 60},
                                xaxis=_axis("importance"),
                                yaxis={"type": "category", "categoryorder": "array", "categoryarray": order}))


def history(trials: list[dict], maximize: bool, metric: str) -> dict:
    """Value per trial (complete in blue, pruned in grey at their last reported value) and the best so far."""
    done = sorted((t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None), key=lambda t: t["number"])
    pruned = [t for t in trials if t["state"] == "PRUNED" and t["value"] is not None]
    best, xs, ys = None, [], []
    for t in done:
        if best is None or (t["value"] > best if maximize else t["value"] < best):
            best = t["value"]
        xs.append(t["number"])
        ys.append(best)
    data = [{"type": "scatter", "mode": "markers", "name": "pruned (last reported value)",
             "x": [t["number"] for t in pruned], "y": [t["value"] for t in pruned],
             "marker": {"color": GREY, "size": 6, "symbol": "circle-open"},
             "hovertemplate": "trial #%{x} pruned: %{y:.4f}<extra></extra>"},
            {"type": "scatter", "mode": "markers", "name": "complete", "x": [t["number"] for t in done],
             "y": [t["value"] for t in done], "marker": {"color": BLUE, "size": 7},
             "hovertemplate": "trial #%{x}: %{y:.4f}<extra></extra>"},
            {"type": "scatter", "mode": "lines", "name": "best so far", "x": xs, "y": ys,
             "line": {"shape": "hv", "color": RED, "width": 2}, "hoverinfo": "skip"}]
    last = max((t["number"] for t in trials if isinstance(t.get("number"), int)), default=0)
    return figure(data, _layout("Optimization history", 380, xaxis=_axis("trial number", **_int_ticks(last)),
                                yaxis=_axis(metric)))


def pareto(trials: list[dict], metric: str, second: str) -> dict:
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None and t.get("second_objective") is not None]
    data = [{"type": "scatter", "mode": "markers", "x": [t["second_objective"] for t in done],
             "y": [t["value"] for t in done], "text": [f"#{t['number']}" for t in done], "marker": {"color": BLUE},
             "hovertemplate": "trial %{text}: %{y:.4f} at %{x:.4g}<extra></extra>"}]
    return figure(data, _layout("Trade-off between the two objectives", 360, xaxis=_axis(second), yaxis=_axis(metric)))


def _log_ticks(lo: float, hi: float) -> tuple[list, list]:
    vals = [lo, hi] + [float(10 ** e) for e in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
    vals = sorted(set(vals))
    return [math.log10(v) for v in vals], [knob_value(v) for v in vals]


def parallel(top: list[dict], knobs: list[str], logs: set[str], maximize: bool, metric: str) -> dict | None:
    """Parallel coordinates of the top trials over `knobs` (+ the objective). Categorical knobs get one tick
    per choice; log-searched knobs are drawn on a log10 axis; a knob not set in every top trial
    (a conditional one) is left out for numbers, or shown as '(n/a)' for choices."""
    dims = []
    for k in knobs:
        vals = [t.get(k) for t in top]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals if v is not None)
        if numeric and any(v is None for v in vals):
            continue
        if numeric:
            if len(set(vals)) < 2:
                continue
            if k in logs and min(vals) > 0:
                tv, tt = _log_ticks(min(vals), max(vals))
                dims.append({"label": f"{k} (log)", "values": [math.log10(v) for v in vals], "tickvals": tv, "ticktext": tt})
            else:
                dims.append({"label": k, "values": vals})
        else:
            shown = [knob_value(v) if v is not None else "(n/a)" for v in vals]
            cats = sorted(set(shown))
            if len(cats) < 2:
                continue
            dims.append({"label": k, "values": [cats.index(s) for s in shown], "tickvals": list(range(len(cats))),
                         "ticktext": cats, "range": [-0.3, len(cats) - 0.7]})
    if not dims:
        return None
    values = [t["value"] for t in top]
    dims.append({"label": metric, "values": values})
    line = {"color": values, "colorscale": "Viridis", "reversescale": not maximize, "showscale": True,
            "colorbar": {"title": {"text": metric}}}
    return figure([{"type": "parcoords", "line": line, "dimensions": dims, "labelangle": -20, "labelside": "top",
                    "labelfont": {"size": 11}}],
                  _layout(f"Parallel coordinates of the top {len(top)} trials (colour: {metric})", 460,
                          margin={"l": 70, "r": 70, "t": 130, "b": 40}))


def curves(epochs: list, series: dict[str, list], metric: tuple[str, list] | None, best_epoch, title: str) -> dict:
    """Learning curves: losses on the left axis, the validation metric (dashed) on the right, the best epoch marked."""
    colors = {"train_loss": BLUE, "val_loss": "#ff7f0e"}
    data = [{"type": "scatter", "mode": "lines+markers", "name": name, "x": epochs, "y": ys, "connectgaps": True,
             "line": {"color": colors.get(name, DARK)}} for name, ys in series.items()]  # gaps: train.val_every
    kw = {}
    if metric is not None:
        data.append({"type": "scatter", "mode": "lines+markers", "name": metric[0], "x": epochs, "y": metric[1],
                     "yaxis": "y2", "connectgaps": True, "line": {"color": "#2ca02c", "dash": "dash"}})
        kw["yaxis2"] = {"title": {"text": metric[0]}, "overlaying": "y", "side": "right", "showgrid": False}
    if best_epoch is not None:
        kw["shapes"] = [{"type": "line", "xref": "x", "yref": "paper", "x0": best_epoch, "x1": best_epoch,
                         "y0": 0, "y1": 1, "line": {"color": GREY, "dash": "dot"}}]
        kw["annotations"] = [{"x": best_epoch, "y": 1, "xref": "x", "yref": "paper", "text": "best epoch",
                              "showarrow": False, "yanchor": "bottom", "font": {"size": 10}}]
    last = max((e for e in epochs if isinstance(e, (int, float))), default=0)
    return figure(data, _layout(title, 360, xaxis=_axis("epoch", **_int_ticks(last)), yaxis=_axis("loss"), **kw))


def lr_curve(epochs: list, lr: list) -> dict:
    data = [{"type": "scatter", "mode": "lines+markers", "name": "lr", "x": epochs, "y": lr, "line": {"color": DARK}}]
    last = max((e for e in epochs if isinstance(e, (int, float))), default=0)
    return figure(data, _layout("Learning rate (end of each epoch)", 260, xaxis=_axis("epoch", **_int_ticks(last)),
                                yaxis=_axis("lr", exponentformat="e"), showlegend=False))
