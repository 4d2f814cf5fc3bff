"""ember: a model compiler and inference runtime.

    import ember
    model = ember.compile("model.onnx")          # target="cpu"
    outputs = model.run({"input": x})            # dict of numpy arrays
    model.save("model.ember")                    # an artifact: ember.load("model.ember")
"""

from .api import CompiledModel, CompileStats, InferenceSession, compile
from .artifact import load
from .errors import (ArtifactError, EmberError, ExecutionError, InputError, IRError, ModelError,
                     UnsupportedError)
from .ir.dtypes import DType
from .llm import LLM, AsyncLLM
from .runtime.request import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "compile", "load", "CompiledModel", "LLM", "AsyncLLM", "SamplingParams", "CompileStats", "InferenceSession", "DType",
    "EmberError", "ModelError", "InputError", "IRError", "ExecutionError", "UnsupportedError",
    "ArtifactError",
]
