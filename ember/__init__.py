"""ember: a model compiler and inference runtime.

    import ember
    model = ember.compile("model.onnx")          # target="cpu"
    outputs = model.run({"input": x})            # dict of numpy arrays
    model.save("model.ember")                    # an artifact: ember.load("model.ember")
"""

from ._iobinding import IOBinding, OrtValue
from ._session import (ExecutionMode, GraphOptimizationLevel, InferenceSession, ModelMetadata, NodeArg, RunOptions,
                       SessionOptions, get_available_providers, get_device)
from .api import CompiledModel, CompileStats, compile
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
    # onnxruntime's session API (ember/_session.py, ember/_iobinding.py)
    "SessionOptions", "RunOptions", "GraphOptimizationLevel", "ExecutionMode", "ModelMetadata", "NodeArg",
    "OrtValue", "IOBinding", "get_available_providers", "get_device",
]
