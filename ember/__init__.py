"""ember: a model compiler and inference runtime.

    import ember
    model = ember.compile("model.onnx")          # target="cpu"
    outputs = model.run({"input": x})            # dict of numpy arrays
    model.save("model.ember")                    # an artifact: ember.load("model.ember")
"""

# `import ember` loads only this file and the exceptions: every CLI call and script pays
# for what is imported here, and torch, sympy, onnx, jinja2 and transformers take seconds.
# The rest of the public API loads on first use (PEP 562), each name from its module.
from typing import TYPE_CHECKING

from .errors import (ArtifactError, EmberError, ExecutionError, InputError, IRError, ModelError,
                     UnsupportedError)

__version__ = "0.1.0"

__all__ = [
    "compile", "load", "quantize", "Quantization", "CompiledModel", "LLM", "AsyncLLM", "SamplingParams", "StructuredOutputsParams", "Encoder", "CompileStats", "InferenceSession", "DType",
    "EmberError", "ModelError", "InputError", "IRError", "ExecutionError", "UnsupportedError",
    "ArtifactError",
    # onnxruntime's session API (ember/_session.py, ember/_iobinding.py)
    "SessionOptions", "RunOptions", "GraphOptimizationLevel", "ExecutionMode", "ExecutionOrder", "ModelMetadata",
    "NodeArg",
    "OrtValue", "IOBinding", "get_available_providers", "get_device", "get_all_providers", "get_version_string",
    "get_build_info", "set_default_logger_severity", "set_default_logger_verbosity",
]

# public name -> the module that defines it
_LAZY = {
    "compile": ".api", "CompiledModel": ".api", "CompileStats": ".api", "quantize": ".api",
    "Quantization": ".passes.quantize_weights",
    "InferenceSession": "._session", "SessionOptions": "._session", "RunOptions": "._session",
    "GraphOptimizationLevel": "._session", "ExecutionMode": "._session", "ExecutionOrder": "._session",
    "ModelMetadata": "._session",
    "NodeArg": "._session", "get_available_providers": "._session", "get_device": "._session",
    "get_all_providers": "._session", "get_version_string": "._session", "get_build_info": "._session",
    "set_default_logger_severity": "._session", "set_default_logger_verbosity": "._session",
    "OrtValue": "._iobinding", "IOBinding": "._iobinding",
    "load": ".artifact",
    "DType": ".ir.dtypes",
    "LLM": ".llm", "AsyncLLM": ".llm",
    "Encoder": ".embeddings",
    "SamplingParams": ".runtime.request",
    "StructuredOutputsParams": ".runtime.request",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ resolves these
    from ._iobinding import IOBinding, OrtValue
    from ._session import (ExecutionMode, ExecutionOrder, GraphOptimizationLevel, InferenceSession, ModelMetadata,
                           NodeArg, RunOptions, SessionOptions, get_all_providers, get_available_providers,
                           get_build_info, get_device, get_version_string, set_default_logger_severity,
                           set_default_logger_verbosity)
    from .api import CompiledModel, CompileStats, compile, quantize
    from .passes.quantize_weights import Quantization
    from .artifact import load
    from .ir.dtypes import DType
    from .embeddings import Encoder
    from .llm import LLM, AsyncLLM
    from .runtime.request import SamplingParams, StructuredOutputsParams
del TYPE_CHECKING


def __getattr__(name: str):
    import importlib.util

    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    # `ember.passes.X` and the like worked after a bare `import ember` while this file
    # imported everything; subpackages still load on first attribute access
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
