"""Free-text table columns: a tokenizer trained on the training rows only, and the texts as token ids.

    tok = fit_tokenizer(texts, kind="bpe", vocab_size=4000)   # the training rows' texts only
    ids = encode(tok, texts, length=64)                        # (N, 64) int64: 0 = padding, 1 = unknown
    state = tokenizer_state(tok); tok = load_tokenizer(state)  # plain JSON (the tokenizers library's own)
    X = hashed_words(texts)                                    # (N, HASH_FEATURES) for models without a layout

Tokenizers (the `tokenizers` library): 'bpe' (byte-pair encoding), 'wordpiece' (BERT's subwords) or
'word' (whole words, the vocab_size - 2 most frequent). Every one lower-cases and NFKC-normalizes, then
splits on whitespace and punctuation; the special tokens '[PAD]' and '[UNK]' are ids 0 and 1, so a text
with nothing the vocabulary knows (a word only validation or test rows hold, for 'word') encodes to 1s
and an empty or missing text to all 0s. Texts longer than `length` tokens are cut at the end.

Models that do not read a table layout get each text column as HASH_FEATURES hashed word unigram and bigram
counts instead (L2-normalized; scikit-learn's HashingVectorizer: stateless, so nothing is fitted).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

TOKENIZERS = ("bpe", "wordpiece", "word")
PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1
HASH_FEATURES = 512
# the library's Rust thread pool would take every core; cotune sets its threads itself (runtime.threads)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def text_values(s) -> list[str]:
    """A column's cells as strings: missing -> '', anything else str()."""
    s = pd.Series(s)
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v)
            for v in s.astype(object).tolist()]


def fit_tokenizer(texts: list[str], kind: str = "bpe", vocab_size: int = 4000):
    """A tokenizer of `kind` trained on `texts` (the training rows' texts only), vocabulary <= vocab_size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {kind!r}")
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
    from tokenizers import Tokenizer
    return Tokenizer.from_str(json.dumps(state))


def hashed_words(texts: list[str], n_features: int = HASH_FEATURES) -> np.ndarray:
    """(N, n_features) float32: hashed word unigram + bigram counts, each row L2-normalized (empty -> 0s)."""
    from sklearn.feature_extraction.text import HashingVectorizer
    vec = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    return vec.transform(list(texts)).toarray().astype(np.float32)


# ---- the Preprocessor's text state: one dict per column, {"name", "hash": n} or
# {"name", "length", "vocab", "tokenizer": the library's JSON}
def fit_texts(df: pd.DataFrame, columns, embed: bool, kind: str, vocab_size: int, length: int) -> tuple[list, dict]:
    """(states, {column: tokenizer}) for the text `columns` of the training rows `df`."""
    states, tokenizers = [], {}
    for col in columns:
        if not embed:
            states.append({"name": str(col), "hash": HASH_FEATURES})
            continue
        tok = tokenizers[str(col)] = fit_tokenizer(text_values(df[col]), kind, vocab_size)
        states.append({"name": str(col), "length": int(length), "vocab": tok.get_vocab_size(),
                       "tokenizer": tokenizer_state(tok)})
    return states, tokenizers


def text_state(c: dict) -> dict:
    """One column's saved state, checked (ValueError / KeyError when it is not one)."""
    if "hash" in c:
        return {"name": str(c["name"]), "hash": int(c["hash"])}
    if not isinstance(c["tokenizer"], dict) or int(c["length"]) < 1 or int(c["vocab"]) < 2:
        raise ValueError(f"the text column {c['name']!r} needs a tokenizer, a length >= 1 and a vocabulary >= 2")
    return {"name": str(c["name"]), "length": int(c["length"]), "vocab": int(c["vocab"]), "tokenizer": c["tokenizer"]}


def transform_texts(X: pd.DataFrame, states: list, tokenizers: dict) -> tuple[np.ndarray, np.ndarray]:
    """(hashed word counts (N, sum of 'hash'), token ids (N, sum of 'length')) of the table X's text columns."""
    hashed, tokens = [np.zeros((len(X), 0), np.float32)], [np.zeros((len(X), 0), np.int64)]
    for c in states:
        texts = text_values(X[c["name"]])
        if "hash" in c:
            hashed.append(hashed_words(texts, c["hash"]))
        else:
            tok = tokenizers.get(c["name"]) or tokenizers.setdefault(c["name"], load_tokenizer(c["tokenizer"]))
            tokens.append(encode(tok, texts, c["length"]))
    return np.concatenate(hashed, 1), np.concatenate(tokens, 1)
