"""The compression table: one row per variant, the tolerance rule and the choice of the variant to ship."""
from __future__ import annotations

import math

import numpy as np

MIN_GAIN = 0.10  # a variant replaces the fp32 export only when >= 10% smaller / faster
# bounded metrics: the tolerance is in points (x 100); the others (losses): in percent of the model's value
POINT_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1", "roc_auc", "r2")


def within(metric, ref: float | None, value: float | None, tolerance: float) -> bool:
    """Whether `value` loses at most `tolerance` against `ref`: points (x 100) of a bounded metric, else percent."""
    if value is None or ref is None or not math.isfinite(value):
        return False
    if not math.isfinite(ref):
        return True
    lost = (ref - value) if metric.maximize else (value - ref)
    scale = 100.0 if metric.name in POINT_METRICS else 100.0 / max(abs(ref), 1e-12)
    return lost * scale <= tolerance + 1e-9


def rows(variants: list, lat: dict, metric, batches: tuple, tolerance: float) -> list:
    """compress.csv's rows: per variant its size, latency per batch size, metrics and whether it is within tolerance."""
    ref = variants[0]
    ref_val = (ref.get("val") or {}).get(metric.name)
    rows = []
    for v in variants:
        r = {"variant": v["name"], "kind": v["kind"], "engine": v["engine"], "models": len(v["models"]),
             "params": int(v["params"]), "bytes": int(v["bytes"])}
        for b in batches:
            r[f"latency_ms_b{b}"] = round(lat[v["name"]][b]["median_ms"], 4)
            r[f"latency_p90_ms_b{b}"] = round(lat[v["name"]][b]["p90_ms"], 4)
        for part in ("val", "test"):
            r[f"{part}_{metric.name}"] = (v.get(part) or {}).get(metric.name)
        parity = v.get("parity") or []
        if parity:
            r["max_abs_diff"] = max(p["max_abs_diff"] for p in parity)
            agree = [p["argmax_agreement"] for p in parity if p["argmax_agreement"] is not None]
            r["argmax_agreement"] = min(agree) if agree else None
        r["within_tolerance"] = v["name"] == "torch" or within(metric, ref_val, r[f"val_{metric.name}"], tolerance)
        rows.append(r)
    return rows


def score(r: dict, prefer: str, batches: tuple) -> float:
    """What `prefer` minimises: file bytes, or the geometric mean of the median latencies over the batch sizes."""
    if prefer == "size":
        return float(r["bytes"])
    return float(np.exp(np.mean([np.log(max(r[f"latency_ms_b{b}"], 1e-9)) for b in batches])))


def choose(table: list, prefer: str, batches: tuple) -> str:
    """onnx-fp32, unless an ONNX variant within tolerance is at least MIN_GAIN smaller / faster; 'torch' without
    any ONNX export."""
    by = {r["variant"]: r for r in table}
    if "onnx-fp32" not in by:
        return "torch"
    ref = score(by["onnx-fp32"], prefer, batches)
    best, best_score = "onnx-fp32", ref
    for r in table:
        if r["engine"] != "onnx" or not r["within_tolerance"] or r["variant"] == "onnx-fp32":
            continue
        s = score(r, prefer, batches)
        if s <= (1 - MIN_GAIN) * ref and s < best_score:
            best, best_score = r["variant"], s
    return best


def summary(table: list, chosen: str, metric, prefer: str) -> str:
    """One sentence on the chosen variant against the fp32 export and the model."""
    by = {r["variant"]: r for r in table}
    if chosen == "torch":
        return "no variant could be exported to ONNX; the PyTorch model stays the one to use"
    what = "smaller" if prefer == "size" else "faster"
    if chosen == "onnx-fp32":
        return f"onnx-fp32 (the fp32 export): no other variant within the tolerance is at least 10% {what}"
    c, fp32, key = by[chosen], by["onnx-fp32"], f"val_{metric.name}"
    b = max(int(k.rsplit("_b", 1)[1]) for k in c if k.startswith("latency_ms_b"))
    return (f"{chosen}: {c['bytes'] / max(fp32['bytes'], 1):.2f}x the fp32 export's bytes and "
            f"{c[f'latency_ms_b{b}'] / max(fp32[f'latency_ms_b{b}'], 1e-9):.2f}x its latency at batch {b}, validation "
            f"{metric.name} {_fmt(c[key])} against the model's {_fmt(by['torch'][key])}")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
