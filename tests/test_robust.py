"""Adversarial attacks, adversarial training and robust accuracy: the ball, the mask, no side effects, seeds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cotune.config import TrainConfig
from cotune.data.augment import Augment
from cotune.data.batches import TensorData
from cotune.errors import ConfigError
from cotune.models import create_model
from cotune.robust import Adversarial, fgsm, pgd, robust_accuracy, robust_outputs
from cotune.runtime import Runtime
from cotune.train import compute_loss, train

torch.set_num_threads(1)
RT = Runtime.resolve("cpu", "fp32", 1)
CFG = TrainConfig(lr=1e-2, epochs=15, batch_size=64, patience=0)
CE = F.cross_entropy
TOL = 1e-6  # x + delta rounds; |delta| <= eps holds exactly


def mlp(d=20, k=3, **kw):
    torch.manual_seed(0)
    return create_model("mlp", (d,), k, **{"width": 16, "depth": 1, "dropout": 0.0, "norm": "none",
                                           "activation": "relu", **kw})


def blobs(n=256, d=20, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return centers[y] + 0.7 * torch.randn(n, d, generator=g), y


@pytest.fixture(scope="module")
def trained():
    """An MLP fitted briefly on blobs (full batch, Adam), with held-out rows."""
    X, y = blobs(384)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        CE(model(X[:256]), y[:256]).backward()
        opt.step()
    model.eval()
    return model, X[256:], y[256:]


def ce_loss(model, x, y):
    with torch.no_grad():
        return CE(model(x), y).item()


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "pgd_no_start"])
def test_perturbation_stays_in_the_ball_and_off_masked_features(attack):
    model, (x, y) = mlp(), blobs(64)
    eps, mask = 0.3, torch.arange(20) < 12  # features 12.. play one-hot columns
    if attack == "fgsm":
        x_adv = fgsm(model, x, y, eps, CE, mask=mask)
    else:
        x_adv = pgd(model, x, y, eps, 5, CE, mask=mask, random_start=attack == "pgd",
                    generator=torch.Generator().manual_seed(1))
    d = x_adv - x
    assert d.abs().max().item() <= eps + TOL
    assert torch.equal(x_adv[:, ~mask], x[:, ~mask])  # exactly untouched
    assert d[:, mask].abs().max().item() > 0.9 * eps  # and the rest really moved
    assert x_adv.dtype == x.dtype and x_adv.device == x.device and not x_adv.requires_grad
    unmasked = fgsm(model, x, y, eps, CE) if attack == "fgsm" else pgd(model, x, y, eps, 5, CE)
    assert (unmasked - x).abs().max().item() <= eps + TOL


def test_pgd_random_start_alone_stays_in_the_ball():
    """A step of zero size leaves the random start: uniform over the whole ball, and inside it."""
    model, (x, y) = mlp(), blobs(256)
    d = pgd(model, x, y, 0.5, 1, CE, alpha=1e-12, generator=torch.Generator().manual_seed(0)) - x
    assert d.abs().max().item() <= 0.5 + TOL
    assert d.min().item() < -0.45 and d.max().item() > 0.45 and abs(d.mean().item()) < 0.02


def test_mask_on_images_and_float64():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).double()
    x, y = torch.randn(8, 3, 6, 6, dtype=torch.float64), torch.randint(0, 2, (8,))
    conv(x)
    mask = torch.tensor([True, False, True]).view(3, 1, 1)  # channel 1 is never perturbed
    x_adv = pgd(conv, x, y, 0.1, 3, CE, mask=mask)
    assert x_adv.dtype == torch.float64
    assert torch.equal(x_adv[:, 1], x[:, 1]) and (x_adv - x).abs().max().item() <= 0.1 + 1e-12
    with pytest.raises(ValueError, match="does not broadcast"):
        pgd(conv, x, y, 0.1, 3, CE, mask=torch.ones(5, dtype=torch.bool))


def test_stronger_attacks_raise_the_loss_and_lower_the_accuracy(trained):
    model, X, y = trained
    eps = 0.5
    clean = ce_loss(model, X, y)
    l_fgsm = ce_loss(model, fgsm(model, X, y, eps, CE), y)
    l_pgd = ce_loss(model, pgd(model, X, y, eps, 10, CE, generator=torch.Generator().manual_seed(0)), y)
    assert l_pgd >= l_fgsm >= clean
    acc = robust_accuracy(model, X, y, 0.0)
    with torch.no_grad():
        assert acc == (model(X).argmax(-1) == y).float().mean().item()
    assert acc > 0.9  # the blobs are separable: the attack has something to take away
    assert robust_accuracy(model, X, y, eps, steps=10) < acc
    assert robust_accuracy(model, X, y, 2 * eps, steps=10) <= robust_accuracy(model, X, y, eps, steps=10)


def test_robust_outputs_batched_and_seeded(trained):
    model, X, y = trained
    a = robust_outputs(model, X, y, 0.3, steps=3, batch_size=50, seed=4)
    assert a.shape == (128, 3) and a.dtype == torch.float32
    assert torch.equal(a, robust_outputs(model, X, y, 0.3, steps=3, batch_size=50, seed=4))
    assert not torch.equal(a, robust_outputs(model, X, y, 0.3, steps=3, batch_size=50, seed=5))


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_the_attack_leaves_the_model_as_it_was(norm):
    model, (x, y) = mlp(norm=norm, dropout=0.2), blobs(32)
    model.train()
    drop = [m for m in model.modules() if isinstance(m, nn.Dropout)][0]
    drop.eval()  # one module in its own mode, as the loop keeps frozen batch norms
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, x, y, 0.2, 3, CE)
    fgsm(model, x, y, 0.2, CE)
    Adversarial(model, "pgd", 0.2, 3, CE)(x, y)
    robust_accuracy(model, x, y, 0.2, steps=2)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not drop.training and all(m.training for m in model.modules() if m is not drop)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # running stats included


def test_ensemble_and_regression_outputs():
    ens, (x, y) = mlp(ensemble=3), blobs(32)
    loss = lambda out, t: compute_loss(out, t, None, "cross_entropy", CFG)  # noqa: E731
    ens.train()
    assert (pgd(ens, x, y, 0.1, 2, loss) - x).abs().max().item() <= 0.1 + TOL  # (B, k, K) outputs
    ens.eval()
    assert 0 <= robust_accuracy(ens, x, y, 0.1, steps=2) <= 1  # (B, K) log-probabilities
    reg, yr = mlp(k=1), torch.randn(32)
    mse = lambda out, t: compute_loss(out, t, None, "mse", CFG)  # noqa: E731
    x_adv = fgsm(reg, x, yr, 0.1, mse)
    assert mse(reg(x_adv), yr).item() > mse(reg(x), yr).item()


def test_same_generator_seed_same_examples():
    model, (x, y) = mlp(dropout=0.0), blobs(32)
    a = pgd(model, x, y, 0.2, 3, CE, generator=torch.Generator().manual_seed(7))
    b = pgd(model, x, y, 0.2, 3, CE, generator=torch.Generator().manual_seed(7))
    c = pgd(model, x, y, 0.2, 3, CE, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = pgd(model, x, y, 0.2, 3, CE)
    torch.manual_seed(3)
    assert torch.equal(d, pgd(model, x, y, 0.2, 3, CE))  # without a generator: the global one


def test_eps_zero_is_the_identity():
    model, (x, y) = mlp(), blobs(16)
    assert torch.equal(fgsm(model, x, y, 0.0, CE), x) and torch.equal(pgd(model, x, y, 0, 5, CE), x)
    aug = Adversarial(model, "pgd", 0.0, 5, CE)
    assert aug(x, y)[0] is x


def test_adversarial_replaces_the_first_half_and_keeps_the_base():
    model, (x, y) = mlp(), blobs(64)
    torch.manual_seed(0)
    aug = Adversarial(model, "pgd", 0.3, 4, CE, mix=0.5)
    xa, y_b, lam = aug(x, y)
    assert (y_b, lam) == (None, 1.0) and xa.shape == x.shape
    changed = (xa != x).any(1)
    assert changed[:32].all() and not changed[32:].any()
    assert (xa - x).abs().max().item() <= 0.3 + TOL
    assert aug.rows(7) == 4 and aug.rows(1) == 1 and Adversarial(model, "fgsm", 0.3, 1, CE, mix=1.0).rows(7) == 7

    base = Augment("tabular", {"noise": 1.0, "mixup": 0.4})
    x0 = x.clone()
    torch.manual_seed(5)
    xb, yb_base, lam_base = base(x, y)
    torch.manual_seed(5)
    xa, y_b, lam = Adversarial(model, "fgsm", 0.3, 1, CE, base=base, mix=0.25)(x, y)
    assert torch.equal(y_b, yb_base) and lam == lam_base  # the mixing partners pass through
    assert torch.equal(xa[16:], xb[16:]) and (xa[:16] != xb[:16]).any(1).all()
    assert torch.equal(x, x0)  # never written into


def test_masked_adversarial_training_batches():
    model, (x, y) = mlp(), blobs(64)
    mask = np.arange(20) < 5
    xa, _, _ = Adversarial(model, "pgd", 0.3, 2, CE, mask=mask)(x, y)
    assert torch.equal(xa[:, 5:], x[:, 5:]) and (xa[:32, :5] != x[:32, :5]).all()


def test_describe():
    model = mlp()
    assert Adversarial(model, "pgd", 0.1, 7, CE).describe() == "pgd eps 0.1, 7 steps, half of each batch"
    assert Adversarial(model, "fgsm", 0.05, 1, CE, mix=1.0).describe() == "fgsm eps 0.05, every row of each batch"
    base = Augment("tabular", {"noise": 0.5})
    assert (Adversarial(model, "fgsm", 0.1, 1, CE, base=base, mix=0.25).describe()
            == "tabular: noise=0.5, then fgsm eps 0.1, 25% of each batch")


@pytest.mark.parametrize("call,knob", [
    (lambda m, x, y: fgsm(m, x, y, -0.1, CE), "train.adv_epsilon"),
    (lambda m, x, y: pgd(m, x, y, -1, 3, CE), "train.adv_epsilon"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0, CE), "train.adv_steps"),
    (lambda m, x, y: pgd(m, x, y, 0.0, 0, CE), "train.adv_steps"),
    (lambda m, x, y: Adversarial(m, "pgd", 0.1, 0, CE), "train.adv_steps"),
    (lambda m, x, y: Adversarial(m, "pgd", float("nan"), 3, CE), "train.adv_epsilon"),
    (lambda m, x, y: Adversarial(m, "cw", 0.1, 3, CE), "train.adv_method"),
    (lambda m, x, y: Adversarial(m, "pgd", 0.1, 3, CE, mix=0.0), "train.adv_mix"),
    (lambda m, x, y: robust_accuracy(m, x, y, -0.5), "train.adv_epsilon"),
])
def test_bad_knobs_are_config_errors(call, knob):
    model, (x, y) = mlp(), blobs(8)
    with pytest.raises(ConfigError, match=knob.replace(".", r"\.")) as err:
        call(model, x, y)
    assert "\n" not in str(err.value)


def two_features(n, seed, d=20, eta=0.4):
    """Label y; column 0 is +-1 agreeing with y 90% of the time (robust: a margin of 1), columns 1.. are
    N(eta * (2y - 1), 1) each (together very predictive, but an attack of eps = eta erases them)."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    s = 2.0 * y - 1
    x0 = s * np.where(g.random(n) < 0.9, 1.0, -1.0)
    X = np.column_stack([x0, s[:, None] * eta + g.normal(0, 1, (n, d))]).astype(np.float32)
    return TensorData.from_numpy(X, y)


def test_adversarial_training_buys_robust_accuracy():
    """Through train() itself: standard training leans on the many weak columns, which an eps = 0.4 attack
    erases; PGD training learns to lean on the robust column (about 0.9 robust accuracy at best)."""
    tr, te = two_features(600, seed=0), two_features(400, seed=100)
    loss_fn = lambda out, y: compute_loss(out, y, None, "cross_entropy", CFG)  # noqa: E731
    robust = []
    for adversarial in (False, True):
        model = mlp(d=21, k=2)
        aug = Adversarial(model, "pgd", 0.4, 5, loss_fn) if adversarial else None
        train(model, tr, None, CFG, RT, task="binary", augment=aug)
        robust.append(robust_accuracy(model, te.X, te.y, 0.4, steps=10))
    assert robust[1] > robust[0] + 0.1, robust
