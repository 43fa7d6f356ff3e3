"""Free-text table columns: a tokenizer trained on the training rows only, and the texts as token ids.

    tok = fit_tokenizer(texts, kind="bpe", vocab_size=4000)   # the training rows' texts only
    ids = encode(tok, texts, length=64)                        # (N, 64) int64: 0 = padding, 1 = unknown
    state = tokenizer_state(tok); tok = load_tokenizer(state)  # plain JSON (the tokenizers library's own)
    X = hashed_words(texts)                                    # (N, HASH_FEATURES) for models without a layout

Tokenizers (the `tokenizers` library): 'bpe' (byte-pair encoding), 'wordpiece' (BERT's subwords) or
'word' (whole words, the vocab_size - 2 most frequent). 'ngrams' is a bag instead of a sequence, fastText's
input with the classic TF-IDF weights: the word 1-2-grams (a quarter of vocab_size, the most frequent) and
character 2-5-grams within word boundaries (the rest) of the training texts, each weighted by its sublinear
TF-IDF (scikit-learn's TfidfVectorizer, fitted on the training rows; vocabulary and idf saved), a text's
`length` heaviest n-grams kept as ids (2 + the n-gram's index), their weights L2-normalized beside them. The
tokenizers NFKC-normalize and lower-case, then split on whitespace and punctuation ('ngrams' lower-cases and
splits as scikit-learn does, without NFKC); the special tokens '[PAD]' and '[UNK]' are ids 0 and 1, so a text
with nothing the vocabulary knows (a word only validation or test rows hold, for 'word') encodes to 1s
and an empty or missing text to all 0s. Texts longer than `length` tokens are cut at the end.

Models that do not read a table layout get each text column as HASH_FEATURES hashed word unigram and bigram
counts instead (L2-normalized; scikit-learn's HashingVectorizer: stateless, so nothing is fitted).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict

import numpy as np
import pandas as pd

TOKENIZERS = ("bpe", "wordpiece", "word", "ngrams")
NGRAMS = {"word": {"ngram_range": (1, 2)}, "char": {"analyzer": "char_wb", "ngram_range": (2, 5)}}
PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1
HASH_FEATURES = 512
# the library's Rust thread pool would take every core, and it warns after a fork (search workers); a user's
# own setting stands
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def text_values(s) -> list[str]:
    """A column's cells as strings: missing -> '', anything else str()."""
    s = pd.Series(s)
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v)
            for v in s.astype(object).tolist()]


COUNTS_KEPT = 4  # n-gram count matrices memoized per process: a search's trials share them (train, all rows; 2 parts)
_counts_memo: OrderedDict = OrderedDict()
_counts_lock = threading.Lock()


def _counts(part: str, texts: list[str]):
    """(every n-gram of `part` in `texts`, sorted; their (N, n-grams) int64 counts, CSR), memoized on the texts'
    content: the search's trials fit and encode the same texts under many vocabulary sizes."""
    from sklearn.feature_extraction.text import CountVectorizer
    digest = hashlib.blake2b(digest_size=16)
    for t in texts:
        digest.update(len(t).to_bytes(8, "little") + t.encode("utf-8", "surrogatepass"))
    key = (part, len(texts), digest.hexdigest())
    with _counts_lock:
        if key in _counts_memo:
            _counts_memo.move_to_end(key)
            return _counts_memo[key]
    vec = CountVectorizer(**NGRAMS[part])  # the TfidfVectorizer defaults: lower-cased, the same analyzers
    try:
        X = vec.fit_transform(texts).tocsr()
        terms = vec.get_feature_names_out().tolist()
    except ValueError:  # no n-gram at all (every text empty)
        import scipy.sparse as sp
        X, terms = sp.csr_matrix((len(texts), 0), dtype=np.int64), []
    with _counts_lock:
        _counts_memo[key] = (terms, X)
        while len(_counts_memo) > COUNTS_KEPT:
            _counts_memo.popitem(last=False)
    return terms, X


