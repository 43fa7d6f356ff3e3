"""Code layout: a line budget per module and one-way imports between layers (checked with `ast`)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cotune"
MAX_LINES = 400

# a module may import cotune modules of its own layer or a lower one, never a higher one
LAYERS = {
    **{m: 0 for m in ("errors", "config", "knobs", "runtime", "track")},
    "distributed": 0,  # beside runtime: the process group, a rank's rows of a batch, DDP, rank 0's decisions
    **{m: 1 for m in ("data", "models")},  # data/* and models/*
    **{m: 2 for m in ("train", "evaluate", "calibrate", "bundle")},  # calibrate: temperatures and thresholds (numpy + scipy)
    "transfer": 2,  # a run's weights into a new model
    **{m: 2 for m in ("predictor", "onnx_engine")},  # the predict API and the ONNX Runtime engine: no torch
    **{m: 2 for m in ("mlflow_model", "pyfunc")},  # a bundle as an MLflow pyfunc model; pyfunc.py is the code MLflow runs
    "robust": 2,  # FGSM / PGD attacks, adversarial training as an augmentation, robust accuracy
    "drift": 2,  # new rows against the training rows' sample (reference.parquet): numpy, pandas, scipy, sklearn; no torch
    "pipeline": 3,
    "launch": 3,  # a run under torchrun (N processes), each rank calling the pipeline; errors back as one line
    "baselines": 3,  # the linear and LightGBM yardsticks, fitted on the rows `pipeline.prepare` gives
    "search": 4,  # search/*: the joint search (space, storage, objective, worker, parent, ensemble, tracking)
    "scale": 4,  # scale/* runs on the search's storage and parent (law.py and advice.py stay torch-free)
    "active": 4,  # active learning (label-next): trains through the pipeline or the search's parent, then ranks
    "compress": 4,  # compress/*: export, int8, pruning and distillation through the pipeline; the trade-off table
    "explain": 4,  # explain/*: permutation importance and integrated gradients on rows the pipeline rebuilds
    "report": 5,
    "api": 5,  # the API sits right under the CLI: it may call the search and the report
    "sklearn": 5,  # the scikit-learn estimators: a face of the API (they call cotune.train and cotune.fit)
    "cli": 6,
    "show": 6,  # what the CLI prints about finished work (the metrics table, where the report went)
}
TOP = 5  # the package facade (cotune/__init__.py) re-exports the API


def modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(dotted: str) -> int:
    """Layer of 'cotune.x.y' (by its first component under cotune); the package itself is the top."""
    parts = dotted.split(".")
    assert parts[0] == "cotune", dotted
    if len(parts) == 1:
        return TOP
    assert parts[1] in LAYERS, f"{dotted} is in no layer: add it to the layer table in tests/test_layout.py"
    return LAYERS[parts[1]]


def cotune_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import of a cotune module anywhere in the file, function-level included."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "cotune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "cotune":
                continue
            # `from cotune import api` / `from cotune.data import sources` import submodules; any other
            # name (`from cotune import train`, the API function) comes from the package itself
            for a in node.names:
                sub = PKG.parent.joinpath(*mod.split("."), a.name)
                is_module = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
                found.append((node.lineno, f"{mod}.{a.name}" if is_module else mod))
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_line_budget(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG.parent)} has {n} lines (budget {MAX_LINES}); split it"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_point_down(path):
    me = layer(module_name(path))
    bad = [f"line {ln}: {mod} (layer {layer(mod)})" for ln, mod in cotune_imports(path) if layer(mod) > me]
    assert not bad, f"{path.relative_to(PKG.parent)} (layer {me}) imports a higher layer: {bad}"


def test_layer_table_covers_every_module():
    for path in modules():
        layer(module_name(path))


def test_checker_sees_every_kind_of_import():
    """The walker catches `import cotune.x`, `from cotune import x`, relative and function-level imports."""
    src = ("import cotune.pipeline\nfrom cotune import bundle\n\ndef f():\n    from cotune.api import train\n"
           "    from .. import cli\n    from .split import split_indices\n")
    mods = {m for _, m in cotune_imports(PKG / "data" / "probe.py", src)}
    assert {"cotune.pipeline", "cotune.bundle", "cotune.api", "cotune.cli", "cotune.data.split"} <= mods


def import_graph() -> dict[str, set[str]]:
    """cotune module -> the cotune modules it imports, module-level and function-level. An import of
    `cotune.x.y` points at the module it names (a name inside a module: at that module); an import
    that names a package points at its `__init__` (named like the package, as `module_name` does)."""
    names = [module_name(p).split(".") for p in modules()]
    known = {".".join(n[:k]) for n in names for k in range(1, len(n) + 1)}  # modules and packages
    graph = {}
    for path in modules():
        me, deps = module_name(path), set()
        for _, mod in cotune_imports(path):
            while mod not in known and "." in mod:
                mod = mod.rpartition(".")[0]
            if mod != me:
                deps.add(mod)
        graph[me] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, visiting names in order)."""
    done, path = set(), []

    def visit(m):
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if d in path:
                return path[path.index(d):] + [d]
            if d not in done and (found := visit(d)):
                return found
        path.pop()
        done.add(m)
        return None

    for m in sorted(graph):
        if m not in done and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the search itself
    graph = import_graph()
    assert "cotune.data.audit_registry" in graph["cotune.data.audit"]
    cycle = find_cycle(graph)
    assert cycle is None, "cotune modules import each other in a circle: " + " -> ".join(cycle)


def test_evaluate_does_not_import_torch():
    tree = ast.parse((PKG / "evaluate.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "torch"], names
