"""ember: a model compiler and inference runtime.

    import ember
    model = ember.compile("model.onnx")          # target="cpu"
    outputs = model.run({"input": x})            # dict of numpy arrays
"""

from .api import CompiledModel, CompileStats, InferenceSession, compile
from .errors import (EmberError, ExecutionError, InputError, IRError, ModelError,
                     UnsupportedError)
from .ir.dtypes import DType

__version__ = "0.1.0"

__all__ = [
    "compile", "CompiledModel", "CompileStats", "InferenceSession", "DType",
    "EmberError", "ModelError", "InputError", "IRError", "ExecutionError", "UnsupportedError",
]
