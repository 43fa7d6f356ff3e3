"""`cotune train --nproc N`: N processes under torchrun + DDP reproduce the one-process run (same seed, same global
batch); rank 0 alone writes the run directory; bad N and a failing rank are one-line errors (cotune.distributed,
cotune.launch). Each launch pays torchrun's start and the ranks' imports, so one test starts processes; a rank's
error is checked in this process, and the final refit of `cotune fit` with search.final_nproc=2 runs end to end in
bench/ddp_throughput.py --fit.
"""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import cotune
from cotune import distributed
from cotune.cli import app
from cotune.errors import ConfigError, DataError
from cotune.launch import LaunchError, rank_error
from cotune.train import compute_loss

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}
CORES = distributed.devices("cpu")[0]
# digits, an MLP without dropout or batch norm (nothing drawn per rank), a batch that leaves a ragged last one
# (1257 training rows = 19 x 64 + 41: its ranks take 21 and 20 rows), early stopping's bookkeeping on. SGD: Adam's
# first steps (g / sqrt(v) of tiny gradients) turn float summation differences into 1e-4 of the loss, SGD keeps 1e-7
TINY = ["data.source=sklearn:digits", "model.family=mlp", "model.width=32", "model.depth=2", "model.dropout=0",
        "model.norm=none", "train.optimizer=sgd", "train.lr=0.05", "train.epochs=3", "train.batch_size=64",
        "train.patience=2", "runtime.progress=false"]


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    return r.exit_code, r.stdout, r.stderr


def one_line_error(code, out, err, match):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in out + err, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    return lines[0]


