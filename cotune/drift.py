"""Drift: do the rows a model is asked to predict look like the rows it was trained on?

    report = cotune.load("runs/x").drift(new_df)    # or cotune.predict(run, data, drift_report="drift.json")
    report.flagged, report.moved, report.columns["age"].psi, report.summary(), report.to_dict()

At save time (cotune.bundle.save) a seeded sample of the training rows goes into the bundle directory as
reference.parquet: at most 5,000 rows (a wide table: at most 1,000,000 cells, and never under 200 rows), a
table's raw columns (numeric as float64, exactly: a float32 copy would make every repeated value look moved;
categorical as the strings preprocessing compares, missing -> '__missing__'; a text column as two numeric
summaries per row, '<column>.words' (its whitespace-separated words, 0 for an empty or missing text) and
'<column>.word_length' (their mean length in characters)), an image's or a sequence's
per-row summaries per channel (mean, standard deviation, mean absolute step between neighbours; over all
channels together above 16 channels): arrays are checked on those, not pixel by pixel. `check` compares new
rows with it:

    per column   numeric: two-sample Kolmogorov-Smirnov on the present values, and Fisher's exact test on the
                 missing share when either side has missing cells (the two Bonferroni-combined); categorical:
                 chi-square on the counts of the reference's 30 most frequent categories and one cell for the
                 rest (rarer and unseen categories), sparse cells pooled until every expected count is >= 5.
                 Effect size: PSI over the reference's deciles (missing cells a bin of their own) or categories.
    all columns  a classifier two-sample test: a small HistGradientBoosting model (one thread) learns to tell
                 reference rows from new ones on one half of each (at most 2,000 a side); on the other half its
                 scores give the AUC and a one-sided Mann-Whitney p-value, valid because those rows never
                 trained it. Skipped under 20 new rows.
A column moved when its p-value, Holm-corrected over the columns and the classifier test together, is at most
alpha (0.01) AND its PSI is at least 0.1; the rows moved together when the classifier's corrected p-value is at
most alpha AND its AUC is at least 0.6. Significance alone would flag any tiny shift in a large batch; the
effect floor alone would flag noise in a small one. No torch: the ONNX engine checks drift the same way.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cotune.data.preprocess import _category_strings as category_strings
from cotune.data.text import text_summaries
from cotune.errors import BundleError, CotuneError, DataError, one_line
from cotune.track import atomic_write_bytes, write_json

REFERENCE = "reference.parquet"
MAX_ROWS, MAX_CELLS, MIN_ROWS = 5000, 1_000_000, 200  # the reference sample
SEED = 0
ALPHA, MIN_PSI, MIN_AUC = 0.01, 0.1, 0.6
BINS = 10            # numeric PSI: the reference's deciles
LEVELS = 30          # categorical: the most frequent reference categories kept apart
MIN_EXPECTED = 5.0   # chi-square: sparse cells are pooled until every expected count reaches this
CLASSIFIER_ROWS, CLASSIFIER_MIN = 2000, 20  # per side: at most (sampled), at least (else skipped)
CODES = 61           # the classifier: a categorical column's most frequent categories coded apart, the rest one code
MAX_CHANNELS = 16    # arrays with more channels: summaries over all channels together
META = b"cotune.drift"


class DriftWarning(UserWarning):
    """New rows differ from the training rows (cotune.predict warns with the report's one-line summary)."""


def summaries(X) -> pd.DataFrame:
    """Per-row summaries of images (N, C, H, W) or sequences (N, C, L): each channel's mean, standard deviation
    and mean absolute difference between neighbouring values (over H and W for images); 'all_*' columns over all
    channels together when there are more than 16."""
    X = np.asarray(X)
    n, c = X.shape[:2]
    out = np.zeros((n, 3, c))
    for i in range(0, n, 1024):  # bounded memory on big arrays
        x = X[i:i + 1024].astype(np.float64)
        flat = x.reshape(len(x), c, -1)
        steps = [np.abs(np.diff(x, axis=a)).reshape(len(x), c, -1).mean(-1) for a in range(2, x.ndim) if x.shape[a] > 1]
        step = np.mean(steps, axis=0) if steps else np.zeros((len(x), c))  # one value per row: no neighbours
        out[i:i + len(x)] = np.stack([flat.mean(-1), flat.std(-1), step], 1)
    if c > MAX_CHANNELS:
        mean = out[:, 0].mean(1)
        std = np.sqrt(np.maximum((out[:, 1] ** 2 + out[:, 0] ** 2).mean(1) - mean ** 2, 0))
        return pd.DataFrame({"all_mean": mean, "all_std": std, "all_step": out[:, 2].mean(1)})
    return pd.DataFrame({f"c{j}_{s}": out[:, k, j] for j in range(c) for k, s in enumerate(("mean", "std", "step"))})


def typed(df: pd.DataFrame, numeric, categorical, text=()) -> pd.DataFrame:
    """A table's columns as drift compares them: numeric as float64 (unparsable or infinite -> NaN),
    categorical as preprocessing's strings (missing -> '__missing__', 3.0 -> '3'), each text column as its
    text_summaries (a text column the rows lack is a DataError)."""
    cols = {}
    for c in df.columns:
        if c in numeric:
            v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            cols[c] = np.where(np.isfinite(v), v, np.nan)
        elif c in categorical:
            cols[c] = category_strings(df[c]).astype(str)
    for c in text:
        if c not in df.columns:
            raise DataError(f"The new rows have no column {c!r}, which the model was trained with; add it.")
        cols.update(text_summaries(c, df[c]))
    return pd.DataFrame(cols)


def save_reference(directory, ds, rows, seed: int = SEED) -> Path | None:
    """A seeded sample of the training rows `rows` of Dataset `ds` into <directory>/reference.parquet (atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = np.asarray(rows)
    rows = rows[rows >= 0]
    if not len(rows):
        return None
    width = ds.X.shape[1] if ds.modality == "tabular" else 3 * (ds.X.shape[1] if ds.X.shape[1] <= MAX_CHANNELS else 1)
    cap = min(MAX_ROWS, max(MIN_ROWS, MAX_CELLS // max(1, width)))
    pick = np.sort(np.random.default_rng(seed).choice(rows, size=min(cap, len(rows)), replace=False))
    if ds.modality == "tabular":
        text = list(getattr(ds, "text", ()) or ())
        frame = typed(ds.X.iloc[pick], set(ds.numeric), set(ds.categorical), text)
        numeric = [c for c in frame if c not in ds.categorical]  # the numeric columns and the texts' summaries
        categorical = [c for c in frame if c in ds.categorical]
    else:
        frame = summaries(ds.X[pick])
        numeric, categorical, text = list(frame.columns), [], []
    meta = {"version": 1, "modality": ds.modality, "numeric": numeric, "categorical": categorical, "text": text,
            "rows": int(len(pick)), "training_rows": int(len(rows)), "seed": int(seed)}
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META: json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    path = Path(directory) / REFERENCE
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame     # the sampled training rows, typed (tables) or summarised (arrays)
    numeric: list
    categorical: list
    modality: str
    training_rows: int
    path: Path
    text: list = field(default_factory=list)  # the text columns (their summaries are among `numeric`)


def load_reference(directory) -> Reference | None:
    """<directory>/reference.parquet, or None when the bundle was saved without one."""
    path = Path(directory) / REFERENCE
    if not path.is_file():
        return None
    try:
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[META])
        frame = table.to_pandas()
        ref = Reference(frame, list(meta["numeric"]), list(meta["categorical"]), str(meta["modality"]),
                        int(meta["training_rows"]), path, list(meta.get("text", [])))
        if set(ref.numeric) | set(ref.categorical) != set(frame.columns):
            raise ValueError("its column lists do not match its columns")
    except Exception as err:
        raise BundleError(f"{str(path)!r} is damaged ({type(err).__name__}: {one_line(err)[:120]}); delete it to "
                          "predict without drift checks, or retrain the model.") from None
    return ref


@dataclass
class ColumnDrift:
    """One column's comparison (an array's: one summary's)."""
    kind: str                  # numeric | categorical
    test: str                  # ks (+ fisher on the missing share) | chi2
    statistic: float           # the KS D, or the chi-square statistic
    p_value: float
    p_adjusted: float          # Holm over the columns and the classifier test
    psi: float
    flagged: bool
    missing_reference: float   # shares of missing cells
    missing_new: float
    shift_sd: float | None = None   # numeric: (new mean - reference mean) / reference std
    unseen: float | None = None     # categorical: the share of new values the reference sample never had


@dataclass
class DriftReport:
    """What `check` found: per column (`columns`), all columns together (`multivariate`), and what moved."""
    checked: bool                              # False: nothing compared (`note` says why)
    rows: int = 0                              # new rows compared
    reference_rows: int = 0                    # the training sample's rows (of training_rows)
    training_rows: int = 0
    features: str = "columns"                  # or what arrays are compared on
    columns: dict = field(default_factory=dict)  # name -> ColumnDrift
    multivariate: dict | None = None           # the classifier test
    alpha: float = ALPHA
    min_psi: float = MIN_PSI
    min_auc: float = MIN_AUC
    note: str | None = None                    # why it was not checked

    @property
    def moved(self) -> list[str]:
        """The flagged columns, most shifted first."""
        return sorted((c for c, d in self.columns.items() if d.flagged), key=lambda c: -self.columns[c].psi)

    @property
    def flagged(self) -> bool:
        return bool(self.moved) or bool((self.multivariate or {}).get("flagged"))

    def summary(self) -> str | None:
        """One line naming what moved, or None when nothing did."""
        if not self.flagged:
            return None
        mv = self.multivariate or {}
        together = f"a classifier tells them apart (AUC {mv['auc']:.2f})" if mv.get("flagged") else ""
        if not self.moved:
            return (f"the {self.rows} new rows differ from the training rows taken together, though no single column "
                    f"moved: {together}")

        def one(c):
            d = self.columns[c]
            extra = (f", mean {d.shift_sd:+.1f} sd" if d.shift_sd is not None and np.isfinite(d.shift_sd) else
                     f", {d.unseen:.0%} unseen" if d.unseen else "")
            return f"{c!r} (PSI {d.psi:.2f}{extra})"
        more = len(self.moved) - 4
        names = ", ".join(one(c) for c in self.moved[:4]) + (f" and {more} more" if more > 0 else "")
        what = "" if self.features == "columns" else " per-row summaries"
        return (f"the {self.rows} new rows differ from the training rows in{what} {names}"
                + (f"; {together}" if together else ""))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"checked": self.checked, "flagged": self.flagged, "moved": self.moved, "summary": self.summary(),
                **{k: v for k, v in d.items() if k != "checked"}}

    def save(self, path) -> None:
        write_json(path, self.to_dict())


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence)."""
    p = np.asarray(p, dtype=np.float64)
    adj, running = np.empty_like(p), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


def psi(a, b) -> float:
    """Population stability index between two count vectors (half a count added to every bin either side)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = (a + b) > 0
    a, b = a[keep] + 0.5, b[keep] + 0.5
    pa, pb = a / a.sum(), b / b.sum()
    return float(np.sum((pb - pa) * np.log(pb / pa)))


