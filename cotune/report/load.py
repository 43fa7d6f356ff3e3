"""Load what the report shows from a run directory (`cotune train`) or a search directory (`cotune fit`).

Run directory: config.json, env.json, metrics.json, history.csv, optional audit.json + audit.csv.
Search directory: config.json, fit.json, trials.csv, importances.json, trials/NNNNN/ (each trial's
run directory) and final/: a run directory, or an ensemble (final/ensemble.json, final/metrics.json,
final/members/<i>/ run directories). Every read goes through `Source`, so a missing or damaged
file becomes one line in `problems` and the part of the page that needs it is left out.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path

from cotune.report.files import Source, get, number

EXAMPLES = 5        # example rows shown per audit finding
TOP_FINDINGS = 3    # audit findings that get example rows


@dataclass
class Run:
    """One trained model's files (any may be None when missing or damaged)."""
    prefix: str                      # '' for the report root, 'final/' or 'final/members/0/' ...
    config: dict | None = None
    env: dict | None = None
    metrics: dict | None = None
    history: list[dict] | None = None
    audit: dict | None = None
    examples: dict[str, list[dict]] = field(default_factory=dict)  # check -> top flagged rows of audit.csv


@dataclass
class Loaded:
    root: Path
    kind: str                                  # 'run', 'search' or 'unknown'
    problems: list[str]
    config: dict | None = None                 # the run's / search's config.json
    run: Run | None = None                     # the model the page is about (run dir, or final/)
    members: list[Run] = field(default_factory=list)   # ensemble members (final/members/<i>/)
    ensemble: dict | None = None               # fit.json 'ensemble' (members, val, kept, ...)
    fit: dict | None = None
    trials: list[dict] | None = None
    importances: dict | None = None
    best_trial: Run | None = None              # trials/NNNNN/ of the best trial (its validation curves)
    extras: dict[str, Path] = field(default_factory=dict)  # optional files found (scale.csv, compress.json)


def _top_examples(src: Source, rel: str, audit: dict) -> dict[str, list[dict]]:
    """The highest-scoring flagged rows of audit.csv for the largest findings (streamed: audit.csv can be big)."""
    checks = get(audit, "checks", default={}) or {}
    found = sorted(((name, c) for name, c in checks.items() if isinstance(c, dict) and (number(c.get("count")) or 0) > 0),
                   key=lambda nc: -(number(nc[1].get("share")) or 0))[:TOP_FINDINGS]
    names = [n for n, _ in found]
    if not names or not src.exists(rel):
        return {}
    heaps: dict[str, list] = {n: [] for n in names}

    def keep(row: dict) -> bool:
        for n in names:
            if row.get(n) is True:
                score = number(row.get(f"{n}_score"))
                item = (score if score is not None else 0.0, -int(number(row.get("row")) or 0),
                        {"row": row.get("row"), "part": row.get("part"), "score": score})
                (heapq.heappush if len(heaps[n]) < EXAMPLES else heapq.heappushpop)(heaps[n], item)
        return False  # nothing is kept in memory but the heaps

    src.csv(rel, optional=True, need=("row",), keep=keep)
    return {n: [it[2] for it in sorted(h, key=lambda it: (-it[0], -it[1]))] for n, h in heaps.items() if h}


def load_run(src: Source, prefix: str = "", *, model_files: bool = True) -> Run:
    """A run directory under `prefix`. `model_files=False` (a trial directory, read for its curves only)
    records no problem for missing files."""
    opt = not model_files
    run = Run(prefix=prefix)
    run.config = src.json(prefix + "config.json", optional=opt, missing="the configuration is not shown")
    run.env = src.json(prefix + "env.json", optional=True)
    run.metrics = src.json(prefix + "metrics.json", optional=opt, missing="no model metrics can be shown")
    run.history = src.csv(prefix + "history.csv", optional=opt, need=("epoch",),
                          missing="no learning curves can be shown")
    run.audit = src.json(prefix + "audit.json", optional=True)
    if run.audit is not None and model_files:
        run.examples = _top_examples(src, prefix + "audit.csv", run.audit)
    return run


def _is_search(root: Path) -> bool:
    return any((root / f).exists() for f in ("fit.json", "trials.csv", "importances.json", "trials"))


def _is_run(root: Path) -> bool:
    return any((root / f).is_file() for f in ("metrics.json", "history.csv", "model.json", "metrics.jsonl"))


def load_dir(root: Path, extras: tuple[str, ...] = ()) -> Loaded:
    src = Source(root)
    kind = "search" if _is_search(root) else "run" if _is_run(root) else "unknown"
    out = Loaded(root=root, kind=kind, problems=src.problems)
    out.extras = {name: root / name for name in extras if (root / name).exists()}
    if kind == "unknown":
        src.note(f"{root.name or root}: no metrics.json (a run directory) or fit.json (a search directory) here; "
                 "pass the --out directory of `cotune train` or `cotune fit`")
        out.config = src.json("config.json", optional=True)
        return out
    if kind == "run":
        out.run = load_run(src)
        out.config = out.run.config
        return out
    out.fit = src.json("fit.json", missing="the search summary (best trial, counts, time) is not shown")
    out.config = src.json("config.json", optional=out.fit is not None and "config" in out.fit,
                          missing="search ranges come from the knob table") or get(out.fit, "config")
    out.trials = src.csv("trials.csv", need=("number", "state"), missing="no per-trial charts or tables can be shown")
    out.importances = src.json("importances.json", missing="parameter importances are not shown")
    out.ensemble = get(out.fit, "ensemble")
    if src.exists("final/ensemble.json"):
        spec = src.json("final/ensemble.json")
        out.run = Run(prefix="final/", metrics=src.json("final/metrics.json", missing="no model metrics can be shown"),
                      config=src.json("final/config.json", optional=True))
        names = get(spec, "members", default=[]) or []
        out.members = [load_run(src, f"final/{n}/".replace("//", "/")) for n in names if isinstance(n, str)]
        if out.members:
            first = out.members[0]
            out.run.audit, out.run.examples, out.run.env = first.audit, first.examples, first.env
        if out.ensemble is None:
            out.ensemble = get(out.run.metrics, "ensemble")
    elif (root / "final").is_dir():
        out.run = load_run(src, "final/")
    else:
        src.note("final/ is missing: the search has no final model yet (still running, or stopped before "
                 "the refit), so model quality and training are not shown")
    best = get(out.fit, "best", "number")
    if isinstance(best, int):
        rel = f"trials/{best:05d}/"
        if (root / rel).is_dir():
            out.best_trial = load_run(src, rel, model_files=False)
        else:  # the search directory was moved or trials/ pruned: fit.json's run_dir may still be there
            rd = get(out.fit, "best", "run_dir")
            if isinstance(rd, str) and Path(rd).is_dir():
                out.best_trial = load_run(Source(Path(rd), src.problems), "", model_files=False)
    return out
