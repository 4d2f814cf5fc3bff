"""Built-in op families. Importing this package registers every op: each family file
first registers what it defines itself, then the remaining standard ONNX ops get the
delegating defaults."""

from . import control_flow, elementwise, ember_nn, indexing, linalg, nn, optional, paged_attention, quantize, reduce, scans, shape_ops  # noqa: F401
from .onnx_standard import register_remaining

register_remaining()
