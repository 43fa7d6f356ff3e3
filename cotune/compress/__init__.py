"""`cotune compress`: ONNX export, int8 quantization, structured pruning and distillation of a finished model,
with the size / latency / accuracy table and the variant to ship (see core)."""
from cotune.compress.core import KEEPS, PREFER, CompressResult, compress, locate

__all__ = ["CompressResult", "KEEPS", "PREFER", "compress", "locate"]
