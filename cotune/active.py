"""Active learning: which unlabeled rows to label next (`cotune label-next`, `cotune.label_next`).

1. Split the source into its labeled rows and its unlabeled pool (cotune.data.pool says which rows are which).
2. Train a classifier on the labeled rows: the config's fixed knobs (`pipeline.run`), or, when the config
   has a search budget or trial count, a joint search and its final model (`search.parent.fit`). The labeled
   rows are split into train and validation only: data.split.test is 0 unless the config sets it.
3. Score the pool with the model: class probabilities (uncertainty) and its penultimate-layer activations
   (diversity; Bundle.embed).
4. Rank, and write the first n rows to a CSV (atomically).

Strategies (N pool rows, K classes, p1 >= p2 the two largest probabilities of a row):

    margin   the smallest margins p1 - p2 first (uncertainty = 1 - (p1 - p2))
    entropy  the largest entropies first (uncertainty = entropy / log K)
    kcenter  k-center greedy (Sener & Savarese 2018): the pool row farthest from every labeled and already
             picked row, in the model's embedding space, n times
    random   a seeded random sample
    mix      (default) k-center greedy among the n x `candidates` (10) rows of smallest margin, starting from
             the labeled rows as centers: uncertain rows, but not n of them from the same corner (Zhdanov 2019
             filters by margin the same way before clustering)

Every strategy reports each pick's distance at pick time: its Euclidean distance in embedding space to the
nearest labeled or earlier-picked row. The ranking is reproducible for a seed (`seed` seeds the selection
and, unless the config sets runtime.seed / search.seed, the training) and only ever proposes pool rows.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cotune.config import RunConfig
from cotune.errors import ConfigError, fmt_choices, invalid

STRATEGIES = ("mix", "margin", "entropy", "kcenter", "random")
CANDIDATES = 10  # mix: k-center greedy runs among the n x CANDIDATES most uncertain pool rows
COLUMNS = ("rank", "row", "uncertainty", "margin", "entropy", "distance", "predicted", "probability")


@dataclass
class NextBatch:
    picks: pd.DataFrame   # the rows to label next, best first: COLUMNS
    path: Path | None     # the CSV, when one was written
    model: object         # the Bundle trained on the labeled rows (in memory; its directory is `run`, or gone)
    run: Path | None      # the run or search directory, when kept (run_dir=...)
    n_pool: int
    n_labeled: int
    strategy: str
    quality: dict         # the model's validation score {metric: value}, when it has one

    def summary(self) -> str:
        q = "".join(f", val {k} {v:.3f}" for k, v in self.quality.items())
        where = f" -> {self.path}" if self.path is not None else ""
        return (f"{len(self.picks)} of {self.n_pool:,} unlabeled rows to label next ({self.strategy}; "
                f"{self.model.spec.family} trained on {self.n_labeled:,} labeled rows{q}){where}")


def check_request(n, strategy: str, candidates) -> None:
    """The arguments that need no data: a ConfigError before anything is read."""
    if strategy not in STRATEGIES:
        raise ConfigError(invalid("--strategy", f"one of {fmt_choices(STRATEGIES)}", strategy, "the default is 'mix'"))
    for what, v in (("--n", n), ("candidates", candidates)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(invalid(what, "an integer >= 1", v))


def label_next(cfg: RunConfig, fixed: set[str], *, n: int = 50, strategy: str = "mix", seed: int = 0, out=None,
               run_dir=None, candidates: int = CANDIDATES, progress: bool | None = None, live: bool = False,
               console=None, started_at: float | None = None) -> NextBatch:
    """Train on the labeled rows of cfg.data.source, rank its pool by `strategy`, write the first n to `out`.

    fixed: the knobs the user set (a search leaves them alone). run_dir: keep the model's run directory (a
    search's, when searching) there; by default it lives in a temporary folder, removed at the end."""
    from cotune import bundle
    from cotune.data.pool import split_pool
    from cotune.evaluate import primary_metric
    from cotune.pipeline import load_data, run
    from cotune.track import atomic_write_bytes
    check_request(n, strategy, candidates)
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; name the CSV file to write, e.g. --out next.csv.")
    work = Path(tempfile.mkdtemp(prefix="cotune-label-next-"))
    try:
        d = cfg.data
        pool = split_pool(d.source, target=d.target, workdir=work, image_size=d.image_size, image_mode=d.image_mode)
        if n > len(pool.rows):
            raise ConfigError(invalid("--n", f"at most the {len(pool.rows)} unlabeled row(s) of {d.source!r}", n,
                                      f"pass --n {len(pool.rows)} or fewer"))
        changes = {"data.source": pool.source, "runtime.seed": seed, "search.seed": seed, "data.split.test": 0.0,
                   "search.mlflow": "none"}
        changes = {k: v for k, v in changes.items() if k == "data.source" or k not in fixed}
        home = Path(run_dir) if run_dir is not None else work / "model"
        cfg = cfg.replace(**changes, out=str(home))
        ds = load_data(cfg)  # the labeled rows through cotune's own checks (the run reuses this Dataset)
        if ds.task == "regression":
            raise ConfigError(f"label-next ranks rows for a classifier, but the labels of {d.source!r} are a "
                              "regression target; use class labels (or data.task=multiclass if they are classes).")
        metric = primary_metric(ds.task, cfg.search.metric).name
        if cfg.search.budget is not None or cfg.search.trials is not None:
            from cotune.search.parent import fit
            res = fit(cfg, fixed | set(changes), live=live, console=console, started_at=started_at)
            model, quality = bundle.load(res.path / "final"), {metric: float(res.best["values"][0])}
        else:
            res = run(cfg, progress=progress)
            model = bundle.load(res.path)
            quality = {metric: res.metrics["val"][metric]} if metric in (res.metrics.get("val") or {}) else {}
        proba, emb_pool, emb_labeled = model.predict_proba(pool.X), model.embed(pool.X), model.embed(ds.X)
        order, distance = rank(proba, emb_pool, emb_labeled, n, strategy, seed=seed, candidates=candidates)
        picks = table(proba, order, distance, [pool.rows[i] for i in order], model.classes_, strategy)
        if out is not None:
            atomic_write_bytes(out, picks.to_csv(index=False).encode())
        return NextBatch(picks=picks, path=Path(out) if out is not None else None, model=model,
                         run=home if run_dir is not None else None, n_pool=len(pool.rows), n_labeled=pool.n_labeled,
                         strategy=strategy, quality=quality)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- ranking: numpy only -----------------------------------------------------------------------------------

