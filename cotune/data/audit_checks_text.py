"""The built-in audit checks of free-text table columns (`Dataset.text`): empty texts, duplicate and
near-duplicate texts, texts shared between the training rows and the held-out rows.

Imported (and so registered) by `cotune.data.audit`. It imports `cotune.data.audit_checks_rows` first,
so these checks come after the column and row checks in `list_checks()` however the modules are imported.

Each check is ``fn(ctx: AuditContext) -> Issues``. They apply to every table (the registry selects by task
and modality only) and report nothing ("No text columns.", severity 'none') on one without text columns.
A row's text is its text columns together. Texts are compared normalized: NFKC, lower case, apostrophes
dropped, any other run of punctuation, symbols or whitespace one space. A text of fewer than
READABLE_WORDS words is the `text_empty` check's and is left out of the others. `text_empty` flags rows of
every part, `text_duplicates` training rows (like `duplicates`; extra['first'] is each one's kept copy),
`text_overlap` validation and test rows (their training twins in extra['train_rows']). data.clean acts on the
last two: duplicates=drop_near drops the flagged training rows, leakage=drop the training twins.

Near duplicates: a MinHash signature (MINHASH_PERMS hash functions, numpy only, deterministic) of each
distinct normalized text over its word SHINGLE-grams, or over its set of words when the texts are short
(median under SHINGLE_ABOVE words: one changed word in 20 leaves 3-grams a Jaccard similarity of 0.71,
the word sets 0.9); LSH banding (bands of BAND_ROWS signature values) proposes candidate pairs, and a pair
is a near duplicate when its signatures estimate a Jaccard similarity >= NEAR_JACCARD. Duplicate groups are
the connected components of those pairs; every row after the first of a group is flagged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cotune.data import audit_checks_rows  # noqa: F401  (the column and row checks register first)
from cotune.data.audit_registry import (CLASSIFICATION, Issues, make_issues, name_list, plural, register_check,
                                        severity, worst)

READABLE_WORDS = 2      # a text of fewer words (after normalization) is too short to read
NEAR_JACCARD = 0.8      # two texts whose word shingles have this estimated Jaccard similarity are near duplicates
SHINGLE = 3             # words per shingle ...
SHINGLE_ABOVE = 50      # ... when the median text has at least this many words; else a text's set of words
MINHASH_PERMS = 128     # MinHash hash functions (the estimate's standard error at 0.8: 0.035)
BAND_ROWS = 6           # LSH: 21 bands of 6 values; a pair at Jaccard 0.8 shares one with probability 0.998
BAND_WINDOW = 8         # LSH: each text is paired with up to this many neighbours in its bucket (a chain in big ones)
MINHASH_SEED = 20240601  # fixed: the same texts give the same signatures whatever the split seed

_SEP = "\ue000"         # between a row's text columns: a token of its own (normalized texts never hold it)


def _none(ctx, name: str) -> Issues:
    return make_issues(ctx, name, examined=len(ctx), fix="", message="No text columns.", text_columns=[])


# ----------------------------------------------------------------------------------------------
# normalized texts and their MinHash signatures (shared by the checks through ctx.memo)


def normalize(s) -> pd.Series:
    """Each cell normalized for comparison: NFKC, lower case, apostrophes dropped, runs of anything but
    letters and digits one space, stripped; missing cells ''."""
    s = pd.Series(s, copy=False).astype(object)
    t = s.where(s.notna(), "").astype(str)
    return (t.str.normalize("NFKC").str.lower().str.replace(r"['\u2019`\u00b4]", "", regex=True)
            .str.replace(r"[\W_]+", " ", regex=True).str.strip())


def _words(t: pd.Series) -> np.ndarray:
    """(N,) words per normalized text (single spaces between them)."""
    return t.str.count(" ").to_numpy(np.int64) + (t != "").to_numpy(np.int64)


def _texts(ctx) -> dict:
    """{'cols': {col: normalized Series}, 'words': {col: (N,) word counts}, 'text': (N,) the row's text,
    'ok': (N,) bool, at least READABLE_WORDS words, 'uid': (N,) int64 id of the distinct text (-1 if not ok),
    'n_unique': how many distinct texts}."""
    if "text" not in ctx.memo:
        X = ctx.ds.X
        cols = {c: normalize(X[c]) for c in ctx.ds.text}
        words = {c: _words(t) for c, t in cols.items()}
        parts = list(cols.values())
        text = parts[0]
        for t in parts[1:]:
            text = text + f" {_SEP} " + t
        if len(parts) > 1:
            text = text.str.replace(r" +", " ", regex=True).str.strip()
        ok = sum(words.values()) >= READABLE_WORDS
        uid = np.full(len(ctx), -1, dtype=np.int64)
        uid[ok], _ = pd.factorize(text.to_numpy(dtype=object)[ok])
        ctx.memo["text"] = {"cols": cols, "words": words, "text": text.to_numpy(dtype=object), "ok": ok, "uid": uid,
                            "n_unique": int(uid.max()) + 1 if ok.any() else 0}
    return ctx.memo["text"]


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _shingles(texts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(owner, hash): one uint64 per word k-gram of each text (its words when k = 1 or the text is shorter),
    grouped by owner (the text's position) in order; every text owns at least one."""
    n_words = np.fromiter((t.count(" ") + 1 for t in texts), dtype=np.int64, count=len(texts))
    codes, vocab = pd.factorize(np.array(" ".join(texts).split(" "), dtype=object))
    h = _mix(pd.util.hash_array(np.asarray(vocab, dtype=object)))[codes]
    owner = np.repeat(np.arange(len(texts)), n_words)
    if k == 1:
        return owner, h
    with np.errstate(over="ignore"):
        g = h[:len(h) - k + 1].copy()
        for j in range(1, k):
            g = _mix(g ^ (h[j:len(h) - k + 1 + j] + np.uint64(j)))
    full = owner[:len(g)] == owner[k - 1:]          # the k words belong to one text
    short = n_words[owner] < k                      # texts of fewer than k words keep their words
    return np.concatenate([owner[:len(g)][full], owner[short]]), np.concatenate([g[full], h[short]])


