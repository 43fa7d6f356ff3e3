"""The noise-robust losses (train.loss = gce / sce): their values against hand computation, per-sample weights,
ensemble outputs, training with them, their rejection on regression, and their place in the search space."""
from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import FixedTrial

import cotune
from cotune.config import TrainConfig, explicit, from_dict
from cotune.data.batches import TensorData
from cotune.errors import ConfigError
from cotune.models import create_model
from cotune.runtime import Runtime
from cotune.search.space import search_space, start_params, suggest
from cotune.train import check_config, compute_loss, train

RT = Runtime.resolve("cpu", "fp32", 1)
F = torch.nn.functional


def loss_of(logits, label, loss, **knobs) -> float:
    out, y = torch.tensor([logits], dtype=torch.float32), torch.tensor([label])
    return compute_loss(out, y, None, loss, TrainConfig(**knobs)).item()


def test_gce_and_sce_match_hand_computed_values():
    # logits (0, 0): p_y = 1/2
    assert loss_of([0.0, 0.0], 0, "gce", gce_q=1.0) == pytest.approx(0.5)                  # (1 - 0.5) / 1
    assert loss_of([0.0, 0.0], 1, "gce", gce_q=0.5) == pytest.approx((1 - 0.5 ** 0.5) / 0.5)  # 0.585786
    assert loss_of([0.0, 0.0], 0, "sce", sce_alpha=0.1, sce_beta=1.0) == pytest.approx(0.1 * math.log(2) + 4 * 0.5)
    # logits (2, 0, 0): p_0 = e^2 / (e^2 + 2) = 0.786986, p_1 = 1 / (e^2 + 2) = 0.106507
    p0, p1 = math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2)
    assert p0 == pytest.approx(0.786986, abs=1e-6)
    assert loss_of([2.0, 0.0, 0.0], 0, "gce", gce_q=0.7) == pytest.approx((1 - p0 ** 0.7) / 0.7, rel=1e-6)
    assert loss_of([2.0, 0.0, 0.0], 1, "gce", gce_q=0.7) == pytest.approx((1 - p1 ** 0.7) / 0.7, rel=1e-6)
    assert loss_of([2.0, 0.0, 0.0], 1, "sce", sce_alpha=0.5, sce_beta=2.0) == pytest.approx(
        0.5 * -math.log(p1) + 2.0 * 4 * (1 - p1), rel=1e-6)
    # RCE alone is -sum_k p_k log t_k with log 0 clipped to -4: 4 * (1 - p_y)
    p = F.softmax(torch.tensor([[2.0, 0.0, 0.0]]), -1)[0]
    log_t = torch.tensor([-4.0, 0.0, -4.0])  # label 1
    assert loss_of([2.0, 0.0, 0.0], 1, "sce", sce_alpha=0.0, sce_beta=1.0) == pytest.approx(-(p * log_t).sum().item(), rel=1e-6)


def test_gce_tends_to_cross_entropy_as_q_shrinks_and_to_mae_at_one():
    g = torch.Generator().manual_seed(0)
    out, y = 3 * torch.randn(64, 5, generator=g), torch.randint(0, 5, (64,), generator=g)
    ce = F.cross_entropy(out, y).item()
    assert compute_loss(out, y, None, "gce", TrainConfig(gce_q=1e-6)).item() == pytest.approx(ce, rel=1e-5)
    assert compute_loss(out, y, None, "gce", TrainConfig(gce_q=1e-2)).item() == pytest.approx(ce, rel=0.05)
    p_y = F.softmax(out, -1).gather(1, y[:, None]).squeeze(1)
    assert compute_loss(out, y, None, "gce", TrainConfig(gce_q=1.0)).item() == pytest.approx((1 - p_y).mean().item(), rel=1e-6)
    # sce without its RCE term is alpha times cross-entropy
    assert compute_loss(out, y, None, "sce", TrainConfig(sce_alpha=0.3, sce_beta=0.0)).item() == pytest.approx(0.3 * ce, rel=1e-6)


@pytest.mark.parametrize("loss", ["gce", "sce"])
def test_weights_apply_per_sample(loss):
    g = torch.Generator().manual_seed(1)
    out, y = torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    cfg = TrainConfig()
    each = torch.stack([compute_loss(out[i:i + 1], y[i:i + 1], None, loss, cfg) for i in range(8)])
    w = torch.zeros(8)
    w[3] = 2.0
    assert compute_loss(out, y, w, loss, cfg).item() == pytest.approx(each[3].item(), rel=1e-6)
    w = torch.rand(8, generator=g)
    assert compute_loss(out, y, w, loss, cfg).item() == pytest.approx(((each * w).sum() / w.sum()).item(), rel=1e-6)
    assert compute_loss(out, y, None, loss, cfg).item() == pytest.approx(each.mean().item(), rel=1e-6)


@pytest.mark.parametrize("loss", ["gce", "sce"])
def test_an_ensemble_output_is_the_mean_of_its_members_losses(loss):
    g = torch.Generator().manual_seed(2)
    out, y, w = torch.randn(16, 4, 3, generator=g), torch.randint(0, 3, (16,), generator=g), torch.rand(16, generator=g)
    cfg = TrainConfig(gce_q=0.5, sce_alpha=0.2)
    for wb in (None, w):
        each = [compute_loss(out[:, m], y, wb, loss, cfg) for m in range(4)]
        assert compute_loss(out, y, wb, loss, cfg).item() == pytest.approx(torch.stack(each).mean().item(), rel=1e-6)


