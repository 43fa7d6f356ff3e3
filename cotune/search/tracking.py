"""MLflow for a search: the parent run (`cotune fit`) and a nested run per trial (workers).

The search's parent run is created in search.mlflow's store and its id stored in the study's user attrs,
where each worker finds it and nests its trials' runs under it.
"""
from __future__ import annotations

from pathlib import Path

from cotune.track import MLFLOW_ARTIFACTS, MLFLOW_DB, NullTracker, open_mlflow, warn_once


def mlflow_uri(setting: str | None, out: str | Path) -> str | None:
    """search.mlflow -> tracking URI: None = a SQLite store in the search directory, 'none' = no tracking."""
    if setting is None:
        return f"sqlite:///{(Path(out) / MLFLOW_DB).resolve()}"
    return None if setting.strip().lower() in ("", "none") else setting.strip()


def trial_tracker(track: dict | None, study_name: str, number: int):
    """The trial's MLflow run, nested under the search's parent run; a NullTracker when the search is not
    tracked, or its SQLite store is not on this machine (a worker elsewhere needs a tracking server)."""
    if not track:
        return NullTracker()
    uri = track["uri"]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        warn_once(f"MLflow store {uri} is not on this machine, trials here are not tracked; "
                  "start the search with --mlflow http://<tracking server> to track every machine.")
        return NullTracker()
    return open_mlflow(uri, experiment_id=track["experiment_id"], parent_run_id=track["run_id"],
                       run_name=f"trial-{number:05d}", tags={"optuna.study": study_name, "optuna.trial": number},
                       summary=("val",))  # a trial's test metrics are not for choosing


def track_study(study, cfg, out: Path):
    """The search's MLflow parent run, created in search.mlflow's store (or reopened when the study already
    has one there, as on --resume); its id goes to the study's user attrs, where workers find it."""
    uri, prev = mlflow_uri(cfg.search.mlflow, out), study.user_attrs.get("mlflow")
    reopen = prev["run_id"] if prev and prev["uri"] == uri else None
    tracker = NullTracker() if uri is None else open_mlflow(
        uri, required=cfg.search.mlflow is not None, experiment=study.study_name, run_id=reopen,
        run_name=study.study_name, tags={"optuna.study": study.study_name, "cotune.out": str(out.resolve())},
        artifact_location=(out / MLFLOW_ARTIFACTS).resolve().as_uri() if uri.startswith("sqlite") else None)
    if not hasattr(tracker, "run_id"):
        study.set_user_attr("mlflow", None)
        return tracker
    if reopen is None:
        tracker.log_params(cfg.flat())
    study.set_user_attr("mlflow", {"uri": uri, "experiment_id": tracker.experiment_id, "run_id": tracker.run_id})
    return tracker