def chi2_pooled(a, b) -> tuple[float, float]:
    """Chi-square homogeneity test of two count vectors, the sparsest cells pooled until every expected count
    is at least MIN_EXPECTED; (statistic, p-value), (0, 1) when fewer than two cells remain."""
    from scipy.stats import chi2_contingency
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = a.sum(), b.sum()
    need = MIN_EXPECTED * (na + nb) / max(1.0, min(na, nb))  # the total count a cell needs
    groups, acc = [], np.zeros(2)
    for i in np.argsort(a + b, kind="stable"):
        acc = acc + (a[i], b[i])
        if acc.sum() >= need:
            groups.append(acc)
            acc = np.zeros(2)
    if acc.sum() and groups:
        groups[-1] = groups[-1] + acc
    if len(groups) < 2:
        return 0.0, 1.0
    res = chi2_contingency(np.array(groups).T, correction=False)
    return float(res.statistic), float(res.pvalue)


def numeric_column(r: np.ndarray, n: np.ndarray) -> ColumnDrift:
    from scipy.stats import fisher_exact, ks_2samp
    r_ok, n_ok = r[~np.isnan(r)], n[~np.isnan(n)]
    r_na, n_na = len(r) - len(r_ok), len(n) - len(n_ok)
    pvals, d, shift = [], float("nan"), None
    if len(r_ok) and len(n_ok):
        ks = ks_2samp(r_ok, n_ok)
        d = float(ks.statistic)
        pvals.append(float(ks.pvalue))
        sd, gap = r_ok.std(), n_ok.mean() - r_ok.mean()
        shift = float(gap / sd) if sd > 0 else (0.0 if gap == 0 else float("inf"))
    if r_na or n_na:
        pvals.append(float(fisher_exact([[r_na, len(r_ok)], [n_na, len(n_ok)]]).pvalue))
    p = min(1.0, len(pvals) * min(pvals)) if pvals else 1.0
    edges = np.unique(np.quantile(r_ok, np.linspace(0, 1, BINS + 1)[1:-1])) if len(r_ok) else np.zeros(0)
    k = len(edges) + 1

    def counts(present, na):  # the decile bins, then the missing cells
        return np.r_[np.bincount(np.searchsorted(edges, present, side="left"), minlength=k), na]
    return ColumnDrift("numeric", "ks", d, p, p, psi(counts(r_ok, r_na), counts(n_ok, n_na)), False,
                       r_na / max(1, len(r)), n_na / max(1, len(n)), shift_sd=shift)


