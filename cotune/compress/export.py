"""fp32 ONNX export of a zoo model and its parity check against PyTorch.

The dynamo exporter (`torch.onnx.export(dynamo=True)`) with a dynamic batch axis: the example input has a
batch of 2, since an example of batch 1 freezes the "dynamic" axis to 1. The graph takes one float32 input
`x` of shape (N, *in_shape) and returns the model's raw outputs in eval mode (logits, or standardized values
for regression). The file is stripped of the exporter's per-node metadata (stack traces, names), which is
most of a small model's bytes and nothing a runtime reads.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import torch

from cotune.errors import BundleError, one_line
from cotune.track import atomic_write_bytes

PARITY_BATCHES = (1, 7, 256)
PARITY_ATOL = 1e-4  # max |onnx - torch| on the raw outputs


@contextlib.contextmanager
def _quiet():
    """The exporter prints its steps and logs warnings about optional packages: keep both off the console."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.__trace", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the encoder's fused eval path has no ONNX export
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def strip(proto) -> None:
    """Drop doc strings, value_info, metadata and unused opset imports in place: what the exporter and the
    quantization tools record for debugging."""
    g = proto.graph
    g.doc_string = ""
    del g.value_info[:]
    for n in g.node:
        n.doc_string = ""
        del n.metadata_props[:]
    del proto.metadata_props[:]
    del g.metadata_props[:]
    used = {n.domain for n in g.node} | {""} | {f.domain for f in proto.functions}
    for f in proto.functions:
        used |= {n.domain for n in f.node}
    keep = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    for f in proto.functions:
        for n in f.node:
            del n.metadata_props[:]
    _short_names(g)


def _short_names(g) -> None:
    """Rename every node and inner tensor to a short id (the graph's input and output names stay): names like
    'net.1.weight_Transposed_quantized', repeated at each use, are a third of a small int8 file. A graph with
    subgraphs (control flow) keeps its names, since those can refer to outer tensors."""
    if any(a.type in (5, 10) for n in g.node for a in n.attribute):  # GRAPH, GRAPHS
        return
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {""}
    names: dict = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")
    for t in g.initializer:
        t.name = short(t.name)
    for t in g.sparse_initializer:
        t.values.name = short(t.values.name)
    for i, n in enumerate(g.node):
        n.name = f"n{i}"
        n.input[:] = [short(x) for x in n.input]
        n.output[:] = [short(x) for x in n.output]


def to_onnx(model: torch.nn.Module, in_shape: tuple, path: str | Path, family: str = "") -> Path:
    """Export `model` (eval mode, CPU) to `path` atomically; a model the exporter cannot handle is one BundleError."""
    try:
        import onnx
    except ImportError:
        raise BundleError("ONNX export needs the onnx, onnxscript and onnxruntime packages; install them "
                          "with pip install 'cotune[onnx]'.") from None
    model = model.eval().cpu()
    torch.manual_seed(0)
    x = torch.randn(2, *in_shape)
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: batch},), input_names=["x"],
                                        output_names=["output"], optimize=True, verbose=False)
        proto = program.model_proto
    except Exception as err:
        raise BundleError(f"The {family or type(model).__name__} model cannot be exported to ONNX "
                          f"({one_line(err)[:160]}); use it with --engine torch.") from None
    strip(proto)
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    onnx.checker.check_model(str(path))
    return path


def session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with `threads` intra-op threads, one inter-op thread and no spinning."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_session(sess, X: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Raw outputs of a session on X, in chunks."""
    name = sess.get_inputs()[0].name
    X = np.ascontiguousarray(X, dtype=np.float32)
    return np.concatenate([sess.run(None, {name: X[i:i + chunk]})[0] for i in range(0, len(X), chunk)]) if len(X) else \
        np.zeros((0,), np.float32)


def parity(model: torch.nn.Module, path: str | Path, X: np.ndarray, batches=PARITY_BATCHES) -> dict:
    """ONNX vs PyTorch on the rows X (preprocessed) and at each batch size in `batches` (rows taken cyclically):
    the max absolute difference of the raw outputs and, for classifiers, the share of equal argmaxes."""
    sess = session(path)
    model = model.eval()
    X = np.asarray(X, dtype=np.float32)
    worst, agree, n = 0.0, 0, 0
    sets = [X] + [X[np.arange(b) % len(X)] for b in batches]
    for xb in sets:
        with torch.inference_mode():
            ref = model(torch.from_numpy(xb)).numpy()
        out = run_session(sess, xb)  # one call per batch-size set: each is below the chunk size
        worst = max(worst, float(np.abs(out - ref).max()))
        if ref.shape[-1] > 1:
            agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
            n += len(xb)
    return {"max_abs_diff": worst, "argmax_agreement": agree / n if n else None,
            "batches": list(batches), "rows": int(len(X)), "ok": worst <= PARITY_ATOL and (n == 0 or agree == n)}
