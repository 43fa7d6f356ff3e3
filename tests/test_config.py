import json

import pytest

from cotune.config import RunConfig, TrainConfig, from_dict, json_schema, load_config, parse_override
from cotune.errors import ConfigError
from cotune.knobs import BY_NAME, KNOBS, searchable


def test_defaults_come_from_knobs():
    cfg = RunConfig()
    flat = cfg.flat()
    for k in KNOBS:
        assert flat[k.name] == k.default, k.name


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {source: sklearn:iris}\ntrain: {lr: 0.01, epochs: 3}\n")
    cfg = load_config(p, ["train.lr=1e-3", "model.width=7", "data.split.val=0.2", "data.categorical=[a, b]"])
    assert cfg.data.source == "sklearn:iris" and cfg.train.lr == 1e-3 and cfg.train.epochs == 3
    assert cfg.model.width == 7 and cfg.data.split.val == 0.2 and cfg.data.categorical == ["a", "b"]


def test_frozen_and_stage_types():
    cfg = RunConfig()
    assert isinstance(cfg.train, TrainConfig)
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # frozen
    assert cfg.replace(**{"train.lr": 0.5}).train.lr == 0.5 and cfg.train.lr != 0.5


@pytest.mark.parametrize("override, needle", [
    ("train.lr=-1", "'train.lr' must be a number > 0"),
    ("train.lrr=1", "did you mean 'train.lr'"),
    ("train.epochs=abc", "must be an integer"),
    ("train.epochs=2.5", "must be an integer"),
    ("train.optimizer=adamx", "must be one of"),
    ("data.split.val=0.9", "<= 0.5"),
    ("nonsense", "key=value"),
])
def test_bad_values_are_one_line_config_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("train: {lr: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError):
        from_dict({"train": 3})


def test_a_repeated_yaml_key_is_named_with_its_lines(tmp_path):
    """PyYAML keeps the last of two equal keys silently; a config file with one is refused, at any depth."""
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  source: sklearn:iris\n  split: {val: 0.1, test: 0.1, val: 0.2}\n")
    with pytest.raises(ConfigError, match=r"'data\.split\.val' twice, on line 3"):
        load_config(p)
    p.write_text("runs:\n  - {a: 1}\n  - {a: 1, a: 2}\n")
    with pytest.raises(ConfigError, match=r"'runs\.1\.a'"):
        load_config(p)
    p.write_text("base: &b {lr: 0.1}\ntrain:\n  <<: *b\n  lr: 0.01\n")  # a merge key is meant to be overridden
    with pytest.raises(ConfigError, match="Unknown config key 'base'"):  # parsed fine; then 'base' is no stage
        load_config(p)
    with pytest.raises(ConfigError, match="'a' twice"):
        parse_override("search.space={a: [1], a: [2]}")


def test_parse_override_types():
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_override("data.target=1") == ("data.target", "1")  # a column named '1'
    assert parse_override("runtime.compile=true") == ("runtime.compile", True)


def test_schema_and_searchable_knobs_are_valid():
    schema = json_schema()
    assert "train" in json.dumps(schema)
    for k in searchable():
        if k.choices:
            assert set(k.search) <= set(k.choices), k.name
        elif k.type in (int, float):
            lo, hi = k.search
            assert lo < hi and (k.low is None or lo >= k.low) and (k.high is None or hi <= k.high), k.name


def test_search_facts_name_real_tasks_choices_and_modalities():
    tasks = set(BY_NAME["data.task"].choices) - {"auto"}
    modalities = set(BY_NAME["data.modality"].choices) - {"auto"}
    assert [k.name for k in searchable() if not k.search] == ["model.family"]  # its choices: the model registry's
    for k in KNOBS:
        assert set(k.tasks) <= tasks and set(k.modalities) <= modalities, k.name
        assert not (k.tasks or k.choice_modalities) or k.search is not None, k.name
        for choice, mods in k.choice_modalities:
            assert choice in k.choices and mods and set(mods) <= modalities, k.name
    assert dict(BY_NAME["data.balance"].choice_modalities) == {"smote": ("tabular",)}
