import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cotune
from cotune.config import TrainConfig
from cotune.data.batches import TensorData
from cotune.errors import ConfigError
from cotune.models import create_model
from cotune.runtime import Runtime
from cotune.train import TrainingError, compute_loss, get_lr, train

RT = Runtime.resolve("cpu", "fp32", 1)


def blobs(n=240, k=3, d=6, seed=0):
    g = np.random.default_rng(seed)
    centers = g.normal(0, 3, (k, d))
    y = g.integers(0, k, n)
    X = (centers[y] + g.normal(0, 1, (n, d))).astype(np.float32)
    return TensorData.from_numpy(X[:180], y[:180]), TensorData.from_numpy(X[180:], y[180:])


def test_get_lr_schedules():
    kw = dict(total=100, base=1.0, warmup=0.0, gamma=0.1, decay_every=30)
    assert get_lr(50, schedule="constant", **kw) == 1.0
    assert get_lr(0, schedule="cosine", **kw) == pytest.approx(1.0)
    assert get_lr(99, schedule="cosine", **kw) < 0.01
    assert get_lr(29, schedule="step", **kw) == 1.0 and get_lr(30, schedule="step", **kw) == pytest.approx(0.1)
    assert get_lr(99, schedule="exponential", **kw) == pytest.approx(0.1, rel=0.05)
    one = [get_lr(s, schedule="onecycle", **kw) for s in range(100)]
    assert one[0] < 0.1 and max(one) == pytest.approx(1.0, rel=0.02) and 25 <= int(np.argmax(one)) <= 35 and one[-1] < 0.01
    warm = [get_lr(s, schedule="constant", **{**kw, "warmup": 0.1}) for s in range(12)]
    assert warm[0] == pytest.approx(0.1) and warm[9] == pytest.approx(1.0) and warm == sorted(warm)


def test_focal_with_gamma_zero_is_cross_entropy_and_weights_apply():
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(16, 4, generator=g), torch.randint(0, 4, (16,), generator=g)
    cfg = TrainConfig(focal_gamma=0.0)
    assert compute_loss(out, y, None, "focal", cfg) == pytest.approx(compute_loss(out, y, None, "cross_entropy", cfg).item())
    w = torch.zeros(16)
    w[0] = 1.0
    assert compute_loss(out, y, w, "cross_entropy", cfg) == pytest.approx(torch.nn.functional.cross_entropy(out[:1], y[:1]).item())


def test_a_3d_output_is_the_mean_of_its_members_losses():
    """(B, k, K) from an ensemble model in training mode: the mean of the k members' losses, weighted or not,
    for every loss."""
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(16, 4, 3, generator=g), torch.randint(0, 3, (16,), generator=g)
    w = torch.rand(16, generator=g)
    cfg = TrainConfig(label_smoothing=0.1)
    for loss in ("cross_entropy", "focal"):
        for wb in (None, w):
            each = [compute_loss(out[:, m], y, wb, loss, cfg) for m in range(4)]
            assert compute_loss(out, y, wb, loss, cfg).item() == pytest.approx(torch.stack(each).mean().item(), rel=1e-6)
    yr = torch.randn(16, generator=g)
    for loss in ("mse", "huber"):
        for wb in (None, w):
            each = [compute_loss(out[:, m, :1], yr, wb, loss, cfg) for m in range(4)]
            assert compute_loss(out[..., :1], yr, wb, loss, cfg).item() == pytest.approx(torch.stack(each).mean().item(), rel=1e-6)


def test_an_ensemble_mlp_trains():
    """train() with a k-member mlp: its training output is (B, k, K), its loss decreases, validation sees
    the averaged (B, K) output; mixup (two label sets) works on it too."""
    tr, va = blobs()

    def mix(x, y):
        perm = torch.randperm(x.shape[0])
        return 0.7 * x + 0.3 * x[perm], y[perm], 0.7

    for augment in (None, mix):
        torch.manual_seed(0)
        model = create_model("mlp", (6,), 3, width=32, depth=2, dropout=0.1, ensemble=4, norm="batch")
        cfg = TrainConfig(lr=3e-3, epochs=8, batch_size=32, patience=0)
        res = train(model, tr, va, cfg, RT, task="multiclass", augment=augment)
        assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
        assert res.history[res.best_epoch - 1]["val_accuracy"] > 0.8
        with torch.no_grad():
            assert model.eval()(va.X).shape == (len(va), 3)
    g = np.random.default_rng(0)
    X = g.normal(size=(200, 4)).astype(np.float32)
    yr = (X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * g.normal(size=200)).astype(np.float32)
    res = train(create_model("mlp", (4,), 1, dropout=0.0, ensemble=3), TensorData.from_numpy(X[:150], yr[:150]),
                TensorData.from_numpy(X[150:], yr[150:]), TrainConfig(epochs=30, lr=1e-2, patience=0), RT, task="regression")
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[res.best_epoch - 1]["val_rmse"] < 0.6


