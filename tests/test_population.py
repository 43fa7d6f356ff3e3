"""The population engine: batched layers, stack/unstack, stacked optimizers and train_population against solo
`train()` runs of the same members (float64: the trained models' loss within 1e-10; float32 within 1e-4)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cotune.config import TrainConfig
from cotune.data.batches import TensorData
from cotune.errors import ConfigError, DataError
from cotune.models import create_model
from cotune.runtime import Runtime
from cotune.search.population.loop import Member, train_population
from cotune.search.population.optim import StackedOptimizer, clip_members
from cotune.search.population.stack import PopulationError, group_by_shape, stack, unstack
from cotune.train import TrainingError, train

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "adagrad")


@pytest.fixture
def dtype64():
    old, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(old)
    torch.set_num_threads(threads)


def data(n=300, shape=(1, 40), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, *shape, generator=g, dtype=torch.get_default_dtype())
    return X, torch.randint(0, classes, (n,), generator=g)


LAYER_CASES = [("mlp", (40,), dict(width=16, depth=2, norm="batch")), ("mlp", (40,), dict(width=16, depth=1, norm="layer")),
               ("mlp", (40,), dict(width=16, depth=2, norm="batch", ensemble=3)),  # the in-model ensemble
               ("cnn1d", (1, 40), dict(width=6, depth=3, norm="batch", pool="flatten")),
               ("cnn1d", (2, 20), dict(width=6, depth=2, norm="layer", kernel_size=3)),
               ("cnn2d", (3, 8, 8), dict(width=4, depth=2, norm="batch")),
               ("cnn2d", (3, 8, 8), dict(width=4, depth=2, norm="none", pool="flatten"))]


@pytest.mark.parametrize("family,shape,kw", LAYER_CASES, ids=lambda v: str(v))
def test_forward_matches_each_member(dtype64, family, shape, kw):
    torch.manual_seed(0)
    models = [create_model(family, shape, 5, dropout=d, **kw) for d in (0.0, 0.3, 0.0)]
    pop = stack(models)
    x = torch.randn(3, 7, *shape)
    for mode in ("eval", "train"):
        for m in [*models, pop]:
            m.train(mode == "train")
        pop.ctx.p = torch.zeros(3)  # train mode without dropout: the members' own forwards, dropout off
        for m in models:
            for d in m.modules():
                if isinstance(d, torch.nn.Dropout):
                    d.p = 0.0
        ref = torch.stack([m(x[k]) for k, m in enumerate(models)])
        assert (pop(x) - ref).abs().max().item() < 1e-12, mode
    for k, m in enumerate(models):  # running statistics included
        back = unstack(pop, k, copy.deepcopy(m))
        for (n, a), b in zip(back.state_dict().items(), m.state_dict().values()):
            assert torch.allclose(a.double(), b.double(), atol=1e-12, rtol=0), n


def test_stack_names_the_knob_that_differs():
    make = lambda **kw: create_model("cnn1d", (1, 40), 5, **{"width": 8, "depth": 2, **kw})  # noqa: E731
    for kw, knob in ((dict(width=9), "model.width"), (dict(depth=3), "model.depth"), (dict(norm="batch"), "model.norm"),
                     (dict(activation="gelu"), "model.activation"), (dict(kernel_size=3), "model.kernel_size"),
                     (dict(pool="flatten"), "model.pool")):
        with pytest.raises(PopulationError, match=knob):
            stack([make(), make(**kw)])
    with pytest.raises(PopulationError, match="model.family"):
        stack([make(), create_model("mlp", (1, 40), 5)])
    with pytest.raises(PopulationError, match="GRU|gru|only mlp"):
        stack([create_model("gru", (4, 10), 5)] * 2)
    with pytest.raises(PopulationError, match="model.ensemble"):
        stack([create_model("mlp", (1, 40), 5, ensemble=2), create_model("mlp", (1, 40), 5, ensemble=3)])
    stack([make(dropout=0.0), make(dropout=0.4)])  # dropout on or off is a per-member rate, not a shape
    models = [make(), make(width=9), make(dropout=0.3), make(norm="batch"), make(width=9, dropout=0.1)]
    assert group_by_shape(models) == [[0, 2], [1, 4], [3]]
    for g in group_by_shape(models):
        stack([models[i] for i in g])


def members_for(name: str, n: int):
    """Three members of one optimizer: different lr, weight decay, betas / momentum, schedules, rows, losses."""
    base = dict(optimizer=name, epochs=5, batch_size=32, patience=0, monitor="loss")
    cfgs = [TrainConfig(**base, lr=3e-3, weight_decay=1e-4),
            TrainConfig(**base, lr=1e-2, weight_decay=0.05, beta1=0.8, beta2=0.99, momentum=0.5, nesterov=name == "sgd",
                        schedule="onecycle", warmup=0.1, grad_clip=0.3, l1=1e-5),
            TrainConfig(**base, lr=5e-3, weight_decay=0.0, momentum=0.0, schedule="step", step_every=2, backbone_lr=0.5,
                        loss="focal", focal_gamma=1.5)]
    g = torch.Generator().manual_seed(1)
    rows = [None, torch.randperm(n, generator=g)[:250], None]  # member 1: fewer rows (padded, masked batches)
    ws = [None, None, torch.rand(n, generator=g, dtype=torch.get_default_dtype()) + 0.5]
    return cfgs, rows, ws


def solo_and_population(name, family="cnn1d", norm="none", **kw):
    X, y = data()
    Xv, yv = data(80, seed=1)
    val = TensorData(Xv, yv)
    cfgs, rows, ws = members_for(name, len(X))
    torch.manual_seed(0)
    models = [create_model(family, (1, 40), 10, width=12, depth=2, norm=norm, dropout=0.0, **kw) for _ in cfgs]
    solo = [copy.deepcopy(m) for m in models]
    res = train_population(models, TensorData(X, y), [Member(c, seed=k, rows=r, w=w, val=val) for k, (c, r, w) in
                                                      enumerate(zip(cfgs, rows, ws))], Runtime(), task="multiclass")
    solo_res = [train(m, TensorData(X if r is None else X[r], y if r is None else y[r], w), val, c, Runtime(),
                      task="multiclass", seed=k) for k, (m, c, r, w) in enumerate(zip(solo, cfgs, rows, ws))]
    return X, y, models, solo, res, solo_res


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_members_match_their_solo_runs_float64(dtype64, name):
    X, y, models, solo, res, solo_res = solo_and_population(name)
    assert res.ticks == 50
    for k in range(3):
        a, b = res.results[k], solo_res[k]
        assert (a.steps, a.best_epoch, len(a.history)) == (b.steps, b.best_epoch, len(b.history))
        # the history's losses are float32 values (train() scores float32 outputs), summed in another order
        for ra, rb in zip(a.history, b.history):
            assert abs(ra["train_loss"] - rb["train_loss"]) <= 1e-6 * max(1.0, abs(rb["train_loss"]))
            assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
        with torch.no_grad():  # the trained models themselves, scored in float64
            la, lb = (F.cross_entropy(m.eval()(X[:100]), y[:100]).item() for m in (models[k], solo[k]))
        assert abs(la - lb) < 1e-10, (k, la, lb)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_in_model_ensemble_members_match_their_solo_runs_float64(dtype64, name):
    """mlp with model.ensemble = 4 and batch norm (it sees every copy of the rows), padded batches included."""
    X, y, models, solo, res, solo_res = solo_and_population(name, family="mlp", norm="batch", ensemble=4)
    for k in range(3):
        a, b = res.results[k], solo_res[k]
        assert (a.steps, a.best_epoch) == (b.steps, b.best_epoch)
        with torch.no_grad():
            la, lb = (F.cross_entropy(m.eval()(X[:100]), y[:100]).item() for m in (models[k], solo[k]))
        assert abs(la - lb) < 1e-10, (k, la, lb)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_members_match_their_solo_runs_float32(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, _, _, _, res, solo_res = solo_and_population(name, family="mlp", norm="layer")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(res.results, solo_res):
        for ra, rb in zip(a.history, b.history):
            for key in ("train_loss", "val_loss"):
                assert abs(ra[key] - rb[key]) <= 1e-4 * max(1.0, abs(rb[key])), key


def test_shrink_keeps_parameters_and_optimizer_state(dtype64):
    torch.manual_seed(0)
    models = [create_model("cnn1d", (1, 40), 5, width=6, depth=2, norm="batch") for _ in range(3)]
    cfgs = [TrainConfig(optimizer="adamw", lr=lr, weight_decay=0.01) for lr in (1e-3, 3e-3, 1e-2)]
    pop = stack(models)
    opt = StackedOptimizer(pop, cfgs)
    x, y = torch.randn(3, 16, 1, 40), torch.randint(0, 5, (3, 16))

    def step(p, o, xs, ys, lrs):
        o.zero_grad()
        F.cross_entropy(p(xs).reshape(-1, 5), ys.reshape(-1), reduction="none").reshape(p.k, -1).mean(1).sum().backward()
        clip_members(p, torch.full((p.k,), 0.5, dtype=torch.float64))
        o.step(torch.tensor(lrs, dtype=torch.float64))

    for _ in range(3):
        step(pop, opt, x, y, [1e-3, 3e-3, 1e-2])
    pop2, opt2 = copy.deepcopy(pop), copy.deepcopy(opt)
    opt2.pop = pop2
    keep = [2, 0]
    pop2.shrink(keep)
    opt2.shrink(keep)
    for (n, a, _), (_, b, _) in zip(pop.stacked(), pop2.stacked()):
        per = a.shape[0] // 3
        assert torch.equal(torch.cat([a[k * per:(k + 1) * per] for k in keep]), b), n
    for n, st in opt.state.items():
        for s, t in st.items():
            assert torch.equal(t[keep], opt2.state[n][s]), (n, s)
    assert torch.equal(opt.steps[keep], opt2.steps)
    # one more step on both: the survivors move exactly as they would have in the full population
    step(pop, opt, x, y, [1e-3, 3e-3, 1e-2])
    step(pop2, opt2, x[keep], y[keep], [1e-2, 1e-3])
    for k, m in zip(keep, range(2)):
        a = unstack(pop, k, copy.deepcopy(models[0])).state_dict()
        b = unstack(pop2, m, copy.deepcopy(models[0])).state_dict()
        assert all(torch.allclose(a[n], b[n], atol=1e-12, rtol=0) for n in a), max((a[n] - b[n]).abs().max() for n in a)


def test_a_failing_member_does_not_stop_the_others(dtype64):
    X, y = data()
    cfgs = [TrainConfig(optimizer="adam", lr=lr, epochs=3, batch_size=64, patience=0) for lr in (1e-3, 3e-3, 1e-2)]
    bad_w = torch.ones(len(X))
    bad_w[5] = float("nan")  # member 1's loss is NaN from its first batch on
    ws = [None, bad_w, None]
    torch.manual_seed(0)
    models = [create_model("mlp", (1, 40), 10, width=16, depth=1, dropout=0.0) for _ in cfgs]
    solo = [copy.deepcopy(m) for m in models]
    seen = []
    res = train_population(models, TensorData(X, y), [Member(c, seed=3, w=w) for c, w in zip(cfgs, ws)], Runtime(),
                           task="multiclass", on_eval=lambda k, epoch, row: seen.append((k, epoch)))
    assert res.results[1] is None and isinstance(res.errors[1], TrainingError)
    assert (1, 1) not in seen and (0, 3) in seen and (2, 3) in seen
    with pytest.raises(TrainingError):
        train(solo[1], TensorData(X, y, bad_w), None, cfgs[1], Runtime(), task="multiclass", seed=3)
    for k in (0, 2):
        b = train(solo[k], TensorData(X, y), None, cfgs[k], Runtime(), task="multiclass", seed=3)
        assert [r["train_loss"] for r in res.results[k].history] == pytest.approx([r["train_loss"] for r in b.history], rel=1e-6)
        with torch.no_grad():
            la, lb = (F.cross_entropy(m(X[:100]), y[:100]).item() for m in (models[k], solo[k]))
        assert abs(la - lb) < 1e-10


def test_early_stopping_and_on_eval_per_member(dtype64):
    """Patience, the on_eval stop and a raising hook end one member each; the population runs on without them."""
    X, y = data(200)
    Xv, yv = data(60, seed=2)
    val = TensorData(Xv, yv)
    cfgs = [TrainConfig(optimizer="sgd", lr=lr, epochs=6, batch_size=50, patience=p) for lr, p in
            ((1e-4, 1), (1e-2, 0), (1e-2, 0), (3e-2, 0))]
    models = [create_model("mlp", (1, 40), 10, width=8, depth=1, dropout=0.0) for _ in cfgs]

    class Pruned(Exception):
        pass

    def hook(k, epoch, row):
        if k == 2 and epoch == 2:
            raise Pruned()
        return k == 1 and epoch == 3

    res = train_population(models, TensorData(X, y), [Member(c, val=val) for c in cfgs], Runtime(), task="multiclass",
                           on_eval=hook)
    assert res.results[1].epochs_run == 3 and res.results[1].stopped_early
    assert res.results[2].epochs_run == 2 and isinstance(res.errors[2], Pruned)
    assert res.results[3].epochs_run == 6 and not res.results[3].stopped_early
    assert all("val_accuracy" in r for r in res.results[3].history)
    assert res.results[0].epochs_run <= 6


def test_population_input_errors():
    cfgs = [TrainConfig(batch_size=32), TrainConfig(batch_size=64)]
    X, y = data(50)
    models = [create_model("mlp", (1, 40), 10, width=8, depth=1) for _ in cfgs]
    with pytest.raises(ConfigError, match="train.batch_size"):
        train_population(models, TensorData(X, y), [Member(c) for c in cfgs], Runtime(), task="multiclass")
    cfgs = [TrainConfig(optimizer="sgd"), TrainConfig(optimizer="adam")]
    with pytest.raises(ConfigError, match="train.optimizer"):
        train_population(models, TensorData(X, y), [Member(c) for c in cfgs], Runtime(), task="multiclass")


def test_own_rows_labels_sampling_and_masked_batch_norm(dtype64):
    """Member 0 on a subset with its own labels, member 1 on balanced-batch sampling, member 2 on every row: batch
    norm over padded batches (member 0 has fewer rows) keeps each member's statistics its solo run's."""
    X, y = data(260)
    g = torch.Generator().manual_seed(4)
    rows = [torch.randperm(260, generator=g)[:200], None, None]
    labels = [torch.randint(0, 10, (200,), generator=g), None, None]
    sampling = [None, torch.rand(260, generator=g, dtype=torch.float64) + 0.1, None]
    cfgs = [TrainConfig(optimizer="adamw", lr=lr, epochs=4, batch_size=48, patience=0) for lr in (1e-3, 3e-3, 1e-2)]
    torch.manual_seed(0)
    models = [create_model("mlp", (1, 40), 10, width=16, depth=2, norm="batch", dropout=0.0) for _ in cfgs]
    solo = [copy.deepcopy(m) for m in models]
    members = [Member(c, seed=7 + k, rows=r, y=lab, sampling=s) for k, (c, r, lab, s) in enumerate(zip(cfgs, rows, labels, sampling))]
    res = train_population(models, TensorData(X, y), members, Runtime(), task="multiclass")
    for k, (m, c, r, lab, s) in enumerate(zip(solo, cfgs, rows, labels, sampling)):
        d = TensorData(X if r is None else X[r], y if lab is None else lab)
        b = train(m, d, None, c, Runtime(), task="multiclass", seed=7 + k, sampling_weights=s)
        assert res.results[k].steps == b.steps
        with torch.no_grad():  # eval mode: the running statistics too
            la, lb = (F.cross_entropy(mm.eval()(X[:100]), y[:100]).item() for mm in (models[k], m))
        assert abs(la - lb) < 1e-10, (k, la, lb)


def test_regression_members(dtype64):
    X, _ = data(200)
    t = (X.reshape(200, -1)[:, :3].sum(1) + 0.1 * torch.randn(200)).float()  # float32 targets, as TensorData.from_numpy
    Xv = X[:50]
    val = TensorData(Xv, t[:50])
    cfgs = [TrainConfig(optimizer="sgd", lr=1e-2, momentum=0.9, epochs=3, batch_size=32, patience=0, loss=loss,
                        huber_delta=delta) for loss, delta in (("mse", 1.0), ("huber", 0.5), ("huber", 2.0))]
    torch.manual_seed(0)
    models = [create_model("mlp", (1, 40), 1, width=8, depth=1, dropout=0.0) for _ in cfgs]
    solo = [copy.deepcopy(m) for m in models]
    res = train_population(models, TensorData(X, t), [Member(c, val=val) for c in cfgs], Runtime(), task="regression",
                           y_scale=2.0)
    for k, (m, c) in enumerate(zip(solo, cfgs)):
        b = train(m, TensorData(X, t), val, c, Runtime(), task="regression", y_scale=2.0)
        for ra, rb in zip(res.results[k].history, b.history):
            assert ra["val_rmse"] == pytest.approx(rb["val_rmse"], rel=1e-9) and ra.keys() == rb.keys()


def test_augmented_member_trains():
    """Augmentation runs on each member's real rows (its draws are not its solo run's: one stream for all)."""
    X, y = data(120)
    aug = lambda x, yb: (x + 0.01 * torch.randn_like(x), yb.flip(0), 0.7)  # noqa: E731 - a mixup-like partner
    cfgs = [TrainConfig(optimizer="adam", lr=1e-3, epochs=2, batch_size=50, patience=0) for _ in range(2)]
    models = [create_model("cnn1d", (1, 40), 10, width=4, depth=1, dropout=0.2) for _ in cfgs]
    res = train_population(models, TensorData(X, y), [Member(cfgs[0], augment=aug), Member(cfgs[1])], Runtime(),
                           task="multiclass")
    assert all(r is not None and len(r.history) == 2 for r in res.results)
    with pytest.raises(DataError, match="no training rows"):
        train_population(models, TensorData(X, y), [Member(TrainConfig()), Member(TrainConfig(), rows=torch.arange(0))],
                         Runtime(), task="multiclass")