def test_two_processes_through_the_cli_match_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = cotune.train(overrides=TINY, out=tmp_path / "one")
    sets = [a for kv in TINY for a in ("--set", kv)]
    code, out, err = cli("train", *sets, "--out", tmp_path / "two", "--nproc", 2, "-q")
    assert code == 0, f"exit {code}\n{out}\n{err}"
    two = tmp_path / "two"
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    # the sharding is right when the runs agree up to float summation order, not merely within the tolerance
    assert abs(m1["val"]["accuracy"] - m2["val"]["accuracy"]) <= 0.005
    h1, h2 = ([json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "two"))
    assert len(h2) == len(h1) == 3  # one row per epoch: rank 1 logged nothing
    for a, b in zip(h1, h2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert m2["train"]["best_epoch"] == m1["train"]["best_epoch"]
    # rank 0 alone wrote the run directory: the one-process run's files, nothing more, nothing elsewhere
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert json.loads((two / "env.json").read_text())["processes"] == 2
    assert f"run directory: {two}" in " ".join(out.split())
    pred = cotune.load(two).predict_frame("sklearn:digits")
    assert len(pred) == 1797


def test_a_rank_reports_bad_input_that_comes_back_as_one_line(tmp_path, monkeypatch):
    """A rank's side of a failing launch, run here as a process group of one (a launch of its own would cost as much
    as the test above): the missing file's DataError becomes error-0.json and exit code 2, which the parent turns
    back into that DataError, on one line; the run directory never appears."""
    import socket

    from cotune.config import from_dict
    from cotune.launch import rank_main
    from cotune.track import write_json
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for k, v in {"RANK": 0, "LOCAL_RANK": 0, "WORLD_SIZE": 1, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():
        monkeypatch.setenv(k, str(v))
    cfg = from_dict({}, [*TINY, f"data.source={tmp_path / 'missing.csv'}", f"out={tmp_path / 'r'}"])
    write_json(tmp_path / "job.json", {"config": cfg.to_dict(), "resume": False, "progress": False, "refit_epochs": None,
                                       "checkpoint": True})
    assert rank_main(tmp_path) == 2 and distributed.world() == (0, 1)  # the group is gone again
    err = rank_error(tmp_path, 1)
    assert isinstance(err, DataError) and "missing.csv" in str(err) and "\n" not in str(err)
    assert not (tmp_path / "r").exists()


def test_bad_nproc_is_one_line_before_anything_starts(tmp_path):
    for n, match in ((0, "--nproc"), (CORES + 1, "CPU cores")):
        one_line_error(*cli("train", "--out", tmp_path / "r", "--nproc", n, "-q"), match)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="train.batch_size >= 4"):
        cotune.train(overrides=[*TINY, "train.batch_size=3"], out=tmp_path / "r", nproc=2)
    with pytest.raises(ConfigError, match="on_eval"):
        cotune.train(overrides=TINY, out=tmp_path / "r", nproc=2, on_eval=lambda epoch, row: None)
    with pytest.raises(ConfigError, match="search.final_nproc"):  # checked before the search, not after it
        cotune.fit(overrides=[*TINY, f"search.final_nproc={CORES + 1}"], trials=1, out=tmp_path / "s")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_the_ranks_scaled_losses_average_to_the_whole_batch_gradient():
    """What DDP computes (the mean over ranks of each rank's scaled-loss gradient) is the one-process gradient of the
    whole batch: a ragged batch of 7 rows over 2 and 3 ranks, with and without sample weights."""
    g = torch.Generator().manual_seed(0)
    X, y, w = torch.randn(7, 5, generator=g), torch.randint(0, 3, (7,), generator=g), torch.rand(7, generator=g) + 0.1
    lin = torch.nn.Linear(5, 3)
    cfg = type("Cfg", (), {"label_smoothing": 0.1})()
    batch = torch.tensor([6, 0, 3, 2, 5, 1, 4])
    for weights in (None, w):
        lin.zero_grad()
        compute_loss(lin(X[batch]), y[batch], None if weights is None else weights[batch], "cross_entropy", cfg).backward()
        whole = lin.weight.grad.clone()
        for world in (2, 3):
            lin.zero_grad()
            for rank in range(world):
                idx, share = distributed.shard(batch, weights, rank, world)
                loss = compute_loss(lin(X[idx]), y[idx], None if weights is None else weights[idx], "cross_entropy", cfg)
                (loss * share / world).backward()  # DDP: the gradients' mean over the ranks
            torch.testing.assert_close(lin.weight.grad, whole)


def test_steps_per_epoch_keep_the_one_process_rule():
    import math
    for n in range(1, 300):
        for bs in (1, 2, 7, 32, 64):
            bs = min(bs, n)
            assert distributed.steps(n, bs) == max(1, n // bs if n % bs == 1 else math.ceil(n / bs))
            for world in (2, 3):  # every rank gets at least 2 rows of every batch, the last one included
                if bs >= 2 * world:
                    assert min(bs, n - (distributed.steps(n, bs, world) - 1) * bs) >= 2 * world


def test_rank_error_prefers_bad_input_and_keeps_a_bug_traceback(tmp_path):
    (tmp_path / "error-1.json").write_text(json.dumps({"rank": 1, "kind": "bug", "traceback": "Traceback ...\nKeyError: 'x'"}))
    err = rank_error(tmp_path, 1)
    assert isinstance(err, LaunchError) and "KeyError" in str(err) and "process 1" in str(err)
    (tmp_path / "error-0.json").write_text(json.dumps({"rank": 0, "kind": "input", "type": "TrainingError",
                                                       "message": "Training diverged"}))
    err = rank_error(tmp_path, 1)
    assert type(err).__name__ == "TrainingError" and str(err) == "Training diverged"
    for f in tmp_path.iterdir():
        f.unlink()
    (tmp_path / "torchrun.log").write_text("rendezvous failed")
    assert "rendezvous failed" in str(rank_error(tmp_path, 1))


def test_the_final_refit_trains_in_search_final_nproc_processes(tmp_path, monkeypatch):
    """cotune fit's final model goes through cotune.launch with search.final_nproc (end to end: the bench's --fit)."""
    from types import SimpleNamespace

    import cotune.launch
    from cotune.config import from_dict
    from cotune.search.ensemble import final_model
    calls = []
    result = SimpleNamespace(train=SimpleNamespace(stopped_early=False, epochs_run=3))
    monkeypatch.setattr(cotune.launch, "run", lambda cfg, **kw: calls.append((cfg, kw)) or result)
    best = SimpleNamespace(number=4, params={"train.lr": 0.01}, user_attrs={"best_epoch": 3})
    final, how = final_model(from_dict({}, ["search.final_nproc=2"]), best, None, tmp_path, None)
    (cfg, kw), = calls
    assert final is result and kw == {"refit_epochs": 3, "nproc": 2, "on_eval": None} and how["processes"] == 2
    assert cfg.train.lr == 0.01 and cfg.out == str(tmp_path / "final")


class Recorder:
    """A tracker that keeps what it is given."""

    def __init__(self):
        self.params, self.rows, self.summary, self.closed = {}, [], None, False

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, metrics))

    def log_summary(self, metrics):
        self.summary = metrics

    def close(self, status="FINISHED"):
        self.closed = True


def test_a_tracker_sees_from_the_files_what_it_sees_in_one_process(tmp_path):
    """With nproc > 1 the tracker (MLflow for `cotune train --mlflow`) is fed from the run directory afterwards."""
    from cotune.launch import replay, run
    live = Recorder()
    run(cotune.api.resolve_config(None, TINY, tmp_path / "one"), tracker=live)
    after = Recorder()
    replay(after, tmp_path / "one")
    assert after.params == live.params and after.closed and live.closed
    assert after.rows == live.rows and len(after.rows) == 3
    assert {k: after.summary[k] for k in ("val", "test")} == {k: live.summary[k] for k in ("val", "test")}
