"""Structured pruning over every prunable registered model and a spread of knobs: keep=1 is the same model,
pruning away channels that carry nothing reproduces the outputs (so every slice lines up), keep=0.5 shrinks
the model, and the families or models it cannot prune say so in one line."""
from itertools import product

import pytest
import torch

from cotune.errors import ModelError
from cotune.models import FAMILIES, create_model, list_models
from cotune.models.prune import plan, prunable, prune
from cotune.models.registry import family_of, n_params

torch.set_num_threads(1)

SEQ, IMG, TAB, OUT = (2, 12), (3, 8, 8), (7,), 3
LAYOUT = {"numeric": 3, "onehot": 2, "cardinalities": [4, 5], "bins": [[-1.0, 0.0, 1.0], [0.0, 1.0], [-1.0, 0.0, 1.0]]}
SHAPE = {"cnn2d": IMG}


def knob_cases() -> list:
    """(model name, input shape, kwargs): every registered model with its preset, then the knobs that change
    which tensors a channel reaches (norms, pools, depth, directions, the ensemble head, a table layout)."""
    cases = [(n, SHAPE.get(family_of(n), SEQ), {}) for n in list_models() if prunable(n)]
    for depth, norm in product((1, 2, 3), ("none", "batch", "layer")):
        cases.append(("mlp", TAB, {"width": 8, "depth": depth, "norm": norm, "dropout": 0.1}))
    cases += [("mlp", TAB, {"width": 8, "depth": 2, "ensemble": 4, "norm": "batch"}),
              ("mlp", TAB, {"width": 8, "depth": 2, "layout": LAYOUT, "num_embedding": "piecewise"}),
              ("mlp", TAB, {"width": 8, "depth": 1, "layout": LAYOUT, "num_embedding": "periodic", "ensemble": 4,
                            "norm": "layer"})]
    for fam, shape in (("cnn1d", SEQ), ("cnn2d", IMG)):
        for depth, norm, pool in product((1, 3), ("none", "batch", "layer"), ("mean", "flatten")):
            cases.append((fam, shape, {"width": 4, "depth": depth, "norm": norm, "pool": pool, "dropout": 0.1}))
    for fam, depth, bi, pool in product(("gru", "lstm"), (1, 2), (False, True), ("last", "mean", "flatten")):
        cases.append((fam, SEQ, {"width": 6, "depth": depth, "bidirectional": bi, "pool": pool}))
    return cases


CASES = knob_cases()
IDS = [f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items() if k != "layout") + ("-layout" if "layout" in kw else "")
       for n, _, kw in CASES]


def build(name, shape, kw, seed=0):
    torch.manual_seed(seed)
    return create_model(name, shape, OUT, **kw).eval()


def randomize_norms(model, groups):
    """Norms as after training (gamma, beta and running statistics away from their initial 1 / 0), so that a
    wrongly sliced one shows in the outputs."""
    sd = model.state_dict()
    g = torch.Generator().manual_seed(1)
    for s in (s for grp in groups for s in grp.slots):
        t = sd[s.key]
        if s.role == "gamma" or s.key.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif s.role == "beta" or s.key.endswith("running_mean"):
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def make_half_removable(model, groups, seed=0):
    """In every group pick a random kept half K; make each unit of the other half D output exactly 0 and rank
    lowest. With a norm, a unit of D copies the incoming weights of its partner in K (so a norm over the whole
    layer sees the same statistics over all units as over K alone) and gets gamma = beta = 0; without one, its
    incoming weights and biases are 0 (a GRU / LSTM unit with all-zero gate rows stays at h = 0)."""
    sd = model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for grp in groups:
        perm = torch.randperm(grp.size, generator=gen)
        k, d = perm[:grp.size // 2], perm[grp.size // 2:]
        kept[grp.name] = k.sort().values
        normed = any(s.role == "gamma" for s in grp.slots)
        for s in grp.slots:
            t = sd[s.key]
            di, ki = s.spread(d, grp.size).flatten(), s.spread(k, grp.size).flatten()
            if s.role in ("gamma", "beta") or (s.role in ("w_in", "b_in") and not normed):
                t.index_fill_(s.dim, di, 0.0)
            elif s.role in ("w_in", "b_in"):
                t.index_copy_(s.dim, di, t.index_select(s.dim, ki))
    return kept


def inputs(shape, n=6):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name,shape,kw", CASES, ids=IDS)
def test_keep_one_is_the_same_model(name, shape, kw):
    model = build(name, shape, kw)
    randomize_norms(model, plan(model, name))
    same, new_kw = prune(model, name, kw, shape, OUT, 1.0)
    x = inputs(shape)
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x), atol=1e-6, rtol=0)
    assert not same.training and new_kw["width"] == plan(model, name)[0].size


