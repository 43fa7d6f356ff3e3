"""int8 variants of an fp32 ONNX file through ONNX Runtime's quantization tools.

A graph with convolutions gets static QDQ quantization: symmetric int8 weights (per channel, or per tensor when
that agrees better with the fp32 outputs on training rows) and int8 activations whose ranges are calibrated
(min-max) on preprocessed training rows, as ONNX Runtime advises for CNNs on CPU. Any other graph (MLP, recurrent, transformer) gets dynamic quantization of its matrix
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
    """Write the int8 variant of `fp32` to `out` atomically; returns how: {'method', 'per_channel',
    'calibration_rows', 'agreement'}. calibration: preprocessed training rows; a random CALIBRATION_ROWS of them
    calibrate, the next CALIBRATION_ROWS check.

    Static quantization is tried with per-channel and with per-tensor weights, and the one whose outputs agree
    more with the fp32 graph's on the check rows is kept (per-channel on a tie): ONNX Runtime's fused int8
    convolution has given wrong outputs for per-channel 1-D convolutions (argmax agreement 0.8 where per-tensor
    keeps 0.98), and this check catches that, or any such fault, on training rows, never on test rows."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    kind = method(fp32)
    rng = np.random.default_rng(seed)
    rows = np.asarray(calibration, dtype=np.float32)
    order = rng.permutation(len(rows))
    calib = rows[np.sort(order[:CALIBRATION_ROWS])]
    check = rows[np.sort(order[CALIBRATION_ROWS:2 * CALIBRATION_ROWS])] if len(rows) > CALIBRATION_ROWS else calib
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the tools log advice at WARNING on every call
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            if kind == "static":
                ref = _outputs(fp32, check)
                tried = []
                for per_channel in (True, False):
                    q = Path(tmp) / f"q{int(per_channel)}.onnx"
                    _static(pre, q, calib, per_channel)
                    tried.append((_agreement(_outputs(q, check), ref), per_channel, q))
                agreement, per_channel, q = max(tried, key=lambda t: (t[0], t[1]))
                info = {"method": kind, "per_channel": per_channel, "calibration_rows": int(len(calib)),
                        "agreement": agreement, "agreement_other": [t[0] for t in tried if t[2] != q][0]}
            else:
                q = Path(tmp) / "q.onnx"
                quantize_dynamic(str(pre), str(q), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
                info = {"method": kind, "per_channel": False, "calibration_rows": 0,
                        "agreement": _agreement(_outputs(q, check), _outputs(fp32, check))}
            import onnx
            proto = onnx.load(str(q))
    except Exception as err:
        raise BundleError(f"int8 quantization of {str(fp32)!r} failed ({one_line(err)[:160]}).") from None
    finally:
        quiet.setLevel(level)
    _drop_zero_points(proto.graph)
    strip(proto)
    atomic_write_bytes(Path(out), proto.SerializeToString())
    return info


def _static(pre: Path, q: Path, calib: np.ndarray, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{"x": calib[i:i + CALIBRATION_BATCH]} for i in range(0, len(calib), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self._batches, None)
    quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def _outputs(path: Path, X: np.ndarray) -> np.ndarray:
    from cotune.compress.export import run_session, session
    return run_session(session(path), X)


def _agreement(out: np.ndarray, ref: np.ndarray) -> float:
    """Argmax agreement for classifier outputs; for one output (regression) 1 - the relative RMS difference."""
    if ref.shape[-1] > 1:
        return float((out.argmax(-1) == ref.argmax(-1)).mean())
    return float(1 - np.sqrt(np.mean((out - ref) ** 2)) / max(float(np.std(ref)), 1e-12))


def _drop_zero_points(g) -> None:
    """Leave out the all-zero zero points of DequantizeLinear nodes (an absent one is zero): per-channel int32
    zeros for every bias and int8 zeros for every symmetric weight are a tenth of a small CNN's int8 file. Zero
    points a QuantizeLinear reads stay, since there they also fix the output type."""
    from onnx import numpy_helper
    init = {t.name: t for t in g.initializer}
    quantizers = {n.input[2] for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in init and n.input[2] not in quantizers:
            if not numpy_helper.to_array(init[n.input[2]]).any():
                del n.input[2]
    used = {x for n in g.node for x in n.input} | {v.name for v in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
