"""The ensemble candidate of a search: soft voting over its top-k trials, kept as the final model only
when it beats the best single trial on validation."""
from __future__ import annotations

from pathlib import Path

from cotune.config import RunConfig
from cotune.search.storage import study_metric
from cotune.track import read_json, write_json


def try_ensemble(cfg: RunConfig, study, done, out: Path) -> dict | None:
    """Soft voting over the top-k trials; kept (as final/) only if it beats the best trial on validation."""
    from cotune.bundle import save_ensemble
    from cotune.pipeline import RunResult, evaluate_ensemble
    from cotune.train import TrainResult
    k = cfg.search.top_k
    if k < 2 or len(study.directions) > 1 or len(done) < 2:
        return None
    metric = study_metric(study)
    top = sorted(done, key=lambda t: t.values[0], reverse=metric.maximize)[:k]
    dirs = [t.user_attrs["run_dir"] for t in top if (Path(t.user_attrs.get("run_dir", "")) / "model.safetensors").exists()]
    if len(dirs) < 2:
        return None
    metrics = evaluate_ensemble(cfg, dirs)
    ens, single = metrics["val"][metric.name], top[0].values[0]
    kept = metric.better(ens, single)
    info = {"members": [t.number for t in top[:len(dirs)]], "val": ens, "best_single_val": single, "metric": metric.name,
            "kept": kept}
    if kept:
        final = out / "final"
        save_ensemble(final, dirs)
        write_json(final / "metrics.json", {**metrics, "ensemble": info})
        write_json(final / "config.json", cfg.to_dict())
        n_params = sum(int(read_json(Path(d) / "model.json").get("n_params", 0)) for d in dirs)
        info["result"] = RunResult(path=final, metrics=metrics, train=TrainResult(), n_params=n_params,
                                   config=cfg.replace(**top[0].params))
    return info
