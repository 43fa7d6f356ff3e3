"""The joint search: one Optuna study over data and model knobs, trained by worker processes.

    space.py      which knobs a search draws, from what; the trial's config
    storage.py    the study's storage (SQLite / PostgreSQL), sampler and pruner; opening a study
    objective.py  one trial in a worker: knobs, training (rung by rung), its record
    worker.py     the worker side: `cotune worker` runs trials until the study is done
    parent.py     the parent side: `cotune fit` starts workers, watches, refits the best; run_workers
    ensemble.py   soft voting over the top trials, kept when it beats the single one it would replace
    reeval.py     the top trials cross-validated over train+val: the trial the final model refits
    tracking.py   MLflow: the search's parent run and a nested run per trial
"""