def categorical_column(r: np.ndarray, n: np.ndarray) -> ColumnDrift:
    from cotune.data.preprocess import MISSING
    values, counts = np.unique(r, return_counts=True)
    kept = values[np.argsort(-counts, kind="stable")[:LEVELS]]
    index = pd.Index(kept)

    def cells(x):
        codes = index.get_indexer(x)
        return np.bincount(np.where(codes < 0, len(kept), codes), minlength=len(kept) + 1)
    a, b = cells(r), cells(n)
    stat, p = chi2_pooled(a, b)
    return ColumnDrift("categorical", "chi2", stat, p, p, psi(a, b), False, _share(r == MISSING), _share(n == MISSING),
                       unseen=_share(~np.isin(n, values)))


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else 0.0


def classifier_test(ref: pd.DataFrame, new: pd.DataFrame, categorical, seed: int = SEED) -> dict:
    """Can a small HistGradientBoosting model tell reference rows from new ones? Fitted on half of each side,
    scored on the other half: the AUC and a one-sided Mann-Whitney p-value."""
    from scipy.stats import mannwhitneyu
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits
    g = np.random.default_rng(seed)
    ia, ib = (g.permutation(len(f))[:CLASSIFIER_ROWS] for f in (ref, new))
    if min(len(ia), len(ib)) < CLASSIFIER_MIN:
        return {"test": "classifier", "skipped": f"fewer than {CLASSIFIER_MIN} rows on a side", "flagged": False}
    both = pd.concat([ref.iloc[ia], new.iloc[ib]], ignore_index=True)
    cats = [c in categorical for c in both.columns]
    for c in (c for c in both.columns if c in categorical):  # codes by reference frequency; the rest share one
        top = ref[c].value_counts().index[:CODES]
        codes = pd.Index(top).get_indexer(both[c])
        both[c] = np.where(codes < 0, len(top), codes).astype(np.float64)
    X = both.to_numpy(dtype=np.float64)
    y = np.r_[np.zeros(len(ia)), np.ones(len(ib))]
    half = np.r_[np.arange(len(ia)) < len(ia) // 2, np.arange(len(ib)) < len(ib) // 2]  # rows already shuffled
    clf = HistGradientBoostingClassifier(max_iter=30, learning_rate=0.2, max_leaf_nodes=15, min_samples_leaf=20,
                                         l2_regularization=1.0, early_stopping=False, max_bins=CODES + 2,
                                         random_state=seed, categorical_features=np.array(cats) if any(cats) else None)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X[half], y[half])
        s = clf.predict_proba(X[~half])[:, 1]
    yt = y[~half]
    n0, n1 = int((yt == 0).sum()), int((yt == 1).sum())
    u = mannwhitneyu(s[yt == 1], s[yt == 0], alternative="greater")  # U / (n0 n1) is the AUC
    return {"test": "classifier", "model": "HistGradientBoostingClassifier", "auc": float(u.statistic / (n0 * n1)),
            "p_value": float(u.pvalue), "p_adjusted": float(u.pvalue), "rows": [n0, n1], "flagged": False}


