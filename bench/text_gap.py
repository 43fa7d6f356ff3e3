"""Where the fortunes text gap comes from: the same n-gram features under LR, a linear softmax and cotune's network.

    bash scripts/install_fortunes.sh
    OMP_NUM_THREADS=1 .venv/bin/python bench/text_gap.py --seeds 0,1,2 --out runs/bench-text-gap

bench/text_fortunes.py's rows and split per seed (train / val / test). Every side below trains on the train rows
only, chooses what it chooses on the val rows and is scored once on the test rows, over the same features:
cotune's `ngrams` tokenizer (cotune.data.text: TF-IDF word 1-2-grams and char_wb 2-5-grams, vocabulary
--vocab (32,000) fitted on the train rows, each text's `max_tokens` heaviest n-grams, L2-normalized) at
max_tokens 256 (the search's start on a text table) and 1024.
  lr         scikit-learn LogisticRegression (lbfgs, multinomial, max_iter 2000) on those sparse vectors, C from
             3 / 10 / 30 by val accuracy: the convex solution.
  softmax    the same linear model trained as cotune trains a network: torch, Adam (lr 0.01, batch 256,
             60 epochs, the best epoch on val kept), with LR's own L2 penalty (||W||^2 / (2 C N), C: lr's
             choice) and without it. What the optimizer and the regularizer cost, apart from the architecture.
  cotune     `cotune train` with the search's start on a text table (space.py): ngrams 32,000 / 256, mlp
             width 256, depth 1, dropout 0.1, bag encoder width 64, adamw lr 2e-3, weight decay 3e-4
             (decoupled), 200 epochs, patience 16; and the same with adam and a coupled L2 of 1 / (C N)
             (weight_decay added to the gradient), LR's penalty.
  residual   (256 only) lr's model fitted first and frozen, plus a network (bag of n-gram embeddings, one hidden
             layer of 256, its output layer zero at the start, AdamW as cotune's start) trained on its logits:
             what a network adds to the convex solution on these features.
One thread everywhere. Prints a markdown table per seed and mean +/- sd over seeds; --out/gap.json holds it all.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_fortunes as tf  # noqa: E402

START = ["model.family=mlp", "model.width=256", "model.depth=1", "model.dropout=0.1", "model.text_encoder=bag",
         "model.text_width=64", "train.optimizer=adamw", "train.lr=0.002", "train.weight_decay=0.0003",
         "train.epochs=200", "train.patience=16", "train.batch_size=256", "data.tokenizer=ngrams"]


def sparse(state, texts, length):
    import scipy.sparse as sp

    from cotune.data.text import encode_ngrams, ngram_vocab
    ids, w = encode_ngrams(state, texts, length)
    rows = np.repeat(np.arange(len(texts)), length)
    return sp.csr_matrix((w.ravel(), (rows, ids.ravel())), shape=(len(texts), ngram_vocab(state)))


def fit_lr(X, y):
    """{C: (val, test)} and the C with the best val accuracy."""
    from sklearn.linear_model import LogisticRegression
    scores = {}
    for C in (3, 10, 30):
        m = LogisticRegression(C=C, max_iter=2000).fit(X["train"], y["train"])
        scores[C] = (m.score(X["val"], y["val"]), m.score(X["test"], y["test"]))
    best = max(scores, key=lambda c: scores[c][0])
    return scores, best


def fit_softmax(X, y, l2: float, seed: int, epochs: int = 60) -> tuple[float, float, int]:
    """A linear softmax on the sparse vectors, Adam, mean cross-entropy + l2 * ||W||^2 / (2 N): (val, test, epoch)
    at the best val epoch."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    n, d = X["train"].shape
    k = int(y["train"].max()) + 1
    W, b = torch.zeros(d, k, requires_grad=True), torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=0.01)
    T = {s: torch.sparse_csr_tensor(torch.from_numpy(m.indptr).long(), torch.from_numpy(m.indices).long(),
                                    torch.from_numpy(m.data).float(), size=m.shape) for s, m in X.items()}
    Y = {s: torch.from_numpy(v).long() for s, v in y.items()}
    rows = X["train"]
    best = (-1.0, 0.0, 0)
    for epoch in range(epochs):
        for j in np.array_split(np.random.default_rng(seed + epoch).permutation(n), max(1, n // 256)):
            part = rows[j]
            xb = torch.sparse_csr_tensor(torch.from_numpy(part.indptr).long(), torch.from_numpy(part.indices).long(),
                                         torch.from_numpy(part.data).float(), size=part.shape)
            loss = F.cross_entropy(xb @ W + b, Y["train"][j]) + l2 * (W ** 2).sum() / (2 * n)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = {s: ((T[s] @ W + b).argmax(1) == Y[s]).float().mean().item() for s in ("val", "test")}
        if acc["val"] > best[0]:
            best = (acc["val"], acc["test"], epoch + 1)
    return best


def fit_residual(X, y, ids, C: float, seed: int, epochs: int = 40) -> tuple[float, float, int]:
    """LR (C) fitted first and frozen, its logits plus a network's: a bag of n-gram embeddings (sum, width 64)
    -> Linear(256) -> ReLU -> dropout 0.1 -> Linear(classes), that last layer zero at the start (so epoch 0 is
    LR), AdamW lr 2e-3, weight decay 3e-4, batch 256: (val, test, epoch) at the best val epoch. What a network
    can add to the convex solution on these features."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from sklearn.linear_model import LogisticRegression
    lr = LogisticRegression(C=C, max_iter=2000).fit(X["train"], y["train"])
    base = {s: torch.tensor(lr.decision_function(m), dtype=torch.float32) for s, m in X.items()}
    Y = {s: torch.from_numpy(v).long() for s, v in y.items()}
    torch.manual_seed(seed)
    emb = nn.EmbeddingBag(X["train"].shape[1], 64, mode="sum", padding_idx=0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, base["train"].shape[1]))
    nn.init.zeros_(net[3].weight)
    nn.init.zeros_(net[3].bias)
    opt = torch.optim.AdamW([*emb.parameters(), *net.parameters()], lr=2e-3, weight_decay=3e-4)

    def logits(s, j=slice(None)):
        return net(emb(ids[s][0][j], per_sample_weights=ids[s][1][j])) + base[s][j]
    best = (-1.0, 0.0, 0)
    for epoch in range(epochs):
        emb.train(), net.train()
        for j in torch.randperm(len(Y["train"]), generator=torch.Generator().manual_seed(seed + epoch)).split(256):
            loss = F.cross_entropy(logits("train", j), Y["train"][j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        emb.eval(), net.eval()
        with torch.no_grad():
            acc = {s: (logits(s).argmax(1) == Y[s]).float().mean().item() for s in ("val", "test")}
        if acc["val"] > best[0]:
            best = (acc["val"], acc["test"], epoch + 1)
    return best


def fit_cotune(csv: Path, out: Path, seed: int, extra: list[str]) -> tuple[float, float, int]:
    import shutil

    import cotune
    shutil.rmtree(out, ignore_errors=True)  # this script's own run directory, from an earlier run of it
    r = cotune.train(overrides=[f"data.source={csv}", "data.target=category", "data.split.column=split",
                                "runtime.threads=1", f"runtime.seed={seed}", "runtime.progress=false", *START, *extra],
                     out=str(out), checkpoint=False)
    return r.metrics["val"]["accuracy"], r.metrics["test"]["accuracy"], r.train.best_epoch


def one_seed(seed: int, args) -> list[dict]:
    from cotune.data.text import fit_ngrams
    df = tf.pick_classes(tf.load_fortunes(args.fortunes)[0], 300, 8)
    df["split"] = tf.split_column(df["category"].to_numpy(), seed)
    here = args.out / f"seed-{seed}"
    here.mkdir(parents=True, exist_ok=True)
    csv = here / "data.csv"
    df.to_csv(csv, index=False)
    classes = sorted(df["category"].unique())
    parts = {s: df[df["split"] == s] for s in ("train", "val", "test")}
    texts = {s: p["text"].fillna("").tolist() for s, p in parts.items()}
    y = {s: p["category"].map({c: i for i, c in enumerate(classes)}).to_numpy() for s, p in parts.items()}
    state = fit_ngrams(texts["train"], args.vocab)
    rows, n = [], len(texts["train"])
    for length in (256, 1024):
        X = {s: sparse(state, t, length) for s, t in texts.items()}
        t = time.time()
        scores, C = fit_lr(X, y)
        rows.append({"seed": seed, "max_tokens": length, "side": "lr", "C": C, "val": scores[C][0],
                     "test": scores[C][1], "epoch": None, "seconds": time.time() - t})
        for l2, name in ((1.0 / C, "softmax, adam + LR's L2 (1/C)"), (0.0, "softmax, adam, no L2")):
            t = time.time()
            v, te, ep = fit_softmax(X, y, l2, seed)
            rows.append({"seed": seed, "max_tokens": length, "side": name, "C": C, "val": v, "test": te,
                         "epoch": ep, "seconds": time.time() - t})
        if length == 256:
            import torch

            from cotune.data.text import encode_ngrams
            C256 = C
            ids = {s: [torch.from_numpy(a) for a in encode_ngrams(state, t, length)] for s, t in texts.items()}
            t = time.time()
            v, te, ep = fit_residual(X, y, ids, C, seed)
            rows.append({"seed": seed, "max_tokens": length, "side": "lr frozen + residual network", "C": C, "val": v,
                         "test": te, "epoch": ep, "seconds": time.time() - t})
    for extra, name in (([f"data.vocab_size={args.vocab}", "data.max_tokens=256"], "cotune start (adamw, decoupled 3e-4)"),
                        ([f"data.vocab_size={args.vocab}", "data.max_tokens=256", "train.optimizer=adam",
                          f"train.weight_decay={1.0 / (C256 * n):.3g}"], "cotune start, adam + coupled L2 1/(C N)")):
        t = time.time()
        v, te, ep = fit_cotune(csv, here / f"net-{len(rows)}", seed, extra)
        rows.append({"seed": seed, "max_tokens": 256, "side": name, "C": C256, "val": v, "test": te, "epoch": ep,
                     "seconds": time.time() - t})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-text-gap"))
    ap.add_argument("--fortunes", type=Path, default=tf.FORTUNES)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rows += one_seed(seed, args)
        print(f"\nseed {seed}\n| max_tokens | side | C | val % | test % | best epoch | s |\n|---:|---|---:|---:|---:|---:|---:|")
        for r in rows:
            if r["seed"] == seed:
                print(f"| {r['max_tokens']} | {r['side']} | {r['C']} | {100 * r['val']:.2f} | {100 * r['test']:.2f} | "
                      f"{r['epoch'] or ''} | {r['seconds']:.0f} |", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gap.json").write_text(json.dumps(rows, indent=2))
    print("\nover seeds: test % mean +/- sd (n)\n| max_tokens | side | test % |\n|---:|---|---:|")
    keys = list(dict.fromkeys((r["max_tokens"], r["side"]) for r in rows))
    for length, side in keys:
        vals = [100 * r["test"] for r in rows if (r["max_tokens"], r["side"]) == (length, side)]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"| {length} | {side} | {statistics.mean(vals):.2f} +/- {sd:.2f} ({len(vals)}) |")

if __name__ == "__main__":
    main()
