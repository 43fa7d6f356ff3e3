"""Registry-driven checks for every registered model: shapes, gradients, save/load, memorization,
the MNIST-1D paper parameter counts, size-knob monotonicity and user-facing errors; then the mlp's
table layout, numeric embeddings and in-model ensemble."""
from itertools import product

import pytest
import torch
from safetensors.torch import load_file, save_file

from cotune.config import TrainConfig
from cotune.errors import ModelError
from cotune.models import FAMILIES, create_model, list_models, model_info, takes_layout
from cotune.knobs import KNOBS
from cotune.models.embeddings import PiecewiseLinearEmbedding
from cotune.models.registry import DEFAULTS, KNOBS as MODEL_KNOBS, family_of, head, head_keys, n_params, register_model
from cotune.models.mlp import mlp
from cotune.models.transformer import fit_heads
from cotune.train import compute_loss

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


HEAD_OUT = 11  # no other parameter of the cases has a dimension of 11
HEAD_CASES = [(n, s, {}) for n, s in CASES] + [("mlp", TAB, {"depth": 0}), ("mlp", TAB, {"ensemble": 3}),
                                               ("cnn1d", SEQ, {"pool": "flatten"})]


@pytest.mark.parametrize("name,shape,knobs", HEAD_CASES, ids=[f"{n}-{'x'.join(map(str, s))}-{'-'.join(map(str, k.values()))}"
                                                                 for n, s, k in HEAD_CASES])
def test_head_is_the_output_layer_and_the_only_one_sized_by_out_dim(name, shape, knobs):
    """What transfer learning re-initializes and freezing tells apart: the head makes the model's outputs (in
    training mode; an ensemble's per-member ones), and out_dim sizes its tensors and no others."""
    torch.manual_seed(0)
    model = create_model(name, shape, HEAD_OUT, **knobs).train()
    seen = []
    head(model).register_forward_hook(lambda mod, args, out: seen.append(out))
    out = model(batch(shape, n=4)[0])
    assert out.shape[-1] == HEAD_OUT and torch.equal(seen[-1], out)
    keys = head_keys(model)
    assert keys and keys <= set(model.state_dict())
    for k, v in model.state_dict().items():
        assert (HEAD_OUT in v.shape) == (k in keys), f"{name}: {k} {tuple(v.shape)}"


def test_a_model_without_a_head_name_is_a_one_line_error():
    with pytest.raises(ModelError, match="does not name its output layer"):
        head(torch.nn.Linear(2, 2))


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
    not_factory = ("model.family", "model.init_from")  # which model and from what weights: never factory arguments
    assert MODEL_KNOBS == tuple(k.name[len("model."):] for k in KNOBS if k.stage == "model" and k.name not in not_factory)
    assert MODEL_KNOBS == ("width", "depth", "dropout", "norm", "activation", "kernel_size", "pool", "bidirectional",
                           "heads", "num_embedding", "embedding_dim", "text_encoder", "text_width", "text_linear", "ensemble")
    # a model built directly: the factories' defaults, without the training config's dropout
    assert DEFAULTS == {"width": 64, "depth": 2, "dropout": 0.0, "norm": "none", "activation": "relu", "kernel_size": 5,
                        "pool": "auto", "bidirectional": False, "heads": 4, "num_embedding": "none", "embedding_dim": 8,
                        "text_encoder": "bag", "text_width": 64, "text_linear": 0.0, "ensemble": 1}
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
    with pytest.raises(ValueError, match="modalities="):
        register_model(table_layout=True)
    with pytest.raises(ValueError, match="tabular"):
        register_model(modalities=("image",), table_layout=True)


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
    {"num_embedding": "fourier"}, {"ensemble": 0}, {"ensemble": 2.0}, {"embedding_dim": 0}, {"activation": "prelu"},
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