def margins(proba: np.ndarray) -> np.ndarray:
    """(N,) p1 - p2: the gap between the two most probable classes (0 = a coin toss between them)."""
    top = np.sort(proba, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def entropies(proba: np.ndarray) -> np.ndarray:
    """(N,) entropy of each row's class distribution, in nats."""
    p = np.clip(proba, 1e-12, 1.0)
    return -(proba * np.log(p)).sum(axis=1)


def nearest(emb: np.ndarray, centers: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(N,) Euclidean distance from each row of `emb` to its nearest row of `centers` (inf without centers)."""
    best = np.full(len(emb), np.inf)
    sq = (emb ** 2).sum(1)
    for i in range(0, len(centers), chunk):
        c = centers[i:i + chunk]
        d2 = sq[:, None] + (c ** 2).sum(1)[None, :] - 2.0 * emb @ c.T
        best = np.minimum(best, d2.min(axis=1))
    return np.sqrt(np.maximum(best, 0.0))


def greedy(emb: np.ndarray, dist: np.ndarray, n: int, order=None) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy: n times, the row farthest from its nearest center (`dist`: to the labeled rows) becomes
    a center. With `order`, the rows are taken in that order instead and only their distances are measured.
    Returns (picked positions, each one's distance at pick time)."""
    dist = dist.astype(np.float64).copy()
    picked, at = [], []
    for j in range(n):
        i = int(order[j]) if order is not None else int(np.argmax(dist))
        picked.append(i)
        at.append(dist[i])
        dist = np.minimum(dist, np.sqrt(((emb - emb[i]) ** 2).sum(1)))
        dist[i] = -np.inf  # never picked twice
    return np.asarray(picked, dtype=np.int64), np.asarray(at)


def uncertainty(proba: np.ndarray, strategy: str) -> np.ndarray:
    """What `strategy` calls uncertain: normalized entropy for 'entropy', 1 - margin otherwise (in [0, 1])."""
    if strategy == "entropy":
        return entropies(proba) / math.log(max(proba.shape[1], 2))
    return 1.0 - margins(proba)


def rank(proba: np.ndarray, emb_pool: np.ndarray, emb_labeled: np.ndarray, n: int, strategy: str = "mix", *,
         seed: int = 0, candidates: int = CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
    """The n pool rows to label next, best first, as positions into the pool, and each pick's distance at
    pick time (to the nearest labeled or earlier-picked row in embedding space)."""
    check_request(n, strategy, candidates)
    if not 1 <= n <= len(proba):
        raise ConfigError(invalid("--n", f"from 1 to the pool's {len(proba)} rows", n))
    rng = np.random.default_rng(seed)
    tie = rng.random(len(proba))  # seeded tie-break among equal scores
    emb_pool, emb_labeled = emb_pool.astype(np.float64), emb_labeled.astype(np.float64)
    dist = nearest(emb_pool, emb_labeled)
    if strategy == "random":
        return greedy(emb_pool, dist, n, order=rng.permutation(len(proba))[:n])
    if strategy == "kcenter":
        return greedy(emb_pool, dist, n)
    by_score = np.lexsort((tie, -uncertainty(proba, strategy)))  # most uncertain first
    if strategy in ("margin", "entropy"):
        return greedy(emb_pool, dist, n, order=by_score[:n])
    cand = by_score[:min(len(proba), n * candidates)]  # mix
    picked, at = greedy(emb_pool[cand], dist[cand], n)
    return cand[picked], at


def table(proba: np.ndarray, order: np.ndarray, distance: np.ndarray, rows: list, classes: list,
          strategy: str) -> pd.DataFrame:
    """The output CSV's rows: rank, pool row name, uncertainty, margin, entropy, distance, predicted class, its probability."""
    p = proba[order]
    top = p.argmax(axis=1)
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "row": rows,
                         "uncertainty": uncertainty(p, strategy), "margin": margins(p), "entropy": entropies(p),
                         "distance": distance, "predicted": np.asarray(classes, dtype=object)[top],
                         "probability": p[np.arange(len(p)), top]}, columns=list(COLUMNS))
