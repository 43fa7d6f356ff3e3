"""Tables end to end: embedded categoricals, numeric embeddings and the in-model ensemble through a real run,
its bundle and the scaling study's model sizes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import cotune
from cotune import evaluate
from cotune.config import from_dict
from cotune.data.split import split_indices
from cotune.pipeline import load_data, model_inputs
from cotune.scale.grid import model_cost

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 600
    city = rng.choice([f"c{i}" for i in range(30)], n)  # 30 categories: embedded above data.embed_above=8
    x = rng.normal(size=n)
    df = pd.DataFrame({"x": x, "z": rng.exponential(size=n), "city": city, "kind": rng.choice(["a", "b"], n),
                       "y": np.where(x + (pd.Series(city).str[1:].astype(int) % 3 == 0) > 0.5, "yes", "no")})
    path = tmp_path_factory.mktemp("t") / "t.csv"
    df.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("emb,k", [("piecewise", 2), ("periodic", 1), ("none", 3)])
def test_a_table_run_embeds_and_its_bundle_predicts_what_was_scored(tmp_path, table, emb, k):
    cfg = from_dict({"data": {"source": table, "target": "y", "numeric": "robust"}, "train": {"epochs": 3},
                     "model": {"num_embedding": emb, "ensemble": k, "width": 16}, "runtime": {"progress": False},
                     "out": str(tmp_path / "r")})
    res = cotune.train(cfg)
    spec = json.loads((res.path / "model.json").read_text())
    layout = spec["kwargs"]["layout"]
    assert layout["cardinalities"] == [31] and layout["onehot"] == 2 and layout["numeric"] == 2  # kind one-hot, city a code
    ds = load_data(cfg)
    _, _, te = split_indices(ds, val=0.15, test=0.15, seed=0)
    proba = cotune.load(res.path).predict_proba(ds.X.iloc[te])
    assert evaluate.score("log_loss", ds.y[te], proba, "binary") == pytest.approx(res.test["log_loss"], rel=1e-5)
    in_shape, out_dim, lay = model_inputs(cfg)
    assert lay == layout and in_shape == tuple(spec["in_shape"])
    assert model_cost(cfg, cfg.model.width, (in_shape, out_dim, lay))[0] == res.n_params  # the scaling study sizes it right