# ---- tables with a layout, numeric embeddings, the parameter-efficient ensemble ---------------------
# 3 numeric | 2 one-hot | 2 embedded categoricals (4 and 5 categories); one numeric column has a single bin
LAYOUT = {"numeric": 3, "onehot": 2, "cardinalities": [4, 5],
          "bins": [[-1.0, 0.0, 1.0], [0.0, 1.0], [-2.0, -1.0, 0.0, 1.0, 2.0]]}
ONE_HOT = {"numeric": 4, "onehot": 3, "cardinalities": [], "bins": [[-1.0, 0.0, 1.0]] * 4}  # every family reads it
TABLE = (7,)
NUM_EMBEDDINGS = ("none", "periodic", "piecewise")
MLP_CASES = list(product(NUM_EMBEDDINGS, (1, 4), (None, LAYOUT), (1, 3)))
MLP_IDS = [f"{e}-k{k}-{'layout' if lay else 'flat'}-out{o}" for e, k, lay, o in MLP_CASES]


def table_batch(n=8, seed=0, layout=LAYOUT):
    """Rows laid out as `layout` says: scaled numerics, 0/1 one-hot columns, integer codes as floats."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, layout["numeric"], generator=g),
             torch.randint(0, 2, (n, layout["onehot"]), generator=g).float()]
    parts += [torch.randint(0, c, (n, 1), generator=g).float() for c in layout["cardinalities"]]
    return torch.cat(parts, 1), torch.randint(0, OUT, (n,), generator=g)


def tabular_families():
    return [f for f in FAMILIES if "tabular" in model_info(f)["modalities"]]


def test_which_families_take_a_layout():
    assert [f for f in FAMILIES if takes_layout(f)] == ["mlp"]
    assert takes_layout("mlp_l") and not takes_layout("gru_s")
    with pytest.raises(ModelError, match="cotune models"):
        takes_layout("resnet50")


@pytest.mark.parametrize("family", tabular_families())
def test_every_tabular_family_builds_with_a_one_hot_layout(family):
    """A layout without embedded categoricals is a plain table: the families that do not read layouts
    ignore it (the same model as without), and so does mlp when it has nothing to embed."""
    x, _ = table_batch(layout=ONE_HOT)
    torch.manual_seed(0)
    with_layout = create_model(family, TABLE, OUT, layout=ONE_HOT).eval()
    torch.manual_seed(0)
    plain = create_model(family, TABLE, OUT).eval()
    with torch.no_grad():
        assert with_layout(x).shape == (8, OUT)
        assert torch.equal(with_layout(x), plain(x))
    assert with_layout.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("family", [f for f in tabular_families() if not takes_layout(f)])
def test_families_without_table_layout_reject_embedded_categoricals(family):
    with pytest.raises(ModelError, match=f"{family!r} takes one-hot tables only.*use mlp") as err:
        create_model(family, TABLE, OUT, layout=LAYOUT)
    assert "\n" not in str(err.value)


def test_mlp_with_embedded_categoricals_builds():
    model = create_model("mlp", TABLE, OUT, layout=LAYOUT, embedding_dim=5, width=16, depth=1)
    emb = model.embed.cat.embedding
    assert emb.weight.shape == (4 + 5, 5)
    # first layer: 3 numeric + 2 one-hot + 2 x 5 embedded
    assert model.net[1].in_features == 3 + 2 + 2 * 5
    x, _ = table_batch()
    assert model(x).shape == (8, OUT)


def _build(num_embedding, k, layout, out, **kw):
    kw = {"width": 16, "depth": 2, "num_embedding": num_embedding, "ensemble": k, "layout": layout, **kw}
    return create_model("mlp", TABLE, out, **kw)


@pytest.mark.parametrize("num_embedding,k,layout,out", MLP_CASES, ids=MLP_IDS)
def test_mlp_options_forward_backward(num_embedding, k, layout, out):
    torch.manual_seed(0)
    model = _build(num_embedding, k, layout, out, norm="batch", dropout=0.1)
    x, _ = table_batch(layout=layout or LAYOUT)
    z = model.train()(x)
    assert z.shape == ((8, k, out) if k > 1 else (8, out)) and z.dtype == torch.float32
    z.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    with torch.no_grad():
        assert model.eval()(x).shape == (8, out)
    if layout is not None and num_embedding != "none":
        assert model.net[1].in_features == 3 * 8 + 2 + 2 * 8
    elif layout is None:
        assert model.net[1].in_features == 7


@pytest.mark.parametrize("num_embedding,k,layout,out", MLP_CASES, ids=MLP_IDS)
def test_mlp_options_safetensors_round_trip(num_embedding, k, layout, out, tmp_path):
    torch.manual_seed(0)
    model = _build(num_embedding, k, layout, out).eval()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    saved = load_file(str(tmp_path / "model.safetensors"))
    if layout is not None and num_embedding == "piecewise":
        edges = saved["embed.num.edges"]
        assert edges.shape == (3, 5) and edges[2].tolist() == LAYOUT["bins"][2]
        assert edges[1, :2].tolist() == LAYOUT["bins"][1] and saved["embed.num.bin_mask"].sum(1).tolist() == [2, 1, 4]
    torch.manual_seed(1)
    fresh = _build(num_embedding, k, layout, out)
    fresh.load_state_dict(saved)
    x, _ = table_batch(layout=layout or LAYOUT)
    with torch.no_grad():
        assert torch.equal(model(x), fresh.eval()(x))


@pytest.mark.parametrize("layout", [None, LAYOUT], ids=["flat", "layout"])
def test_ensemble_eval_output_averages_the_members(layout):
    """Classification: softmax(eval output) is the mean of the k heads' softmaxes; regression: the mean."""
    x, _ = table_batch(layout=layout or LAYOUT)
    for out in (3, 1):
        torch.manual_seed(0)
        model = _build("periodic", 4, layout, out, norm="layer", dropout=0.0)
        with torch.no_grad():
            members = model.train()(x)  # (B, k, out), the same weights
            ens = model.eval()(x)
        assert members.shape == (8, 4, out) and ens.shape == (8, out)
        if out == 1:
            torch.testing.assert_close(ens, members.mean(1))
        else:
            torch.testing.assert_close(torch.softmax(ens, -1), torch.softmax(members, -1).mean(1))
            assert not torch.allclose(members[:, 0], members[:, 1])  # the members differ


