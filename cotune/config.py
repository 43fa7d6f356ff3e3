"""Typed, frozen config models built from the knob table, YAML loading and dotted overrides.

    cfg = load_config("run.yaml", ["train.lr=1e-3", "model.width=128"])
    cfg.train.lr            # 0.001
    cfg.train               # the TrainConfig alone, for stage functions (train() takes it)

Each stage (data, model, train, runtime) is its own pydantic model generated from knobs.py, so
the schema cannot drift from the knob declarations. An unknown key or a value of the wrong
type or range is a ConfigError with a one-line message; nothing is coerced silently.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from cotune.errors import ConfigError, fmt_choices, invalid, one_line
from cotune.knobs import BY_NAME, KNOBS, Knob

_FROZEN = ConfigDict(extra="forbid", frozen=True)


def _annotation(k: Knob):
    t = Literal[k.choices] if k.choices else {list: list[str], dict: dict[str, list]}.get(k.type, k.type)
    return Optional[t] if k.optional else t


def _field(k: Knob):
    kw: dict[str, Any] = {"description": k.help}
    if k.low is not None:
        kw["gt" if k.open_low else "ge"] = k.low
    if k.high is not None:
        kw["le"] = k.high
    if isinstance(k.default, (list, dict)):
        return (_annotation(k), Field(default_factory=lambda d=k.default: type(d)(d), description=k.help))
    return (_annotation(k), Field(k.default, **kw))


def _build(prefix: str, names: list[str]) -> type[BaseModel]:
    """One pydantic model for the knobs under `prefix` (recursing into sub-groups like data.split)."""
    fields: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    for n in names:
        rest = n[len(prefix) + 1:]
        if "." in rest:
            groups.setdefault(rest.split(".")[0], []).append(n)
        else:
            fields[rest] = _field(BY_NAME[n])
    for g, sub in groups.items():
        sub_model = _build(f"{prefix}.{g}", sub)
        fields[g] = (sub_model, Field(default_factory=sub_model))
    cls_name = prefix.split(".")[-1].title() + "Config"
    return create_model(cls_name, __config__=_FROZEN, __doc__=f"Knobs under '{prefix}' (see cotune.knobs).", **fields)


STAGES = ("data", "model", "train", "search", "scale", "runtime")
DataConfig = _build("data", [k.name for k in KNOBS if k.stage == "data"])
ModelConfig = _build("model", [k.name for k in KNOBS if k.stage == "model"])
TrainConfig = _build("train", [k.name for k in KNOBS if k.stage == "train"])
SearchConfig = _build("search", [k.name for k in KNOBS if k.stage == "search"])
ScaleConfig = _build("scale", [k.name for k in KNOBS if k.stage == "scale"])
RuntimeConfig = _build("runtime", [k.name for k in KNOBS if k.stage == "runtime"])


class RunConfig(BaseModel):
    """The whole run: one sub-config per stage plus where the run directory goes."""
    model_config = _FROZEN
    data: DataConfig = Field(default_factory=DataConfig)          # type: ignore[valid-type]
    model: ModelConfig = Field(default_factory=ModelConfig)       # type: ignore[valid-type]
    train: TrainConfig = Field(default_factory=TrainConfig)       # type: ignore[valid-type]
    search: SearchConfig = Field(default_factory=SearchConfig)    # type: ignore[valid-type]
    scale: ScaleConfig = Field(default_factory=ScaleConfig)       # type: ignore[valid-type]
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)  # type: ignore[valid-type]
    out: Optional[str] = Field(None, description="run directory (default: runs/<data>-<time>)")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """{'train.lr': 0.003, ...} for every knob."""
        return flatten(self.to_dict())

    def replace(self, **dotted: Any) -> "RunConfig":
        """A copy with dotted keys changed: cfg.replace(**{'train.lr': 1e-3})."""
        return from_dict(self.to_dict(), [f"{k}={json.dumps(v)}" for k, v in dotted.items()])


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in BY_NAME:  # a dict-valued knob (search.space) stays whole
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def expected(k: Knob | None) -> str:
    if k is None:
        return "valid"
    if k.choices:
        return f"one of {fmt_choices(k.choices)}"
    kind = {float: "a number", int: "an integer", bool: "true or false", list: "a list", dict: "a mapping", str: "a string"}[k.type]
    lo = None if k.low is None else (f"> {k.low:g}" if k.open_low else f">= {k.low:g}")
    hi = None if k.high is None else f"<= {k.high:g}"
    rng = " and ".join(x for x in (lo, hi) if x)
    return f"{kind} {rng}".strip() + (" or null" if k.optional else "")


def _config_error(err: ValidationError) -> ConfigError:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(BY_NAME) + ["out"], n=1)
        hint = f"did you mean {close[0]!r}?" if close else "run `cotune train --help` for the keys"
        return ConfigError(f"Unknown config key {key!r}; {hint}")
    k = BY_NAME.get(key)
    got = e.get("input")
    return ConfigError(one_line(invalid(f"Config key {key!r}", expected(k), got,
                                        f"fix it in the YAML file or with --set {key}=VALUE")))


def from_dict(d: dict | None, overrides: list[str] | tuple = ()) -> RunConfig:
    d = json.loads(json.dumps(d or {}))  # deep copy, plain types
    if not isinstance(d, dict):
        raise ConfigError(f"A config must be a mapping of stage -> keys, got {type(d).__name__}; see `cotune train --help`.")
    for o in overrides:
        key, value = parse_override(o)
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"Override {o!r} goes inside {p!r}, which is not a section; check the key name.")
            node = nxt
        node[parts[-1]] = value
    if type(d.get("out")) in (int, float):  # `out: 2024` in YAML names a directory '2024'
        d["out"] = str(d["out"])
    try:
        return RunConfig.model_validate(d)
    except ValidationError as err:
        raise _config_error(err) from None


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=1e-3' -> ('train.lr', 0.001). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key=value, e.g. --set train.lr=1e-3.")
    key, raw = text.split("=", 1)
    key = key.strip().removeprefix("--")
    try:
        value = safe_load_unique(raw) if raw.strip() else None
    except DuplicateKey as dup:
        raise ConfigError(f"Override {text!r} sets {dup.key!r} twice; keep one of them.") from None
    except yaml.YAMLError:
        value = raw
    k = BY_NAME.get(key)
    if k is not None and k.type is float and isinstance(value, str):
        try:  # YAML reads '1e-3' as a string (no dot); a float knob accepts it
            value = float(value)
        except ValueError:
            pass
    if (key == "out" or k is not None and k.type is str) and value is not None and not isinstance(value, str):
        value = raw.strip()  # 'data.target=1' names a column '1', 'out=2024' a directory '2024'
    return key, value


class DuplicateKey(Exception):
    """A mapping in a YAML text names the same key twice."""

    def __init__(self, key: str, first: int, line: int):
        super().__init__(f"{key!r} on lines {first} and {line}")
        self.key, self.first, self.line = key, first, line


_MERGE = "tag:yaml.org,2002:merge"


def _check_unique(node, path: tuple = (), seen_nodes: set | None = None) -> None:
    """Raise DuplicateKey for the first key that a mapping (at any depth) repeats. PyYAML keeps the last
    silently, so `lr: 1e-3` further down would quietly undo an earlier `lr`; YAML 1.2 calls the file invalid."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias to a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict = {}
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if name is not None and key_node.tag != _MERGE:  # '<<: *base' keys may be overridden: that is the point
                line = key_node.start_mark.line + 1
                dotted = ".".join((*path, name))
                if (key_node.tag, name) in keys:
                    raise DuplicateKey(dotted, keys[(key_node.tag, name)], line)
                keys[(key_node.tag, name)] = line
            _check_unique(value_node, (*path, name if name is not None else "?"), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique(item, (*path, str(i)), seen_nodes)


def safe_load_unique(text: str):
    """yaml.safe_load, except that a key repeated in one mapping raises DuplicateKey (with both lines)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read a YAML config (or none: all defaults) and apply `key=value` overrides."""
    d: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file {str(p)!r} not found; check the path (or run without a file to use defaults).")
        try:
            d = safe_load_unique(p.read_text()) or {}
        except DuplicateKey as dup:
            where = f"on line {dup.line}" if dup.first == dup.line else f"on lines {dup.first} and {dup.line}"
            raise ConfigError(f"Config file {str(p)!r} sets {dup.key!r} twice, {where}; keep one of them.") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"Config file {str(p)!r} is not valid YAML{where}; fix its syntax.") from None
    return from_dict(d, overrides)


def json_schema() -> dict:
    return RunConfig.model_json_schema()


def explicit(cfg: BaseModel, prefix: str = "") -> set[str]:
    """Dotted names of the knobs the user set (in YAML, --set or a dict), as opposed to defaults."""
    out: set[str] = set()
    for name in cfg.model_fields_set:
        v = getattr(cfg, name)
        key = f"{prefix}{name}"
        out |= explicit(v, key + ".") if isinstance(v, BaseModel) else {key}
    return out


def knob_value(cfg: RunConfig, name: str) -> Any:
    node: Any = cfg
    for p in name.split("."):
        node = getattr(node, p)
    return node
