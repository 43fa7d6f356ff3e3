"""int8 variants of an fp32 ONNX file through ONNX Runtime's quantization tools.

A graph with convolutions gets static QDQ quantization: per-channel symmetric int8 weights and int8
activations whose ranges are calibrated (min-max) on preprocessed training rows, as ONNX Runtime advises
for CNNs on CPU. Any other graph (MLP, recurrent, transformer) gets dynamic quantization of its matrix
products (MatMul, and Gemm, which the tool rewrites as MatMul + Add): int8 weights, activations quantized
per batch at run time; recurrent cells and attention arithmetic stay in fp32. Both run on a preprocessed
copy of the graph (shape inference, and for static quantization Conv + BatchNorm folding).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from cotune.compress.export import strip
from cotune.errors import BundleError, one_line
from cotune.track import atomic_write_bytes

CALIBRATION_ROWS = 512
CALIBRATION_BATCH = 64


def method(path: str | Path) -> str:
    """'static' for a graph with Conv nodes, else 'dynamic'."""
    import onnx
    return "static" if any(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node) else "dynamic"


def quantize(fp32: str | Path, out: str | Path, calibration: np.ndarray, seed: int = 0) -> dict:
    """Write the int8 variant of `fp32` to `out` atomically; returns {'method': ..., 'calibration_rows': n}.
    calibration: preprocessed training rows (a random subset of at most CALIBRATION_ROWS is used)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    kind = method(fp32)
    rng = np.random.default_rng(seed)
    rows = np.asarray(calibration, dtype=np.float32)
    rows = rows[np.sort(rng.permutation(len(rows))[:CALIBRATION_ROWS])]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{"x": rows[i:i + CALIBRATION_BATCH]} for i in range(0, len(rows), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self._batches, None)

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the tools log advice at WARNING on every call
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            if kind == "static":
                quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
            else:
                quantize_dynamic(str(pre), str(q), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
            proto = onnx.load(str(q))
    except Exception as err:
        raise BundleError(f"int8 quantization of {str(fp32)!r} failed ({one_line(err)[:160]}).") from None
    finally:
        quiet.setLevel(level)
    strip(proto)
    atomic_write_bytes(Path(out), proto.SerializeToString())
    return {"method": kind, "calibration_rows": int(len(rows)) if kind == "static" else 0}
