"""Label noise: how well the audit finds flipped labels, and how much of the noise gap cleaning recovers.

    OMP_NUM_THREADS=1 .venv/bin/python bench/label_noise.py --json .bench-out/label_noise.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/label_noise.py --parts detect --datasets digits --seeds 0

Data: sklearn digits (8x8 images) and MNIST-1D (generated locally, 5,000 sequences), each as an .npz
with a stratified 70/15/15 split array (seed 0), so the audit and every run see exactly these parts.

detect    Flips in every part (noise seed = run seed): 20% symmetric (each flipped label to a uniformly
          drawn other class) and 30% asymmetric (class c to c + 1). `cotune.audit(..., checks=label_issues)`
          with each proxy (the default `auto`, and `linear`, today's proxy): precision and recall of the
          flagged rows against the flipped ones over all parts, the audit's trust, and wall seconds.
parts     15% symmetric flips in every part of digits: precision and recall over the validation and
          test rows only (the audit checks every part; fit never changes a test label).
recover   20% symmetric flips of the TRAINING labels only (validation and test clean), the same fixed
          model (the search's warm start for the modality) trained on clean labels, on noisy labels and
          on noisy labels with data.clean.label_issues=relabel / drop: test accuracy and the share of the
          clean-noisy gap recovered, per seed (runtime.seed = noise seed = run seed).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cotune  # noqa: E402
from cotune.data.sources import load  # noqa: E402
from data_centric import split_array  # noqa: E402  (the same stratified 70/15/15 split array)

EPOCHS = {"digits": 40, "mnist1d": 60}


def dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    ds = load("sklearn:digits") if name == "digits" else load("mnist1d", n_samples=5000)
    return np.asarray(ds.X, dtype=np.float32), np.asarray(ds.y)


def flip(y: np.ndarray, rows: np.ndarray, share: float, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    k = int(y.max()) + 1
    flipped = np.sort(g.choice(rows, size=int(round(share * len(rows))), replace=False))
    y = y.copy()
    y[flipped] = (y[flipped] + (g.integers(1, k, len(flipped)) if kind == "symmetric" else 1)) % k
    return y, flipped


def pr(mask: np.ndarray, flipped: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, float]:
    truth = np.zeros(len(mask), dtype=bool)
    truth[flipped] = True
    if rows is not None:
        mask, truth = mask[rows], truth[rows]
    tp = int((mask & truth).sum())
    return tp / max(int(mask.sum()), 1), tp / max(int(truth.sum()), 1)


def audit(path: Path, proxy: str):
    t = time.time()
    rep = cotune.audit(str(path), checks=["label_issues"], overrides=[f"data.clean.proxy={proxy}"])
    return rep, time.time() - t


def mean_sd(xs) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def detect(tmp: Path, name: str, seeds, proxies) -> dict:
    X, y = dataset(name)
    split = split_array(y)
    out = {}
    for kind, share in (("symmetric", 0.20), ("asymmetric", 0.30)):
        for proxy in proxies:
            rows = []
            for seed in seeds:
                y_noisy, flipped = flip(y, np.arange(len(y)), share, kind, seed)
                path = tmp / f"{name}-{kind}-{seed}.npz"
                np.savez(path, X=X, y=y_noisy, split=split)
                rep, secs = audit(path, proxy)
                iss = rep.issues["label_issues"]
                p, r = pr(iss.mask, flipped)
                rows.append({"seed": seed, "precision": p, "recall": r, "flagged": int(iss.mask.sum()),
                             "flipped": len(flipped), "trust": iss.summary["trust"], "proxy": iss.summary["proxy"],
                             "agreement": iss.summary["unflagged_agreement"], "severity": iss.summary["severity"],
                             "seconds": round(secs, 1)})
                print(f"  {name} {kind} {share:.0%} proxy={proxy}: {rows[-1]}", flush=True)
            out[f"{kind} {share:.0%} / {proxy}"] = {
                "precision": mean_sd([r["precision"] for r in rows]), "recall": mean_sd([r["recall"] for r in rows]),
                "runs": rows}
    return out


def parts(tmp: Path, seeds) -> dict:
    X, y = dataset("digits")
    split = split_array(y)
    held = np.flatnonzero(split != "train")
    rows = []
    for seed in seeds:
        y_noisy, flipped = flip(y, np.arange(len(y)), 0.15, "symmetric", seed)
        path = tmp / f"digits-parts-{seed}.npz"
        np.savez(path, X=X, y=y_noisy, split=split)
        rep, _ = audit(path, "auto")
        p, r = pr(rep.issues["label_issues"].mask, flipped, held)
        rows.append({"seed": seed, "precision": p, "recall": r, "by_part": rep.issues["label_issues"].summary["by_part"]})
        print(f"  digits 15% val+test: {rows[-1]}", flush=True)
    return {"precision": mean_sd([r["precision"] for r in rows]), "recall": mean_sd([r["recall"] for r in rows]),
            "runs": rows}


def fixed_model(name: str) -> dict:
    from cotune.search.space import START
    modality = "image" if name == "digits" else "sequence"
    cfg: dict = {}
    for key, v in START[modality].items():
        stage, knob = key.split(".", 1)
        node = cfg.setdefault(stage, {})
        for part in knob.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[knob.split(".")[-1]] = v
    cfg.setdefault("train", {}).update(epochs=EPOCHS[name], patience=15)
    return cfg


def recover(tmp: Path, name: str, seeds) -> dict:
    X, y = dataset(name)
    split = split_array(y)
    base = fixed_model(name)
    acc: dict[str, list] = {k: [] for k in ("clean", "noisy", "noisy + relabel", "noisy + drop")}
    flags = []
    for seed in seeds:
        y_noisy, flipped = flip(y, np.flatnonzero(split == "train"), 0.20, "symmetric", seed)
        np.savez(tmp / f"{name}-clean.npz", X=X, y=y, split=split)
        np.savez(tmp / f"{name}-noisy-{seed}.npz", X=X, y=y_noisy, split=split)
        for cond in acc:
            src = tmp / (f"{name}-clean.npz" if cond == "clean" else f"{name}-noisy-{seed}.npz")
            clean = {"label_issues": cond.split("+ ")[1]} if "+" in cond else {}
            cfg = {**base, "data": {**base.get("data", {}), "source": str(src), "clean": clean},
                   "runtime": {"seed": seed, "threads": 1, "progress": False}}
            with tempfile.TemporaryDirectory() as d:
                r = cotune.train(cfg, out=f"{d}/run")
            acc[cond].append(r.test["accuracy"])
            if cond == "noisy + relabel":
                flags.append(r.metrics.get("data", {}) if hasattr(r, "metrics") else {})
            print(f"  {name} seed {seed} {cond:16s} test acc {r.test['accuracy']:.4f}", flush=True)
    out = {}
    for cond, xs in acc.items():
        out[cond] = {"acc": mean_sd(xs), "per_seed": [round(a, 4) for a in xs]}
        if "+" in cond:
            rec = [(c - n) / (k - n) if k > n else float("nan") for c, n, k in zip(xs, acc["noisy"], acc["clean"])]
            mean_gap = (statistics.mean(xs) - statistics.mean(acc["noisy"])) / max(
                statistics.mean(acc["clean"]) - statistics.mean(acc["noisy"]), 1e-9)
            out[cond].update(gap_recovered_of_means=round(mean_gap, 3), gap_recovered_per_seed=[round(v, 3) for v in rec])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["detect", "parts", "recover"])
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--proxies", nargs="+", default=["auto", "linear"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    res: dict = {}
    if args.json and Path(args.json).exists():
        res = json.loads(Path(args.json).read_text())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for part in args.parts:
            if part == "parts":
                res["parts"] = parts(tmp, args.seeds)
                continue
            for name in args.datasets:
                t = time.time()
                res.setdefault(part, {})[name] = (detect(tmp, name, args.seeds, args.proxies) if part == "detect"
                                                  else recover(tmp, name, args.seeds))
                res[part][name]["wall_s"] = round(time.time() - t, 1)
                if args.json:
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps({k: {n: {c: {kk: vv for kk, vv in v.items() if kk != "runs"} if isinstance(v, dict) else v
                               for c, v in x.items()} if isinstance(x, dict) else x for n, x in r.items()}
                      for k, r in res.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
