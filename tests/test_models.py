"""Registry-driven checks for every registered model: shapes, gradients, save/load, memorization,
the MNIST-1D paper parameter counts, size-knob monotonicity and user-facing errors."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from cotune.errors import ModelError
from cotune.models import FAMILIES, create_model, list_models, model_info
from cotune.knobs import KNOBS
from cotune.models.registry import DEFAULTS, KNOBS as MODEL_KNOBS, family_of, n_params, register_model
from cotune.models.mlp import mlp
from cotune.models.transformer import fit_heads

torch.set_num_threads(1)

SEQ, IMG, TAB = (1, 16), (3, 8, 8), (7,)
CASES = [(n, IMG if family_of(n) == "cnn2d" else SEQ) for n in list_models()]
CASES += [(n, TAB) for n in ("mlp", "gru", "transformer")]
IDS = [f"{n}-{'x'.join(map(str, s))}" for n, s in CASES]
OUT = 3


def batch(shape, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, OUT, (n,), generator=g)


def test_registry_lists_every_family_and_variant():
    names = list_models()
    assert names == sorted(names)
    for fam in FAMILIES:
        assert {fam, f"{fam}_s", f"{fam}_m", f"{fam}_l"} <= set(names)
    assert list_models("gru*") == ["gru", "gru_l", "gru_m", "gru_s"]
    info = model_info("cnn1d_s")
    assert info["family"] == "cnn1d" and info["modalities"] == ("tabular", "sequence") and info["summary"]
    assert model_info("cnn2d")["modalities"] == ("image",)


@pytest.mark.parametrize("name,shape", CASES, ids=IDS)
def test_forward_backward(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape, OUT)
    assert n_params(model) > 0
    x, _ = batch(shape, n=4)
    out = model(x)
    assert out.shape == (4, OUT) and out.dtype == torch.float32
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no grad for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite grad for {pname}"


@pytest.mark.parametrize("name,shape", CASES, ids=IDS)
def test_safetensors_round_trip(name, shape, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, shape, OUT).eval()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    fresh = create_model(name, shape, OUT)
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    x, _ = batch(shape)
    with torch.no_grad():
        assert torch.equal(model(x), fresh.eval()(x))


@pytest.mark.parametrize("name,shape", CASES, ids=IDS)
def test_overfits_tiny_batch(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape, OUT, dropout=0.0)
    x, y = batch(shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        logits = model(x)
        if (logits.argmax(1) == y).all():
            break
        opt.zero_grad()
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert acc == 1.0


def test_mnist1d_paper_param_counts():
    assert n_params(create_model("mlp", (40,), 10, depth=0)) == 410  # logistic regression
    assert n_params(create_model("mlp", (1, 40), 10, width=100, depth=2)) == 15210
    assert n_params(create_model("mlp", (40,), 10, width=100, depth=2)) == 15210
    assert n_params(create_model("cnn1d", (1, 40), 10, width=25, depth=3, kernel_size=5, pool="flatten")) == 5210
    assert n_params(create_model("gru", (1, 40), 10, width=6, depth=1, bidirectional=True, pool="flatten")) == 5134


@pytest.mark.parametrize("family", FAMILIES)
def test_params_grow_with_width_and_depth(family):
    shape = IMG if family == "cnn2d" else (1, 40)
    by_width = [n_params(create_model(family, shape, 10, width=w, depth=2)) for w in (4, 8, 16, 32, 64)]
    depths = range(0 if family == "mlp" else 1, 5)
    by_depth = [n_params(create_model(family, shape, 10, width=16, depth=d)) for d in depths]
    assert by_width == sorted(set(by_width)), by_width
    assert by_depth == sorted(set(by_depth)), by_depth


def test_other_knobs_build_and_run():
    x = torch.randn(2, *SEQ)
    for norm in ("batch", "layer"):
        for fam in ("mlp", "cnn1d"):
            assert create_model(fam, SEQ, 2, norm=norm)(x).shape == (2, 2)
        assert create_model("cnn2d", IMG, 2, width=4, norm=norm)(torch.randn(2, *IMG)).shape == (2, 2)
    for pool in ("auto", "flatten", "mean", "last"):
        for fam in ("gru", "lstm", "transformer"):
            m = create_model(fam, SEQ, 2, width=8, bidirectional=True, pool=pool, activation="gelu")
            assert m(x).shape == (2, 2)
    assert create_model("cnn2d", (1, 28, 28), 2, width=4, depth=3, pool="flatten")(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    assert fit_heads(30, 4) == 3 and fit_heads(64, 4) == 4 and fit_heads(7, 4) == 1
    assert create_model("transformer", SEQ, 2, width=30, heads=4)(x).shape == (2, 2)
    assert create_model("gru", IMG, 2, width=8)(torch.randn(2, *IMG)).shape == (2, 2)


def test_model_knobs_and_defaults_come_from_the_knob_table():
    assert FAMILIES == ("mlp", "cnn1d", "cnn2d", "gru", "lstm", "transformer")  # registration order
    assert MODEL_KNOBS == tuple(k.name[len("model."):] for k in KNOBS if k.stage == "model" and k.name != "model.family")
    assert MODEL_KNOBS == ("width", "depth", "dropout", "norm", "activation", "kernel_size", "pool", "bidirectional",
                           "heads")
    # a model built directly: the factories' defaults, without the training config's dropout
    assert DEFAULTS == {"width": 64, "depth": 2, "dropout": 0.0, "norm": "none", "activation": "relu", "kernel_size": 5,
                        "pool": "auto", "bidirectional": False, "heads": 4}
    model = create_model("mlp", (4,), 2)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert n_params(model) == n_params(create_model("mlp", (4,), 2, **DEFAULTS)) == (4 * 64 + 64) + (64 * 64 + 64) + 130
    assert any(isinstance(m, torch.nn.Dropout) for m in create_model("mlp", (4,), 2, dropout=0.1).modules())


def test_factories_check_knob_names_themselves():
    with pytest.raises(ModelError, match="a model knob must be one of .* Got 'colour'"):
        mlp((4,), 2, colour="red")
    with pytest.raises(ValueError, match="modalities="):
        register_model(searched=("tabular",))
    with pytest.raises(ValueError, match="only on modalities it accepts"):
        register_model(modalities=("image",), searched=("tabular",))


def test_none_knobs_are_dropped():
    assert n_params(create_model("mlp", (4,), 2, width=None, depth=None)) == n_params(create_model("mlp", (4,), 2))


def test_unknown_name_suggests_close_match():
    with pytest.raises(ModelError) as err:
        create_model("mlpp", SEQ, 2)
    msg = str(err.value)
    assert "'mlp'" in msg and "cotune models" in msg and "\n" not in msg
    with pytest.raises(ModelError):
        model_info("resnet50")


@pytest.mark.parametrize("knobs", [
    {"dropout": 1.0}, {"dropout": -0.1}, {"norm": "group"}, {"activation": "elu"}, {"pool": "max"},
    {"width": 0}, {"depth": -1}, {"heads": 0}, {"bidirectional": "yes"}, {"colour": "red"},
])
def test_bad_knobs_raise_model_error(knobs):
    with pytest.raises(ModelError) as err:
        create_model("mlp", SEQ, 2, **knobs)
    assert "\n" not in str(err.value) and "must be" in str(err.value)


def test_family_specific_errors():
    with pytest.raises(ModelError, match="mlp.*cnn1d"):
        create_model("cnn2d", SEQ, 2)
    with pytest.raises(ModelError, match="model.depth"):
        create_model("gru", SEQ, 2, depth=0)
    with pytest.raises(ModelError, match="model.kernel_size"):
        create_model("cnn1d", (1, 4), 2, kernel_size=9)
    with pytest.raises(ModelError, match="model.pool"):
        create_model("cnn1d", SEQ, 2, pool="last")
    with pytest.raises(ModelError, match="input shape"):
        create_model("mlp", (1, 2, 3, 4), 2)
    with pytest.raises(ModelError, match="out_dim"):
        create_model("mlp", SEQ, 0)