def test_plain_mlp_is_unchanged():
    """No layout and ensemble=1 is the MLP every saved model was trained as: same keys, same count."""
    keys = ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias", "net.5.weight", "net.5.bias"]
    for kw in ({}, {"ensemble": 1, "num_embedding": "periodic", "embedding_dim": 32}, {"layout": ONE_HOT}):
        model = create_model("mlp", TABLE, OUT, **kw)
        assert list(model.state_dict()) == keys, kw
        assert n_params(model) == (7 * 64 + 64) + (64 * 64 + 64) + (64 * OUT + OUT)
    model = create_model("mlp", TABLE, OUT, norm="batch", dropout=0.2, depth=1)
    assert list(model.state_dict()) == ["net.1.weight", "net.1.bias", "net.2.weight", "net.2.bias",
                                        "net.2.running_mean", "net.2.running_var", "net.2.num_batches_tracked",
                                        "net.5.weight", "net.5.bias"]
    assert n_params(create_model("mlp", (40,), 10, depth=0, ensemble=1)) == 410


def test_piecewise_linear_encoding():
    ple = PiecewiseLinearEmbedding([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0]], d=2)
    x = torch.tensor([[-1.0, -1.0], [0.5, 1.0], [1.5, 3.0], [4.0, 5.0]])
    enc = ple.encode(x)  # (4, 2, 3)
    # first bin not clamped below, last not clamped above, the middle one in [0, 1]
    assert enc[:, 0].tolist() == [[-1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 2.0]]
    # a single-bin feature is not clamped at all; its padded bins stay 0
    assert enc[:, 1].tolist() == [[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [1.5, 0.0, 0.0], [2.5, 0.0, 0.0]]


def test_categorical_codes_are_rounded_and_clamped():
    torch.manual_seed(0)
    model = create_model("mlp", TABLE, OUT, layout=LAYOUT).eval()
    x, _ = table_batch()
    blended, far = x.clone(), x.clone()
    blended[:, 5:] += 0.3       # mixup-style fractional codes round back
    far[:, 5], far[:, 6] = 17.0, -3.0
    clipped = x.clone()
    clipped[:, 5], clipped[:, 6] = 3.0, 0.0
    with torch.no_grad():
        assert torch.equal(model(blended), model(x)) and torch.equal(model(far), model(clipped))


OVERFIT = [("periodic", 1, LAYOUT), ("piecewise", 4, LAYOUT), ("none", 4, LAYOUT), ("none", 4, None),
           ("periodic", 4, None)]


@pytest.mark.parametrize("num_embedding,k,layout", OVERFIT, ids=[f"{e}-k{k}-{'layout' if l else 'flat'}"
                                                                   for e, k, l in OVERFIT])
def test_new_options_overfit_tiny_batch(num_embedding, k, layout):
    torch.manual_seed(0)
    model = _build(num_embedding, k, layout, OUT, width=64, activation="selu")
    x, y = table_batch(layout=layout or LAYOUT)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = TrainConfig()
    for _ in range(300):
        out = model.train()(x)
        assert out.dim() == (3 if k > 1 else 2)
        opt.zero_grad()
        compute_loss(out, y, None, "cross_entropy", cfg).backward()
        opt.step()
        with torch.no_grad():
            if (model.eval()(x).argmax(1) == y).all():
                break
    with torch.no_grad():
        assert (model.eval()(x).argmax(1) == y).float().mean().item() == 1.0


@pytest.mark.parametrize("activation", ["selu", "mish"])
def test_new_activations(activation):
    for fam in ("mlp", "cnn1d", "transformer"):
        assert create_model(fam, SEQ, 2, width=8, activation=activation)(torch.randn(2, *SEQ)).shape == (2, 2)


@pytest.mark.parametrize("layout,match", [
    ([3, 2], "table layout must be a dict"),
    ({**LAYOUT, "numeric": 4}, r"input shape with a table layout must be \(8,\)"),
    ({**LAYOUT, "numeric": -1}, "'numeric' must be an integer >= 0"),
    ({**LAYOUT, "cardinalities": [4, 0]}, r"'cardinalities'\[1\] must be an integer >= 1"),
    ({**LAYOUT, "cardinalities": "ab"}, "'cardinalities' must be a list"),
    ({**LAYOUT, "bins": [[0.0, 1.0]]}, "'bins' must be a list of 3 edge lists"),
    ({**LAYOUT, "bins": [[0.0, 1.0], [1.0], [0.0, 1.0]]}, r"'bins'\[1\] must be >= 2 strictly increasing"),
    ({**LAYOUT, "bins": [[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]]}, r"'bins'\[1\] must be >= 2 strictly increasing"),
    ({**LAYOUT, "bins": [[0.0, 1.0], [1.0, float("nan")], [0.0, 1.0]]}, r"'bins'\[1\]"),
])
def test_bad_layouts_raise_model_error(layout, match):
    with pytest.raises(ModelError, match=match) as err:
        create_model("mlp", TABLE, OUT, layout=layout)
    assert "\n" not in str(err.value)


def test_layout_without_bins():
    layout = {k: v for k, v in LAYOUT.items() if k != "bins"}
    assert create_model("mlp", TABLE, OUT, layout=layout, num_embedding="periodic")(table_batch()[0]).shape == (8, OUT)
    with pytest.raises(ModelError, match="'bins' must be bin edges for every numeric column"):
        create_model("mlp", TABLE, OUT, layout=layout, num_embedding="piecewise")
    no_numeric = {"numeric": 0, "onehot": 5, "cardinalities": [4, 5]}  # num_embedding has nothing to embed
    model = create_model("mlp", TABLE, OUT, layout=no_numeric, num_embedding="piecewise")
    assert model.embed.num is None and model.net[1].in_features == 5 + 2 * 8