@pytest.mark.parametrize("name,shape,kw", CASES, ids=IDS)
def test_pruning_away_silent_channels_keeps_the_outputs(name, shape, kw):
    model = build(name, shape, kw)
    groups = plan(model, name)
    randomize_norms(model, groups)
    kept = make_half_removable(model, groups)
    x = inputs(shape)
    with torch.no_grad():
        want = model(x)
    narrow, _ = prune(model, name, kw, shape, OUT, 0.5)  # the default importance finds the silent half
    assert {g.name: g.size for g in plan(narrow, name)} == {g.name: g.size // 2 for g in groups}
    with torch.no_grad():
        torch.testing.assert_close(narrow(x), want, atol=1e-5, rtol=1e-5)
    # an explicit importance that keeps the same units gives the same model
    scores = {g.name: torch.zeros(g.size).index_fill_(0, kept[g.name], 1.0) for g in groups}
    again, _ = prune(model, name, kw, shape, OUT, 0.5, importance=scores)
    for key, t in narrow.state_dict().items():
        assert torch.equal(t, again.state_dict()[key]), key


@pytest.mark.parametrize("name,shape,kw", CASES, ids=IDS)
def test_half_width_shrinks_and_rebuilds_from_its_kwargs(name, shape, kw):
    model = build(name, shape, kw)
    narrow, new_kw = prune(model.train(), name, kw, shape, OUT, 0.5)
    assert narrow.training
    # hidden-to-hidden weights shrink 4x, the first layer and the head 2x; embeddings and biases stay
    hidden = len(plan(model, name)) >= 2 and kw.get("ensemble", 1) == 1
    bound = 1.0 if "layout" in kw else 0.5 if hidden else 0.55
    assert n_params(narrow) < n_params(model) and n_params(narrow) <= bound * n_params(model)
    x = inputs(shape)
    loaded = create_model(name, shape, OUT, **new_kw)
    loaded.load_state_dict(narrow.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), narrow.eval()(x))
    assert {k: v for k, v in new_kw.items() if k != "width"} == {k: v for k, v in kw.items() if k != "width"}


def test_widths_round_and_follow_each_familys_stages():
    model = create_model("cnn2d", IMG, OUT, width=6, depth=3)  # stages 6, 12, 24
    narrow, kw = prune(model, "cnn2d", {"width": 6, "depth": 3}, IMG, OUT, 0.25)
    assert kw["width"] == 2 and [g.size for g in plan(narrow, "cnn2d")] == [2, 2, 4, 4, 8, 8]
    narrow, kw = prune(create_model("mlp_m", TAB, OUT), "mlp_m", {}, TAB, OUT, 0.75)  # a preset's width
    assert kw == {"width": 96} and [g.size for g in plan(narrow, "mlp_m")] == [96, 96]
    assert prune(create_model("gru", SEQ, OUT, width=1), "gru", {"width": 1}, SEQ, OUT, 0.25)[1]["width"] == 1


def test_what_cannot_be_pruned_says_so_in_one_line():
    assert [f for f in FAMILIES if not prunable(f)] == ["transformer"] and prunable("lstm_s")
    cases = [(create_model("transformer", SEQ, OUT, width=8), "transformer", SEQ, {"width": 8}, "not available for"),
             (create_model("mlp", TAB, OUT, depth=0), "mlp", TAB, {"depth": 0}, "no hidden units to prune"),
             (create_model("mlp", TAB, OUT), "cnn1d", TAB, {}, "model to prune as 'cnn1d' must be a CNN1D"),
             (create_model("mlp", TAB, OUT, depth=3), "mlp", TAB, {}, "not what create_model"),
             (create_model("cnn1d", SEQ, OUT, pool="flatten"), "cnn1d", SEQ, {}, "not what create_model")]
    for model, name, shape, kw, msg in cases:
        with pytest.raises(ModelError, match=msg) as err:
            prune(model, name, kw, shape, OUT, 0.5)
        assert "\n" not in str(err.value)
    kw = {"width": 8, "depth": 1}
    model = create_model("mlp", TAB, OUT, **kw)
    for keep in (0.0, 1.5, True, "half"):
        with pytest.raises(ModelError, match="'keep' must be a number in"):
            prune(model, "mlp", kw, TAB, OUT, keep)
    with pytest.raises(ModelError, match="importance key must be a channel group"):
        prune(model, "mlp", kw, TAB, OUT, 0.5, importance={"net.9": torch.ones(8)})
    with pytest.raises(ModelError, match="8 scores"):
        prune(model, "mlp", kw, TAB, OUT, 0.5, importance={"net.1": torch.ones(3)})