def blobs(n=240, k=3, d=6, seed=0, noise=0.0):
    """Separable blobs; `noise` of the training labels flipped to another class."""
    g = np.random.default_rng(seed)
    centers = g.normal(0, 3, (k, d))
    y = g.integers(0, k, n)
    X = (centers[y] + g.normal(0, 1, (n, d))).astype(np.float32)
    ytr = y[:180].copy()
    flip = g.random(180) < noise
    ytr[flip] = (ytr[flip] + g.integers(1, k, flip.sum())) % k
    return TensorData.from_numpy(X[:180], ytr), TensorData.from_numpy(X[180:], y[180:])


@pytest.mark.parametrize("loss", ["gce", "sce"])
def test_training_with_a_robust_loss_learns(loss):
    """A separable problem with 20% of the training labels flipped: both losses reach the clean accuracy, with
    mixup (the loss of two label sets) and with an ensemble model's (B, k, K) output too."""
    tr, va = blobs(noise=0.2)

    def mix(x, y):
        perm = torch.randperm(x.shape[0])
        return 0.8 * x + 0.2 * x[perm], y[perm], 0.8

    for augment, ensemble in ((None, 1), (mix, 3)):
        torch.manual_seed(0)
        model = create_model("mlp", (6,), 3, width=32, depth=1, dropout=0.0, ensemble=ensemble)
        cfg = TrainConfig(loss=loss, lr=1e-2, epochs=20, batch_size=32, patience=0)
        res = train(model, tr, va, cfg, RT, task="multiclass", augment=augment)
        assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
        assert res.history[res.best_epoch - 1]["val_accuracy"] > 0.9


def test_a_run_with_each_loss_and_class_weights(tmp_path):
    """Through the pipeline: class weights reach the robust losses (train() weights them per sample)."""
    for loss in ("gce", "sce"):
        res = cotune.train({"data": {"source": "sklearn:iris", "balance": "class_weights"}, "model": {"width": 16},
                            "train": {"loss": loss, "epochs": 30, "lr": 1e-2, "batch_size": 16}, "runtime": {"progress": False}},
                           out=tmp_path / loss)
        assert res.metrics["test"]["accuracy"] > 0.8


@pytest.mark.parametrize("loss", ["gce", "sce"])
def test_a_robust_loss_on_regression_is_one_line(tmp_path, loss):
    with pytest.raises(ConfigError) as e:
        check_config(TrainConfig(loss=loss), "regression")
    assert "regression" in str(e.value) and "mse or huber" in str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "r"
    with pytest.raises(ConfigError, match="needs a classification target"):
        cotune.train({"data": {"source": "sklearn:diabetes"}, "train": {"loss": loss, "epochs": 1},
                      "runtime": {"progress": False}}, out=out)
    assert not out.exists()  # rejected before the run directory


@pytest.mark.parametrize("override, needle", [("train.gce_q=0", "> 0"), ("train.gce_q=1.5", "<= 1"),
                                              ("train.sce_alpha=-1", ">= 0")])
def test_bad_robust_loss_knobs_are_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        from_dict({}, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="sce_alpha \\+ train.sce_beta > 0"):
        check_config(TrainConfig(loss="sce", sce_alpha=0.0, sce_beta=0.0), "multiclass")
    check_config(TrainConfig(loss="gce", gce_q=1.0), "binary")


def space(task, overrides=()):
    cfg = from_dict({"data": {"source": "sklearn:iris"}}, list(overrides))
    return cfg, search_space(cfg, explicit(cfg), "tabular", task, cpu=True)


def test_the_loss_is_searched_for_classification_only():
    for task in ("binary", "multiclass"):
        _, s = space(task)
        assert s["train.loss"] == ("auto", "gce", "sce")
        assert s["train.gce_q"] == (0.3, 0.9) and s["train.sce_alpha"] == (0.05, 1.0) and "train.sce_beta" not in s
    _, s = space("regression")
    assert not {"train.loss", "train.gce_q", "train.sce_alpha", "train.label_smoothing"} & set(s)
    _, s = space("multiclass", ["train.loss=cross_entropy"])  # set by the user: fixed
    assert "train.loss" not in s and "train.label_smoothing" in s


def test_loss_knobs_are_asked_only_under_their_loss():
    cfg, s = space("multiclass")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        tcfg = suggest(trial, cfg, s)
        loss = trial.params["train.loss"]
        seen.add(loss)
        assert ("train.gce_q" in trial.params) == (loss == "gce")
        assert ("train.sce_alpha" in trial.params) == (loss == "sce")
        assert ("train.label_smoothing" in trial.params) == (loss == "auto")
        assert tcfg.train.loss == loss
        check_config(tcfg.train, "multiclass")
        replay = FixedTrial(trial.params)
        assert suggest(replay, cfg, s) == tcfg
        study.tell(trial, 0.0)
    assert seen == {"auto", "gce", "sce"}


def test_the_warm_start_keeps_the_default_loss():
    for modality in ("tabular", "image", "sequence"):
        cfg, s = space("multiclass")
        assert start_params(cfg, s, modality)["train.loss"] == "auto"