def _signatures(texts: np.ndarray, k: int) -> np.ndarray:
    """(len(texts), MINHASH_PERMS) uint32 MinHash signatures: per hash function (a * x + b mod 2^64, a odd,
    on the mixed shingle hashes) the top 32 bits of the smallest value over each text's shingles."""
    owner, h = _shingles(texts, k)
    if k > 1:
        order = np.argsort(owner, kind="stable")
        owner, h = owner[order], h[order]
    rng = np.random.default_rng(MINHASH_SEED)
    a = rng.integers(0, 2 ** 63, MINHASH_PERMS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2 ** 63, MINHASH_PERMS, dtype=np.uint64)
    starts = np.searchsorted(owner, np.arange(len(texts)))
    sig = np.empty((len(texts), MINHASH_PERMS), dtype=np.uint32)
    value = np.empty(len(h), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for p in range(MINHASH_PERMS):
            np.multiply(h, a[p], out=value)
            value += b[p]
            sig[:, p] = np.minimum.reduceat(value, starts) >> np.uint64(32)
    return sig


def _near_pairs(ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(u, v, jaccard, k): pairs of distinct texts (ids as in _texts' 'uid', u < v) whose signatures over word
    k-grams estimate a Jaccard similarity >= NEAR_JACCARD, over every part; LSH candidates only."""
    if "text_pairs" not in ctx.memo:
        info = _texts(ctx)
        ok, uid, n_unique = info["ok"], info["uid"], info["n_unique"]
        first = np.zeros(n_unique, dtype=np.int64)
        ids, at = np.unique(uid[ok], return_index=True)    # each distinct text's first row
        first[ids] = np.flatnonzero(ok)[at]
        texts = info["text"][first]
        k = SHINGLE if n_unique and np.median(sum(info["words"].values())[ok]) >= SHINGLE_ABOVE else 1
        sig = _signatures(texts, k) if n_unique > 1 else np.zeros((n_unique, MINHASH_PERMS), dtype=np.uint32)
        us, vs = [], []
        with np.errstate(over="ignore"):
            for s in range(0, MINHASH_PERMS - BAND_ROWS + 1, BAND_ROWS):
                key = np.zeros(n_unique, dtype=np.uint64)
                for j in range(s, s + BAND_ROWS):
                    key = _mix(key ^ sig[:, j].astype(np.uint64))
                order = np.argsort(key, kind="stable")
                sk = key[order]
                for d in range(1, min(BAND_WINDOW, n_unique - 1) + 1):   # a bucket's members d apart
                    same = sk[d:] == sk[:-d]
                    us.append(order[:-d][same])
                    vs.append(order[d:][same])
        u = np.concatenate(us) if us else np.zeros(0, np.int64)
        v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
        m = max(n_unique, 1)
        pair = np.sort(np.minimum(u, v) * m + np.maximum(u, v))
        pair = pair[np.r_[True, pair[1:] != pair[:-1]]] if len(pair) else pair   # each candidate once, u < v
        u, v = pair // m, pair % m
        jac = np.zeros(len(u), dtype=np.float32)
        for s in range(0, len(u), 65536):
            jac[s:s + 65536] = (sig[u[s:s + 65536]] == sig[v[s:s + 65536]]).mean(axis=1)
        near = jac >= NEAR_JACCARD
        ctx.memo["text_pairs"] = (u[near], v[near], jac[near], k)
    return ctx.memo["text_pairs"]


# ----------------------------------------------------------------------------------------------
# checks of text columns


@register_check("text_empty", modalities=("tabular",))
def text_empty(ctx) -> Issues:
    ds = ctx.ds
    if not ds.text:
        return _none(ctx, "text_empty")
    info = _texts(ctx)
    bad = np.zeros((len(ctx), len(ds.text)), dtype=np.float32)
    kinds = {"missing": 0, "empty": 0, "short": 0}
    columns = {}
    for j, c in enumerate(ds.text):
        missing = ds.X[c].isna().to_numpy(dtype=bool)
        words = info["words"][c]
        empty, short = ~missing & (words == 0), ~missing & (words > 0) & (words < READABLE_WORDS)
        bad[:, j] = np.where(missing | empty, 1.0, np.where(short, 0.5, 0.0))
        for kind, m in (("missing", missing), ("empty", empty), ("short", short)):
            kinds[kind] += int(m.sum())
        if (bad[:, j] > 0).any():
            columns[str(c)] = int((bad[:, j] > 0).sum())
    mask = (bad > 0).any(axis=1)
    n = int(mask.sum())
    msg = (f"{plural(n, 'row')} ({n / len(ctx):.1%}) have a missing, empty or one-word text in {name_list(columns)} "
           f"({kinds['missing']} missing, {kinds['empty']} empty or punctuation only, {kinds['short']} of one word): "
           "the model reads little or nothing of them." if n else "No missing, empty or one-word texts.")
    return make_issues(ctx, "text_empty", mask, bad.mean(axis=1), examined=len(ctx), message=msg,
                       fix="fill those texts in, or drop the rows", columns=columns, min_words=READABLE_WORDS, **kinds)


@register_check("text_duplicates", modalities=("tabular",))
def text_duplicates(ctx) -> Issues:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not ctx.ds.text:
        return _none(ctx, "text_duplicates")
    info = _texts(ctx)
    tr = ctx.train_idx[info["ok"][ctx.train_idx]]   # training rows with a text to compare
    uid, n_unique = info["uid"], info["n_unique"]
    u, v, jac, k = _near_pairs(ctx)
    in_train = np.zeros(n_unique, dtype=bool)
    in_train[uid[tr]] = True
    keep = in_train[u] & in_train[v]
    u, v, jac = u[keep], v[keep], jac[keep]
    graph = coo_matrix((np.ones(len(u)), (u, v)), shape=(n_unique, n_unique))
    _, comp = connected_components(graph, directed=False) if n_unique else (0, np.zeros(0, np.int64))
    best = np.zeros(n_unique, dtype=np.float32)     # a text's highest similarity to another training text
    np.maximum.at(best, u, jac)
    np.maximum.at(best, v, jac)
    group = comp[uid[tr]]
    head = np.full(n_unique, len(ctx), dtype=np.int64)
    np.minimum.at(head, group, tr)                  # tr is sorted: the group's first training row
    exact_head = np.full(n_unique, len(ctx), dtype=np.int64)
    np.minimum.at(exact_head, uid[tr], tr)
    first = np.full(len(ctx), -1, dtype=np.int64)
    flag = head[group] != tr
    first[tr[flag]] = head[group][flag]
    exact = flag & (exact_head[uid[tr]] != tr)
    mask = first >= 0
    score = np.zeros(len(ctx), dtype=np.float32)
    score[tr[flag]] = np.where(exact[flag], 1.0, best[uid[tr[flag]]])
    n, n_exact = int(mask.sum()), int(exact.sum())
    groups = len(np.unique(first[mask]))
    conflicting = int((ctx.ds.y[mask] != ctx.ds.y[first[mask]]).sum()) if ctx.ds.task in CLASSIFICATION else 0
    msg = (f"{plural(n, 'training row')} repeat the text of an earlier training row ({n_exact} identical once "
           f"normalized, {n - n_exact} near copies: estimated Jaccard similarity >= {NEAR_JACCARD}) in "
           f"{plural(groups, 'group')}"
           + (f", {conflicting} of them with another label" if conflicting else "")
           + "; dropping them keeps one text of each." if n else "No duplicate or near-duplicate training texts.")
    return make_issues(ctx, "text_duplicates", mask, score, examined=len(ctx.train_idx), message=msg,
                       fix="data.clean.duplicates=drop_near",
                       exact=n_exact, near=n - n_exact, groups=groups, conflicting_labels=conflicting,
                       threshold=NEAR_JACCARD, shingle=k, text_columns=list(ctx.ds.text),
                       extra={"first": first})


@register_check("text_overlap", modalities=("tabular",))
def text_overlap(ctx) -> Issues:
    if not ctx.ds.text:
        return _none(ctx, "text_overlap")
    info = _texts(ctx)
    ok, uid, n_unique = info["ok"], info["uid"], info["n_unique"]
    tr = ctx.train_idx[ok[ctx.train_idx]]
    held = np.concatenate([ctx.val_idx, ctx.test_idx])
    held = np.sort(held[ok[held]])
    u, v, jac, _ = _near_pairs(ctx)
    in_train = np.zeros(n_unique, dtype=bool)
    in_train[uid[tr]] = True
    exact = np.zeros(n_unique, dtype=np.float32)
    exact[in_train] = 1.0                           # a held-out text equal to a training text
    near = np.zeros(n_unique, dtype=np.float32)     # its highest similarity to a training text
    twin = np.zeros(n_unique, dtype=bool)           # training texts near a held-out one
    held_text = np.zeros(n_unique, dtype=bool)
    held_text[uid[held]] = True
    for a, b in ((u, v), (v, u)):
        hit = in_train[b] & held_text[a]
        np.maximum.at(near, a[hit], jac[hit])
        twin[b[hit]] = True
    s = np.maximum(exact, near)[uid[held]]
    hit_held = held[s > 0]
    twin |= in_train & held_text
    train_rows = tr[twin[uid[tr]]]
    mask, score = np.zeros(len(ctx), dtype=bool), np.zeros(len(ctx), dtype=np.float32)
    mask[hit_held] = True
    score[held] = s
    per = {p: int((mask & (ctx.part == p)).sum()) for p in ("val", "test")}
    n = per["val"] + per["test"]
    n_exact = int((exact[uid[held]] > 0).sum())
    n_held = len(ctx.val_idx) + len(ctx.test_idx)
    share = n / n_held if n_held else 0.0
    msg = (f"{per['val']} validation and {per['test']} test rows share their text with "
           f"{plural(len(train_rows), 'training row')} ({n_exact} identical once normalized, {n - n_exact} near "
           "copies), so held-out scores overstate performance on new texts." if n
           else "No validation or test text repeats a training text.")
    return make_issues(ctx, "text_overlap", mask, score, examined=n_held, message=msg,
                       sev=worst(severity(share), "medium") if n else "none",
                       fix="data.clean.leakage=drop",
                       val=per["val"], test=per["test"], exact=n_exact, near=n - n_exact,
                       train_twins=int(len(train_rows)), text_columns=list(ctx.ds.text),
                       extra={"train_rows": train_rows, "heldout_rows": hit_held})