def fit_ngrams(texts: list[str], vocab_size: int) -> dict:
    """The 'ngrams' state: {'word' / 'char': {'vocabulary': {n-gram: index}, 'idf': [...]}} of the training texts:
    per part its most frequent n-grams (a quarter of vocab_size - 2 word n-grams, the rest character n-grams,
    ties as scikit-learn's max_features breaks them), indexed in sorted order, with the smoothed idf
    log((1 + n) / (1 + df)) + 1: what TfidfVectorizer(sublinear_tf=True, max_features=...) fits."""
    size = vocab_size - 2
    sizes = {"word": max(1, size // 4), "char": max(1, size - size // 4)}
    state = {}
    for part in NGRAMS:
        terms, X = _counts(part, texts)
        tfs = np.asarray(X.sum(axis=0)).ravel()
        keep = np.arange(len(terms)) if len(terms) <= sizes[part] else np.sort((-tfs).argsort()[:sizes[part]])
        df = np.bincount(X.indices, minlength=len(terms))[keep]
        state[part] = {"vocabulary": {terms[j]: i for i, j in enumerate(keep.tolist())},
                       "idf": (np.log((1 + X.shape[0]) / (1 + df)) + 1).tolist()}
    return state


def _tfidf(part: str, state: dict, texts: list[str]):
    """(N, len(vocabulary)) sublinear TF-IDF of `texts` over a fitted part's vocabulary, each row L2-normalized."""
    import scipy.sparse as sp
    terms, X = _counts(part, texts)
    vocab, idf = state["vocabulary"], np.asarray(state["idf"], dtype=np.float64)
    to = np.array([vocab.get(t, -1) for t in terms], dtype=np.int64)
    X = X.tocoo()
    known = to[X.col] >= 0  # an n-gram the training rows lacked counts for nothing
    cols = to[X.col[known]]
    data = (1 + np.log(X.data[known].astype(np.float64))) * idf[cols]
    T = sp.csr_matrix((data, (X.row[known], cols)), shape=(len(texts), len(vocab)))
    norm = np.sqrt(np.asarray(T.multiply(T).sum(axis=1)).ravel())
    return sp.diags(1 / np.where(norm > 0, norm, 1.0)) @ T


def encode_ngrams(state: dict, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, length) int64, weights (N, length) float32) of each text's `length` heaviest n-grams."""
    import scipy.sparse as sp
    parts = [_tfidf(part, state[part], texts) for part in NGRAMS if state[part]["vocabulary"]]
    X = sp.hstack(parts).tocsr().astype(np.float32) if parts else sp.csr_matrix((len(texts), 0), dtype=np.float32)
    X.sort_indices()
    ids, weights = np.zeros((len(texts), length), np.int64), np.zeros((len(texts), length), np.float32)
    for i in range(X.shape[0]):
        a, b = X.indptr[i], X.indptr[i + 1]
        top = np.argsort(-X.data[a:b], kind="stable")[:length]
        ids[i, :len(top)], weights[i, :len(top)] = X.indices[a:b][top] + 2, X.data[a:b][top]
    norm = np.linalg.norm(weights, axis=1, keepdims=True)
    return ids, weights / np.where(norm > 0, norm, 1.0)


def ngram_vocab(state: dict) -> int:
    return 2 + sum(len(state[p]["vocabulary"]) for p in NGRAMS)


def fit_tokenizer(texts: list[str], kind: str = "bpe", vocab_size: int = 4000):
    """A tokenizer of `kind` trained on `texts` (the training rows' texts only), vocabulary <= vocab_size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    if kind not in TOKENIZERS or kind == "ngrams":
        raise ValueError(f"tokenizer must be one of {TOKENIZERS[:3]}, got {kind!r}")
    specials = [PAD, UNK]
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    else:
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(texts), trainer=trainer)
    if tok.token_to_id(PAD) != 0 or tok.token_to_id(UNK) != 1:
        raise RuntimeError("the tokenizer did not put [PAD] and [UNK] first")
    return tok


def encode(tok, texts: list[str], length: int) -> np.ndarray:
    """(N, length) int64 token ids: each text's first `length` tokens, then padding (0)."""
    out = np.zeros((len(texts), length), dtype=np.int64)
    for i, enc in enumerate(tok.encode_batch(list(texts), add_special_tokens=False)):
        ids = enc.ids[:length]
        out[i, :len(ids)] = ids
    return out


def tokenizer_state(tok) -> dict:
    """The tokenizer as the library's own JSON (a dict), to embed in preprocess.json."""
    return json.loads(tok.to_str())


def load_tokenizer(state: dict):
    """The tokenizer back from tokenizer_state(); a damaged state is a ValueError (the library raises a bare Exception)."""
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_str(json.dumps(state))
    except Exception as e:  # noqa: BLE001 - tokenizers' errors are plain Exceptions
        raise ValueError(f"the tokenizer does not load: {' '.join(str(e).split())}") from None


def hashed_words(texts: list[str], n_features: int = HASH_FEATURES) -> np.ndarray:
    """(N, n_features) float32: hashed word unigram + bigram counts, each row L2-normalized (empty -> 0s)."""
    from sklearn.feature_extraction.text import HashingVectorizer
    vec = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    return vec.transform(list(texts)).toarray().astype(np.float32)


# ---- the Preprocessor's text state: one dict per column, {"name", "hash": n},
# {"name", "length", "vocab", "tokenizer": the library's JSON} or {"name", "length", "vocab", "ngrams": state}
def fit_texts(df: pd.DataFrame, columns, embed: bool, kind: str, vocab_size: int, length: int) -> tuple[list, dict]:
    """(states, {column: tokenizer}) for the text `columns` of the training rows `df`."""
    states, tokenizers = [], {}
    for col in columns:
        if not embed:
            states.append({"name": str(col), "hash": HASH_FEATURES})
            continue
        if kind == "ngrams":
            ngrams = fit_ngrams(text_values(df[col]), vocab_size)
            states.append({"name": str(col), "length": int(length), "vocab": ngram_vocab(ngrams), "ngrams": ngrams})
            continue
        tok = tokenizers[str(col)] = fit_tokenizer(text_values(df[col]), kind, vocab_size)
        states.append({"name": str(col), "length": int(length), "vocab": tok.get_vocab_size(),
                       "tokenizer": tokenizer_state(tok)})
    return states, tokenizers


def text_state(c: dict) -> dict:
    """One column's saved state, checked (ValueError / KeyError when it is not one)."""
    if "hash" in c:
        return {"name": str(c["name"]), "hash": int(c["hash"])}
    if "ngrams" in c:
        ngrams = {p: {"vocabulary": {str(k): int(v) for k, v in c["ngrams"][p]["vocabulary"].items()},
                      "idf": [float(v) for v in c["ngrams"][p]["idf"]]} for p in NGRAMS}
        if any(len(ngrams[p]["idf"]) != len(ngrams[p]["vocabulary"]) for p in NGRAMS) or int(c["length"]) < 1:
            raise ValueError(f"the text column {c['name']!r} needs an idf per n-gram and a length >= 1")
        return {"name": str(c["name"]), "length": int(c["length"]), "vocab": ngram_vocab(ngrams), "ngrams": ngrams}
    if not isinstance(c["tokenizer"], dict) or int(c["length"]) < 1 or int(c["vocab"]) < 2:
        raise ValueError(f"the text column {c['name']!r} needs a tokenizer, a length >= 1 and a vocabulary >= 2")
    return {"name": str(c["name"]), "length": int(c["length"]), "vocab": int(c["vocab"]), "tokenizer": c["tokenizer"]}


def token_columns(text: dict) -> int:
    """How many feature columns a text column of a table layout takes: its `length` ids, and as many n-gram
    weights after them for a weighted one ('ngrams')."""
    return text["length"] * (2 if text.get("weighted") else 1)


def token_spans(pre) -> list[tuple[int, int, int]]:
    """(start, ids, width) of each text column's tokens in a fitted tabular Preprocessor's features: the last columns,
    an 'ngrams' text's weights after its ids (width 2 * ids)."""
    texts = (getattr(pre, "layout_", None) or {}).get("text") or []
    widths = [token_columns(t) for t in texts]
    starts = pre.in_shape_[0] - sum(widths) + np.cumsum([0] + widths[:-1])
    return [(int(a), t["length"], w) for a, t, w in zip(starts, texts, widths)]


def whole_mask(pre) -> np.ndarray:
    """Bool per feature of a fitted tabular Preprocessor: the columns a synthetic row (SMOTE, mixup) takes whole
    from one real row instead of blending two: categorical codes, token ids and their n-gram weights."""
    mask = np.array(pre.integer_mask_, dtype=bool)
    for a, _, width in token_spans(pre):
        mask[a:a + width] = True
    return mask


def transform_texts(X: pd.DataFrame, states: list, tokenizers: dict) -> tuple[np.ndarray, np.ndarray]:
    """(hashed word counts (N, sum of 'hash'), token ids [+ n-gram weights]) of the table
    X's text columns."""
    hashed, tokens = [np.zeros((len(X), 0), np.float32)], [np.zeros((len(X), 0), np.float32)]
    for c in states:
        texts = text_values(X[c["name"]])
        if "hash" in c:
            hashed.append(hashed_words(texts, c["hash"]))
        elif "ngrams" in c:
            tokens.extend(encode_ngrams(c["ngrams"], texts, c["length"]))
        else:
            tok = tokenizers.get(c["name"]) or tokenizers.setdefault(c["name"], load_tokenizer(c["tokenizer"]))
            tokens.append(encode(tok, texts, c["length"]))
    return np.concatenate(hashed, 1), np.concatenate(tokens, 1)


def text_summaries(column: str, values) -> dict:
    """What drift compares a text column on (cotune.drift): {'<column>.words': word counts,
    '<column>.word_length': mean characters per word (0 without words)}."""
    words = [t.split() for t in text_values(values)]
    n = np.array([len(w) for w in words], dtype=np.float64)
    chars = np.array([sum(map(len, w)) for w in words], dtype=np.float64)
    return {f"{column}.words": n, f"{column}.word_length": np.divide(chars, n, out=np.zeros_like(n), where=n > 0)}
