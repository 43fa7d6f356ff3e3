"""scikit-learn estimators: CotuneClassifier and CotuneRegressor.

    from cotune.sklearn import CotuneClassifier
    clf = CotuneClassifier(knobs={"model.width": 32, "train.epochs": 20}).fit(X, y)
    clf.predict_proba(X_new)
    cross_val_score(make_pipeline(StandardScaler(), CotuneClassifier()), X, y, cv=5)
    CotuneClassifier(budget="5m").fit(X, y)   # a joint search (cotune.fit) instead of one run (cotune.train)

fit(X, y) writes the rows as one Parquet table (the feature columns plus a target column) to a temporary
file, trains on it through the pipeline like any other table, then loads the bundle. Parquet keeps every
dtype (string labels, categorical columns, float bits), so the model sees exactly what was passed. Arrays
and numeric DataFrames go through scikit-learn's validation (NaN allowed: cotune imputes the training
median); a DataFrame with a non-numeric column (strings, categories, booleans) is passed on as it is, so
cotune one-hot encodes or embeds those columns. Every row is train + validation (data.split.test=0):
scikit-learn users hold out their own test rows. Under TINY_ROWS rows there is no validation part
(data.split.val=0): every row trains, for the configured epochs, the best weights by training loss.

A fitted estimator keeps its bundle in memory (`bundle_`) and its directory on disk (`path_`). Pickling
carries that directory's files as bytes, never a torch module; unpickling writes them to a new temporary
directory and loads them, so joblib can ship fitted estimators between processes.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import uuid
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_array
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted, check_random_state, column_or_1d

from cotune.errors import ConfigError, ConfigValueError, DataError, DataValueError, ModelError, one_line

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover  (older versions validate through the estimator's own methods)
    validate_data = None

TINY_ROWS = 50  # fewer rows than this: no validation part (a handful of rows cannot rank epochs)
RESERVED = ("data.source", "data.target", "data.task", "data.split.column")  # the estimator sets these from X and y
_NO_Y = "no_validation"


def _kept_frame(X) -> bool:
    """A DataFrame with a non-numeric column goes to cotune as it is (its categorical columns encoded there)."""
    return isinstance(X, pd.DataFrame) and not all(
        pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in X.dtypes)


def _validate(est, X, y, *, reset: bool, skip: bool, **params):
    """validate_data across scikit-learn versions: feature names and counts always, the arrays unless `skip`."""
    if validate_data is not None:
        return validate_data(est, X, y, reset=reset, skip_check_array=skip, **params)
    if skip:  # pragma: no cover
        est._check_feature_names(X, reset=reset)
        est._check_n_features(X, reset=reset)
        return X if isinstance(y, str) else (X, y)
    if "ensure_all_finite" in params:  # pragma: no cover
        params["force_all_finite"] = params.pop("ensure_all_finite")
    return est._validate_data(X, y, reset=reset, **params)  # pragma: no cover


def _target(y, numeric: bool) -> np.ndarray:
    """y of a kept DataFrame, checked as scikit-learn checks y: one column, no NaN."""
    y = column_or_1d(y, warn=True)
    if numeric:
        return check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
    if pd.isna(y).any():
        raise ValueError("Input y contains NaN.")
    return y


def _plain(value):
    """Knob values as JSON has them (numpy scalars and arrays from a parameter grid included)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _nest(dotted: dict) -> dict:
    """{'model.width': 8} -> {'model': {'width': 8}}: the config dict cotune.train and cotune.fit take."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigValueError(f"Knob {key!r} goes inside {p!r}, which is not a section; check the knob names.")
        node[last] = _plain(value)
    return out


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones aside) by relative path: a bundle directory as bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


class _Cotune(BaseEstimator):
    """What both estimators share: parameters, fit, the table, the bundle, pickling."""

    _classifier = False

    def __init__(self, knobs: dict | None = None, budget: str | None = None, trials: int | None = None,
                 metric: str | None = None, random_state: int = 0, workers: int = 1, verbose: bool = False,
                 out: str | None = None):
        self.knobs = knobs
        self.budget = budget
        self.trials = trials
        self.metric = metric
        self.random_state = random_state
        self.workers = workers
        self.verbose = verbose
        self.out = out

    # ---- input
    def _check(self, X, y=_NO_Y, *, reset: bool):
        """X (and y) validated: a numeric array, or a kept DataFrame; feature names and counts recorded or checked."""
        numeric_y, no_y = not self._classifier, isinstance(y, str) and y == _NO_Y
        if not _kept_frame(X):
            return _validate(self, X, y, reset=reset, skip=False, dtype="numeric", ensure_all_finite="allow-nan",
                             **({} if no_y else {"y_numeric": numeric_y}))
        if y is None:
            raise ValueError(f"This {type(self).__name__} estimator requires y to be passed, but the target y is None.")
        X = _validate(self, X, _NO_Y, reset=reset, skip=True)
        if len(X) == 0:
            raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
        if no_y:
            return X
        y = _target(y, numeric_y)
        check_consistent_length(X, y)
        return X, y

    def _frame(self, X) -> pd.DataFrame:
        """Validated rows as the table the model was trained on (its column names, in order)."""
        if isinstance(X, pd.DataFrame):
            return X.set_axis(self._columns, axis=1).reset_index(drop=True)
        return pd.DataFrame(X, columns=self._columns)

    def _knobs(self) -> dict:
        knobs = {} if self.knobs is None else self.knobs
        if not isinstance(knobs, dict) or not all(isinstance(k, str) for k in knobs):
            raise ConfigValueError(f"knobs must be a dict of dotted knob names, e.g. {{'train.epochs': 20}}; "
                                   f"got {type(knobs).__name__}.")
        taken = [k for k in knobs if k in RESERVED or k == "out"]
        if taken:
            what = "pass out= to the estimator" if taken[0] == "out" else "the estimator sets it from X and y"
            raise ConfigValueError(f"knobs[{taken[0]!r}] cannot be set here: {what}; remove it.")
        return dict(knobs)

    def _seed(self) -> int:
        rs = self.random_state
        if isinstance(rs, (int, np.integer)) and not isinstance(rs, bool):
            return int(rs)
        return int(check_random_state(rs).randint(2 ** 31 - 1))

    def _config(self, source: Path, target: str, y: np.ndarray) -> tuple[dict, bool]:
        """(the run's config dict, whether it searches). The knobs win over what the parameters set."""
        knobs = self._knobs()
        seed = self._seed()
        base = {"data.source": str(source), "data.target": target, "data.split.test": 0.0,
                "runtime.threads": 1, "runtime.progress": bool(self.verbose), "runtime.seed": seed,
                "data.split.seed": seed, "search.seed": seed, "search.workers": self.workers, "search.mlflow": "none"}
        base["data.task"] = ("binary" if len(self.classes_) == 2 else "multiclass") if self._classifier else "regression"
        base.update({k: v for k, v in (("search.budget", None if self.budget is None else str(self.budget)),
                                        ("search.trials", self.trials),
                                        ("search.metric", self.metric)) if v is not None})
        dotted = {**base, **knobs}
        search = dotted.get("search.budget") is not None or dotted.get("search.trials") is not None
        if len(y) < TINY_ROWS and "data.split.val" not in knobs:
            if search:
                raise DataValueError(f"A search ranks its trials on a validation part, which needs at least {TINY_ROWS} "
                                     f"rows; got {len(y)}: pass more rows, or fit without budget and trials (one run).")
            dotted["data.split.val"] = 0.0
        return _nest(dotted), search

    def _table(self, X, y, folder: Path) -> tuple[Path, str]:
        """Write X and y as one Parquet table; (its path, the target column)."""
        if hasattr(self, "feature_names_in_"):
            names = [str(c) for c in self.feature_names_in_]
        elif isinstance(X, pd.DataFrame):
            names = [str(c) for c in X.columns]
        else:
            names = [f"x{i}" for i in range(X.shape[1])]
        target = "target"
        while target in names:
            target = f"_{target}"
        self._columns = names
        df = self._frame(X)
        df[target] = y
        path = folder / f"data-{uuid.uuid4().hex}.parquet"  # a new name per fit: the pipeline caches by source
        try:
            df.to_parquet(path, index=False)
        except Exception as err:
            raise DataValueError(f"X and y could not be written as a table ({type(err).__name__}: {one_line(err)[:150]}); "
                                 "pass numeric arrays or a DataFrame of plain columns.") from None
        return path, target

    # ---- where the runs go
    def _release(self) -> None:
        """Remove the temporary directory this estimator owns, if any."""
        cleanup = self.__dict__.pop("_cleanup", None)
        if cleanup is not None:
            cleanup()

    def _own_dir(self) -> tuple[Path, weakref.finalize]:
        """A new temporary directory and what removes it: called on refit, else when the estimator is collected."""
        root = Path(tempfile.mkdtemp(prefix="cotune-sklearn-"))
        return root, weakref.finalize(self, shutil.rmtree, str(root), True)

    def _run_dir(self) -> tuple[Path, weakref.finalize | None]:
        """(a new run directory, its remover when the estimator owns it): in `out`, else in a temporary directory."""
        if self.out is None:
            root, cleanup = self._own_dir()
            return root / "run", cleanup
        Path(self.out).mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path(tempfile.mkdtemp(prefix=f"{type(self).__name__.lower()}-{stamp}-", dir=self.out)), None

    def _train(self, config: dict, search: bool):
        """cotune.fit (a search) or cotune.train (one run) into a new run directory; the previous one owned by
        the estimator is removed once this one is trained, a failed one at once."""
        from cotune import api
        out, cleanup = self._run_dir()
        try:
            try:
                if search:
                    res = api.fit(config=config, out=out, live=bool(self.verbose))
                else:
                    res = api.train(config=config, out=out, progress=bool(self.verbose), checkpoint=False)
            except DataError as err:
                raise DataValueError(str(err)) from None
            except (ConfigError, ModelError) as err:
                raise ConfigValueError(str(err)) from None
        except BaseException:
            if cleanup is not None:
                cleanup()
            elif out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # bad input leaves nothing behind in `out`
            raise
        self._release()
        if cleanup is not None:
            self._cleanup = cleanup
        return res

    def _load(self, path: Path) -> None:
        from cotune.api import load
        from cotune.predictor import resolve
        self.path_ = resolve(path)[0]
        self.bundle_ = load(self.path_)

    # ---- the estimator API
    def fit(self, X, y):
        """Train on X, y: one run with the knobs fixed, or a search within `budget` / `trials`. Returns self."""
        X, y = self._check(X, y, reset=True)
        if self._classifier:
            check_classification_targets(y)
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise DataValueError(f"{type(self).__name__} needs at least two classes in y; got one class "
                                     f"({self.classes_[0]!r}).")
        else:
            y = np.asarray(y, dtype=np.float64)
        with tempfile.TemporaryDirectory(prefix="cotune-sklearn-data-") as folder:
            source, target = self._table(X, y, Path(folder))
            res = self._train(*self._config(source, target, y))
        self._load(res.path)
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "bundle_")

    def _output(self, method: str, X) -> np.ndarray:
        """The bundle's `method` on X, after the checks scikit-learn makes (fitted, feature names and count)."""
        check_is_fitted(self)
        rows = self._frame(self._check(X, reset=False))
        try:
            return np.asarray(getattr(self.bundle_, method)(rows), dtype=np.float64)
        except DataError as err:
            raise DataValueError(str(err)) from None

    def save(self, path) -> Path:
        """Write the fitted model's bundle directory (JSON and safetensors, no pickle) to `path`, an empty or new
        directory: cotune.load(path) and `cotune predict` read it."""
        check_is_fitted(self)
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigValueError(f"{str(path)!r} already exists and is not an empty directory; choose another path.")
        shutil.copytree(self.path_, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
        return path

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # missing numeric values are imputed (the training median)
        return tags

    def _more_tags(self) -> dict:  # scikit-learn < 1.6
        return {"allow_nan": True}

    # ---- pickling: the bundle directory's files, never the torch module
    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_cleanup", None)
        if state.pop("bundle_", None) is not None:
            state["_bundle_files"] = _tree(self.path_)
        state.pop("path_", None)
        return state

    def __setstate__(self, state):
        state = dict(state)
        files = state.pop("_bundle_files", None)
        super().__setstate__(state)
        if files is not None:
            root, self._cleanup = self._own_dir()
            root = root / "model"
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
            self._load(root)


class CotuneClassifier(ClassifierMixin, _Cotune):
    """A cotune network as a scikit-learn classifier.

    knobs: any config knob by dotted name ({'model.family': 'mlp', 'train.epochs': 20}); with neither `budget`
    nor `trials` one run trains with them (cotune.train), with either a search (cotune.fit) keeps them fixed and
    searches the rest. metric: search.metric (what stops training early and ranks trials). random_state: the
    seed of the weights, the split and the sampler. workers: the search's worker processes. out: the folder the
    run directories go to (default: a temporary one, removed with the estimator). Knobs win over the other
    parameters; runtime.threads is 1 unless the knobs say otherwise.
    Fitted: classes_, n_features_in_, feature_names_in_ (X with string column names), bundle_, path_."""

    _classifier = True

    def predict_proba(self, X) -> np.ndarray:
        """(N, K) class probabilities, columns in the order of classes_."""
        return self._output("predict_proba", X)

    def predict(self, X) -> np.ndarray:
        """Class labels, of y's dtype (a binary model tuned for a label metric applies its threshold)."""
        from cotune.evaluate import labels
        proba = self.predict_proba(X)
        return self.classes_[labels(proba, self.bundle_.threshold)]


class CotuneRegressor(RegressorMixin, _Cotune):
    """A cotune network as a scikit-learn regressor; parameters as CotuneClassifier's.
    Fitted: n_features_in_, feature_names_in_ (X with string column names), bundle_, path_."""

    def predict(self, X) -> np.ndarray:
        """Values in target units."""
        return self._output("predict", X)
