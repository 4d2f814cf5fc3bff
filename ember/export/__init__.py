"""Writing ember's graphs out in other formats: `export_onnx` (a Graph -> an ONNX model)."""

from .onnx import export_onnx

__all__ = ["export_onnx"]
