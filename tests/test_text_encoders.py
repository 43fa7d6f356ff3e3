"""Text encoders over token ids (cotune.models.text): every registered encoder gets every test."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cotune.errors import ModelError
from cotune.models.text import (PAD, TEXT_ENCODERS, UNK, list_text_encoders, register_text_encoder,
                                text_encoder)

torch.set_num_threads(1)

NAMES = list_text_encoders()
VOCAB, LENGTH, WIDTH = 30, 12, 16


def make(name: str, length: int = LENGTH, width: int = WIDTH, vocab: int = VOCAB, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return text_encoder(name, vocab, length, width).eval()


def rows(n: int, length: int = LENGTH, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """n id rows, each 1..length real tokens (ids 1..vocab-1) then padding: float, as the table gives them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(UNK, vocab, (n, length), generator=g)
    n_real = torch.randint(1, length + 1, (n, 1), generator=g)
    return torch.where(torch.arange(length) < n_real, ids, PAD).float()


def test_registry():
    assert NAMES == ["bag", "cnn1d", "gru", "lstm", "transformer"] == list(TEXT_ENCODERS)
    with pytest.raises(ValueError, match="bag"):
        register_text_encoder("bag")(nn.Module)
    assert list_text_encoders() == NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("width", [WIDTH, 5, 1])
def test_shape(name, width):
    enc = make(name, width=width)
    out = enc(rows(7))
    assert enc.out_features == width and out.shape == (7, width) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_float_ids_are_rounded_and_clamped(name):
    enc = make(name)
    x = rows(6)
    blended = x.clone()
    blended[:, 0] += torch.tensor([0.3, -0.4, 0.49, -0.2, 0.1, 0.0])  # mixup-style non-integral ids
    blended[0, 1], blended[1, 1], blended[2, 1] = 1e4, -7.0, float("nan")  # past the vocab, negative, NaN
    expected = x.clone()
    expected[0, 1], expected[1, 1], expected[2, 1] = VOCAB - 1, PAD, PAD
    with torch.no_grad():
        torch.testing.assert_close(enc(blended), enc(expected.long()))


@pytest.mark.parametrize("name", NAMES)
def test_pad_embedding_does_not_matter(name):
    enc, x = make(name), rows(8)
    with torch.no_grad():
        before = enc(x)
        embeddings = [m for m in enc.modules() if isinstance(m, nn.Embedding)]
        assert embeddings
        for m in embeddings:
            m.weight[PAD] = 50 * torch.randn(m.weight.shape[1])
        torch.testing.assert_close(enc(x), before)


@pytest.mark.parametrize("name", NAMES)
def test_padding_length_does_not_matter(name):
    """The same texts padded to 8 and to 12 ids give the same features (weights shared; a per-position
    parameter is cut to the shorter length)."""
    long_enc, short_enc = make(name, length=12), make(name, length=8, seed=1)
    state = {k: v[:8] if v.shape != short_enc.state_dict()[k].shape else v for k, v in long_enc.state_dict().items()}
    short_enc.load_state_dict(state)
    short = rows(9, length=8)
    padded = torch.cat([short, torch.zeros(9, 4)], 1)
    with torch.no_grad():
        torch.testing.assert_close(long_enc(padded), short_enc(short))


@pytest.mark.parametrize("name", NAMES)
def test_empty_text_is_finite(name):
    enc = make(name).train()
    x = rows(4)
    x[1] = PAD  # an empty text
    out = enc(x)
    assert torch.isfinite(out).all()
    with torch.no_grad():  # an all-pad row does not change the other rows
        torch.testing.assert_close(out[[0, 2, 3]], enc(x[[0, 2, 3]]))
    enc.zero_grad()
    enc(torch.zeros(3, LENGTH)).sum().backward()  # a batch of empty texts only
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_token_embedding(name):
    enc = make(name).train()
    x = torch.zeros(2, LENGTH)
    x[:, :3] = torch.tensor([[5.0, 7.0, 9.0], [5.0, 2.0, PAD]])
    enc(x).pow(2).sum().backward()
    grad = enc.embedding.weight.grad
    assert grad[5].abs().sum() > 0 and grad[7].abs().sum() > 0
    assert grad[PAD].abs().sum() == 0 and grad[11].abs().sum() == 0  # padding and absent tokens get none


@pytest.mark.parametrize("name", NAMES)
def test_learns_token_presence(name):
    """Class 1 iff token 5 appears anywhere in the text: >= 0.9 training accuracy within 100 Adam steps."""
    n, g = 200, torch.Generator().manual_seed(0)
    x = rows(n, seed=1)
    x[x == 5] = 6
    y = torch.arange(n) % 2
    n_real = (x != PAD).sum(1)
    where = (torch.rand(n, generator=g) * n_real).long()  # a random real position of each row
    x[y == 1, where[y == 1]] = 5.0
    torch.manual_seed(0)
    model = nn.Sequential(text_encoder(name, VOCAB, LENGTH, WIDTH), nn.Linear(WIDTH, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.9, f"{name}: training accuracy {acc:.3f}"


@pytest.mark.filterwarnings("ignore:The tensor attributes:UserWarning")  # the exporter, on any nn.GRU / nn.LSTM
@pytest.mark.filterwarnings("ignore:_check_is_size:FutureWarning")  # the exporter's own traced code
@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_parity(name, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from cotune.compress import export
    model = nn.Sequential(make(name), nn.Linear(WIDTH, 3)).eval()
    path = export.to_onnx(model, (LENGTH,), tmp_path / f"{name}.onnx", family=name)  # dynamo, dynamic batch
    sess = export.session(path, threads=1)
    x = rows(5, seed=3)
    x[0] = PAD  # an empty text
    x[1, 0] += 0.3  # a blended id
    for xb in (x, x[:1], x[2:]):
        with torch.no_grad():
            ref = model(xb).numpy()
        out = export.run_session(sess, xb.numpy())
        assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-4


@pytest.mark.parametrize("args, match", [
    (("nope", VOCAB, LENGTH, WIDTH), "one of {'bag', 'cnn1d', 'gru', 'lstm', 'transformer'}"),
    (("bag", 1, LENGTH, WIDTH), "'vocab' must be an integer >= 2"),
    (("bag", VOCAB, 0, WIDTH), "'length' must be an integer >= 1"),
    (("gru", VOCAB, LENGTH, 0), "'width' must be an integer >= 1"),
    (("cnn1d", VOCAB, LENGTH, 2.0), "'width' must be an integer >= 1"),
])
def test_bad_input(args, match):
    with pytest.raises(ModelError, match=match) as err:
        text_encoder(*args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_bags_fused_training_path_matches_its_gathered_one(weighted):
    """A training step's fused embedding_bag gives the evaluation path's features and gradients, pads and an
    empty row (all pads) included, plain mean and TF-IDF-weighted sum alike."""
    enc = make("bag")
    x = rows(6)
    x[2] = PAD  # an empty text
    w = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) if weighted else None
    out = {}
    for mode in ("train", "eval"):
        enc.zero_grad()
        enc.train(mode == "train")
        y = enc(x, w) if weighted else enc(x)
        (y * torch.arange(WIDTH)).sum().backward()
        out[mode] = (y.detach(), enc.embedding.weight.grad.clone())
    assert torch.allclose(out["train"][0], out["eval"][0], atol=1e-6) and torch.equal(out["train"][0][2], torch.zeros(WIDTH))
    assert torch.allclose(out["train"][1], out["eval"][1], atol=1e-6) and not out["train"][1][PAD].any()