@pytest.mark.parametrize("opt", ["sgd", "rmsprop", "adagrad", "adam", "adamw"])
def test_every_optimizer_learns(opt):
    tr, va = blobs()
    torch.manual_seed(0)
    model = create_model("mlp", (6,), 3, width=32, depth=1, dropout=0.0)
    lr = {"sgd": 0.05, "adagrad": 0.05}.get(opt, 3e-3)
    cfg = TrainConfig(optimizer=opt, lr=lr, epochs=15, batch_size=32, patience=0, momentum=0.9)
    res = train(model, tr, va, cfg, RT, task="multiclass")
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[res.best_epoch - 1]["val_accuracy"] > 0.8


def test_regularizers_and_losses_run():
    tr, va = blobs()
    cfg = TrainConfig(optimizer="sgd", momentum=0.9, nesterov=True, lr=0.05, l1=1e-4, grad_clip=1.0, epochs=3,
                      loss="focal", label_smoothing=0.1, schedule="onecycle", warmup=0.1)
    res = train(create_model("mlp", (6,), 3, norm="batch"), tr, va, cfg, RT, task="multiclass")
    assert res.epochs_run == 3 and all(math.isfinite(r["train_loss"]) for r in res.history)
    g = np.random.default_rng(0)
    X = g.normal(size=(200, 4)).astype(np.float32)
    yr = (X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * g.normal(size=200)).astype(np.float32)
    for loss in ("mse", "huber"):
        res = train(create_model("mlp", (4,), 1, dropout=0.0), TensorData.from_numpy(X[:150], yr[:150]),
                    TensorData.from_numpy(X[150:], yr[150:]), TrainConfig(loss=loss, epochs=30, lr=1e-2, patience=0),
                    RT, task="regression")
        assert res.history[res.best_epoch - 1]["val_rmse"] < 0.6


def test_early_stopping_restores_best_weights():
    tr, va = blobs()
    cfg = TrainConfig(lr=0.5, optimizer="sgd", momentum=0.0, epochs=40, patience=3, schedule="constant", monitor="loss")
    model = create_model("mlp", (6,), 3, width=64, depth=2, dropout=0.0)
    res = train(model, tr, va, cfg, RT, task="multiclass")
    best = min(r["val_loss"] for r in res.history)
    assert res.best_score == pytest.approx(best)
    assert res.epochs_run - res.best_epoch == 3 or res.epochs_run == 40
    with torch.no_grad():
        model.eval()
        now = torch.nn.functional.cross_entropy(model(va.X), va.y).item()
    assert now == pytest.approx(best, rel=1e-5)


def test_the_monitor_argument_picks_the_best_epoch():
    """train() follows the metric it is given, whatever cfg.monitor says: the best epoch is the argmax of the
    history's val_accuracy for accuracy, the argmin of val_loss for the loss."""
    from cotune.evaluate import metric
    tr, va = blobs()
    cfg = TrainConfig(lr=0.5, optimizer="sgd", momentum=0.0, epochs=12, patience=0, schedule="constant", monitor="loss")
    for m, pick in ((metric("accuracy"), max), (metric("loss"), min)):
        res = train(create_model("mlp", (6,), 3, width=16, depth=1, dropout=0.0), tr, va, cfg, RT, task="multiclass",
                    monitor=m)
        scores = [r[m.history_key] for r in res.history]
        assert res.best_score == pick(scores) and res.best_epoch == scores.index(pick(scores)) + 1


def test_validation_loss_is_the_plain_log_loss_under_label_smoothing():
    """Label smoothing changes the training loss only: val_loss (what early stopping on loss and the scaling
    study read) is the unsmoothed cross-entropy of the model's outputs."""
    tr, va = blobs()
    cfg = TrainConfig(lr=0.1, optimizer="sgd", epochs=3, patience=0, schedule="constant", label_smoothing=0.3)
    model = create_model("mlp", (6,), 3, width=16, depth=1, dropout=0.0)
    res = train(model, tr, va, cfg, RT, task="multiclass")  # the last epoch is the best only by chance: check it
    with torch.no_grad():
        model.eval()
        plain = torch.nn.functional.cross_entropy(model(va.X), va.y).item()
        smoothed = torch.nn.functional.cross_entropy(model(va.X), va.y, label_smoothing=0.3).item()
    best = res.history[res.best_epoch - 1]
    assert best["val_loss"] == pytest.approx(plain, rel=1e-5) and abs(plain - smoothed) > 1e-3