def compare(ref: Reference, new: pd.DataFrame, *, alpha: float = ALPHA, min_psi: float = MIN_PSI,
            min_auc: float = MIN_AUC, seed: int = SEED, multivariate: bool = True) -> DriftReport:
    """Compare new rows (typed like the reference: `typed` or `summaries`) with the reference sample."""
    for name, v, lo, hi in (("alpha", alpha, 0, 1), ("min_psi", min_psi, 0, np.inf), ("min_auc", min_auc, 0.5, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise DataError(f"The drift option {name!r} must be a number in [{lo}, {hi}]. Got {v!r} instead.")
    missing = [c for c in ref.frame.columns if c not in new.columns]
    if missing:
        raise DataError(f"The new rows have no column {missing[0]!r}, which the model was trained with; add it.")
    report = DriftReport(True, rows=len(new), reference_rows=len(ref.frame), training_rows=ref.training_rows,
                         features="columns" if ref.modality == "tabular" else
                         "per-row summaries per channel (mean, std, mean absolute step)",
                         alpha=alpha, min_psi=min_psi, min_auc=min_auc)
    if not len(new):
        report.checked, report.note = False, "no new rows to compare"
        return report
    for c in ref.frame.columns:
        r, n = ref.frame[c].to_numpy(), new[c].to_numpy()
        report.columns[c] = numeric_column(r, n) if c in ref.numeric else categorical_column(r, n)
    if multivariate:
        report.multivariate = classifier_test(ref.frame, new[list(ref.frame.columns)], set(ref.categorical), seed)
    mv = report.multivariate if report.multivariate and "p_value" in report.multivariate else None
    adj = holm([d.p_value for d in report.columns.values()] + ([mv["p_value"]] if mv else []))
    for d, a in zip(report.columns.values(), adj):
        d.p_adjusted, d.flagged = float(a), bool(a <= alpha and d.psi >= min_psi)
    if mv:
        mv["p_adjusted"] = float(adj[-1])
        mv["flagged"] = bool(adj[-1] <= alpha and mv["auc"] >= min_auc)
    return report


NO_REFERENCE = ("this model was saved without a sample of its training rows (before drift checks), so drift was "
                "not checked; retrain it to have one")


def check(directories, X, **options) -> DriftReport:
    """Drift of raw features X (what Predictor._features gives) against the first of `directories` that holds a
    reference sample; an unchecked report (its note says why) when none does."""
    ref = next((r for r in (load_reference(d) for d in directories) if r is not None), None)
    if ref is None:
        return DriftReport(False, rows=len(X), note=NO_REFERENCE)
    try:
        new = typed(X, set(ref.numeric), set(ref.categorical), ref.text) if ref.modality == "tabular" else summaries(X)
    except CotuneError:
        raise
    except Exception as err:
        raise DataError(f"The new rows could not be compared with the training rows ({type(err).__name__}: "
                        f"{one_line(err)[:120]}); check them, or skip the drift check.") from None
    return compare(ref, new, **options)
