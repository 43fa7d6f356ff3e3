"""Predict from an ONNX export through ONNX Runtime, without torch: the same predict API as a Bundle.

    m = cotune.load("runs/x", engine="onnx")    # the variant compress.json chose
    m.predict(df); m.predict_proba(df); m.predict_frame("new.csv")

`cotune compress` writes <run>/compress/: compress.json ({"chosen": "<variant>", ...}) and one
self-contained directory per variant, laid out like a bundle with model.onnx in place of the weights:

    <variant>/model.onnx, model.json, preprocess.json, [decision.json]
    <variant>/ensemble.json, [decision.json], members/<i>/{model.onnx, model.json, preprocess.json, ...}

The graph takes one float32 input of shape (N, *spec.in_shape), N dynamic, and returns the model's raw
outputs, so preprocessing, softmax (or the inverse target transform) and the decision are cotune.predictor's,
exactly as for the torch model. Sessions run sequentially on one thread by default, without spinning
threads: a batch job or a server runs several of them side by side.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cotune.data.preprocess import Preprocessor
from cotune.errors import BundleError, CotuneError, one_line
from cotune.predictor import ENSEMBLE, SPEC, Predictor, Spec, Voting, load_decision, member_names, resolve
from cotune.track import read_json

GRAPH = "model.onnx"
INDEX = "compress.json"
BATCH = 4096  # rows per session.run: bounded memory on big inputs, no per-call overhead on small ones


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BundleError("Predicting with engine 'onnx' needs ONNX Runtime: install onnxruntime "
                          "(pip install onnxruntime), or use engine 'torch'.") from None
    return onnxruntime


def session(path: str | Path, threads: int = 1, inter_threads: int = 1, providers=None):
    """An ONNX Runtime session over one graph: `threads` intra-op threads, `inter_threads` inter-op threads,
    operators run in order, idle threads sleep rather than spin. providers: default the CPU."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = inter_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: no warnings on the user's stderr
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxBundle(Predictor):
    """One exported model: its graph in an ONNX Runtime session, with the bundle's preprocessing and decision."""

    def __init__(self, path: Path, spec: Spec, session, pre: Preprocessor, decision: dict | None = None):
        super().__init__(path, spec, pre, decision)
        self.session = session
        self.input = session.get_inputs()[0].name

    def _outputs(self, feats: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(feats, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.spec.out_dim), dtype=np.float32)
        return np.concatenate([self.session.run(None, {self.input: x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)])


class OnnxEnsemble(Voting):
    """Soft voting over exported members, as cotune.bundle.Ensemble over torch ones."""


def load(path: str | Path, threads: int = 1, inter_threads: int = 1, providers=None) -> OnnxBundle | OnnxEnsemble:
    """One variant directory of `cotune compress` (a single model or an ensemble) ready to predict."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"ONNX export {str(path)!r} not found; run `cotune compress` on the run first.")
    if (path / ENSEMBLE).is_file():
        members = [load(path / n, threads, inter_threads, providers) for n in member_names(path)]
        return OnnxEnsemble(path, members, load_decision(path))
    missing = [f for f in (GRAPH, SPEC, "preprocess.json") if not (path / f).is_file()]
    if missing:
        raise BundleError(f"ONNX export {str(path)!r} has no {missing[0]}; export it again with `cotune compress`.")
    try:
        spec = Spec.from_dict(read_json(path / SPEC))
        pre = Preprocessor.load(path)
        sess = session(path / GRAPH, threads, inter_threads, providers)
    except CotuneError:
        raise
    except Exception as err:
        raise BundleError(f"ONNX export {str(path)!r} could not be loaded ({type(err).__name__}: {one_line(err)[:150]}); "
                          "its files are damaged: export it again with `cotune compress`.") from None
    return OnnxBundle(path, spec, sess, pre, load_decision(path))


def exported(path: Path) -> bool:
    """Whether `path` is itself an export (a variant directory), rather than a run that may have one."""
    return (path / GRAPH).is_file() or ((path / ENSEMBLE).is_file() and any(path.glob(f"members/*/{GRAPH}")))


def load_run(run: str | Path, threads: int = 1, inter_threads: int = 1, providers=None) -> OnnxBundle | OnnxEnsemble:
    """The export compress.json chose for a run or search directory (cotune.predictor.resolve finds its
    compress/), or a variant directory passed itself."""
    run = Path(run)
    bundle_dir, compress = resolve(run)
    if exported(bundle_dir) and not (compress / INDEX).is_file():
        return load(bundle_dir, threads, inter_threads, providers)
    if not (compress / INDEX).is_file():
        if not run.is_dir():
            raise BundleError(f"Run directory {str(run)!r} not found; pass the --out directory of a finished run.")
        raise BundleError(f"{str(run)!r} has no ONNX export; run `cotune compress {compress.parent}` first, "
                          "or use --engine torch.")
    try:
        index = read_json(compress / INDEX)
        chosen = index.get("chosen") if isinstance(index, dict) else None
        if not isinstance(chosen, str) or Path(chosen).name != chosen or chosen in ("", ".", ".."):
            raise ValueError(f"'chosen' must name a variant directory in {str(compress)!r}, got {chosen!r}")
    except Exception as err:
        raise BundleError(f"{str(compress / INDEX)!r} is damaged ({one_line(err)[:120]}); "
                          f"run `cotune compress {compress.parent}` again.") from None
    if not (compress / chosen).is_dir():
        raise BundleError(f"{str(compress / INDEX)!r} chooses {chosen!r} but {str(compress / chosen)!r} is missing; "
                          f"run `cotune compress {compress.parent}` again.")
    return load(compress / chosen, threads, inter_threads, providers)
