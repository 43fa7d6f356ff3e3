"""Augmentation: every registered op keeps shape/dtype/device, is pure, seeded and batched."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cotune.data.augment import DEFAULTS, OPS, Augment, make_augment
from cotune.errors import ConfigError

torch.set_num_threads(1)

ALL_OPS = [(m, name) for m, ops in OPS.items() for name in ops]
SHAPES = {"image": (64, 3, 16, 16), "sequence": (64, 2, 48), "tabular": (64, 17)}
N_NUMERIC = 4  # tabular batches: 4 numeric columns, 3 one-hot columns, then one text's 10 token ids
TEXT = [(7, 10)]


def batch(modality, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPES[modality], generator=g).to(dtype)
    if modality == "tabular":
        x[:, N_NUMERIC:7] = torch.nn.functional.one_hot(torch.randint(0, 3, (x.shape[0],), generator=g), 3).to(dtype)
        ids = torch.randint(2, 50, (x.shape[0], 10), generator=g)
        real = torch.randint(1, 11, (x.shape[0], 1), generator=g)  # 1-10 real tokens, then padding
        x[:, 7:] = torch.where(torch.arange(10) < real, ids, 0).to(dtype)
    y = torch.randint(0, 5, (x.shape[0],), generator=g)
    return x, y


def numeric_mask(modality):
    return np.arange(SHAPES["tabular"][1]) < N_NUMERIC if modality == "tabular" else None


def run(modality, name, s, x, y, seed=0):
    aug = Augment(modality, {name: s}, numeric_mask=numeric_mask(modality), text_spans=TEXT if modality == "tabular" else ())
    torch.manual_seed(seed)
    return aug(x, y)


@pytest.mark.parametrize("modality,name", ALL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_keeps_shape_dtype_device_and_input(modality, name, dtype):
    x, y = batch(modality, dtype)
    before = x.clone()
    out, y_b, lam = run(modality, name, 0.7, x, y)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(x, before), "x was modified in place"
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x), f"{name} at strength 0.7 changed nothing"
    if OPS[modality][name].mixing:
        assert y_b is not None and y_b.shape == y.shape and y_b.dtype == y.dtype
        assert isinstance(lam, float) and 0.0 <= lam <= 1.0
        assert sorted(y_b.tolist()) == sorted(y.tolist())  # a permutation of the labels
    else:
        assert y_b is None and lam == 1.0


@pytest.mark.parametrize("modality,name", ALL_OPS)
def test_op_strength_zero_is_identity(modality, name):
    x, y = batch(modality)
    op = OPS[modality][name]
    out = op.fn(x, 0.0)
    out = out[0] if op.mixing else out
    assert torch.equal(out, x)
    assert make_augment(modality, ops={name: 0.0}) is None
    aug = Augment(modality, {name: 0.0})
    assert aug.ops == {} and torch.equal(aug(x, y)[0], x)


@pytest.mark.parametrize("modality,name", ALL_OPS)
def test_op_reproducible_under_manual_seed(modality, name):
    x, y = batch(modality)
    a, ya, la = run(modality, name, 0.5, x, y, seed=3)
    b, yb, lb = run(modality, name, 0.5, x, y, seed=3)
    assert torch.equal(a, b) and la == lb
    assert (ya is None and yb is None) or torch.equal(ya, yb)
    c, _, _ = run(modality, name, 0.5, x, y, seed=4)
    assert not torch.equal(a, c), "a different seed gave the same augmentation"


def test_tabular_noise_leaves_one_hot_columns_untouched():
    x, y = batch("tabular")
    aug = make_augment("tabular", policy="auto", strength=1.0, numeric_mask=numeric_mask("tabular"))
    out, _, _ = aug(x, y)
    assert torch.equal(out[:, N_NUMERIC:], x[:, N_NUMERIC:])
    assert not torch.equal(out[:, :N_NUMERIC], x[:, :N_NUMERIC])
    assert (out[:, :N_NUMERIC] - x[:, :N_NUMERIC]).std() < 0.2  # std 0.1 * strength


def test_magnitudes_follow_strength():
    torch.manual_seed(0)
    x = torch.ones(512, 1, 16, 16)
    out, _, _ = Augment("image", {"cutout": 1.0})(x, None)  # side 8 squares, clipped at borders
    zeros = (out == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() >= 16
    s = torch.ones(256, 1, 40)
    out, _, _ = Augment("sequence", {"mask": 0.4})(s, None)  # span round(0.4 * 40 / 4) = 4
    assert ((out == 0).sum(-1) == 4).all()
    out, _, _ = Augment("sequence", {"scale": 0.5})(s, None)
    assert out.min() >= 0.9 - 1e-6 and out.max() <= 1.1 + 1e-6
    out, _, _ = Augment("image", {"flip": 1.0})(torch.arange(16.).view(1, 1, 4, 4).expand(2000, 1, 4, 4), None)
    assert 0.4 < (out[:, 0, 0, 0] == 3).float().mean() < 0.6  # p = 0.5 * s


def test_mixing_ops_and_choice():
    x, y = batch("image")
    out, y_b, lam = run("image", "mixup", 1.0, x, y)
    perm_x = (out - lam * x) / (1 - lam)
    assert torch.allclose(perm_x.flatten(1).sum(1).sort().values, x.flatten(1).sum(1).sort().values, atol=1e-3)
    aug = make_augment("image", ops={"mixup": 0.5, "cutmix": 0.5})
    outs = set()
    for seed in range(20):
        torch.manual_seed(seed)
        o, y_b, lam = aug(x, y)
        assert y_b is not None and 0 <= lam <= 1
        # cutmix keeps most pixels exactly; mixup changes (nearly) all of them
        outs.add(bool((o == x).float().mean() > 0.3))
    assert outs == {True, False}, "both mixing ops should be picked across batches"


def test_tabular_mixup_takes_codes_and_token_ids_whole_from_the_heavier_row():
    x = torch.cat([torch.randn(32, 3), torch.randint(2, 500, (32, 5)).float()], 1)
    y = torch.arange(32)
    whole = np.array([False] * 3 + [True] * 5)
    aug = Augment("tabular", {"mixup": 1.0}, whole=whole)
    for seed in range(10):
        torch.manual_seed(seed)
        out, y_b, lam = aug(x, y)
        heavy = x if lam >= 0.5 else x[y_b]
        assert torch.equal(out[:, 3:], heavy[:, 3:])  # whole: ids of one row, never a blend
        assert torch.allclose(out[:, :3], lam * x[:, :3] + (1 - lam) * x[y_b, :3], atol=1e-6)
    torch.manual_seed(0)
    blended, _, lam = Augment("tabular", {"mixup": 1.0})(x, y)
    assert 0 < lam < 1 and (blended[:, 3:] % 1 != 0).any()  # without the mask the ids blend


def test_make_augment_policies_and_errors():
    assert make_augment("image") is None
    assert make_augment("tabular", policy="none", ops={}) is None
    assert make_augment("tabular", policy="auto", strength=0.0) is None
    for m in OPS:
        aug = make_augment(m, policy="auto", strength=0.3)
        assert aug.ops == {k: 0.3 for k in DEFAULTS[m] if k not in ("token_drop", "span_mask")}  # no text columns
        assert m in aug.describe()
    aug = make_augment("image", policy="auto", ops={"crop": 0, "mixup": 0.2, "flip": None})
    assert aug.ops == {"flip": 0.5, "cutout": 0.5, "mixup": 0.2}
    assert make_augment("images", ops={"affine": 1}).ops == {"affine": 1.0}
    bad = [dict(modality="sequence", ops={"flip": 0.5}), dict(modality="image", ops={"noise": 0.1}),
           dict(modality="image", strength=1.5), dict(modality="image", strength=-0.1),
           dict(modality="image", strength=True), dict(modality="tabular", ops={"noise": 2}),
           dict(modality="image", policy="heavy"), dict(modality="audio")]
    for kw in bad:
        with pytest.raises(ConfigError) as e:
            make_augment(kw.pop("modality"), **kw)
        msg = str(e.value)
        assert "\n" not in msg and "must be" in msg, msg
    with pytest.raises(ConfigError, match="'shift'.*'mask'"):  # names the valid ops
        make_augment("sequence", ops={"cutmix": 0.3})


def test_no_per_sample_python_loop():
    x = torch.randn(4096, 3, 32, 32)
    y = torch.randint(0, 10, (4096,))
    aug = make_augment("image", policy="auto", strength=0.5)
    aug(x[:8], y[:8])  # warm up
    t0 = time.perf_counter()
    out, _, _ = aug(x, y)
    assert time.perf_counter() - t0 < 1.5  # ~0.2 s on one CPU core; a per-sample loop takes many seconds
    assert out.shape == x.shape


def test_unset_ops_of_other_modalities_are_ignored():
    ops = {"flip": None, "cutmix": None, "noise": None, "shift": 0.4}
    assert make_augment("sequence", ops=ops).ops == {"shift": 0.4}
    with pytest.raises(ConfigError):
        make_augment("sequence", ops={"flop": None})