def test_val_every_validates_some_epochs_and_early_stops_in_epochs():
    tr, va = blobs()
    cfg = TrainConfig(lr=0.5, optimizer="sgd", momentum=0.0, epochs=10, patience=0, val_every=3, schedule="constant",
                      monitor="loss")
    res = train(create_model("mlp", (6,), 3, width=16, depth=1, dropout=0.0), tr, va, cfg, RT, task="multiclass")
    assert [r["epoch"] for r in res.history] == list(range(1, 11))          # every epoch trains and is logged
    assert [r["epoch"] for r in res.history if "val_loss" in r] == [3, 6, 9, 10]  # validated: each 3rd, and the last
    assert res.best_epoch in (3, 6, 9, 10)
    assert res.best_score == pytest.approx(min(r["val_loss"] for r in res.history if "val_loss" in r))
    # patience counts epochs since the best, checked at each validation: an overfitting run (a huge net on
    # 12 rows, loss as the monitor) stops at the first validation at least `patience` epochs past its best
    small = TensorData(tr.X[:12], tr.y[:12])
    cfg = TrainConfig(lr=0.05, optimizer="adam", epochs=200, patience=4, val_every=5, schedule="constant", monitor="loss")
    res = train(create_model("mlp", (6,), 3, width=256, depth=3, dropout=0.0), small, va, cfg, RT, task="multiclass")
    checked = [r["epoch"] for r in res.history if "val_loss" in r]
    assert all(e % 5 == 0 for e in checked) and res.best_epoch in checked and res.stopped_early
    assert res.epochs_run == checked[-1] and res.epochs_run - res.best_epoch >= 4
    assert all(e - res.best_epoch < 4 for e in checked[:-1] if e > res.best_epoch)  # no earlier check was due to stop


def test_checkpoints_are_written_after_validated_epochs_only(tmp_path):
    tr, va = blobs()
    cfg = TrainConfig(lr=0.1, optimizer="sgd", epochs=5, patience=0, val_every=2, schedule="constant")
    seen = {}

    def look(epoch, row):
        f = tmp_path / "checkpoint.json"
        seen[epoch] = json.loads(f.read_text())["epoch"] if f.exists() else None

    train(create_model("mlp", (6,), 3, width=8, depth=1, dropout=0.0), tr, va, cfg, RT, task="multiclass",
          checkpoint_dir=tmp_path, on_eval=look)
    assert seen == {1: None, 2: 2, 3: 2, 4: 4, 5: 5}  # the last validated epoch's state (the last epoch is validated)


def test_search_trials_write_no_checkpoint(tmp_path):
    from cotune.config import from_dict
    from cotune.pipeline import run
    out = tmp_path / "t"
    cfg = from_dict({"data": {"source": "sklearn:iris"}, "model": {"width": 8}, "train": {"epochs": 3},
                     "runtime": {"progress": False}, "out": str(out)})
    files = []
    run(cfg, checkpoint=False, on_eval=lambda epoch, row: files.extend(p.name for p in out.iterdir()))
    assert files and not [f for f in files if f.startswith("checkpoint")]


def test_divergence_is_a_clear_error():
    tr, va = blobs()
    X = tr.X.clone()
    X[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="lower train.lr"):
        train(create_model("mlp", (6,), 3), TensorData(X, tr.y), va, TrainConfig(epochs=2), RT, task="multiclass")


def test_incompatible_knobs_rejected():
    tr, va = blobs()
    with pytest.raises(ConfigError, match="regression"):
        train(create_model("mlp", (6,), 3), tr, va, TrainConfig(loss="mse"), RT, task="multiclass")
    with pytest.raises(ConfigError, match="nesterov"):
        train(create_model("mlp", (6,), 3), tr, va, TrainConfig(optimizer="adam", nesterov=True), RT, task="multiclass")


class Kill(Exception):
    pass


def test_resume_after_kill_gives_identical_weights(tmp_path):
    """A run stopped after epoch 2 and resumed ends with the same weights as an uninterrupted one."""
    cfg = {"data": {"source": "sklearn:wine"}, "model": {"family": "mlp", "width": 32, "dropout": 0.3, "norm": "batch"},
           "train": {"epochs": 5, "batch_size": 16, "patience": 0, "optimizer": "adamw", "schedule": "cosine"},
           "runtime": {"seed": 3, "progress": False}}
    full = cotune.train(cfg, out=tmp_path / "full")

    def die_after_2(epoch, row):
        if epoch == 2:
            raise Kill()

    with pytest.raises(Kill):
        cotune.train(cfg, out=tmp_path / "cut", on_eval=die_after_2)
    assert (tmp_path / "cut" / "checkpoint.json").exists() and not (tmp_path / "cut" / "metrics.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        cotune.train(cfg, out=tmp_path / "cut")
    resumed = cotune.train(out=tmp_path / "cut", resume=True)
    a, b = load_file(str(full.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["train_loss"] for r in full.train.history] == [r["train_loss"] for r in resumed.train.history]
    assert not (tmp_path / "cut" / "checkpoint.json").exists()
